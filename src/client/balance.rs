//! Client-side load balancing over the instances a discovery source ([`super::Discover`])
//! reports: power of two choices over
//! peak-EWMA latency × (pending + 1) by default, round robin as an option, with passive outlier
//! ejection (an endpoint failing N times in a row — connection errors, `UNAVAILABLE`, or attempts
//! abandoned at their attempt timeout — sits out a growing backoff, and its connections are
//! dropped; calls sent before an ejection do not count after it; back, the endpoint is on
//! probation, ejected again at its first failure before a success) and a panic threshold (when
//! ejection would leave too few endpoints, balance over all of them). A retry goes to an endpoint
//! the call has not tried yet when there is one, and a call's last chance (a retry with no
//! attempt timeout) to one whose last call did not fail when there is one. A caller
//! in a zone picks among its own zone's endpoints while one is left to try and they are not
//! overloaded, and among all of them otherwise (see [`super::zone`]). Endpoints of a failover
//! datacenter (see [`super::discovery`]) are picked only when no local one is left to try.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use protomesh_consul::{ServiceInstance, WatchHandle, WatchState};
use rand::Rng;
use tokio::time::Instant;
use tonic::transport::Channel;
use tower::Service;

use super::attempt::Attempts;
use super::deadline::{Deadline, DEADLINE_FAILURE_FLOOR};
use super::latency::PeakEwma;
pub use super::options::{BalancePolicy, ConnectionPolicy, OutlierPolicy};
use super::options::{BoxError, ChannelOptions, ATTEMPTS_PER_TIER};
use super::zone::{SameZone, ZoneBalance, ZonePool, ZoneStatus, ZONE_META};

/// Between TCP keep-alive probes of an idle connection.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered TCP keep-alive probes before the kernel drops the connection.
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// Latency assumed for an endpoint before it answered anything.
const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// What is known about one endpoint's calls.
#[derive(Debug)]
pub struct EndpointStats {
    pending: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Peak-EWMA latency (see [`PeakEwma`]).
    latency: PeakEwma,
    created: Instant,
    /// End of the current ejection in nanoseconds since `created` (0: never ejected).
    ejected_until: AtomicU64,
    /// Start of the last ejection in nanoseconds since `created` (0: never ejected).
    ejected_at: AtomicU64,
}

impl EndpointStats {
    fn new() -> Self {
        Self {
            pending: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            latency: PeakEwma::new(DEFAULT_RTT),
            created: Instant::now(),
            ejected_until: AtomicU64::new(0),
            ejected_at: AtomicU64::new(0),
        }
    }

    /// Peak-EWMA latency in nanoseconds.
    fn ewma_nanos(&self) -> f64 {
        self.latency.nanos()
    }

    /// The balancing cost: latency × (pending + 1).
    fn load(&self) -> f64 {
        self.ewma_nanos() * (self.pending.load(Ordering::Relaxed) as f64 + 1.0)
    }

    /// Folds one latency sample in.
    fn observe_rtt(&self, rtt: Duration) {
        self.latency.observe(rtt);
    }

    /// Nanoseconds from `created` to `at`.
    fn offset(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.created).as_nanos()).unwrap_or(u64::MAX)
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > self.offset(now)
    }

    /// Time left in the current ejection, if any.
    fn ejected_for(&self, now: Instant) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until
            .checked_sub(self.offset(now))
            .filter(|left| *left > 0)
            .map(Duration::from_nanos)
    }

    /// Whether its last call failed (no success since): one back from an ejection is, until it
    /// answers a call.
    fn is_failing(&self) -> bool {
        self.consecutive_failures.load(Ordering::Relaxed) > 0
    }

    /// Records the outcome of a call sent at `started`; returns the ejection time when this
    /// failure ejects it. A failure of a call sent before the endpoint's last ejection began
    /// counts for nothing (it was one of the run that ejected it, or raced with it); once an
    /// ejection ends the endpoint is on probation: its next failure before a success ejects it
    /// again.
    fn record(&self, ok: bool, started: Instant, policy: &OutlierPolicy) -> Option<Duration> {
        if ok {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return None;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.offset(started) < self.ejected_at.load(Ordering::Relaxed) {
            return None;
        }
        let in_a_row = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row < policy.consecutive_failures {
            return None;
        }
        // One ejection per run of failures, however many of them are recorded at once.
        let probation = policy.consecutive_failures.max(2) - 1;
        if self
            .consecutive_failures
            .compare_exchange(in_a_row, probation, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let now = Instant::now();
        self.ejected_at
            .store(self.offset(now).max(1), Ordering::Relaxed);
        let times = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let ejection = policy
            .base_ejection
            .saturating_mul(1u32 << times)
            .min(policy.max_ejection);
        self.ejected_until
            .store(self.offset(now + ejection), Ordering::Relaxed);
        Some(ejection)
    }
}

/// One HTTP/2 connection to an endpoint and its calls in flight.
#[derive(Debug)]
struct Connection {
    channel: Channel,
    pending: AtomicUsize,
}

/// One instance of the target service and its connections (opened lazily, one at first, more
/// while every open one carries [`ConnectionPolicy::streams_per_connection`] calls).
#[derive(Debug)]
pub struct Endpoint {
    instance: ServiceInstance,
    target: tonic::transport::Endpoint,
    connections: RwLock<Vec<Arc<Connection>>>,
    stats: EndpointStats,
    /// In the caller's zone (false for every endpoint when the caller has no zone).
    same_zone: bool,
    /// In a failover datacenter: called only when no local endpoint is left to try.
    failover: bool,
}

impl Endpoint {
    /// The least busy connection, after opening another one if all are at the policy's limit.
    fn connection(&self, policy: &ConnectionPolicy) -> Arc<Connection> {
        let least_busy = |connections: &[Arc<Connection>]| {
            connections
                .iter()
                .min_by_key(|c| c.pending.load(Ordering::Relaxed))
                .cloned()
        };
        let full = |c: &Arc<Connection>| {
            c.pending.load(Ordering::Relaxed) >= policy.streams_per_connection.max(1)
        };
        if let Ok(connections) = self.connections.read() {
            if let Some(connection) = least_busy(&connections) {
                if !full(&connection) || connections.len() >= policy.max_connections.max(1) {
                    return connection;
                }
            }
        }
        let mut connections = match self.connections.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Another call may have opened one meanwhile.
        if let Some(connection) = least_busy(&connections) {
            if !full(&connection) || connections.len() >= policy.max_connections.max(1) {
                return connection;
            }
        }
        let connection = Arc::new(Connection {
            channel: self.target.connect_lazy(),
            pending: AtomicUsize::new(0),
        });
        connections.push(Arc::clone(&connection));
        tracing::debug!(instance = %self.instance.id, connections = connections.len(), "opened another connection");
        connection
    }

    /// Drops the endpoint's connections (calls in flight keep theirs until they end) and starts
    /// over with one lazy connection: after an ejection, a peer that went silent without a reset
    /// is not trusted with the old connections again.
    fn reset_connections(&self) {
        let fresh = Arc::new(Connection {
            channel: self.target.connect_lazy(),
            pending: AtomicUsize::new(0),
        });
        match self.connections.write() {
            Ok(mut connections) => *connections = vec![fresh],
            Err(poisoned) => *poisoned.into_inner() = vec![fresh],
        }
    }

    /// An identity for [`Attempts`]: the endpoint's address in memory (never zero).
    fn identity(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    fn connection_count(&self) -> usize {
        self.connections.read().map(|c| c.len()).unwrap_or(0)
    }
}

/// A point-in-time view of an endpoint, for `mesh status` and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    /// Consul instance ID.
    pub id: String,
    /// `host:port`.
    pub address: String,
    /// The instance's zone (its Consul meta `zone`), if it has one.
    pub zone: Option<String>,
    /// The failover datacenter the instance is in (`None`: the local one).
    pub datacenter: Option<String>,
    /// Calls in flight.
    pub pending: usize,
    /// HTTP/2 connections opened to it.
    pub connections: usize,
    /// Calls sent.
    pub requests: u64,
    /// Calls that failed with a connection error or `UNAVAILABLE`.
    pub failures: u64,
    /// Peak-EWMA latency.
    pub ewma: Duration,
    /// Time left out of rotation, if ejected.
    pub ejected_for: Option<Duration>,
}

/// The balancer of one target service: endpoints follow the discovery watch; clones share state.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    service: String,
    watch: WatchHandle,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    policy: BalancePolicy,
    outliers: OutlierPolicy,
    connections: ConnectionPolicy,
    next: AtomicUsize,
    connect_timeout: Duration,
    empty_set_grace: Duration,
    http2_keep_alive: Option<Duration>,
    http2_keep_alive_timeout: Duration,
    tcp_keepalive: Option<Duration>,
    /// Mutual TLS of the endpoints' connections; plaintext when `None`.
    tls: Option<crate::tls::MeshTls>,
    /// Since when Consul reports no local instance while the local endpoints are kept; also the
    /// lock that makes `apply` one at a time.
    empty_since: Mutex<Option<Instant>>,
    /// True while `empty_since` is set (read on every call without the lock).
    keeping_empty: AtomicBool,
    /// The caller's zone and what it decided, when the caller has one.
    zone: Option<ZoneBalance>,
}

