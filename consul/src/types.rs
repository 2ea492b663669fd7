//! The Consul HTTP API's request and answer bodies used by protomesh, as serde types with
//! Consul's PascalCase field names. Decoding is lenient: missing or `null` fields take their
//! default value and unknown fields are ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration;

/// Deserializes `null` (and a missing field, together with `#[serde(default)]`) as the
/// type's default value.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A service instance to register with the local agent (`PUT /v1/agent/service/register`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// Unique instance id on this agent; when empty Consul uses the name.
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Logical service name (what callers discover).
    pub name: String,
    /// Tags used for filtering.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Address of the instance; when empty Consul uses the node's address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Port of the instance.
    pub port: u16,
    /// Free-form metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Health checks attached to the instance.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckRegistration>,
    /// Whether the catalog's tags may be changed by others (anti-entropy leaves them alone).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub enable_tag_override: bool,
}

impl ServiceRegistration {
    /// A registration of instance `id` of service `name`, with nothing else set yet.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            ..Self::default()
        }
    }

    /// Sets the instance's address and port.
    pub fn with_address(mut self, address: impl Into<String>, port: u16) -> Self {
        self.address = address.into();
        self.port = port;
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds a metadata entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Adds a health check.
    pub fn with_check(mut self, check: CheckRegistration) -> Self {
        self.checks.push(check);
        self
    }

    /// The id Consul will know the instance by: `id`, or `name` when `id` is empty.
    pub fn effective_id(&self) -> &str {
        if self.id.is_empty() {
            &self.name
        } else {
            &self.id
        }
    }
}

/// A health check definition inside a [`ServiceRegistration`].
///
/// Durations are sent as Go duration strings (`"1s"`, `"500ms"`, `"60s"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckRegistration {
    /// Check id; Consul derives one (`service:<id>[:n]`) when absent.
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    /// Human-readable name.
    pub name: String,
    /// gRPC health-check target, `host:port` or `host:port/pkg.Service`.
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// Use TLS for the gRPC check.
    #[serde(rename = "GRPCUseTLS", skip_serializing_if = "std::ops::Not::not")]
    pub grpc_use_tls: bool,
    /// HTTP check URL.
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// TCP check target, `host:port`.
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// Time-to-live of a TTL check (the service must report before it runs out).
    #[serde(
        rename = "TTL",
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_opt"
    )]
    pub ttl: Option<Duration>,
    /// How often the agent runs the check (gRPC, HTTP, TCP).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_opt"
    )]
    pub interval: Option<Duration>,
    /// Time limit of one check run.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_opt"
    )]
    pub timeout: Option<Duration>,
    /// Consul deregisters the service after it has been critical this long (minimum 1 min;
    /// the reaper runs every 30 s).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_opt"
    )]
    pub deregister_critical_service_after: Option<Duration>,
    /// Initial status (Consul's default is critical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    /// Free-form notes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl CheckRegistration {
    /// A gRPC health check of `target` (`host:port` or `host:port/pkg.Service`) run every
    /// `interval`.
    pub fn grpc(name: impl Into<String>, target: impl Into<String>, interval: Duration) -> Self {
        Self {
            name: name.into(),
            grpc: Some(target.into()),
            interval: Some(interval),
            ..Self::default()
        }
    }

    /// An HTTP check of `url` run every `interval`.
    pub fn http(name: impl Into<String>, url: impl Into<String>, interval: Duration) -> Self {
        Self {
            name: name.into(),
            http: Some(url.into()),
            interval: Some(interval),
            ..Self::default()
        }
    }

    /// A TCP connect check of `target` (`host:port`) run every `interval`.
    pub fn tcp(name: impl Into<String>, target: impl Into<String>, interval: Duration) -> Self {
        Self {
            name: name.into(),
            tcp: Some(target.into()),
            interval: Some(interval),
            ..Self::default()
        }
    }

    /// A TTL check: the service itself must report its status within `ttl`.
    pub fn ttl(name: impl Into<String>, ttl: Duration) -> Self {
        Self {
            name: name.into(),
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    /// Sets the check id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.check_id = Some(id.into());
        self
    }

    /// Sets the time limit of one check run.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes the gRPC check use TLS.
    pub fn with_grpc_use_tls(mut self, use_tls: bool) -> Self {
        self.grpc_use_tls = use_tls;
        self
    }

    /// Sets how long the service may stay critical before Consul deregisters it.
    pub fn with_deregister_critical_service_after(mut self, after: Duration) -> Self {
        self.deregister_critical_service_after = Some(after);
        self
    }

    /// Sets the initial status.
    pub fn with_status(mut self, status: CheckStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the notes.
    pub fn with_notes(mut self, notes: impl Into<String>) -> Self {
        self.notes = Some(notes.into());
        self
    }
}

/// The status of a health check, ordered from best to worst.
///
/// Decoding never fails: an unknown (or `null`) status is treated as
/// [`CheckStatus::Critical`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckStatus {
    /// `"passing"`.
    Passing,
    /// `"warning"`.
    Warning,
    /// `"critical"` (also any status this crate does not know).
    #[default]
    Critical,
    /// `"maintenance"`: the node or service is in maintenance mode.
    Maintenance,
}

