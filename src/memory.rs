//! Memory freed after a burst of load, given back to the system: [`release_freed_memory`] runs
//! beside every server ([`crate::service::Service::run`] starts it, and the gateway's main).
//!
//! glibc's allocator keeps what a process frees, and returns it on its own only from the top of
//! each heap: after a burst of calls a server stayed several MiB above its idle size for as long
//! as it ran (BENCHMARKS.md, issue 14). Every [`CHECK_EVERY`] the task looks at the process's
//! resident size and at how much the allocator holds free; when it holds over [`KEEP_FREE`] and,
//! since the last release, the process has grown by more than that or what it holds free has
//! moved by more than that, the free pages go back to the system (`protomesh_memory`, the
//! workspace's one crate that calls C). The allocator's free figure alone is no guide (released
//! chunks still count as free), and an idle process's small allocations (health checks, scrapes)
//! move neither figure by a MiB: so an idle process is left alone, and after load the memory is
//! back within one period — also when the last release came during the load, at its peak. Under
//! steady load it releases every period what the load freed since (a trim of a heap of a few
//! MiB). Elsewhere than glibc the task ends at once.

use std::time::Duration;

/// How often the allocator is asked what it holds.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Free memory the allocator keeps without giving it back, and growth of the process that is
/// not worth a release: what the next calls reuse at once.
const KEEP_FREE: usize = 1 << 20;

/// Gives the allocator's free memory back to the system after the process grew or freed much
/// (see the [module](self)); runs until dropped.
pub async fn release_freed_memory() {
    if protomesh_memory::held_free_bytes().is_none() {
        return;
    }
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = LastRelease::default();
    loop {
        ticks.tick().await;
        let Some(held) = protomesh_memory::held_free_bytes() else {
            return;
        };
        let resident = resident_bytes();
        if last.calls_for_release(held, resident) {
            let gave_back = protomesh_memory::release_free_memory();
            last = LastRelease {
                resident: resident_bytes(),
                held: protomesh_memory::held_free_bytes(),
            };
            tracing::debug!(held, gave_back, ?resident, after = ?last.resident, "freed memory given back to the system");
        } else {
            last.settle(resident);
        }
    }
}

/// What the process looked like right after the last release (nothing before the first).
#[derive(Debug, Default, Clone, Copy)]
struct LastRelease {
    /// Its resident size (or the lowest seen since).
    resident: Option<usize>,
    /// What the allocator held free (released pages still count as free).
    held: Option<usize>,
}

impl LastRelease {
    /// Whether the allocator, holding `held` bytes free with the process at `resident`, should
    /// give them back: when it holds over [`KEEP_FREE`] and, since the last release, the process
    /// grew by more than that (it took memory that its callers may since have freed) or what is
    /// held free moved by more than that (a burst's buffers freed after a release made during the
    /// burst, when the process no longer grows).
    fn calls_for_release(&self, held: usize, resident: Option<usize>) -> bool {
        let grew = match (resident, self.resident) {
            (Some(now), Some(then)) => now > then + KEEP_FREE,
            _ => true,
        };
        let freed_or_took = self.held.is_none_or(|then| held.abs_diff(then) > KEEP_FREE);
        held > KEEP_FREE && (grew || freed_or_took)
    }

    /// Keeps the lowest resident size seen since the last release, the base growth counts from.
    fn settle(&mut self, resident: Option<usize>) {
        if let (Some(now), Some(then)) = (resident, self.resident) {
            self.resident = Some(now.min(then));
        }
    }
}

/// The process's resident size (`/proc/self/statm`), where the system tells it.
fn resident_bytes() -> Option<usize> {
    const PAGE: usize = 4096;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn an_idle_process_is_left_alone() {
        let last = LastRelease {
            resident: Some(12 * MIB),
            held: Some(2 * MIB),
        };
        // Health checks and scrapes: a few KiB either way.
        assert!(!last.calls_for_release(2 * MIB + 40_000, Some(12 * MIB + 40_000)));
        assert!(!last.calls_for_release(2 * MIB - 40_000, Some(12 * MIB)));
        // Little held free: nothing worth a release, whatever happened.
        assert!(!last.calls_for_release(MIB / 2, Some(30 * MIB)));
    }

    #[test]
    fn the_first_check_and_growth_call_for_a_release() {
        assert!(LastRelease::default().calls_for_release(2 * MIB, Some(12 * MIB)));
        let last = LastRelease {
            resident: Some(12 * MIB),
            held: Some(2 * MIB),
        };
        assert!(last.calls_for_release(2 * MIB, Some(14 * MIB)));
    }

    #[test]
    fn a_burst_freed_after_a_release_at_its_peak_is_given_back() {
        // Released during the burst, at its peak: 17 MiB resident, little free.
        let mut last = LastRelease {
            resident: Some(17 * MIB),
            held: Some(MIB + MIB / 2),
        };
        // The burst ends: its buffers are freed, the process does not grow.
        last.settle(Some(17 * MIB));
        assert!(last.calls_for_release(6 * MIB, Some(17 * MIB)));
    }

    #[test]
    fn the_base_of_growth_is_the_lowest_size_since_the_release() {
        let mut last = LastRelease {
            resident: Some(16 * MIB),
            held: Some(2 * MIB),
        };
        last.settle(Some(12 * MIB));
        last.settle(Some(13 * MIB));
        assert_eq!(last.resident, Some(12 * MIB));
        assert!(last.calls_for_release(2 * MIB, Some(13 * MIB + MIB / 2)));
    }
}
