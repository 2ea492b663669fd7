//! Memory freed after a burst of load, given back to the system: [`release_freed_memory`] runs
//! beside every server ([`crate::service::Service::run`] starts it, and the gateway's main).
//!
//! glibc's allocator keeps what a process frees, and returns it on its own only from the top of
//! each heap: after a burst of calls a server stayed several MiB above its idle size for as long
//! as it ran (BENCHMARKS.md, issue 14). Every [`CHECK_EVERY`] the task asks the allocator how
//! much it holds free; over [`KEEP_FREE`], and changed since the last time it was given back, the
//! free pages go back to the system (`protomesh_memory`, the workspace's one crate that calls
//! C). Under steady load that is one release every [`CHECK_EVERY`] at most; when the load stops,
//! the memory is back within one period. Elsewhere than glibc the task ends at once.

use std::time::Duration;

/// How often the allocator is asked what it holds.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Free memory the allocator keeps without giving it back: what the next calls reuse at once.
const KEEP_FREE: usize = 1 << 20;

/// Gives the allocator's free memory back to the system when it holds more than [`KEEP_FREE`]
/// (see the [module](self)); runs until dropped.
pub async fn release_freed_memory() {
    if protomesh_memory::held_free_bytes().is_none() {
        return;
    }
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the allocator held free right after the last release: the same figure again means
    // nothing was allocated or freed since, and the pages are back already.
    let mut released_at = None;
    loop {
        ticks.tick().await;
        let Some(held) = protomesh_memory::held_free_bytes() else {
            return;
        };
        if held > KEEP_FREE && released_at != Some(held) {
            let gave_back = protomesh_memory::release_free_memory();
            released_at = protomesh_memory::held_free_bytes();
            tracing::debug!(held, gave_back, "freed memory given back to the system");
        }
    }
}
