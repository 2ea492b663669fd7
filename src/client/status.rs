//! What a process's mesh client knows about each service it calls — discovery state (and the
//! failover datacenter in use), breaker state, where its calls went by zone, and per endpoint its
//! zone, Consul health, ejection, calls in flight and peak-EWMA latency —
//! as a serializable value (the admin endpoint's JSON) and as a table (`mesh status --client`).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::balance::Balancer;
use super::breaker::{BreakerState, CircuitBreaker};
use super::zone::ZoneStatus;

/// One target service as this process sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// Service name.
    pub service: String,
    /// Discovery: whether Consul answered, and whether the cache is stale.
    pub discovery: DiscoveryStatus,
    /// `closed`, `open` or `half-open`.
    pub breaker: String,
    /// Milliseconds left before the open breaker probes.
    pub breaker_open_ms: Option<u64>,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Where the calls went by zone, when this process runs in a zone.
    #[serde(default)]
    pub zone: Option<ZoneStatus>,
    /// Endpoints in the balancer.
    pub endpoints: Vec<EndpointStatus>,
}

/// The discovery cache of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    /// Consul answered at least once.
    pub initialized: bool,
    /// `X-Consul-Index` of the last answer.
    pub consul_index: u64,
    /// While Consul is unreachable: milliseconds since the last good answer (instances are the
    /// last known healthy set).
    pub stale_ms: Option<u64>,
    /// The latest query error, while queries fail.
    pub last_error: Option<String>,
    /// The failover datacenter called, while the local one has no endpoint in rotation.
    #[serde(default)]
    pub datacenter: Option<String>,
}

/// One endpoint of a target service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// Consul instance ID.
    pub id: String,
    /// `host:port`.
    pub address: String,
    /// The instance's zone (Consul meta `zone`), if it has one.
    #[serde(default)]
    pub zone: Option<String>,
    /// The failover datacenter it is in (`None`: the local one).
    #[serde(default)]
    pub datacenter: Option<String>,
    /// Consul health as the cache knows it: `passing` (the cache holds passing instances only),
    /// or `passing (stale)` while Consul is unreachable.
    pub consul_health: String,
    /// `in` rotation, or `ejected` with the time left.
    pub ejected_ms: Option<u64>,
    /// Calls in flight.
    pub in_flight: usize,
    /// Calls sent.
    pub requests: u64,
    /// Calls that failed with a connection error or `UNAVAILABLE`.
    pub failures: u64,
    /// Peak-EWMA latency in microseconds.
    pub ewma_us: u64,
    /// HTTP/2 connections open to it.
    pub connections: usize,
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl TargetStatus {
    /// The state of one target's balancer and breaker now.
    pub fn of(balancer: &Balancer, breaker: &CircuitBreaker) -> Self {
        let discovery = balancer.discovery();
        let stale = discovery.is_stale();
        let (breaker_state, breaker_open_ms) = match breaker.state() {
            BreakerState::Open { remaining } => ("open", Some(millis(remaining))),
            BreakerState::HalfOpen => ("half-open", None),
            BreakerState::Closed => ("closed", None),
        };
        Self {
            service: balancer.service().to_owned(),
            discovery: DiscoveryStatus {
                initialized: discovery.initialized,
                consul_index: discovery.index,
                stale_ms: discovery.staleness().map(millis),
                last_error: discovery.last_error.clone(),
                datacenter: balancer.failed_over_to(),
            },
            breaker: breaker_state.to_owned(),
            breaker_open_ms,
            breaker_opened: breaker.times_opened(),
            zone: balancer.zone_status(),
            endpoints: balancer
                .snapshot()
                .into_iter()
                .map(|e| EndpointStatus {
                    id: e.id,
                    address: e.address,
                    zone: e.zone,
                    datacenter: e.datacenter,
                    consul_health: if stale { "passing (stale)" } else { "passing" }.to_owned(),
                    ejected_ms: e.ejected_for.map(millis),
                    in_flight: e.pending,
                    requests: e.requests,
                    failures: e.failures,
                    ewma_us: u64::try_from(e.ewma.as_micros()).unwrap_or(u64::MAX),
                    connections: e.connections,
                })
                .collect(),
        }
    }
}

/// A list of targets, printed as one block per service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus(pub Vec<TargetStatus>);

impl fmt::Display for ClientStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "this process calls no service yet");
        }
        for target in &self.0 {
            write!(f, "{}  breaker {}", target.service, target.breaker)?;
            if let Some(ms) = target.breaker_open_ms {
                write!(f, " ({ms}ms left)")?;
            }
            write!(f, ", opened {}x", target.breaker_opened)?;
            match (&target.discovery.stale_ms, target.discovery.initialized) {
                (_, false) => write!(f, "  discovery: waiting for Consul")?,
                (Some(ms), _) => write!(
                    f,
                    "  discovery: STALE for {ms}ms ({})",
                    target.discovery.last_error.as_deref().unwrap_or("")
                )?,
                (None, true) => write!(
                    f,
                    "  discovery: live (index {})",
                    target.discovery.consul_index
                )?,
            }
            if let Some(dc) = &target.discovery.datacenter {
                write!(f, "  FAILED OVER to datacenter {dc}")?;
            }
            writeln!(f)?;
            if let Some(zone) = &target.zone {
                writeln!(
                    f,
                    "  zone {}: {:.1}% of calls in the zone ({} in, {} out); spilled {}x with no endpoint left in the zone, {}x overloaded{}",
                    zone.zone,
                    zone.same_zone_share() * 100.0,
                    zone.same_zone_calls,
                    zone.other_zone_calls,
                    zone.spilled_unavailable,
                    zone.spilled_overloaded,
                    if zone.overloaded { " (overloaded now)" } else { "" },
                )?;
            }
            let rows: Vec<[String; 11]> = target
                .endpoints
                .iter()
                .map(|e| {
                    [
                        e.id.clone(),
                        e.address.clone(),
                        e.datacenter.clone().unwrap_or_else(|| "local".to_owned()),
                        e.zone.clone().unwrap_or_else(|| "-".to_owned()),
                        e.consul_health.clone(),
                        e.ejected_ms
                            .map_or_else(|| "in".to_owned(), |ms| format!("ejected {ms}ms")),
                        e.in_flight.to_string(),
                        e.requests.to_string(),
                        e.failures.to_string(),
                        format!("{:.3}", e.ewma_us as f64 / 1000.0),
                        e.connections.to_string(),
                    ]
                })
                .collect();
            let header = [
                "ENDPOINT",
                "ADDRESS",
                "DC",
                "ZONE",
                "CONSUL",
                "ROTATION",
                "IN-FLIGHT",
                "CALLS",
                "FAILED",
                "EWMA-MS",
                "CONNS",
            ];
            let widths: Vec<usize> = (0..header.len())
                .map(|i| {
                    rows.iter()
                        .map(|r| r[i].len())
                        .chain([header[i].len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| {
                write!(f, " ")?;
                for (cell, width) in cells.iter().zip(&widths) {
                    write!(f, " {cell:<width$}")?;
                }
                writeln!(f)
            };
            line(f, &header)?;
            for row in &rows {
                let cells: Vec<&str> = row.iter().map(String::as_str).collect();
                line(f, &cells)?;
            }
            if rows.is_empty() {
                writeln!(f, "  (no healthy endpoint)")?;
            }
        }
        Ok(())
    }
}