impl Balancer {
    /// A balancer for `watch`'s service; a background task keeps the endpoints in step with it
    /// and ends when the last clone of the balancer is dropped.
    pub fn new(watch: WatchHandle, options: &ChannelOptions) -> Self {
        Self::located(watch, options, None, None)
    }

    /// Like [`Balancer::new`], connecting to the endpoints with mutual TLS when `tls` is given,
    /// and preferring the endpoints of the caller's `zone` when it is given (see
    /// [`super::zone`]).
    pub fn located(
        watch: WatchHandle,
        options: &ChannelOptions,
        tls: Option<&crate::tls::MeshTls>,
        zone: Option<&str>,
    ) -> Self {
        let shared = Arc::new(Shared {
            service: watch.service().to_owned(),
            watch: watch.clone(),
            endpoints: RwLock::new(Arc::new(Vec::new())),
            policy: options.balance,
            outliers: options.outliers,
            connections: options.connections,
            next: AtomicUsize::new(0),
            connect_timeout: options.connect_timeout,
            empty_set_grace: options.empty_set_grace,
            http2_keep_alive: options.http2_keep_alive,
            http2_keep_alive_timeout: options.http2_keep_alive_timeout,
            tcp_keepalive: options.tcp_keepalive,
            tls: tls.cloned(),
            empty_since: Mutex::new(None),
            keeping_empty: AtomicBool::new(false),
            zone: zone
                .filter(|z| !z.is_empty())
                .map(|z| ZoneBalance::new(z, options.zones)),
        });
        shared.apply();
        let weak = Arc::downgrade(&shared);
        let mut updates = watch.subscribe();
        tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                let Some(shared) = weak.upgrade() else { return };
                updates.borrow_and_update();
                shared.apply();
            }
        });
        Self { shared }
    }

    /// The target service's name.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The endpoints and their stats now.
    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        let now = Instant::now();
        self.shared
            .current()
            .iter()
            .map(|e| EndpointSnapshot {
                id: e.instance.id.clone(),
                address: e.instance.socket_addr_text(),
                zone: e.instance.meta.get(ZONE_META).cloned(),
                datacenter: e.instance.datacenter.clone(),
                pending: e.stats.pending.load(Ordering::Relaxed),
                connections: e.connection_count(),
                requests: e.stats.requests.load(Ordering::Relaxed),
                failures: e.stats.failures.load(Ordering::Relaxed),
                ewma: Duration::from_nanos(e.stats.ewma_nanos() as u64),
                ejected_for: e.stats.ejected_for(now),
            })
            .collect()
    }

    /// The failover datacenter calls go to now: the one of the failover endpoints when no local
    /// endpoint is in rotation (`None` while calls stay local, or have nowhere to go).
    pub fn failed_over_to(&self) -> Option<String> {
        let now = Instant::now();
        let endpoints = self.shared.current();
        if endpoints
            .iter()
            .any(|e| !e.failover && !e.stats.is_ejected(now))
        {
            return None;
        }
        endpoints
            .iter()
            .find(|e| e.failover)
            .and_then(|e| e.instance.datacenter.clone())
    }

    /// Where this caller's calls went by zone, when the caller has a zone.
    pub fn zone_status(&self) -> Option<ZoneStatus> {
        self.shared.zone.as_ref().map(ZoneBalance::status)
    }

    /// The discovery states behind this balancer, from the next change on.
    pub fn instance_updates(&self) -> tokio::sync::watch::Receiver<WatchState> {
        self.shared.watch.subscribe()
    }

    /// The discovery state behind this balancer.
    pub fn discovery(&self) -> WatchState {
        self.shared.watch.current()
    }
}

