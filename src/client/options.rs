//! What every layer of a channel shares: the error type that travels through them
//! ([`BoxError`]) and how channels to one service behave ([`ChannelOptions`] and the policies
//! of its layers: balancing, zones, outlier ejection, connections, circuit breaker, retries).

use std::time::Duration;

/// Attempts of one call in one tier (the caller's zone, the local datacenter) before its next
/// attempt goes to the next (other zones, the failover datacenter): with the default three
/// attempts, a call whose zone (or datacenter) just died still reaches another.
pub(crate) const ATTEMPTS_PER_TIER: usize = 2;

/// Largest request body a retryable call keeps to send again, and largest part of a unary
/// answer read whole: a message at tonic's default decoding limit (4 MiB) and its frame header.
/// A server would refuse a larger request anyway.
pub(crate) const MAX_REPLAYED_BODY: usize = 4 * 1024 * 1024 + 5;

/// Errors that travel through the channel's layers (tonic turns a boxed `Status` back into it).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How channels to one service behave.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOptions {
    /// Deadline of a call when neither the caller nor an incoming call sets one.
    pub default_timeout: Duration,
    /// Most calls in flight to the service from this channel's clones.
    pub concurrency_limit: usize,
    /// Endpoint choice.
    pub balance: BalancePolicy,
    /// When a caller with a zone leaves its own zone's endpoints.
    pub zones: ZonePolicy,
    /// Outlier ejection.
    pub outliers: OutlierPolicy,
    /// Retries.
    pub retry: RetryPolicy,
    /// Connections per endpoint.
    pub connections: ConnectionPolicy,
    /// The target service's circuit breaker.
    pub breaker: BreakerPolicy,
    /// TCP connect timeout to an endpoint.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval on endpoint connections, idle or not: a peer that does
    /// not answer a ping within [`ChannelOptions::http2_keep_alive_timeout`] has its connection
    /// closed, failing (and so retrying) the calls on it. `None` turns pings off.
    pub http2_keep_alive: Option<Duration>,
    /// How long a keep-alive ping may go unanswered.
    pub http2_keep_alive_timeout: Duration,
    /// TCP keep-alive on endpoint connections (the kernel probes an idle connection after this
    /// long and drops it when the peer stays silent); free on the call path.
    pub tcp_keepalive: Option<Duration>,
    /// How long known endpoints are kept when Consul suddenly reports none (an agent that
    /// restarted answers empty until services register again).
    pub empty_set_grace: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(10),
            concurrency_limit: 10_000,
            balance: BalancePolicy::default(),
            zones: ZonePolicy::default(),
            outliers: OutlierPolicy::default(),
            retry: RetryPolicy::default(),
            connections: ConnectionPolicy::default(),
            breaker: BreakerPolicy::default(),
            connect_timeout: Duration::from_secs(1),
            empty_set_grace: Duration::from_secs(10),
            http2_keep_alive: None,
            http2_keep_alive_timeout: Duration::from_secs(5),
            tcp_keepalive: Some(Duration::from_secs(10)),
        }
    }
}

/// How the next endpoint is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalancePolicy {
    /// Power of two random choices, the one with the lower peak-EWMA latency × (pending + 1).
    #[default]
    PeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
}

/// When a caller in a zone sends calls to other zones: a caller prefers the endpoints of its own
/// zone (Consul meta `zone`); it sends a call to the other zones when none of them is left to try
/// (all ejected, or this call tried them, or two of them), and to every zone (the balancing
/// policy picks) while they are overloaded. Overload has a hysteresis: it starts when the
/// same-zone endpoints carry more than [`ZonePolicy::spill_above`] calls in flight each on
/// average, and ends once they carry fewer than [`ZonePolicy::return_below`] (taken as
/// `spill_above` if above it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZonePolicy {
    /// Average calls in flight per same-zone endpoint above which calls spill to other zones.
    pub spill_above: f64,
    /// Average calls in flight per same-zone endpoint below which calls stay in the zone again.
    pub return_below: f64,
}

impl Default for ZonePolicy {
    fn default() -> Self {
        Self {
            spill_above: 16.0,
            return_below: 8.0,
        }
    }
}

/// When an endpoint is taken out of rotation before Consul notices it is unwell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierPolicy {
    /// Failures in a row (connection errors, `UNAVAILABLE`, attempts abandoned at their attempt
    /// timeout) that eject an endpoint; after an ejection, one failure before a success ejects it
    /// again.
    pub consecutive_failures: u32,
    /// First ejection time; doubles with each ejection of the same endpoint.
    pub base_ejection: Duration,
    /// Longest ejection time.
    pub max_ejection: Duration,
    /// Panic threshold: when fewer than this share of endpoints would be left, balance over all.
    pub min_healthy_share: f64,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            min_healthy_share: 0.34,
        }
    }
}

/// How many HTTP/2 connections an endpoint gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionPolicy {
    /// Calls in flight on every open connection before another connection is opened.
    pub streams_per_connection: usize,
    /// Most connections to one endpoint.
    pub max_connections: usize,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        Self {
            streams_per_connection: 100,
            max_connections: 4,
        }
    }
}

/// When a breaker opens and how it probes its way back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// Share of failed calls in a window that opens the breaker…
    pub failure_ratio: f64,
    /// …once the window holds at least this many calls.
    pub min_calls: u32,
    /// Length of the counting window.
    pub window: Duration,
    /// Time the breaker stays open before probing.
    pub open_for: Duration,
    /// Calls let through while half-open; all must succeed to close.
    pub probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            probes: 3,
        }
    }
}

/// How retries are allowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Most attempts per call, the first included.
    pub max_attempts: u32,
    /// Share of calls that may be retries, over the budget's window.
    pub budget_ratio: f32,
    /// Retries always allowed per second, whatever the ratio.
    pub min_retries_per_second: u32,
    /// First backoff; doubles each retry, with full jitter.
    pub base_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Shortest attempt timeout (`Duration::MAX` turns attempt timeouts off).
    pub attempt_timeout_floor: Duration,
    /// Attempt timeout as a multiple of the method's observed latency (its peak EWMA), when
    /// that is above the floor.
    pub attempt_timeout_latency_multiple: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            budget_ratio: 0.2,
            min_retries_per_second: 10,
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(200),
            attempt_timeout_floor: Duration::from_millis(100),
            attempt_timeout_latency_multiple: 10.0,
        }
    }
}
