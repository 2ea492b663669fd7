//! What the retry layer and the balancer share about the attempts of one call (a request
//! extension, set by [`super::retry::RetryLayer`] on calls it may retry): which endpoints the
//! call already tried, so that an attempt with a timeout, or any attempt after one failed, goes
//! to another one (the last attempt after slow ones, which has all the time left, goes where the
//! balancer thinks best: the endpoints tried may only have been slow, and an untried one may be
//! the hung one; a caller's zone and the local datacenter are left after two attempts there
//! whatever the attempt), whether the attempt in flight is the call's last chance (a retry with
//! no attempt timeout: the balancer sends it to an endpoint whose last call did not fail when
//! there is one),
//! and whether the attempt in flight was
//! abandoned at its attempt timeout, so that the balancer counts it as that endpoint's failure.
//! The balancer also notes whether the attempt in flight had another endpoint to go to: one that
//! had none is never abandoned (sent again to the same busy endpoint it would only add load, and
//! each abandonment resets a stream the server may still be accepting).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Endpoints remembered per call (more attempts than this forget the earliest).
const REMEMBERED: usize = 4;

/// The attempts of one call; clones share them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempts(Arc<Log>);

#[derive(Debug, Default)]
struct Log {
    /// Identities of the endpoints tried ([`Attempts::tried`]), in a ring.
    tried: [AtomicUsize; REMEMBERED],
    count: AtomicUsize,
    abandoned: AtomicBool,
    /// The attempt in flight prefers endpoints not tried yet.
    prefer_untried: AtomicBool,
    /// The attempt in flight was picked among more than one endpoint.
    had_choice: AtomicBool,
    /// The answer is read whole within the attempt (a unary method).
    reads_whole: AtomicBool,
    /// The attempt in flight is the call's last chance: a retry with no attempt timeout.
    last_chance: AtomicBool,
}

impl Attempts {
    /// Notes that an attempt goes to the endpoint `id` (non-zero, e.g. its address in memory).
    pub(crate) fn tried(&self, id: usize) {
        let n = self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.tried[n % REMEMBERED].store(id, Ordering::Relaxed);
    }

    /// Sets whether the next attempt prefers endpoints not tried yet.
    pub(crate) fn set_prefer_untried(&self, prefer: bool) {
        self.0.prefer_untried.store(prefer, Ordering::Relaxed);
    }

    /// Whether the attempt in flight should avoid the endpoint `id`: it prefers untried
    /// endpoints and an attempt of this call went to `id`.
    pub(crate) fn avoids(&self, id: usize) -> bool {
        self.0.prefer_untried.load(Ordering::Relaxed) && self.has_tried(id)
    }

    /// Whether an attempt of this call went to the endpoint `id`.
    pub(crate) fn has_tried(&self, id: usize) -> bool {
        let n = self.0.count.load(Ordering::Relaxed).min(REMEMBERED);
        self.0.tried[..n]
            .iter()
            .any(|t| t.load(Ordering::Relaxed) == id)
    }

    /// Sets whether the next attempt is the call's last chance (a retry with no attempt timeout:
    /// it waits for its answer with all the time left).
    pub(crate) fn set_last_chance(&self, last: bool) {
        self.0.last_chance.store(last, Ordering::Relaxed);
    }

    /// Whether the attempt in flight is the call's last chance.
    pub(crate) fn is_last_chance(&self) -> bool {
        self.0.last_chance.load(Ordering::Relaxed)
    }

    /// Sets whether the attempts read their answer whole (see [`super::whole`]).
    pub(crate) fn set_reads_whole(&self, reads_whole: bool) {
        self.0.reads_whole.store(reads_whole, Ordering::Relaxed);
    }

    /// Whether the attempts read their answer whole.
    pub(crate) fn reads_whole(&self) -> bool {
        self.0.reads_whole.load(Ordering::Relaxed)
    }

    /// Notes whether the attempt in flight was picked among more than one endpoint.
    pub(crate) fn set_had_choice(&self, had_choice: bool) {
        self.0.had_choice.store(had_choice, Ordering::Relaxed);
    }

    /// Whether a retry of the attempt in flight could go to another endpoint (false until the
    /// balancer has picked one for it).
    pub(crate) fn has_other_endpoint(&self) -> bool {
        self.0.had_choice.load(Ordering::Relaxed)
    }

    /// Marks the attempt in flight as abandoned at its timeout (just before it is dropped).
    pub(crate) fn abandon(&self) {
        self.0.abandoned.store(true, Ordering::Relaxed);
    }

    /// Whether the attempt in flight was abandoned; clears the mark for the next attempt.
    pub(crate) fn take_abandoned(&self) -> bool {
        self.0.abandoned.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_endpoints_tried_and_one_abandonment_at_a_time() {
        let attempts = Attempts::default();
        assert!(!attempts.has_tried(7));
        attempts.tried(7);
        assert!(attempts.has_tried(7) && !attempts.has_tried(8));
        for id in 10..14 {
            attempts.tried(id);
        }
        assert!(!attempts.has_tried(7), "forgotten after {REMEMBERED} more");
        assert!(attempts.has_tried(13));
        assert!(
            !attempts.avoids(13),
            "only when asked to prefer untried ones"
        );
        attempts.set_prefer_untried(true);
        assert!(attempts.avoids(13) && !attempts.avoids(99));
        let clone = attempts.clone();
        clone.abandon();
        assert!(attempts.take_abandoned());
        assert!(!attempts.take_abandoned(), "cleared once read");
        assert!(!attempts.has_other_endpoint(), "not before a pick");
        attempts.set_had_choice(true);
        assert!(clone.has_other_endpoint());
    }
}