impl Shared {
    /// Records the outcome of a call sent to `endpoint` at `started`; an ejection also drops its
    /// connections.
    fn record(&self, endpoint: &Endpoint, ok: bool, started: Instant, why: &'static str) {
        if let Some(ejection) = endpoint.stats.record(ok, started, &self.outliers) {
            tracing::warn!(service = %self.service, instance = %endpoint.instance.id, ?ejection, last_failure = why, "endpoint ejected after consecutive failures");
            endpoint.reset_connections();
            // A local endpoint kept only for the grace goes once ejected: it is not given a
            // second chance when its ejection ends.
            if self.keeping_empty.load(Ordering::Relaxed) {
                self.apply();
            }
        }
    }

    fn current(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints
            .read()
            .map(|e| Arc::clone(&e))
            .unwrap_or_default()
    }

    /// Keeps endpoints (and their connections and stats) whose instance is unchanged, adds new
    /// ones, drops the ones that left.
    ///
    /// An answer with no local instance while local endpoints are known is not trusted at once: a
    /// Consul agent that just restarted answers empty until the services register again (within
    /// seconds). The known local endpoints stay for [`ChannelOptions::empty_set_grace`] (beside a
    /// failover datacenter's, if any) unless ejected; if they are really gone, calls to them fail
    /// over and eject them, which drops them, just as "no instance" would have.
    fn apply(&self) {
        // One apply at a time (the update task, a first call's catch-up and the grace check may
        // race), each on the watch's newest state read under the lock: an older snapshot never
        // overwrites a newer one, and no endpoint built by one apply is replaced by another's.
        let mut empty_since = match self.empty_since.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let state = self.watch.current();
        let old = self.current();
        // No local instance (with or without a failover datacenter's) while local endpoints are
        // known: the local ones are kept for the grace period.
        let mut keep_local = false;
        if !state.instances.values().any(|i| i.datacenter.is_none())
            && old.iter().any(|e| !e.failover)
        {
            let since = *empty_since.get_or_insert_with(|| {
                tracing::warn!(service = %self.service, grace = ?self.empty_set_grace, "Consul reports no local instance; keeping the known ones for a grace period");
                Instant::now()
            });
            keep_local = since.elapsed() < self.empty_set_grace;
        }
        if !keep_local {
            *empty_since = None;
        }
        self.keeping_empty.store(keep_local, Ordering::Relaxed);

        let by_id: HashMap<&str, &Arc<Endpoint>> =
            old.iter().map(|e| (e.instance.id.as_str(), e)).collect();
        let mut next = Vec::with_capacity(state.instances.len());
        for instance in state.instances.values() {
            match by_id.get(instance.id.as_str()) {
                Some(existing) if existing.instance == *instance => next.push(Arc::clone(existing)),
                _ => match self.connect(instance) {
                    Ok(endpoint) => next.push(Arc::new(endpoint)),
                    Err(err) => {
                        tracing::warn!(service = %self.service, instance = %instance.id, error = %err, "cannot set up a connection to the endpoint")
                    }
                },
            }
        }
        if keep_local {
            let now = Instant::now();
            next.extend(
                old.iter()
                    .filter(|e| !e.failover && !e.stats.is_ejected(now))
                    .cloned(),
            );
        }
        // Local endpoints first, a failover datacenter's last (`pick` relies on it).
        next.sort_by_key(|e| e.failover);
        tracing::debug!(service = %self.service, endpoints = next.len(), "endpoints updated");
        if let Ok(mut endpoints) = self.endpoints.write() {
            *endpoints = Arc::new(next);
        }
    }

