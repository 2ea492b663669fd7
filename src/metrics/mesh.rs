//! The `mesh_client_*` metrics: what the process's mesh client knows about the services it calls,
//! read from [`Mesh::status`] at every scrape (no background task, nothing kept between scrapes).
//!
//! Per service (label `service`): `mesh_client_discovery_stale` (1 while Consul queries fail and
//! the last known instances are used), `mesh_client_discovery_age_seconds` (while stale, the time
//! since Consul last answered; 0 while live), `mesh_client_breaker_state` (0 closed, 1 half-open,
//! 2 open), `mesh_client_breaker_opened_total` and `mesh_client_failed_over` (1 while no local
//! endpoint is in rotation and a failover datacenter's are called; `mesh status --client` names
//! the datacenter).
//! For a process in a zone, per service: `mesh_client_zone_calls_total` (label `locality`:
//! `same-zone` or `other-zone`; the same-zone share is the first over both),
//! `mesh_client_zone_spills_total` (label `reason`: `unavailable`, no same-zone endpoint left to
//! try, or `overloaded`) and `mesh_client_zone_overloaded` (1 while calls spill for load). Per
//! endpoint (labels `service`, `endpoint`,
//! the endpoint being its `host:port`): `mesh_client_endpoint_requests_total`,
//! `mesh_client_endpoint_failures_total`, `mesh_client_endpoint_in_flight`,
//! `mesh_client_endpoint_ewma_seconds` (peak-EWMA latency), `mesh_client_endpoint_ejected` (0/1)
//! and `mesh_client_endpoint_connections`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::exposition::{encode_counters, encode_gauges};
use crate::client::status::{ClientStatus, EndpointStatus, TargetStatus};
use crate::client::Mesh;
use crate::client::ZoneStatus;

/// Collects the `mesh_client_*` metrics from a source of [`ClientStatus`] (a [`Mesh`]).
pub struct MeshClientCollector {
    status: Box<dyn Fn() -> ClientStatus + Send + Sync>,
}

impl std::fmt::Debug for MeshClientCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClientCollector")
            .finish_non_exhaustive()
    }
}

impl MeshClientCollector {
    /// The collector of `mesh`'s state.
    pub fn new(mesh: Mesh) -> Self {
        Self::from_fn(move || mesh.status())
    }

    /// A collector of whatever `status` returns at each scrape.
    pub fn from_fn(status: impl Fn() -> ClientStatus + Send + Sync + 'static) -> Self {
        Self {
            status: Box::new(status),
        }
    }
}

/// The numeric `mesh_client_breaker_state` of a breaker state's name.
fn breaker_state(name: &str) -> i64 {
    match name {
        "open" => 2,
        "half-open" => 1,
        _ => 0,
    }
}

type ServiceLabels<'a> = [(&'static str, &'a str); 1];
type EndpointLabels<'a> = [(&'static str, &'a str); 2];