impl CheckStatus {
    /// Consul's lowercase name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Maintenance => "maintenance",
        }
    }

    /// Parses Consul's name of a status; anything unknown is `Critical`.
    pub fn from_consul(value: &str) -> Self {
        match value {
            "passing" => Self::Passing,
            "warning" => Self::Warning,
            "maintenance" => Self::Maintenance,
            _ => Self::Critical,
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CheckStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CheckStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Option::<String>::deserialize(deserializer)?;
        Ok(value.map_or(Self::Critical, |v| Self::from_consul(&v)))
    }
}

/// A service instance as the agent (`GET /v1/agent/service/:id`) or the health endpoint
/// (the `Service` object of an entry) describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    /// Instance id.
    #[serde(rename = "ID", deserialize_with = "null_as_default")]
    pub id: String,
    /// Service name.
    #[serde(deserialize_with = "null_as_default")]
    pub service: String,
    /// Tags (`null` decodes as empty).
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Instance address; empty means "use the node's address".
    #[serde(deserialize_with = "null_as_default")]
    pub address: String,
    /// Instance port.
    #[serde(deserialize_with = "null_as_default")]
    pub port: u16,
    /// Metadata (`null` decodes as empty).
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    /// Datacenter, when the endpoint reports it (often absent: empty).
    #[serde(deserialize_with = "null_as_default")]
    pub datacenter: String,
}

/// A catalog node (the `Node` object of a health entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// Node id (a UUID).
    #[serde(rename = "ID", deserialize_with = "null_as_default")]
    pub id: String,
    /// Node name.
    #[serde(deserialize_with = "null_as_default")]
    pub node: String,
    /// Node address.
    #[serde(deserialize_with = "null_as_default")]
    pub address: String,
    /// Node datacenter.
    #[serde(deserialize_with = "null_as_default")]
    pub datacenter: String,
    /// Node metadata (`null` decodes as empty).
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
}

/// One health check's current state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    /// Node the check runs on.
    #[serde(deserialize_with = "null_as_default")]
    pub node: String,
    /// Check id.
    #[serde(rename = "CheckID", deserialize_with = "null_as_default")]
    pub check_id: String,
    /// Check name.
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    /// Current status.
    pub status: CheckStatus,
    /// Output of the last run.
    #[serde(deserialize_with = "null_as_default")]
    pub output: String,
    /// Service the check belongs to; empty for node checks (e.g. `serfHealth`).
    #[serde(rename = "ServiceID", deserialize_with = "null_as_default")]
    pub service_id: String,
    /// Name of that service.
    #[serde(deserialize_with = "null_as_default")]
    pub service_name: String,
    /// Check kind (`"grpc"`, `"ttl"`, `"http"`, `"tcp"`; empty for `serfHealth`).
    #[serde(rename = "Type", deserialize_with = "null_as_default")]
    pub type_: String,
}

/// One element of `GET /v1/health/service/:name`: an instance, its node and all checks
/// (node checks included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEntry {
    /// The node the instance runs on.
    #[serde(deserialize_with = "null_as_default")]
    pub node: Node,
    /// The instance.
    #[serde(deserialize_with = "null_as_default")]
    pub service: AgentService,
    /// Node and service checks.
    #[serde(deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The worst status among the checks (`Passing` when there are none), with Consul's
    /// precedence: maintenance, then critical, then warning, then passing.
    pub fn aggregated_status(&self) -> CheckStatus {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(CheckStatus::Passing)
    }

    /// The address to dial: the service's address, or the node's when the service has none.
    pub fn address(&self) -> String {
        if self.service.address.is_empty() {
            self.node.address.clone()
        } else {
            self.service.address.clone()
        }
    }
}