    fn connect(&self, instance: &ServiceInstance) -> Result<Endpoint, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut target = tonic::transport::Endpoint::from_shared(format!(
            "{scheme}://{}",
            instance.socket_addr_text()
        ))?
        .connect_timeout(self.connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(self.tcp_keepalive)
        .tcp_keepalive_interval(self.tcp_keepalive.map(|_| TCP_KEEPALIVE_INTERVAL))
        .tcp_keepalive_retries(self.tcp_keepalive.map(|_| TCP_KEEPALIVE_RETRIES));
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            // The server name checked is the instance's address (an IP SAN) unless overridden.
            target = target.tls_config(tls.client_config())?;
        }
        if let Some(interval) = self.http2_keep_alive {
            target = target
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(self.http2_keep_alive_timeout)
                .keep_alive_while_idle(true);
        }
        let first = Arc::new(Connection {
            channel: target.connect_lazy(),
            pending: AtomicUsize::new(0),
        });
        // Zones are the local datacenter's: another datacenter's zone of the same name is not it.
        let same_zone = instance.datacenter.is_none()
            && self.zone.as_ref().is_some_and(|zone| {
                zone.is_same_zone(instance.meta.get(ZONE_META).map(String::as_str))
            });
        Ok(Endpoint {
            instance: instance.clone(),
            target,
            connections: RwLock::new(vec![first]),
            stats: EndpointStats::new(),
            same_zone,
            failover: instance.datacenter.is_some(),
        })
    }

    /// Picks an endpoint: among the local datacenter's while one is left to try, else among the
    /// failover datacenter's; in that tier, skipping ejected ones unless too few would be left,
    /// and, when there is a choice, ones this call already tried; a caller in a zone picks in the
    /// [`ZoneBalance::pool`] of zones (every zone when the other zones have no candidate).
    /// Allocates nothing: the candidates are the tier's endpoints in rotation (all of them under
    /// the panic threshold), filtered by zone.
    fn pick(&self, attempts: Option<&Attempts>) -> Option<Arc<Endpoint>> {
        let all = self.current();
        if all.is_empty() {
            return None;
        }
        let now = Instant::now();
        let tried = |e: &Arc<Endpoint>| attempts.is_some_and(|a| a.has_tried(e.identity()));
        // The failover datacenter's endpoints (last in the list) only when no local one is left
        // to try: every one ejected or tried, or this call tried enough of them already (with
        // zones, the other zones come first: those attempts count only for a caller whose zone
        // has no local endpoint).
        let tiered = all.last().is_some_and(|e| e.failover);
        let failover = tiered && {
            let (mut left, mut tried_here, mut zoned) = (0, 0, false);
            for e in all.iter().take_while(|e| !e.failover) {
                zoned |= e.same_zone;
                if tried(e) {
                    tried_here += 1;
                } else if !e.stats.is_ejected(now) {
                    left += 1;
                }
            }
            left == 0 || (!zoned && tried_here >= ATTEMPTS_PER_TIER)
        };
        let in_tier = |e: &Arc<Endpoint>| e.failover == failover;
        let (tier, in_rotation) =
            all.iter()
                .filter(|e| in_tier(e))
                .fold((0, 0), |(tier, in_rotation), e| {
                    (
                        tier + 1,
                        in_rotation + usize::from(!e.stats.is_ejected(now)),
                    )
                });
        // Under the panic threshold every endpoint of the tier is a candidate; never in the local
        // tier when a failover datacenter can take the calls.
        let enough = in_rotation > 0
            && ((tiered && !failover)
                || in_rotation as f64 >= (tier as f64 * self.outliers.min_healthy_share).ceil());
        let skip_ejected = enough && in_rotation < tier;
        let candidate =
            |e: &Arc<Endpoint>| in_tier(e) && (!skip_ejected || !e.stats.is_ejected(now));
        let (mut pool, spill) = match &self.zone {
            Some(zone) if !failover => zone.pool(same_zone(&all, now, attempts)),
            _ => (ZonePool::Every, None),
        };
        let in_pool = |e: &Arc<Endpoint>, pool: ZonePool| match pool {
            ZonePool::SameZone => e.same_zone,
            ZonePool::OtherZones => !e.same_zone,
            ZonePool::Every => true,
        };
        let count_in = |pool: ZonePool| {
            all.iter()
                .filter(|e| candidate(e) && in_pool(e, pool))
                .count()
        };
        let filtered = skip_ejected || tiered || pool != ZonePool::Every;
        let mut count = if filtered { count_in(pool) } else { all.len() };
        if count == 0 && pool == ZonePool::OtherZones {
            // Only the same zone has endpoints: they are all there is.
            pool = ZonePool::Every;
            count = count_in(pool);
        }
        if count == 0 {
            return None;
        }
        let eligible = |e: &&Arc<Endpoint>| candidate(e) && in_pool(e, pool);
        let nth = |n: usize| -> &Arc<Endpoint> {
            if filtered {
                all.iter().filter(eligible).nth(n).unwrap_or(&all[0])
            } else {
                &all[n]
            }
        };
        let tried = |e: &Arc<Endpoint>| attempts.is_some_and(|a| a.avoids(e.identity()));
        if let Some(attempts) = attempts {
            // A same-zone pick has the other zones' candidates to go to as well. The failover
            // datacenter does not count: a slow but living sole local endpoint is waited for,
            // not abandoned for another datacenter.
            let elsewhere = || pool == ZonePool::SameZone && count_in(ZonePool::OtherZones) > 0;
            attempts.set_had_choice(count > 1 || elsewhere());
        }
        let chosen = match (self.policy, count) {
            (_, 1) => nth(0),
            (BalancePolicy::RoundRobin, n) => {
                let first = self.next.fetch_add(1, Ordering::Relaxed);
                let picked = nth(first % n);
                if tried(picked) {
                    nth(first.wrapping_add(1) % n)
                } else {
                    picked
                }
            }
            (BalancePolicy::PeakEwma, n) => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (nth(a), nth(b));
                match (tried(ea), tried(eb)) {
                    (true, false) => eb,
                    (false, true) => ea,
                    _ if ea.stats.load() <= eb.stats.load() => ea,
                    _ => eb,
                }
            }
        };
        // A call's last chance does not go to an endpoint whose last call failed (one back from
        // an ejection that Consul has not noticed yet may be gone) while another is eligible.
        let chosen = match attempts {
            Some(attempts) if attempts.is_last_chance() && chosen.stats.is_failing() => all
                .iter()
                .filter(eligible)
                .filter(|e| !e.stats.is_failing())
                .min_by(|a, b| {
                    tried(a)
                        .cmp(&tried(b))
                        .then(a.stats.load().total_cmp(&b.stats.load()))
                })
                .unwrap_or(chosen),
            _ => chosen,
        };
        if let Some(zone) = &self.zone {
            zone.count(chosen.same_zone, spill);
        }
        Some(Arc::clone(chosen))
    }
}

/// The same-zone endpoints among `all`, as a pick sees them: known, not ejected (whatever the
/// panic threshold: ejected ones are no reason to stay in the zone), not ejected and not tried by
/// this call (whether or not this attempt avoids tried ones), tried, and their calls in flight.
fn same_zone(all: &[Arc<Endpoint>], now: Instant, attempts: Option<&Attempts>) -> SameZone {
    let mut seen = SameZone::default();
    for endpoint in all.iter().filter(|e| e.same_zone) {
        seen.known += 1;
        let tried = attempts.is_some_and(|a| a.has_tried(endpoint.identity()));
        seen.tried += usize::from(tried);
        if endpoint.stats.is_ejected(now) {
            continue;
        }
        seen.in_rotation += 1;
        seen.in_flight += endpoint.stats.pending.load(Ordering::Relaxed);
        seen.untried += usize::from(!tried);
    }
    seen
}

/// Counts a call in flight on its endpoint and connection until it ends, however it ends; an
/// attempt dropped unfinished because the retry layer abandoned it at its attempt timeout, or
/// because the call's deadline ran out after it waited at least [`DEADLINE_FAILURE_FLOOR`],
/// counts as a failure of the endpoint, and its time so far as a latency sample (a lower bound),
/// so the balancer sees a hung endpoint as slow even before it is ejected (non-idempotent calls
/// included).
struct PendingGuard {
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    connection: Arc<Connection>,
    attempts: Option<Attempts>,
    started: Instant,
    finished: bool,
    /// The call's deadline: a call dropped unfinished at it, after waiting at least
    /// [`DEADLINE_FAILURE_FLOOR`] on this endpoint, counts as a failure of the endpoint.
    deadline: Option<Deadline>,
}

