//! [`ConsulClient`]: sends the Consul HTTP API calls protomesh needs over one pooled hyper
//! client and turns the answers into typed values or [`ConsulError`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::config::normalize_address;
pub use crate::config::ConsulConfig;
use crate::error::ConsulError;
use crate::request::ApiRequest;
pub use crate::request::QueryOptions;
use crate::types::{
    AgentSelf, AgentSelfEnvelope, AgentService, CheckStatus, ServiceEntry, ServiceRegistration,
};

/// Longest part of an error answer's body kept in [`ConsulError::Status`].
const MAX_ERROR_BODY: usize = 4096;

/// Upper bound of the TCP connect time (the request timeout applies too).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A query's answer with Consul's consistency metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResponse<T> {
    /// The decoded body.
    pub value: T,
    /// `X-Consul-Index` (0 when absent): pass it back as [`QueryOptions::index`] to block.
    /// It can go backwards (e.g. after a server restart); callers should then reset to 0.
    pub index: u64,
    /// `X-Consul-Knownleader`.
    pub known_leader: bool,
    /// `X-Consul-Lastcontact` (milliseconds since the server last heard from the leader).
    pub last_contact: Duration,
}

impl<T> QueryResponse<T> {
    /// Transforms the value, keeping the metadata.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> QueryResponse<U> {
        QueryResponse {
            value: f(self.value),
            index: self.index,
            known_leader: self.known_leader,
            last_contact: self.last_contact,
        }
    }
}