/// What protomesh needs from `GET /v1/agent/self` (its `Config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelf {
    /// The agent's datacenter.
    #[serde(deserialize_with = "null_as_default")]
    pub datacenter: String,
    /// The agent's node name.
    #[serde(deserialize_with = "null_as_default")]
    pub node_name: String,
    /// The agent's node id.
    #[serde(rename = "NodeID", deserialize_with = "null_as_default")]
    pub node_id: String,
    /// The Consul version, e.g. `"1.8.7"`.
    #[serde(deserialize_with = "null_as_default")]
    pub version: String,
    /// Whether the agent is a server.
    #[serde(deserialize_with = "null_as_default")]
    pub server: bool,
}

/// The envelope of `GET /v1/agent/self`; only `Config` is read.
#[derive(Debug, Deserialize)]
pub(crate) struct AgentSelfEnvelope {
    #[serde(rename = "Config", default)]
    pub(crate) config: AgentSelf,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const AGENT_SELF: &str = include_str!("../tests/fixtures/agent_self.json");
    const AGENT_SERVICE: &str = include_str!("../tests/fixtures/agent_service.json");
    const HEALTH_SERVICE: &str = include_str!("../tests/fixtures/health_service.json");
    const CATALOG_SERVICES: &str = include_str!("../tests/fixtures/catalog_services.json");
    const STATUS_LEADER: &str = include_str!("../tests/fixtures/status_leader.json");

    #[test]
    fn decodes_recorded_agent_self() {
        let envelope: AgentSelfEnvelope = serde_json::from_str(AGENT_SELF).unwrap();
        let me = envelope.config;
        assert_eq!(me.datacenter, "dc1");
        assert_eq!(me.node_name, "exp-node-1");
        assert_eq!(me.version, "1.8.7");
        assert_eq!(me.node_id, "1d688be1-eddc-36aa-60c3-b6c96cb0fdd7");
        assert!(me.server);
    }

    #[test]
    fn decodes_recorded_agent_service() {
        let svc: AgentService = serde_json::from_str(AGENT_SERVICE).unwrap();
        assert_eq!(svc.id, "greeter-1");
        assert_eq!(svc.service, "greeter");
        assert_eq!(svc.tags, ["v1", "grpc"]);
        assert_eq!(svc.address, "127.0.0.1");
        assert_eq!(svc.port, 50051);
        assert_eq!(svc.meta.get("version").map(String::as_str), Some("0.1.0"));
        assert_eq!(svc.datacenter, "");
    }

    #[test]
    fn decodes_recorded_health_service() {
        let entries: Vec<ServiceEntry> = serde_json::from_str(HEALTH_SERVICE).unwrap();
        assert_eq!(entries.len(), 2);

        let grpc = &entries[0];
        assert_eq!(grpc.node.node, "exp-node-1");
        assert_eq!(grpc.node.address, "127.0.0.1");
        assert_eq!(grpc.node.datacenter, "dc1");
        assert_eq!(grpc.service.id, "greeter-1");
        assert_eq!(grpc.service.port, 50051);
        assert_eq!(grpc.checks.len(), 2);
        assert_eq!(grpc.checks[0].check_id, "serfHealth");
        assert_eq!(grpc.checks[0].status, CheckStatus::Passing);
        assert_eq!(grpc.checks[0].type_, "");
        let check = &grpc.checks[1];
        assert_eq!(check.check_id, "greeter-1-grpc");
        assert_eq!(check.type_, "grpc");
        assert_eq!(check.status, CheckStatus::Critical);
        assert_eq!(check.service_id, "greeter-1");
        assert_eq!(check.service_name, "greeter");
        // The agent syncs output-only changes to the catalog lazily (check_update_interval),
        // so the health endpoint still shows an empty output here.
        assert_eq!(check.output, "");
        assert_eq!(grpc.aggregated_status(), CheckStatus::Critical);
        assert_eq!(grpc.address(), "127.0.0.1");

        // Registered without an address, with `"Meta": null`: falls back to the node.
        let ttl = &entries[1];
        assert_eq!(ttl.service.id, "greeter-2");
        assert_eq!(ttl.service.address, "");
        assert!(ttl.service.meta.is_empty());
        assert!(ttl.service.tags.is_empty());
        assert_eq!(ttl.aggregated_status(), CheckStatus::Passing);
        assert_eq!(ttl.address(), "127.0.0.1");
    }