/// Per service in a zone, one row per `(label, value)` pair of `label`.
fn per_zone_service<'a, V: 'a>(
    targets: &'a [TargetStatus],
    label: &'static str,
    rows: impl Fn(&ZoneStatus) -> [(&'static str, V); 2] + 'a,
) -> impl Iterator<Item = (EndpointLabels<'a>, V)> + 'a {
    targets
        .iter()
        .filter_map(move |t| t.zone.as_ref().map(|zone| (t, rows(zone))))
        .flat_map(move |(t, rows)| {
            rows.into_iter()
                .map(move |(value, v)| ([("service", t.service.as_str()), (label, value)], v))
        })
}

fn per_service<'a, V>(
    targets: &'a [TargetStatus],
    value: impl Fn(&TargetStatus) -> V + 'a,
) -> impl Iterator<Item = (ServiceLabels<'a>, V)> + 'a {
    targets
        .iter()
        .map(move |t| ([("service", t.service.as_str())], value(t)))
}

fn per_endpoint<'a, V>(
    targets: &'a [TargetStatus],
    value: impl Fn(&EndpointStatus) -> V + Copy + 'a,
) -> impl Iterator<Item = (EndpointLabels<'a>, V)> + 'a {
    targets.iter().flat_map(move |t| {
        t.endpoints.iter().map(move |e| {
            (
                [
                    ("service", t.service.as_str()),
                    ("endpoint", e.address.as_str()),
                ],
                value(e),
            )
        })
    })
}

impl Collector for MeshClientCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ClientStatus(targets) = (self.status)();
        let e = &mut encoder;
        encode_gauges(
            e,
            "mesh_client_discovery_stale",
            "1 while Consul queries for the service fail and its last known instances are used.",
            per_service(&targets, |t| i64::from(t.discovery.stale_ms.is_some())),
        )?;
        encode_gauges(
            e,
            "mesh_client_discovery_age_seconds",
            "While discovery is stale, seconds since Consul last answered; 0 while live.",
            per_service(&targets, |t| {
                t.discovery.stale_ms.map_or(0.0, |ms| ms as f64 / 1000.0)
            }),
        )?;
        encode_gauges(
            e,
            "mesh_client_breaker_state",
            "Circuit breaker of the service: 0 closed, 1 half-open, 2 open.",
            per_service(&targets, |t| breaker_state(&t.breaker)),
        )?;
        encode_counters(
            e,
            "mesh_client_breaker_opened",
            "Times the service's circuit breaker opened.",
            per_service(&targets, |t| t.breaker_opened),
        )?;
        encode_gauges(
            e,
            "mesh_client_failed_over",
            "1 while no local endpoint of the service is in rotation and a failover datacenter's are called.",
            per_service(&targets, |t| i64::from(t.discovery.datacenter.is_some())),
        )?;
        encode_counters(
            e,
            "mesh_client_zone_calls",
            "Calls (attempts) of this process, in a zone, to endpoints of the same zone or of others.",
            per_zone_service(&targets, "locality", |z| {
                [
                    ("same-zone", z.same_zone_calls),
                    ("other-zone", z.other_zone_calls),
                ]
            }),
        )?;
        encode_counters(
            e,
            "mesh_client_zone_spills",
            "Calls that left the same-zone endpoints: none left to try (unavailable) or too many calls in flight on them (overloaded).",
            per_zone_service(&targets, "reason", |z| {
                [
                    ("unavailable", z.spilled_unavailable),
                    ("overloaded", z.spilled_overloaded),
                ]
            }),
        )?;
        encode_gauges(
            e,
            "mesh_client_zone_overloaded",
            "1 while the same-zone endpoints carry too many calls in flight and calls spill to other zones.",
            per_service(&targets, |t| t.zone.as_ref().map(|z| i64::from(z.overloaded)))
                .filter_map(|(labels, v)| v.map(|v| (labels, v))),
        )?;
        encode_counters(
            e,
            "mesh_client_endpoint_requests",
            "Calls sent to the endpoint.",
            per_endpoint(&targets, |e| e.requests),
        )?;
        encode_counters(
            e,
            "mesh_client_endpoint_failures",
            "Calls to the endpoint that failed with a connection error or UNAVAILABLE.",
            per_endpoint(&targets, |e| e.failures),
        )?;
        encode_gauges(
            e,
            "mesh_client_endpoint_in_flight",
            "Calls to the endpoint in flight.",
            per_endpoint(&targets, |e| e.in_flight),
        )?;
        encode_gauges(
            e,
            "mesh_client_endpoint_ewma_seconds",
            "Peak-EWMA latency of the endpoint, in seconds.",
            per_endpoint(&targets, |e| e.ewma_us as f64 / 1_000_000.0),
        )?;
        encode_gauges(
            e,
            "mesh_client_endpoint_ejected",
            "1 while the endpoint is ejected from the balancer as an outlier.",
            per_endpoint(&targets, |e| i64::from(e.ejected_ms.is_some())),
        )?;
        encode_gauges(
            e,
            "mesh_client_endpoint_connections",
            "HTTP/2 connections open to the endpoint.",
            per_endpoint(&targets, |e| e.connections),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::status::DiscoveryStatus;
    use crate::metrics::{Format, Metrics};

    fn endpoint(address: &str, requests: u64, ejected: bool) -> EndpointStatus {
        EndpointStatus {
            id: format!("priority-{address}"),
            address: address.to_owned(),
            zone: Some("a".into()),
            datacenter: None,
            consul_health: "passing".into(),
            ejected_ms: ejected.then_some(900),
            in_flight: 2,
            requests,
            failures: 1,
            ewma_us: 1500,
            connections: 1,
        }
    }

    fn status() -> ClientStatus {
        ClientStatus(vec![
            TargetStatus {
                service: "priority".into(),
                discovery: DiscoveryStatus {
                    initialized: true,
                    consul_index: 7,
                    stale_ms: Some(2500),
                    last_error: Some("connection refused".into()),
                    datacenter: Some("dc2".into()),
                },
                breaker: "half-open".into(),
                breaker_open_ms: None,
                breaker_opened: 3,
                zone: Some(ZoneStatus {
                    zone: "a".into(),
                    same_zone_calls: 95,
                    other_zone_calls: 5,
                    spilled_unavailable: 4,
                    spilled_overloaded: 1,
                    overloaded: true,
                }),
                endpoints: vec![
                    endpoint("127.0.0.1:4000", 10, false),
                    endpoint("127.0.0.1:4001", 5, true),
                ],
            },
            TargetStatus {
                service: "tasks".into(),
                discovery: DiscoveryStatus {
                    initialized: false,
                    consul_index: 0,
                    stale_ms: None,
                    last_error: None,
                    datacenter: None,
                },
                breaker: "closed".into(),
                breaker_open_ms: None,
                breaker_opened: 0,
                zone: None,
                endpoints: Vec::new(),
            },
        ])
    }

    #[test]
    fn the_client_status_becomes_labelled_series() {
        let metrics = Metrics::new();
        metrics.register_collector(MeshClientCollector::from_fn(status));
        let text = metrics.encode(Format::PrometheusText).expect("encode");
        for expected in [
            "mesh_client_discovery_stale{service=\"priority\"} 1\n",
            "mesh_client_discovery_stale{service=\"tasks\"} 0\n",
            "mesh_client_discovery_age_seconds{service=\"priority\"} 2.5\n",
            "mesh_client_breaker_state{service=\"priority\"} 1\n",
            "mesh_client_breaker_state{service=\"tasks\"} 0\n",
            "# TYPE mesh_client_breaker_opened_total counter\n",
            "mesh_client_breaker_opened_total{service=\"priority\"} 3\n",
            "mesh_client_endpoint_requests_total{service=\"priority\",endpoint=\"127.0.0.1:4000\"} 10\n",
            "mesh_client_endpoint_requests_total{service=\"priority\",endpoint=\"127.0.0.1:4001\"} 5\n",
            "mesh_client_endpoint_failures_total{service=\"priority\",endpoint=\"127.0.0.1:4000\"} 1\n",
            "mesh_client_endpoint_in_flight{service=\"priority\",endpoint=\"127.0.0.1:4000\"} 2\n",
            "mesh_client_endpoint_ewma_seconds{service=\"priority\",endpoint=\"127.0.0.1:4000\"} 0.0015\n",
            "mesh_client_endpoint_ejected{service=\"priority\",endpoint=\"127.0.0.1:4001\"} 1\n",
            "mesh_client_endpoint_ejected{service=\"priority\",endpoint=\"127.0.0.1:4000\"} 0\n",
            "mesh_client_endpoint_connections{service=\"priority\",endpoint=\"127.0.0.1:4000\"} 1\n",
            "mesh_client_failed_over{service=\"priority\"} 1\n",
            "mesh_client_failed_over{service=\"tasks\"} 0\n",
            "mesh_client_zone_calls_total{service=\"priority\",locality=\"same-zone\"} 95\n",
            "mesh_client_zone_calls_total{service=\"priority\",locality=\"other-zone\"} 5\n",
            "mesh_client_zone_spills_total{service=\"priority\",reason=\"unavailable\"} 4\n",
            "mesh_client_zone_spills_total{service=\"priority\",reason=\"overloaded\"} 1\n",
            "mesh_client_zone_overloaded{service=\"priority\"} 1\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("service=\"tasks\",endpoint"), "{text}");
        assert!(
            !text.contains("zone_calls_total{service=\"tasks\""),
            "no zone series for a service called from no zone: {text}"
        );
    }

    #[test]
    fn a_client_that_calls_nothing_shows_no_family() {
        let metrics = Metrics::new();
        metrics.register_collector(MeshClientCollector::from_fn(|| ClientStatus(Vec::new())));
        let text = metrics.encode(Format::PrometheusText).expect("encode");
        assert!(!text.contains("mesh_client"), "{text}");
    }
}