impl PendingGuard {
    fn new(
        shared: Arc<Shared>,
        endpoint: Arc<Endpoint>,
        connection: Arc<Connection>,
        attempts: Option<Attempts>,
    ) -> Self {
        endpoint.stats.pending.fetch_add(1, Ordering::Relaxed);
        connection.pending.fetch_add(1, Ordering::Relaxed);
        Self {
            shared,
            endpoint,
            connection,
            attempts,
            started: Instant::now(),
            finished: false,
            deadline: None,
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.endpoint.stats.pending.fetch_sub(1, Ordering::Relaxed);
        self.connection.pending.fetch_sub(1, Ordering::Relaxed);
        if self.finished {
            return;
        }
        if self.attempts.as_ref().is_some_and(Attempts::take_abandoned) {
            self.endpoint.stats.observe_rtt(self.started.elapsed());
            self.shared.record(
                &self.endpoint,
                false,
                self.started,
                "no answer within the attempt timeout",
            );
        } else if self.deadline.is_some_and(|d| d.remaining().is_zero())
            && self.started.elapsed() >= DEADLINE_FAILURE_FLOOR
        {
            self.endpoint.stats.observe_rtt(self.started.elapsed());
            self.shared.record(
                &self.endpoint,
                false,
                self.started,
                "no answer before the call's deadline",
            );
        }
    }
}

/// `UNAVAILABLE` in the headers of a trailers-only response.
pub(crate) fn is_unavailable<B>(response: &http::Response<B>) -> bool {
    response
        .headers()
        .get(super::grpc_timeout::GRPC_STATUS_HEADER)
        .is_some_and(|s| s.as_bytes() == b"14")
}

/// Records the chosen endpoint on the call's client span (the current span, when traced).
fn record_server_address(instance: &ServiceInstance) {
    let span = tracing::Span::current();
    if span.has_field("server.address") {
        span.record("server.address", instance.address.as_str());
        span.record("server.port", instance.port);
    }
}

impl Service<http::Request<tonic::body::Body>> for Balancer {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per endpoint, decided when the call picks one.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            if !shared.watch.is_initialized() {
                let wait = request
                    .extensions()
                    .get::<Deadline>()
                    .map(Deadline::remaining)
                    .unwrap_or(Duration::from_secs(5));
                shared.watch.initialized(wait).await.map_err(|err| {
                    Box::new(tonic::Status::unavailable(err.to_string())) as BoxError
                })?;
                // The update task may not have run yet: apply the first answer here.
                shared.apply();
            }
            // A kept set whose grace ran out goes now, even with no new answer from Consul.
            if shared.keeping_empty.load(Ordering::Relaxed)
                && shared
                    .empty_since
                    .lock()
                    .is_ok_and(|since| since.is_some_and(|s| s.elapsed() >= shared.empty_set_grace))
            {
                shared.apply();
            }
            let attempts = request.extensions().get::<Attempts>().cloned();
            let reads_whole = attempts.as_ref().is_some_and(Attempts::reads_whole);
            // An empty pick may only mean the update task is behind the watch: catch up once.
            let picked = shared.pick(attempts.as_ref()).or_else(|| {
                shared.apply();
                shared.pick(attempts.as_ref())
            });
            let Some(endpoint) = picked else {
                return Err(Box::new(tonic::Status::unavailable(format!(
                    "no healthy instance of service \"{}\" in Consul",
                    shared.service
                ))) as BoxError);
            };
            endpoint.stats.requests.fetch_add(1, Ordering::Relaxed);
            if let Some(attempts) = &attempts {
                attempts.tried(endpoint.identity());
            }
            record_server_address(&endpoint.instance);
            let connection = endpoint.connection(&shared.connections);
            let mut channel = connection.channel.clone();
            let deadline = request.extensions().get::<Deadline>().copied();
            let mut pending = PendingGuard::new(
                Arc::clone(&shared),
                Arc::clone(&endpoint),
                connection,
                attempts,
            );
            pending.deadline = deadline;
            let started = pending.started;
            let result = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await.map_err(BoxError::from)
            }
            .await;
            // A unary answer is read whole while the call still counts on its endpoint.
            let result = match result {
                Ok(response) if reads_whole => super::whole::read_whole(response).await,
                other => other,
            };
            pending.finished = true;
            let ok = match &result {
                Ok(response) => {
                    endpoint.stats.observe_rtt(started.elapsed());
                    !is_unavailable(response)
                }
                // A call cut by its own deadline says nothing about the endpoint, unless it
                // waited long enough on it (see `DEADLINE_FAILURE_FLOOR`).
                Err(_) if deadline.is_some_and(|d| d.remaining().is_zero()) => {
                    if started.elapsed() >= DEADLINE_FAILURE_FLOOR {
                        endpoint.stats.observe_rtt(started.elapsed());
                        shared.record(
                            &endpoint,
                            false,
                            started,
                            "no answer before the call's deadline",
                        );
                    }
                    return result;
                }
                Err(_) => false,
            };
            shared.record(&endpoint, ok, started, "connection error or UNAVAILABLE");
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::discovery::{Discover, StaticDiscovery};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use tower::ServiceExt;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A balancer over `discovery`'s `svc`, with `policy`.
    fn balancer(discovery: &StaticDiscovery, policy: BalancePolicy) -> Balancer {
        let options = ChannelOptions {
            balance: policy,
            ..ChannelOptions::default()
        };
        Balancer::new(discovery.watch("svc"), &options)
    }

    fn picked_port(balancer: &Balancer, attempts: Option<&Attempts>) -> u16 {
        balancer
            .shared
            .pick(attempts)
            .expect("an endpoint")
            .instance
            .port
    }

    /// Ejects the endpoint at `port` (as many failures in a row as the policy needs).
    fn eject(balancer: &Balancer, port: u16) {
        let endpoints = balancer.shared.current();
        let endpoint = endpoints
            .iter()
            .find(|e| e.instance.port == port)
            .expect("listed");
        for _ in 0..balancer.shared.outliers.consecutive_failures {
            balancer
                .shared
                .record(endpoint, false, Instant::now(), "test");
        }
        assert!(endpoint.stats.is_ejected(Instant::now()));
    }

    #[tokio::test]
    async fn round_robin_takes_each_endpoint_in_turn_and_a_retry_goes_elsewhere() {
        let discovery = StaticDiscovery::new().with("svc", [addr(1), addr(2), addr(3)]);
        let balancer = balancer(&discovery, BalancePolicy::RoundRobin);
        let mut counts = BTreeMap::new();
        for _ in 0..9 {
            *counts.entry(picked_port(&balancer, None)).or_insert(0) += 1;
        }
        assert_eq!(counts, BTreeMap::from([(1, 3), (2, 3), (3, 3)]));

        // A retry that prefers untried endpoints never goes back to the one it tried.
        for _ in 0..9 {
            let attempts = Attempts::default();
            attempts.set_prefer_untried(true);
            let first = balancer.shared.pick(Some(&attempts)).unwrap();
            attempts.tried(first.identity());
            let second = picked_port(&balancer, Some(&attempts));
            assert_ne!(second, first.instance.port);
            assert!(attempts.has_other_endpoint());
        }
    }

