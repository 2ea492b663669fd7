//! Zone-aware balancing, the part the balancer ([`super::Balancer`]) asks before each pick: which
//! endpoints may this call go to ([`ZonePool`])? A caller stays in its zone while a same-zone
//! endpoint is left to try (not ejected, not yet tried by this call, and the call tried fewer than
//! [`super::options::ATTEMPTS_PER_TIER`] there) and the zone is not overloaded ([`ZonePolicy`]'s
//! hysteresis on the average calls in flight per same-zone endpoint, as of the last call). With
//! none left to try, the call goes to the other zones; overloaded, to every zone (the balancing
//! policy chooses among them). What happened is counted: calls sent to the same zone and to
//! others, and calls that left the zone by reason, shown by `mesh status --client` and the
//! `mesh_client_zone_*` metrics.
//!
//! An instance's zone is its Consul meta [`ZONE_META`] (the `--zone` flag of the instance).
//! A caller without a zone balances over every endpoint, as if zones did not exist.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::options::ZonePolicy;

/// The Consul meta key holding an instance's zone.
pub const ZONE_META: &str = "zone";

/// The endpoints a call may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZonePool {
    /// The caller's zone's.
    SameZone,
    /// Those of other zones (the same zone has none left to try).
    OtherZones,
    /// All of them.
    Every,
}

/// Why a call of a caller in a zone may leave the same-zone endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spill {
    /// No same-zone endpoint was left to try: all ejected, or all tried by this call already.
    Unavailable,
    /// The same-zone endpoints carry more calls in flight than the policy allows.
    Overloaded,
}

/// What one caller zone decided for one target service; shared by the balancer's clones.
#[derive(Debug)]
pub(crate) struct ZoneBalance {
    /// The caller's zone.
    zone: String,
    policy: ZonePolicy,
    /// True while the same-zone endpoints are overloaded (between `spill_above` and
    /// `return_below`).
    overloaded: AtomicBool,
    same_zone_calls: AtomicU64,
    other_zone_calls: AtomicU64,
    spilled_unavailable: AtomicU64,
    spilled_overloaded: AtomicU64,
}

/// The same-zone endpoints a pick sees.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SameZone {
    /// Same-zone endpoints in the balancer, in rotation or not.
    pub(crate) known: usize,
    /// Same-zone endpoints not ejected that this call has not tried.
    pub(crate) untried: usize,
    /// Same-zone endpoints this call tried.
    pub(crate) tried: usize,
    /// Same-zone endpoints not ejected.
    pub(crate) in_rotation: usize,
    /// Calls in flight on the same-zone endpoints not ejected.
    pub(crate) in_flight: usize,
}

impl ZoneBalance {
    /// The zone state of a caller in `zone` (a `return_below` above `spill_above` is taken as
    /// `spill_above`).
    pub(crate) fn new(zone: &str, policy: ZonePolicy) -> Self {
        Self {
            zone: zone.to_owned(),
            policy: ZonePolicy {
                return_below: policy.return_below.min(policy.spill_above),
                ..policy
            },
            overloaded: AtomicBool::new(false),
            same_zone_calls: AtomicU64::new(0),
            other_zone_calls: AtomicU64::new(0),
            spilled_unavailable: AtomicU64::new(0),
            spilled_overloaded: AtomicU64::new(0),
        }
    }

    /// Whether an instance with this meta `zone` is in the caller's zone.
    pub(crate) fn is_same_zone(&self, instance_zone: Option<&str>) -> bool {
        instance_zone == Some(self.zone.as_str())
    }

    /// The endpoints this call may go to, and why it may leave the zone (a zone with no
    /// endpoint at all is no reason: there was nothing to stay with).
    pub(crate) fn pool(&self, same_zone: SameZone) -> (ZonePool, Option<Spill>) {
        if same_zone.known == 0 {
            return (ZonePool::Every, None);
        }
        match self.spill(same_zone) {
            None => (ZonePool::SameZone, None),
            Some(Spill::Unavailable) => (ZonePool::OtherZones, Some(Spill::Unavailable)),
            Some(Spill::Overloaded) => (ZonePool::Every, Some(Spill::Overloaded)),
        }
    }

    /// Why a call would leave the zone now, if it would.
    fn spill(&self, same_zone: SameZone) -> Option<Spill> {
        if same_zone.untried == 0 || same_zone.tried >= super::options::ATTEMPTS_PER_TIER {
            return Some(Spill::Unavailable);
        }
        let load = same_zone.in_flight as f64 / same_zone.in_rotation.max(1) as f64;
        let was = self.overloaded.load(Ordering::Relaxed);
        let overloaded = if was {
            load >= self.policy.return_below
        } else {
            load > self.policy.spill_above
        };
        if overloaded != was
            && self
                .overloaded
                .compare_exchange(was, overloaded, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if overloaded {
                tracing::info!(zone = %self.zone, in_flight_per_endpoint = load, "same-zone endpoints overloaded: calls spill to other zones");
            } else {
                tracing::info!(zone = %self.zone, in_flight_per_endpoint = load, "same-zone endpoints no longer overloaded: calls stay in the zone");
            }
        }
        overloaded.then_some(Spill::Overloaded)
    }

