//! What an instance tells Consul about itself: its ID, address, tags, meta and one gRPC health check
//! per served gRPC service (so NOT_SERVING on any of them takes the instance out).
//!
//! Under mutual TLS the agent cannot run gRPC checks (Consul 1.8 presents no client certificate),
//! so the instance gets one TTL check instead, which the process keeps passing while every served
//! service is SERVING ([`serving_probe`]) and which runs out when the process stops reporting.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};

use crate::config::ServeConfig;
use crate::consul::{CheckRegistration, CheckStatus, ServiceRegistration, TtlReport};

/// The tag every mesh instance carries; the gateway finds services by it.
pub const GRPC_TAG: &str = "grpc";

/// The Consul registration of one instance of service `name` reachable at `advertise`.
///
/// The ID is `<name>-<host>-<port>`, unique per instance on a network. Meta carries the service
/// `version`, the `proto_package` of its first gRPC service, every `grpc_services` name, the
/// `runtime` and, when it has one, its `zone`.
pub fn instance_registration(
    name: &str,
    version: &str,
    advertise: SocketAddr,
    grpc_services: &[&str],
    config: &ServeConfig,
) -> ServiceRegistration {
    let host = advertise.ip().to_string();
    let mut tags = vec![GRPC_TAG.to_owned()];
    for tag in &config.tags {
        if !tag.is_empty() && !tags.contains(tag) {
            tags.push(tag.clone());
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("version".to_owned(), version.to_owned());
    meta.insert("runtime".to_owned(), "protomesh".to_owned());
    if let Some(package) = grpc_services.first().and_then(|s| proto_package(s)) {
        meta.insert("proto_package".to_owned(), package.to_owned());
    }
    meta.insert("grpc_services".to_owned(), grpc_services.join(","));
    if let Some(zone) = &config.locality.zone {
        meta.insert(crate::client::ZONE_META.to_owned(), zone.clone());
    }

    let id = format!("{name}-{host}-{}", advertise.port());
    let checks = if config.tls.is_enabled() {
        vec![CheckRegistration::ttl(
            format!("TTL health of {}", grpc_services.join(", ")),
            ttl_of(config.check_interval),
        )
        .with_id(ttl_check_id(&id))
        .with_notes("reported by the instance itself: its gRPC port requires client certificates")
        .with_deregister_critical_service_after(config.deregister_after)]
    } else {
        grpc_services
            .iter()
            .map(|service| {
                CheckRegistration::grpc(
                    format!("gRPC health of {service}"),
                    format!("{}/{service}", socket_text(advertise)),
                    config.check_interval,
                )
                .with_timeout(config.check_interval.max(std::time::Duration::from_secs(1)))
                .with_deregister_critical_service_after(config.deregister_after)
            })
            .collect()
    };

    ServiceRegistration {
        id,
        name: name.to_owned(),
        tags,
        address: host,
        port: advertise.port(),
        meta,
        checks,
        ..Default::default()
    }
}

/// The ID of the TTL check of instance `service_id` (mutual TLS only).
pub(crate) fn ttl_check_id(service_id: &str) -> String {
    format!("{service_id}:ttl")
}

/// The TTL of the check the instance reports every `check_interval`: three reports may be
/// missed (a busy machine) before Consul takes the instance out, and never less than 3 s.
fn ttl_of(check_interval: Duration) -> Duration {
    (check_interval * 3).max(Duration::from_secs(3))
}

/// The TTL heartbeat's probe: passing while every one of `grpc_services` is SERVING in this
/// process's own health service, critical (naming the first that is not) otherwise.
pub(crate) fn serving_probe(
    health: &HealthReporter,
    grpc_services: &[&'static str],
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = TtlReport> + Send>>
       + Send
       + Sync
       + 'static {
    let health = std::sync::Arc::new(HealthService::from_health_reporter(health.clone()));
    let services = grpc_services.to_vec();
    move || {
        let (health, services) = (std::sync::Arc::clone(&health), services.clone());
        Box::pin(async move {
            for service in &services {
                let request = tonic::Request::new(HealthCheckRequest {
                    service: (*service).to_owned(),
                });
                let serving = matches!(
                    health.check(request).await,
                    Ok(response) if response.get_ref().status() == ServingStatus::Serving
                );
                if !serving {
                    return TtlReport {
                        status: CheckStatus::Critical,
                        output: format!("{service} is not SERVING"),
                    };
                }
            }
            TtlReport {
                status: CheckStatus::Passing,
                output: format!("SERVING: {}", services.join(", ")),
            }
        })
    }
}

/// `host:port`, with IPv6 hosts in brackets as gRPC targets want them.
fn socket_text(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

/// `protomesh.priority.v1` of `protomesh.priority.v1.PriorityService`.
fn proto_package(service: &str) -> Option<&str> {
    service.rsplit_once('.').map(|(package, _)| package)
}

/// The address to advertise when none is configured: the bound one, unless it is unspecified
/// (`0.0.0.0`/`::`), in which case the local address that routes to the Consul agent (found with
/// an unconnected-in-practice UDP socket: `connect` only picks a route, it sends nothing).
pub(crate) fn advertise_addr(bound: SocketAddr, consul_address: &str) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let agent = consul_address
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let routed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|socket| {
            socket.connect(agent)?;
            socket.local_addr()
        })
        .map(|local| local.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(routed, bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> ServeConfig {
        let mut config = ServeConfig::with_listen("127.0.0.1:0".parse().expect("addr"));
        config.tags = vec!["canary".into(), "grpc".into()];
        config
    }

    #[test]
    fn registration_has_unique_id_tags_meta_and_one_grpc_check_per_service() {
        let addr: SocketAddr = "127.0.0.1:40123".parse().expect("addr");
        let reg = instance_registration(
            "priority",
            "1.2.3",
            addr,
            &["protomesh.priority.v1.PriorityService"],
            &config(),
        );
        assert_eq!(reg.id, "priority-127.0.0.1-40123");
        assert_eq!(reg.name, "priority");
        assert_eq!(reg.address, "127.0.0.1");
        assert_eq!(reg.port, 40123);
        assert_eq!(reg.tags, vec!["grpc", "canary"]);
        assert_eq!(reg.meta["version"], "1.2.3");
        assert_eq!(reg.meta["proto_package"], "protomesh.priority.v1");
        assert!(!reg.meta.contains_key("zone"), "no zone unless given");
        let mut zoned = config();
        zoned.locality.zone = Some("b".into());
        let in_zone = instance_registration("priority", "1", addr, &["x.v1.X"], &zoned);
        assert_eq!(in_zone.meta["zone"], "b");
        assert_eq!(reg.checks.len(), 1);
        assert_eq!(
            reg.checks[0].grpc.as_deref(),
            Some("127.0.0.1:40123/protomesh.priority.v1.PriorityService")
        );
        assert_eq!(reg.checks[0].interval, Some(Duration::from_secs(1)));
        assert_eq!(
            reg.checks[0].deregister_critical_service_after,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn under_mutual_tls_one_ttl_check_replaces_the_grpc_checks() {
        let mut config = config();
        config.tls.cert = Some("cert.pem".into());
        config.tls.key = Some("key.pem".into());
        config.tls.ca = Some("ca.pem".into());
        let addr: SocketAddr = "127.0.0.1:40123".parse().expect("addr");
        let reg = instance_registration("priority", "1", addr, &["a.b.S", "a.b.T"], &config);
        assert_eq!(reg.checks.len(), 1);
        let check = &reg.checks[0];
        assert_eq!(check.grpc, None);
        assert_eq!(check.ttl, Some(Duration::from_secs(3)));
        assert_eq!(
            check.check_id.as_deref(),
            Some("priority-127.0.0.1-40123:ttl")
        );
        assert_eq!(
            check.deregister_critical_service_after,
            Some(Duration::from_secs(60))
        );
        assert_eq!(ttl_of(Duration::from_secs(5)), Duration::from_secs(15));
    }

    #[tokio::test]
    async fn the_serving_probe_passes_only_while_every_service_is_serving() {
        let (health, _service) = tonic_health::server::health_reporter();
        let serving = tonic_health::ServingStatus::Serving;
        health.set_service_status("a.b.S", serving).await;
        health.set_service_status("a.b.T", serving).await;
        let probe = serving_probe(&health, &["a.b.S", "a.b.T"]);
        assert_eq!(probe().await.status, CheckStatus::Passing);

        health
            .set_service_status("a.b.T", tonic_health::ServingStatus::NotServing)
            .await;
        let report = probe().await;
        assert_eq!(report.status, CheckStatus::Critical);
        assert!(report.output.contains("a.b.T"), "{}", report.output);

        let unknown = serving_probe(&health, &["a.b.Unknown"]);
        assert_eq!(unknown().await.status, CheckStatus::Critical);
    }

    #[test]
    fn ipv6_check_targets_use_brackets() {
        let addr: SocketAddr = "[::1]:9000".parse().expect("addr");
        let reg = instance_registration("p", "1", addr, &["a.b.S"], &config());
        assert_eq!(reg.checks[0].grpc.as_deref(), Some("[::1]:9000/a.b.S"));
    }

    #[test]
    fn a_specific_bound_address_is_advertised_as_is() {
        let bound: SocketAddr = "127.0.0.2:7000".parse().expect("addr");
        assert_eq!(advertise_addr(bound, "http://127.0.0.1:8500"), bound);
    }

    #[test]
    fn an_unspecified_bound_address_advertises_the_route_to_the_agent() {
        let bound: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        let advertised = advertise_addr(bound, "http://127.0.0.1:8500");
        assert_eq!(
            advertised,
            "127.0.0.1:7000".parse::<SocketAddr>().expect("addr")
        );
    }
}