    #[tokio::test]
    async fn peak_ewma_prefers_the_less_loaded_endpoint() {
        let discovery = StaticDiscovery::new().with("svc", [addr(1), addr(2)]);
        let balancer = balancer(&discovery, BalancePolicy::PeakEwma);
        let endpoints = balancer.shared.current();
        let busy = endpoints.iter().find(|e| e.instance.port == 1).unwrap();
        busy.stats.pending.fetch_add(10, Ordering::Relaxed);
        for _ in 0..20 {
            assert_eq!(picked_port(&balancer, None), 2);
        }
    }

    #[tokio::test]
    async fn a_last_chance_goes_to_an_endpoint_whose_last_call_did_not_fail() {
        for policy in [BalancePolicy::PeakEwma, BalancePolicy::RoundRobin] {
            let discovery = StaticDiscovery::new().with("svc", [addr(1), addr(2), addr(3)]);
            let balancer = balancer(&discovery, policy);
            let endpoints = balancer.shared.current();
            let failing = endpoints.iter().find(|e| e.instance.port == 1).unwrap();
            balancer
                .shared
                .record(failing, false, Instant::now(), "test");
            let attempts = Attempts::default();
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..200 {
                seen.insert(picked_port(&balancer, Some(&attempts)));
            }
            assert!(
                seen.contains(&1),
                "{policy:?}: other attempts still go there"
            );
            attempts.set_last_chance(true);
            for _ in 0..50 {
                assert_ne!(picked_port(&balancer, Some(&attempts)), 1, "{policy:?}");
            }
            // With nothing else left, it is still called.
            for other in [2, 3] {
                let endpoint = endpoints.iter().find(|e| e.instance.port == other).unwrap();
                balancer
                    .shared
                    .record(endpoint, false, Instant::now(), "test");
            }
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..200 {
                seen.insert(picked_port(&balancer, Some(&attempts)));
            }
            assert_eq!(seen, [1, 2, 3].into(), "{policy:?}");
        }
    }

    #[tokio::test]
    async fn ejected_endpoints_sit_out_until_too_few_would_be_left() {
        let discovery = StaticDiscovery::new().with("svc", [addr(1), addr(2), addr(3)]);
        let balancer = balancer(&discovery, BalancePolicy::RoundRobin);
        eject(&balancer, 1);
        for _ in 0..12 {
            assert_ne!(picked_port(&balancer, None), 1);
        }
        assert!(balancer
            .snapshot()
            .iter()
            .any(|e| e.address == "127.0.0.1:1" && e.ejected_for.is_some()));

        // Two of three out: fewer than the panic threshold's share (34 %) would be left, so
        // every endpoint is a candidate again.
        eject(&balancer, 2);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..12 {
            seen.insert(picked_port(&balancer, None));
        }
        assert_eq!(seen, [1, 2, 3].into());
    }