    #[test]
    fn decodes_recorded_catalog_services_and_leader() {
        let services: BTreeMap<String, Vec<String>> =
            serde_json::from_str(CATALOG_SERVICES).unwrap();
        assert_eq!(services["greeter"], ["v1", "grpc"]);
        assert!(services["consul"].is_empty());
        let leader: String = serde_json::from_str(STATUS_LEADER).unwrap();
        assert!(leader.starts_with("127.0.0.1:"), "{leader}");
    }

    #[test]
    fn lenient_on_nulls_and_unknowns() {
        let entry: ServiceEntry = serde_json::from_str(
            r#"{"Node":{"Node":"n","Address":"10.0.0.1","TaggedAddresses":null,"Extra":1},
                "Service":{"ID":"a","Service":"s","Tags":null,"Meta":null,"Port":1,
                           "TaggedAddresses":{"lan_ipv4":{"Address":"10.0.0.1","Port":1}}},
                "Checks":[{"CheckID":"c","Status":"weird"},{"CheckID":"d","Status":null},
                          {"CheckID":"m","Status":"maintenance"}]}"#,
        )
        .unwrap();
        assert_eq!(entry.checks[0].status, CheckStatus::Critical);
        assert_eq!(entry.checks[1].status, CheckStatus::Critical);
        assert_eq!(entry.aggregated_status(), CheckStatus::Maintenance);
        assert_eq!(entry.address(), "10.0.0.1");

        let entry: ServiceEntry = serde_json::from_str(r#"{"Checks":null}"#).unwrap();
        assert_eq!(entry.aggregated_status(), CheckStatus::Passing);
    }

    #[test]
    fn check_status_display_and_order() {
        assert_eq!(CheckStatus::Passing.to_string(), "passing");
        assert_eq!(CheckStatus::Maintenance.to_string(), "maintenance");
        assert!(CheckStatus::Passing < CheckStatus::Warning);
        assert!(CheckStatus::Warning < CheckStatus::Critical);
        assert!(CheckStatus::Critical < CheckStatus::Maintenance);
    }

    #[test]
    fn registration_serializes_consul_names_and_skips_empty() {
        let reg = ServiceRegistration::new("greeter-1", "greeter")
            .with_address("127.0.0.1", 50051)
            .with_tag("v1")
            .with_meta("version", "0.1.0")
            .with_check(
                CheckRegistration::grpc(
                    "gRPC health",
                    "127.0.0.1:50051/helloworld.Greeter",
                    Duration::from_secs(1),
                )
                .with_id("greeter-1-grpc")
                .with_timeout(Duration::from_millis(500))
                .with_deregister_critical_service_after(Duration::from_secs(60)),
            );
        let json = serde_json::to_value(&reg).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ID": "greeter-1",
                "Name": "greeter",
                "Tags": ["v1"],
                "Address": "127.0.0.1",
                "Port": 50051,
                "Meta": {"version": "0.1.0"},
                "Checks": [{
                    "CheckID": "greeter-1-grpc",
                    "Name": "gRPC health",
                    "GRPC": "127.0.0.1:50051/helloworld.Greeter",
                    "Interval": "1s",
                    "Timeout": "500ms",
                    "DeregisterCriticalServiceAfter": "60s"
                }]
            })
        );

        let minimal = serde_json::to_value(ServiceRegistration::new("", "svc")).unwrap();
        assert_eq!(minimal, serde_json::json!({"Name": "svc", "Port": 0}));
        assert_eq!(ServiceRegistration::new("", "svc").effective_id(), "svc");
    }

    #[test]
    fn ttl_check_serializes_status_and_tls_flag() {
        let check = CheckRegistration::ttl("ttl", Duration::from_secs(30))
            .with_status(CheckStatus::Passing)
            .with_notes("reported by the service");
        assert_eq!(
            serde_json::to_value(&check).unwrap(),
            serde_json::json!({"Name": "ttl", "TTL": "30s", "Status": "passing",
                               "Notes": "reported by the service"})
        );
        let tls =
            CheckRegistration::grpc("g", "h:1", Duration::from_secs(5)).with_grpc_use_tls(true);
        assert_eq!(
            serde_json::to_value(&tls).unwrap(),
            serde_json::json!({"Name": "g", "GRPC": "h:1", "GRPCUseTLS": true, "Interval": "5s"})
        );
    }
}
