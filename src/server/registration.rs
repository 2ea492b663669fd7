//! What an instance tells Consul about itself: its ID, address, tags, meta and one gRPC health check
//! per served gRPC service (so NOT_SERVING on any of them takes the instance out).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use crate::config::ServeConfig;
use crate::consul::{CheckRegistration, ServiceRegistration};

/// The tag every mesh instance carries; the gateway finds services by it.
pub const GRPC_TAG: &str = "grpc";

/// The Consul registration of one instance of service `name` reachable at `advertise`.
///
/// The ID is `<name>-<host>-<port>`, unique per instance on a network. Meta carries the service
/// `version`, the `proto_package` of its first gRPC service, every `grpc_services` name and the
/// `runtime`.
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

    let checks = grpc_services
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
        .collect();

    ServiceRegistration {
        id: format!("{name}-{host}-{}", advertise.port()),
        name: name.to_owned(),
        tags,
        address: host,
        port: advertise.port(),
        meta,
        checks,
        ..Default::default()
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
