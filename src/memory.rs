//! Memory freed after a burst of load, given back to the system: [`release_freed_memory`] runs
//! beside every server ([`crate::service::Service::run`] starts it, and the gateway's main).
//!
//! glibc's allocator keeps what a process frees, and returns it on its own only from the top of
//! each heap: after a burst of calls a server stayed several MiB above its idle size for as long
//! as it ran (BENCHMARKS.md, issue 14). Every [`CHECK_EVERY`] the task looks at the process's
//! resident size and at how much the allocator holds free; when it holds over [`KEEP_FREE`] and
//! the process has grown by more than that since the last release, the free pages go back to
//! the system (`protomesh_memory`, the workspace's one crate that calls C). The allocator's free
//! figure alone is no guide (released chunks still count as free), and an idle process's small
//! allocations (health checks, scrapes) do not make it grow: so an idle process is left alone,
//! and after load the memory is back within one period. Elsewhere than glibc the task ends at
//! once.

use std::time::Duration;

/// How often the allocator is asked what it holds.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Free memory the allocator keeps without giving it back, and growth of the process that is
/// not worth a release: what the next calls reuse at once.
const KEEP_FREE: usize = 1 << 20;

/// Gives the allocator's free memory back to the system after the process grew (see the
/// [module](self)); runs until dropped.
pub async fn release_freed_memory() {
    if protomesh_memory::held_free_bytes().is_none() {
        return;
    }
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The resident size right after the last release (or the lowest seen since).
    let mut baseline: Option<usize> = None;
    loop {
        ticks.tick().await;
        let Some(held) = protomesh_memory::held_free_bytes() else {
            return;
        };
        let resident = resident_bytes();
        let grew = match (resident, baseline) {
            (Some(now), Some(then)) => now > then + KEEP_FREE,
            _ => true,
        };
        if held > KEEP_FREE && grew {
            let gave_back = protomesh_memory::release_free_memory();
            baseline = resident_bytes();
            tracing::debug!(held, gave_back, ?resident, after = ?baseline, "freed memory given back to the system");
        } else if let (Some(now), Some(then)) = (resident, baseline) {
            baseline = Some(now.min(then));
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