/// Reads `X-Consul-Index`, `X-Consul-Knownleader` and `X-Consul-Lastcontact`; absent or
/// malformed headers give 0 / false / zero.
pub(crate) fn query_meta(headers: &HeaderMap) -> (u64, bool, Duration) {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let index = text("x-consul-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let known_leader = text("x-consul-knownleader") == Some("true");
    let last_contact = text("x-consul-lastcontact")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    (index, known_leader, last_contact)
}

/// A small typed client of one Consul agent's HTTP API. Cheap to clone (the connection pool
/// and the configuration are shared).
#[derive(Clone)]
pub struct ConsulClient {
    config: Arc<ConsulConfig>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ConsulClient {
    /// A client for the agent in `config`. Fails only when `config.address` is not a valid
    /// `http://host:port` address. Needs no network and no runtime until the first call.
    pub fn new(mut config: ConsulConfig) -> Result<Self, ConsulError> {
        config.address =
            normalize_address(&config.address).map_err(|reason| ConsulError::InvalidAddress {
                value: config.address.clone(),
                reason,
            })?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.request_timeout.min(MAX_CONNECT_TIMEOUT)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            config: Arc::new(config),
            http,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ConsulConfig {
        &self.config
    }

    /// The agent address, `http://host:port`.
    pub fn address(&self) -> &str {
        &self.config.address
    }

    /// `GET /v1/agent/self`: the agent's datacenter, node name and version.
    pub async fn agent_self(&self) -> Result<AgentSelf, ConsulError> {
        let (_, envelope) = self
            .send_json::<AgentSelfEnvelope>(&ApiRequest::agent_self())
            .await?;
        Ok(envelope.config)
    }

    /// `GET /v1/status/leader`: the Raft leader's address, empty when there is none.
    pub async fn status_leader(&self) -> Result<String, ConsulError> {
        let (_, leader) = self
            .send_json::<String>(&ApiRequest::status_leader())
            .await?;
        Ok(leader)
    }

    /// `PUT /v1/agent/service/register`: registers (or replaces) a service instance on the
    /// agent.
    pub async fn agent_service_register(
        &self,
        registration: &ServiceRegistration,
    ) -> Result<(), ConsulError> {
        self.send(&ApiRequest::agent_service_register(registration)?)
            .await?;
        Ok(())
    }

    /// `PUT /v1/agent/service/deregister/:id`: removes a service instance from the agent.
    pub async fn agent_service_deregister(&self, id: &str) -> Result<(), ConsulError> {
        self.send(&ApiRequest::agent_service_deregister(id)).await?;
        Ok(())
    }

    /// `PUT /v1/agent/check/update/:check_id`: sets the status and output of a TTL check
    /// (`passing`, `warning` or `critical`; Consul answers 400 to `maintenance` and 500 to a
    /// check that is not a TTL check).
    pub async fn agent_check_update(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), ConsulError> {
        self.send(&ApiRequest::agent_check_update(check_id, status, output)?)
            .await?;
        Ok(())
    }

    /// `GET /v1/agent/service/:id`: the instance as the local agent knows it, `None` when the
    /// agent does not know it (404).
    pub async fn agent_service(&self, id: &str) -> Result<Option<AgentService>, ConsulError> {
        match self
            .send_json::<AgentService>(&ApiRequest::agent_service(id))
            .await
        {
            Ok((_, service)) => Ok(Some(service)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `GET /v1/health/service/:name`: the instances of a service with their node and checks.
    /// Set [`QueryOptions::index`] to make it a blocking query.
    pub async fn health_service(
        &self,
        name: &str,
        opts: &QueryOptions,
    ) -> Result<QueryResponse<Vec<ServiceEntry>>, ConsulError> {
        self.query(&ApiRequest::health_service(name, opts))
            .await
            .map(|resp| resp.map(|entries: Option<Vec<ServiceEntry>>| entries.unwrap_or_default()))
    }

    /// `GET /v1/catalog/services`: every service name with the union of its tags.
    pub async fn catalog_services(
        &self,
        opts: &QueryOptions,
    ) -> Result<QueryResponse<BTreeMap<String, Vec<String>>>, ConsulError> {
        self.query(&ApiRequest::catalog_services(opts))
            .await
            .map(|resp| {
                resp.map(|services: Option<BTreeMap<String, Option<Vec<String>>>>| {
                    services
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(name, tags)| (name, tags.unwrap_or_default()))
                        .collect()
                })
            })
    }

    /// Sends a query and decodes its body together with the `X-Consul-*` metadata.
    async fn query<T: DeserializeOwned>(
        &self,
        req: &ApiRequest,
    ) -> Result<QueryResponse<T>, ConsulError> {
        let (headers, value) = self.send_json::<T>(req).await?;
        let (index, known_leader, last_contact) = query_meta(&headers);
        Ok(QueryResponse {
            value,
            index,
            known_leader,
            last_contact,
        })
    }

    /// Sends a request and decodes its JSON body.
    async fn send_json<T: DeserializeOwned>(
        &self,
        req: &ApiRequest,
    ) -> Result<(HeaderMap, T), ConsulError> {
        let (headers, body) = self.send(req).await?;
        let value = serde_json::from_slice(&body).map_err(|source| ConsulError::Decode {
            endpoint: req.endpoint(),
            source,
        })?;
        Ok((headers, value))
    }

    /// Sends a request, reads the whole answer within the request's time limit and turns a
    /// non-2xx status into [`ConsulError::Status`].
    async fn send(&self, req: &ApiRequest) -> Result<(HeaderMap, Bytes), ConsulError> {
        let http_req = req.to_http(&self.config)?.map(Full::new);
        let limit = req.timeout(&self.config);
        let exchange = async {
            let resp = self.http.request(http_req).await.map_err(|err| {
                if err.is_connect() {
                    ConsulError::Connect {
                        address: self.config.address.clone(),
                        source: Box::new(err),
                    }
                } else {
                    ConsulError::Http {
                        endpoint: req.endpoint(),
                        source: Box::new(err),
                    }
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|err| ConsulError::Http {
                    endpoint: req.endpoint(),
                    source: Box::new(err),
                })?
                .to_bytes();
            Ok::<_, ConsulError>((parts, body))
        };
        let (parts, body) =
            tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| ConsulError::Timeout {
                    endpoint: req.endpoint(),
                    after: limit,
                })??;
        if !parts.status.is_success() {
            return Err(ConsulError::Status {
                endpoint: req.endpoint(),
                status: parts.status.as_u16(),
                body: error_body(&body),
            });
        }
        Ok((parts.headers, body))
    }
}

/// Consul's error answers are plain text; keep at most [`MAX_ERROR_BODY`] bytes of it.
fn error_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() <= MAX_ERROR_BODY {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    #[test]
    fn reads_recorded_query_headers() {
        // Recorded from consul 1.8.7: GET /v1/health/service/greeter.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-consul-effective-consistency",
            HeaderValue::from_static("leader"),
        );
        headers.insert("x-consul-index", HeaderValue::from_static("14"));
        headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
        headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
        assert_eq!(query_meta(&headers), (14, true, Duration::ZERO));

        let mut headers = HeaderMap::new();
        headers.insert("x-consul-index", HeaderValue::from_static("1"));
        headers.insert("x-consul-knownleader", HeaderValue::from_static("false"));
        headers.insert("x-consul-lastcontact", HeaderValue::from_static("250"));
        assert_eq!(query_meta(&headers), (1, false, Duration::from_millis(250)));

        assert_eq!(query_meta(&HeaderMap::new()), (0, false, Duration::ZERO));
    }

    #[test]
    fn error_body_is_trimmed_and_bounded() {
        assert_eq!(
            error_body(b"unknown service ID: x\n"),
            "unknown service ID: x"
        );
        let long = "é".repeat(MAX_ERROR_BODY);
        let kept = error_body(long.as_bytes());
        assert!(kept.len() <= MAX_ERROR_BODY + 3);
        assert!(kept.ends_with("..."));
    }

    #[test]
    fn new_validates_and_normalizes_the_address() {
        let mut config = ConsulConfig::new("127.0.0.1:8500").unwrap();
        config.address = "localhost:8500/".to_owned();
        let client = ConsulClient::new(config).unwrap();
        assert_eq!(client.address(), "http://localhost:8500");
        let mut config = ConsulConfig::new("127.0.0.1:8500").unwrap();
        config.address = "https://localhost:8501".to_owned();
        assert!(matches!(
            ConsulClient::new(config),
            Err(ConsulError::InvalidAddress { .. })
        ));
    }

    #[test]
    fn debug_does_not_leak_the_token() {
        let config = ConsulConfig::new("127.0.0.1:8500")
            .unwrap()
            .with_token("hunter2");
        let client = ConsulClient::new(config).unwrap();
        assert!(!format!("{client:?}").contains("hunter2"));
    }
}