    #[tokio::test]
    async fn the_endpoints_follow_the_discovered_set_keeping_the_ones_that_stay() {
        let discovery = StaticDiscovery::new().with("svc", [addr(1), addr(2)]);
        let balancer = balancer(&discovery, BalancePolicy::RoundRobin);
        let kept = balancer.shared.current()[1].clone();
        assert_eq!(kept.instance.port, 2);

        let mut updates = balancer.instance_updates();
        discovery.set("svc", [addr(2), addr(3)]);
        updates.changed().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ports = endpoint_ports(&balancer);
            if ports == [2, 3] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "endpoints not updated: {ports:?}"
            );
            tokio::task::yield_now().await;
        }
        // The endpoint that stayed is the same one (its connections and stats go on).
        assert!(Arc::ptr_eq(&balancer.shared.current()[0], &kept));
    }

    #[tokio::test]
    async fn calls_reach_the_listed_servers_and_an_empty_list_is_unavailable() {
        // Two gRPC health servers, serving.
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let (_, health) = tonic_health::server::health_reporter();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
        }
        let discovery = StaticDiscovery::new().with("svc", addrs.clone());
        let balancer = balancer(&discovery, BalancePolicy::RoundRobin);
        for _ in 0..4 {
            let mut client = tonic_health::pb::health_client::HealthClient::new(balancer.clone());
            let answer = client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .unwrap();
            assert_eq!(answer.into_inner().status, 1, "SERVING");
        }
        let requests: Vec<u64> = balancer.snapshot().iter().map(|e| e.requests).collect();
        assert_eq!(requests, [2, 2]);

        // Nothing listed: UNAVAILABLE at once, naming the service.
        let empty = Balancer::new(discovery.watch("nobody"), &ChannelOptions::default());
        let request = http::Request::new(tonic::body::Body::empty());
        let err = empty.oneshot(request).await.unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("nobody"), "{status:?}");
    }

    /// A balancer for a caller in zone `a` over instances `(port, zone)` of the local datacenter.
    fn zoned_balancer(instances: &[(u16, &str)]) -> Balancer {
        let local: Vec<(u16, &str, Option<&str>)> =
            instances.iter().map(|(p, z)| (*p, *z, None)).collect();
        located_balancer(&local)
    }

    /// A balancer for a caller in zone `a` over instances `(port, zone, failover datacenter)`.
    fn located_balancer(instances: &[(u16, &str, Option<&str>)]) -> Balancer {
        let (_, rx) = tokio::sync::watch::channel(located_state(instances));
        zone_a_balancer(rx)
    }

    /// A balancer for a caller in zone `a` following `rx`.
    fn zone_a_balancer(rx: tokio::sync::watch::Receiver<WatchState>) -> Balancer {
        let options = ChannelOptions {
            zones: super::super::ZonePolicy {
                spill_above: 4.0,
                return_below: 2.0,
            },
            ..ChannelOptions::default()
        };
        Balancer::located(WatchHandle::from_receiver(rx), &options, None, Some("a"))
    }

    /// A discovery state listing instances `(port, zone, failover datacenter)`.
    fn located_state(instances: &[(u16, &str, Option<&str>)]) -> WatchState {
        let instances: BTreeMap<String, ServiceInstance> = instances
            .iter()
            .map(|(port, zone, datacenter)| {
                let instance = ServiceInstance {
                    id: format!("svc-{port}"),
                    address: "127.0.0.1".into(),
                    port: *port,
                    tags: Vec::new(),
                    meta: BTreeMap::from([(ZONE_META.to_owned(), (*zone).to_owned())]),
                    datacenter: datacenter.map(str::to_owned),
                };
                (instance.id.clone(), instance)
            })
            .collect();
        WatchState {
            service: "svc".into(),
            instances: Arc::new(instances),
            index: 1,
            initialized: true,
            last_success: None,
            last_error: None,
            consecutive_errors: 0,
        }
    }

    #[tokio::test]
    async fn a_call_leaves_its_zone_after_two_attempts_there_and_ejected_ones_keep_no_call_in_it() {
        // Three same-zone endpoints: a call that tried two of them goes to another zone.
        let balancer = zoned_balancer(&[(1, "a"), (2, "a"), (5, "a"), (3, "b")]);
        let attempts = Attempts::default();
        attempts.tried(endpoint_at(&balancer, 1).identity());
        attempts.tried(endpoint_at(&balancer, 2).identity());
        assert_eq!(picked_port(&balancer, Some(&attempts)), 3);

        // Zone a's two ejected, zone b's one left: under the panic threshold (1 of 3), but the
        // calls go to b rather than back to the ejected ones.
        let balancer = zoned_balancer(&[(1, "a"), (2, "a"), (3, "b")]);
        eject(&balancer, 1);
        eject(&balancer, 2);
        for _ in 0..20 {
            assert_eq!(picked_port(&balancer, None), 3);
        }

        // One same-zone endpoint, the other zone's ejected: no other endpoint to retry on.
        let balancer = zoned_balancer(&[(1, "a"), (3, "b")]);
        eject(&balancer, 3);
        let attempts = Attempts::default();
        assert_eq!(picked_port(&balancer, Some(&attempts)), 1);
        assert!(!attempts.has_other_endpoint());
    }

    #[tokio::test]
    async fn the_local_endpoints_are_kept_for_the_grace_when_only_a_failover_datacenter_answers() {
        let (tx, rx) =
            tokio::sync::watch::channel(located_state(&[(1, "a", None), (3, "a", Some("dc2"))]));
        let balancer = zone_a_balancer(rx);
        let mut updates = balancer.instance_updates();
        tx.send(located_state(&[(3, "a", Some("dc2"))])).unwrap();
        updates.changed().await.unwrap();
        balancer.shared.apply();
        assert_eq!(
            endpoint_ports(&balancer),
            [1, 3],
            "the local endpoint is kept"
        );
        assert_eq!(picked_port(&balancer, None), 1);
        assert!(balancer.shared.keeping_empty.load(Ordering::Relaxed));
        // Once ejected (it was really gone), it is dropped, not called again after its ejection.
        eject(&balancer, 1);
        assert_eq!(endpoint_ports(&balancer), [3]);
    }

    /// The ports of the balancer's endpoints, in its order.
    fn endpoint_ports(balancer: &Balancer) -> Vec<u16> {
        balancer
            .shared
            .current()
            .iter()
            .map(|e| e.instance.port)
            .collect()
    }

    /// Asserts that `times` picks without attempts all go to one of `ports`.
    fn picks_only(balancer: &Balancer, ports: &[u16], times: usize) {
        for _ in 0..times {
            let port = picked_port(balancer, None);
            assert!(ports.contains(&port), "{port} is not one of {ports:?}");
        }
    }

    fn endpoint_at(balancer: &Balancer, port: u16) -> Arc<Endpoint> {
        let endpoints = balancer.shared.current();
        Arc::clone(endpoints.iter().find(|e| e.instance.port == port).unwrap())
    }

    #[tokio::test]
    async fn a_caller_in_a_zone_stays_in_it_until_its_endpoints_fail_are_tried_or_overload() {
        let balancer = zoned_balancer(&[(1, "a"), (2, "a"), (3, "b"), (4, "c")]);
        picks_only(&balancer, &[1, 2], 50);
        let status = balancer.zone_status().unwrap();
        assert_eq!((status.same_zone_calls, status.other_zone_calls), (50, 0));
        assert!(balancer
            .snapshot()
            .iter()
            .any(|e| e.zone.as_deref() == Some("b")));

        // A retry that tried both same-zone endpoints goes to another zone, even on the last
        // attempt (which does not avoid tried endpoints).
        let attempts = Attempts::default();
        attempts.tried(endpoint_at(&balancer, 1).identity());
        attempts.tried(endpoint_at(&balancer, 2).identity());
        assert!([3, 4].contains(&picked_port(&balancer, Some(&attempts))));
        assert!(attempts.has_other_endpoint());

        // Overloaded: more than 4 in flight each → every zone, the least loaded first; back
        // below 2 each.
        for port in [1, 2] {
            endpoint_at(&balancer, port)
                .stats
                .pending
                .fetch_add(5, Ordering::Relaxed);
        }
        let spilled = (0..50)
            .filter(|_| [3, 4].contains(&picked_port(&balancer, None)))
            .count();
        assert!(spilled > 25, "{spilled} of 50 left the zone");
        assert!(balancer.zone_status().unwrap().overloaded);
        for port in [1, 2] {
            endpoint_at(&balancer, port)
                .stats
                .pending
                .fetch_sub(4, Ordering::Relaxed);
        }
        assert!(
            [1, 2].contains(&picked_port(&balancer, None)),
            "1 each: back"
        );

        // Both same-zone endpoints ejected: the other zones take the calls.
        eject(&balancer, 1);
        eject(&balancer, 2);
        picks_only(&balancer, &[3, 4], 20);
        let status = balancer.zone_status().unwrap();
        assert_eq!(
            status.spilled_unavailable, 21,
            "the retry and the 20 after ejection"
        );
        assert_eq!(
            status.spilled_overloaded, spilled as u64,
            "only the calls that left"
        );
        assert!(status.same_zone_share() < 0.9);
    }

    #[tokio::test]
    async fn a_caller_in_a_zone_with_no_endpoint_there_uses_every_zone_and_counts_no_spill() {
        let balancer = zoned_balancer(&[(3, "b"), (4, "c")]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            seen.insert(picked_port(&balancer, None));
        }
        assert_eq!(seen, [3, 4].into());
        let status = balancer.zone_status().unwrap();
        assert_eq!(
            (status.other_zone_calls, status.spilled_unavailable),
            (40, 0)
        );
        // Only the caller's zone has endpoints, and this call tried them all: they are all
        // there is.
        let only_here = zoned_balancer(&[(1, "a"), (2, "a")]);
        let attempts = Attempts::default();
        attempts.tried(endpoint_at(&only_here, 1).identity());
        attempts.tried(endpoint_at(&only_here, 2).identity());
        assert!([1, 2].contains(&picked_port(&only_here, Some(&attempts))));
        // A caller with no zone counts nothing.
        let discovery = StaticDiscovery::new().with("svc", [addr(1)]);
        assert!(balancer_without_zone(&discovery).zone_status().is_none());
    }

    #[tokio::test]
    async fn a_failover_datacenter_is_called_only_when_no_local_endpoint_is_left_to_try() {
        let balancer = located_balancer(&[
            (3, "a", Some("dc2")),
            (1, "a", None),
            (4, "b", Some("dc2")),
            (2, "b", None),
        ]);
        picks_only(&balancer, &[1, 2], 40);
        let status = balancer.zone_status().unwrap();
        assert_eq!(
            status.same_zone_calls, 40,
            "dc2's zone a is not the caller's"
        );
        assert_eq!(balancer.failed_over_to(), None);

        // A call that tried both local endpoints goes to dc2.
        let attempts = Attempts::default();
        attempts.tried(endpoint_at(&balancer, 1).identity());
        attempts.tried(endpoint_at(&balancer, 2).identity());
        assert!([3, 4].contains(&picked_port(&balancer, Some(&attempts))));

        // Both local endpoints ejected (crashed before Consul noticed): dc2 takes every call,
        // even though one local endpoint is all the panic threshold would ask for.
        eject(&balancer, 1);
        for _ in 0..20 {
            assert_eq!(picked_port(&balancer, None), 2);
        }
        eject(&balancer, 2);
        picks_only(&balancer, &[3, 4], 20);
        assert_eq!(balancer.failed_over_to().as_deref(), Some("dc2"));
        let dcs: Vec<Option<String>> = balancer
            .snapshot()
            .into_iter()
            .map(|e| e.datacenter)
            .collect();
        assert_eq!(
            dcs,
            [None, None, Some("dc2".into()), Some("dc2".into())],
            "local first"
        );

        // With zones: a call that tried its zone twice goes to another local zone before dc2.
        let balancer = located_balancer(&[
            (1, "a", None),
            (2, "a", None),
            (5, "b", None),
            (3, "a", Some("dc2")),
        ]);
        let attempts = Attempts::default();
        attempts.tried(endpoint_at(&balancer, 1).identity());
        attempts.tried(endpoint_at(&balancer, 2).identity());
        assert_eq!(picked_port(&balancer, Some(&attempts)), 5);
        attempts.tried(endpoint_at(&balancer, 5).identity());
        assert_eq!(picked_port(&balancer, Some(&attempts)), 3, "then dc2");

        // Two of three local endpoints ejected: under the panic threshold, but with dc2 there
        // the local tier sends nothing to the ejected ones.
        let balancer = located_balancer(&[
            (1, "b", None),
            (2, "b", None),
            (5, "b", None),
            (3, "b", Some("dc2")),
        ]);
        eject(&balancer, 1);
        eject(&balancer, 2);
        picks_only(&balancer, &[5], 20);
        // A sole local endpoint left has no other to be abandoned for: dc2 does not count.
        let attempts = Attempts::default();
        assert_eq!(picked_port(&balancer, Some(&attempts)), 5);
        assert!(!attempts.has_other_endpoint());
    }

    fn balancer_without_zone(discovery: &StaticDiscovery) -> Balancer {
        balancer(discovery, BalancePolicy::PeakEwma)
    }

    #[test]
    fn load_grows_with_pending_calls() {
        let stats = EndpointStats::new();
        let idle = stats.load();
        stats.pending.fetch_add(3, Ordering::Relaxed);
        assert!((stats.load() - idle * 4.0).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_with_growing_backoff_and_probation_after() {
        let policy = OutlierPolicy {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
            min_healthy_share: 0.5,
        };
        let stats = EndpointStats::new();
        let sent_early = Instant::now();
        assert_eq!(stats.record(false, sent_early, &policy), None);
        assert!(stats.is_failing());
        assert_eq!(
            stats.record(true, sent_early, &policy),
            None,
            "a success resets the run"
        );
        assert!(!stats.is_failing());
        assert_eq!(stats.record(false, sent_early, &policy), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            stats.record(false, Instant::now(), &policy),
            Some(Duration::from_secs(1))
        );
        assert!(stats.is_ejected(Instant::now()));
        // Calls sent before the ejection fail, during it and after it: no second ejection.
        for _ in 0..5 {
            assert_eq!(stats.record(false, sent_early, &policy), None);
        }
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(!stats.is_ejected(Instant::now()));
        assert_eq!(stats.record(false, sent_early, &policy), None);
        // On probation: failing until it answers, ejected again at its first failure.
        assert!(stats.is_failing());
        assert_eq!(
            stats.record(false, Instant::now(), &policy),
            Some(Duration::from_secs(2))
        );
        tokio::time::advance(Duration::from_millis(2_001)).await;
        assert_eq!(
            stats.record(false, Instant::now(), &policy),
            Some(Duration::from_secs(3)),
            "capped"
        );
        tokio::time::advance(Duration::from_millis(3_001)).await;
        // An answer ends the probation: two failures in a row again.
        let now = Instant::now();
        assert_eq!(stats.record(true, now, &policy), None);
        assert_eq!(stats.record(false, now, &policy), None);
        assert_eq!(
            stats.record(false, now, &policy),
            Some(Duration::from_secs(3))
        );
        assert_eq!(stats.failures.load(Ordering::Relaxed), 13);
    }

    #[test]
    fn unavailable_is_read_from_trailers_only_headers() {
        let response = http::Response::builder()
            .header("grpc-status", "14")
            .body(())
            .expect("response");
        assert!(is_unavailable(&response));
        let ok = http::Response::builder()
            .header("grpc-status", "0")
            .body(())
            .expect("response");
        assert!(!is_unavailable(&ok));
    }
}
