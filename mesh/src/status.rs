//! `mesh status`: every service in the Consul catalog, its instances, their addresses and the
//! state of their checks, as a table.

use std::fmt;

use protomesh_consul::{CheckStatus, ConsulClient, QueryOptions};

use super::DevMeshError;

/// One instance as Consul sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// Service name.
    pub service: String,
    /// Instance (service) ID.
    pub id: String,
    /// `host:port` it is reached at.
    pub address: String,
    /// Worst state of its checks (passing when it has none).
    pub status: CheckStatus,
    /// Its checks: name, state, and the check's last output.
    pub checks: Vec<(String, CheckStatus, String)>,
    /// Its tags.
    pub tags: Vec<String>,
}

/// Every instance of every service in the catalog (the `consul` service itself left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// Instances, sorted by service then ID.
    pub instances: Vec<InstanceStatus>,
}

impl StatusReport {
    /// Instances of `service` that pass every check.
    pub fn passing(&self, service: &str) -> usize {
        self.instances
            .iter()
            .filter(|i| i.service == service && i.status == CheckStatus::Passing)
            .count()
    }
}

/// Reads the state of the mesh from Consul.
pub async fn status(client: &ConsulClient) -> Result<StatusReport, DevMeshError> {
    let catalog = client.catalog_services(&QueryOptions::default()).await?;
    let mut instances = Vec::new();
    for name in catalog
        .value
        .keys()
        .filter(|name| name.as_str() != "consul")
    {
        let entries = client
            .health_service(name, &QueryOptions::default())
            .await?;
        for entry in entries.value {
            instances.push(InstanceStatus {
                service: name.clone(),
                id: entry.service.id.clone(),
                address: format!("{}:{}", entry.address(), entry.service.port),
                status: entry.aggregated_status(),
                checks: entry
                    .checks
                    .iter()
                    .map(|c| (c.name.clone(), c.status, c.output.trim().to_owned()))
                    .collect(),
                tags: entry.service.tags.clone(),
            });
        }
    }
    instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    Ok(StatusReport { instances })
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.instances.is_empty() {
            return writeln!(f, "no services registered");
        }
        let width = |column: fn(&InstanceStatus) -> usize, title: &str| {
            self.instances
                .iter()
                .map(column)
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let ws = width(|i| i.service.len(), "SERVICE");
        let wi = width(|i| i.id.len(), "INSTANCE");
        let wa = width(|i| i.address.len(), "ADDRESS");
        writeln!(
            f,
            "{:ws$}  {:wi$}  {:wa$}  {:9}  CHECKS",
            "SERVICE", "INSTANCE", "ADDRESS", "STATUS"
        )?;
        for i in &self.instances {
            let checks = i
                .checks
                .iter()
                .filter(|(name, _, _)| name != "Serf Health Status")
                .map(|(name, status, _)| format!("{name}: {status}"))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                f,
                "{:ws$}  {:wi$}  {:wa$}  {:9}  {checks}",
                i.service,
                i.id,
                i.address,
                i.status.to_string()
            )?;
        }
        Ok(())
    }
}

/// What the mesh client of the process whose admin listener is at `admin` knows about the
/// services it calls, as the table its `/mesh?format=text` endpoint prints.
pub async fn client_status(admin: &str) -> Result<String, DevMeshError> {
    let unreachable = |reason: String| DevMeshError::Admin {
        address: admin.to_owned(),
        reason,
    };
    let (status, text) = http_get(admin, "/mesh?format=text")
        .await
        .map_err(unreachable)?;
    if !status.is_success() {
        return Err(unreachable(format!("HTTP {status}: {}", text.trim())));
    }
    Ok(text)
}

/// `GET http://{addr}{path}` with a 5 s bound: the status and the body as text.
pub(crate) async fn http_get(addr: &str, path: &str) -> Result<(http::StatusCode, String), String> {
    use http_body_util::{BodyExt, Empty};
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|err: http::uri::InvalidUri| err.to_string())?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| "no answer within 5s".to_owned())?
        .map_err(|err| protomesh::telemetry::error_chain(&err))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| err.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_each_instance_with_its_checks() {
        let report = StatusReport {
            instances: vec![InstanceStatus {
                service: "priority".into(),
                id: "priority-127.0.0.1-4000".into(),
                address: "127.0.0.1:4000".into(),
                status: CheckStatus::Passing,
                checks: vec![
                    (
                        "Serf Health Status".into(),
                        CheckStatus::Passing,
                        String::new(),
                    ),
                    (
                        "gRPC health of a.B".into(),
                        CheckStatus::Passing,
                        String::new(),
                    ),
                ],
                tags: vec!["grpc".into()],
            }],
        };
        let text = report.to_string();
        assert!(text.starts_with("SERVICE"), "{text}");
        assert!(
            text.contains("priority-127.0.0.1-4000  127.0.0.1:4000  passing"),
            "{text}"
        );
        assert!(text.contains("gRPC health of a.B: passing"), "{text}");
        assert!(!text.contains("Serf"), "{text}");
        assert_eq!(report.passing("priority"), 1);
        assert_eq!(report.passing("tasks"), 0);
    }

    #[test]
    fn an_empty_catalog_says_so() {
        assert_eq!(
            StatusReport::default().to_string(),
            "no services registered\n"
        );
    }
}