    /// Counts a call sent to an endpoint of the caller's zone (`same`) or of another, and, when
    /// it left the zone, why it could (`spill`, from [`ZoneBalance::pool`]).
    pub(crate) fn count(&self, same: bool, spill: Option<Spill>) {
        if same {
            self.same_zone_calls.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.other_zone_calls.fetch_add(1, Ordering::Relaxed);
        match spill {
            Some(Spill::Unavailable) => &self.spilled_unavailable,
            Some(Spill::Overloaded) => &self.spilled_overloaded,
            None => return,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn status(&self) -> ZoneStatus {
        ZoneStatus {
            zone: self.zone.clone(),
            same_zone_calls: self.same_zone_calls.load(Ordering::Relaxed),
            other_zone_calls: self.other_zone_calls.load(Ordering::Relaxed),
            spilled_unavailable: self.spilled_unavailable.load(Ordering::Relaxed),
            spilled_overloaded: self.spilled_overloaded.load(Ordering::Relaxed),
            overloaded: self.overloaded.load(Ordering::Relaxed),
        }
    }
}

/// Where a caller in a zone sent its calls to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneStatus {
    /// The caller's zone.
    pub zone: String,
    /// Calls (attempts) sent to endpoints in the caller's zone.
    pub same_zone_calls: u64,
    /// Calls (attempts) sent to endpoints in other zones (or with no zone).
    pub other_zone_calls: u64,
    /// Calls sent to another zone because no same-zone endpoint was left to try.
    pub spilled_unavailable: u64,
    /// Calls sent to another zone because the same-zone endpoints were overloaded.
    pub spilled_overloaded: u64,
    /// Whether the same-zone endpoints were overloaded at the last call.
    pub overloaded: bool,
}

impl ZoneStatus {
    /// The share of calls that stayed in the caller's zone (1 before any call).
    pub fn same_zone_share(&self) -> f64 {
        let all = self.same_zone_calls + self.other_zone_calls;
        if all == 0 {
            1.0
        } else {
            self.same_zone_calls as f64 / all as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_zone(untried: usize, in_rotation: usize, in_flight: usize) -> SameZone {
        SameZone {
            known: 2,
            untried,
            tried: 0,
            in_rotation,
            in_flight,
        }
    }

    #[test]
    fn a_call_stays_while_an_untried_endpoint_is_not_overloaded_with_hysteresis() {
        let zone = ZoneBalance::new(
            "a",
            ZonePolicy {
                spill_above: 4.0,
                return_below: 2.0,
            },
        );
        let pool = |untried, in_rotation, in_flight| {
            let (pool, spill) = zone.pool(same_zone(untried, in_rotation, in_flight));
            // Each call goes where its pool allowed: the same zone, or another.
            zone.count(pool == ZonePool::SameZone, spill);
            pool
        };
        assert_eq!(
            pool(2, 2, 8),
            ZonePool::SameZone,
            "4 per endpoint is not above 4"
        );
        assert_eq!(pool(2, 2, 9), ZonePool::Every, "above: spill");
        assert!(zone.status().overloaded);
        assert_eq!(pool(2, 2, 4), ZonePool::Every, "2 each: still overloaded");
        assert_eq!(pool(2, 2, 3), ZonePool::SameZone, "below 2 each: back");
        assert!(!zone.status().overloaded);

        assert_eq!(pool(0, 2, 0), ZonePool::OtherZones, "every one tried");
        assert_eq!(pool(0, 0, 0), ZonePool::OtherZones, "none in rotation");
        let tried_two = SameZone {
            tried: 2,
            ..same_zone(1, 3, 0)
        };
        assert_eq!(
            zone.pool(tried_two).0,
            ZonePool::OtherZones,
            "two attempts in the zone"
        );
        assert_eq!(
            zone.pool(SameZone::default()),
            (ZonePool::Every, None),
            "none known"
        );
        // A call that could leave for load but stayed (the policy chose the zone) is no spill.
        zone.count(true, Some(Spill::Overloaded));

        let status = zone.status();
        assert_eq!(status.spilled_overloaded, 2);
        assert_eq!(
            status.spilled_unavailable, 2,
            "a zone with no endpoint is no spill"
        );
    }

    #[test]
    fn the_share_counts_calls_by_zone() {
        let zone = ZoneBalance::new("a", ZonePolicy::default());
        assert!(zone.is_same_zone(Some("a")));
        assert!(!zone.is_same_zone(Some("b")) && !zone.is_same_zone(None));
        assert_eq!(zone.status().same_zone_share(), 1.0);
        for _ in 0..3 {
            zone.count(true, None);
        }
        zone.count(false, None);
        assert_eq!(zone.status().same_zone_share(), 0.75);
        assert_eq!(zone.status().zone, "a");
    }
}
