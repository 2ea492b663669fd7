//! Gives the system back the memory glibc's allocator keeps after the process freed it.
//!
//! glibc keeps freed memory in its arenas (one per thread that allocates) for the next
//! allocation, and returns it on its own only from the top of each heap. After a burst of calls a
//! server stays several MiB above its idle size for as long as it runs; `malloc_trim(0)` walks
//! every arena and gives the free pages back (`madvise`), live allocations untouched.
//!
//! This crate is the only one in the workspace that calls C, so that the others keep
//! `unsafe_code = "forbid"`. On other C libraries (musl) and systems both functions do nothing:
//! their allocators return memory themselves or have no such call. The runtime decides when to
//! call them (`protomesh::memory`).

#![deny(unsafe_code)]

/// Bytes the allocator holds free (in all its arenas, the top of each heap included), or
/// `None` where that cannot be asked.
#[must_use]
pub fn held_free_bytes() -> Option<usize> {
    imp::held_free_bytes()
}

/// Asks the allocator to give its free pages back to the system; whether it gave any.
pub fn release_free_memory() -> bool {
    imp::release_free_memory()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod imp {
    pub(super) fn held_free_bytes() -> Option<usize> {
        // SAFETY: `mallinfo2` (glibc ≥ 2.33) takes no arguments and returns a plain struct; it
        // reads the allocator's state under the allocator's own locks.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }

    pub(super) fn release_free_memory() -> bool {
        // SAFETY: `malloc_trim` takes no pointer; glibc serialises it with every other allocator
        // call, and it frees nothing that is in use.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn held_free_bytes() -> Option<usize> {
        None
    }

    pub(super) fn release_free_memory() -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Anonymous resident memory of this process, in KiB.
    fn resident_anonymous_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("RssAnon:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Many small blocks freed around a few that stay: the freed memory is held by the
    /// allocator (not at the top of the heap, so glibc keeps it), and comes back on release.
    #[test]
    fn freed_memory_held_between_live_blocks_comes_back() {
        let mut blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![(i % 251) as u8; 1024]).collect();
        let mut kept = Vec::new();
        for (i, block) in blocks.drain(..).enumerate() {
            if i % 64 == 0 {
                kept.push(block);
            }
        }
        let held = held_free_bytes().unwrap();
        assert!(held > 16 << 20, "the freed blocks are held: {held} bytes");
        let before = resident_anonymous_kib();
        assert!(release_free_memory(), "something was given back");
        let after = resident_anonymous_kib();
        assert!(
            after + 16 * 1024 < before,
            "resident memory {before} KiB → {after} KiB"
        );
        assert_eq!(kept.len(), 625);
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, b)| b[0] == ((i * 64) % 251) as u8));
    }
}
