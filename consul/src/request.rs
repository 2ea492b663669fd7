//! Pure request building: turns an API call (endpoint + options) and a [`ConsulConfig`] into an
//! [`http::Request`], without any I/O, so that it can be unit-tested.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::Method;

use crate::config::ConsulConfig;
use crate::duration::to_go_duration;
use crate::error::ConsulError;
use crate::types::{CheckStatus, ServiceRegistration};

/// Options of the read (query) endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Only instances whose checks are all passing (`?passing`; health endpoint only).
    pub passing: bool,
    /// Only instances with this tag (health endpoint only).
    pub tag: Option<String>,
    /// Blocking query: return when the result's index moves past this one...
    pub index: Option<u64>,
    /// ...or after this long (Consul adds up to `wait/16` of jitter; default 5 min).
    pub wait: Option<Duration>,
    /// Datacenter to ask, overriding the configuration's.
    pub datacenter: Option<String>,
}

impl QueryOptions {
    /// Only passing instances.
    pub fn with_passing(mut self, passing: bool) -> Self {
        self.passing = passing;
        self
    }

    /// Only instances with `tag`.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Makes the query a blocking one: wait up to `wait` for the index to move past `index`.
    pub fn blocking(mut self, index: u64, wait: Duration) -> Self {
        self.index = Some(index);
        self.wait = Some(wait);
        self
    }

    /// Asks datacenter `dc` instead of the configured one.
    pub fn with_datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }
}

/// Name of the header carrying the ACL token.
pub const TOKEN_HEADER: &str = "x-consul-token";

/// Consul's default blocking-query wait when `index` is given without `wait`.
const DEFAULT_BLOCKING_WAIT: Duration = Duration::from_secs(300);

/// One Consul HTTP API call, before it is bound to a [`ConsulConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: Method,
    /// Path, with every variable segment already percent-encoded.
    pub path: String,
    /// Query parameters (not encoded yet); an empty value is sent as a bare key (`?passing`).
    pub query: Vec<(String, String)>,
    /// Datacenter overriding the configuration's, if any.
    pub datacenter: Option<String>,
    /// JSON body, if any.
    pub body: Option<Bytes>,
    /// For blocking queries: how long the server may hold the request.
    pub blocking_wait: Option<Duration>,
}

impl ApiRequest {
    fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            datacenter: None,
            body: None,
            blocking_wait: None,
        }
    }

    /// `GET /v1/agent/self`.
    pub fn agent_self() -> Self {
        Self::new(Method::GET, "/v1/agent/self".to_owned())
    }

    /// `GET /v1/status/leader`.
    pub fn status_leader() -> Self {
        Self::new(Method::GET, "/v1/status/leader".to_owned())
    }

    /// `PUT /v1/agent/service/register` with the registration as JSON body.
    pub fn agent_service_register(registration: &ServiceRegistration) -> Result<Self, ConsulError> {
        let mut req = Self::new(Method::PUT, "/v1/agent/service/register".to_owned());
        let body = serde_json::to_vec(registration).map_err(|source| ConsulError::Encode {
            endpoint: req.endpoint(),
            source,
        })?;
        req.body = Some(Bytes::from(body));
        Ok(req)
    }

    /// `PUT /v1/agent/service/deregister/:id`.
    pub fn agent_service_deregister(id: &str) -> Self {
        Self::new(
            Method::PUT,
            format!("/v1/agent/service/deregister/{}", encode_component(id)),
        )
    }

    /// `PUT /v1/agent/check/update/:check_id` with `{"Status": ..., "Output": ...}` as JSON
    /// body: sets the status and output of a TTL check. Consul accepts only `passing`,
    /// `warning` and `critical` (it answers 400 to `maintenance`).
    pub fn agent_check_update(
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<Self, ConsulError> {
        let mut req = Self::new(
            Method::PUT,
            format!("/v1/agent/check/update/{}", encode_component(check_id)),
        );
        let body = serde_json::to_vec(&serde_json::json!({
            "Status": status.as_str(),
            "Output": output,
        }))
        .map_err(|source| ConsulError::Encode {
            endpoint: req.endpoint(),
            source,
        })?;
        req.body = Some(Bytes::from(body));
        Ok(req)
    }

    /// `GET /v1/agent/service/:id`.
    pub fn agent_service(id: &str) -> Self {
        Self::new(
            Method::GET,
            format!("/v1/agent/service/{}", encode_component(id)),
        )
    }

    /// `GET /v1/health/service/:name` with `passing`, `tag`, `index`, `wait`, `dc`.
    pub fn health_service(name: &str, opts: &QueryOptions) -> Self {
        let mut req = Self::new(
            Method::GET,
            format!("/v1/health/service/{}", encode_component(name)),
        );
        if opts.passing {
            req.query.push(("passing".to_owned(), String::new()));
        }
        if let Some(tag) = &opts.tag {
            req.query.push(("tag".to_owned(), tag.clone()));
        }
        req.apply_query_options(opts);
        req
    }

    /// `GET /v1/catalog/services` with `index`, `wait`, `dc`.
    pub fn catalog_services(opts: &QueryOptions) -> Self {
        let mut req = Self::new(Method::GET, "/v1/catalog/services".to_owned());
        req.apply_query_options(opts);
        req
    }

    /// Adds the blocking-query parameters and the datacenter override.
    fn apply_query_options(&mut self, opts: &QueryOptions) {
        if let Some(index) = opts.index {
            self.query.push(("index".to_owned(), index.to_string()));
        }
        if let Some(wait) = opts.wait {
            self.query.push(("wait".to_owned(), to_go_duration(wait)));
        }
        if opts.index.is_some() {
            self.blocking_wait = Some(opts.wait.unwrap_or(DEFAULT_BLOCKING_WAIT));
        }
        self.datacenter = opts.datacenter.clone().filter(|dc| !dc.is_empty());
    }

    /// `"METHOD /path"`, used in error messages (no query string, never the token).
    pub fn endpoint(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The time limit for this request: the configured request timeout, plus the wait and
    /// Consul's jitter (`wait/16`) for blocking queries.
    pub fn timeout(&self, config: &ConsulConfig) -> Duration {
        match self.blocking_wait {
            Some(wait) => config.blocking_timeout(wait),
            None => config.request_timeout,
        }
    }

    /// The full query string (without `?`), `dc` included, percent-encoded.
    pub fn query_string(&self, config: &ConsulConfig) -> String {
        let dc = self.datacenter.as_ref().or(config.datacenter.as_ref());
        self.query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(dc.map(|dc| ("dc", dc.as_str())))
            .map(|(k, v)| {
                if v.is_empty() {
                    encode_component(k)
                } else {
                    format!("{}={}", encode_component(k), encode_component(v))
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Builds the HTTP request: absolute URI on the configured agent, `X-Consul-Token` when a
    /// token is configured, JSON content type when there is a body.
    pub fn to_http(&self, config: &ConsulConfig) -> Result<http::Request<Bytes>, ConsulError> {
        let query = self.query_string(config);
        let uri = if query.is_empty() {
            format!("{}{}", config.address, self.path)
        } else {
            format!("{}{}?{}", config.address, self.path, query)
        };
        let mut builder = http::Request::builder()
            .method(self.method.clone())
            .uri(uri)
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("protomesh-consul/", env!("CARGO_PKG_VERSION"))),
            );
        if let Some(token) = &config.token {
            let mut value = HeaderValue::from_str(token).map_err(|_| ConsulError::Request {
                endpoint: self.endpoint(),
                reason: "the ACL token contains characters that are not allowed in an HTTP \
                         header (check CONSUL_HTTP_TOKEN)"
                    .to_owned(),
            })?;
            value.set_sensitive(true);
            builder = builder.header(TOKEN_HEADER, value);
        }
        if self.body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        builder
            .body(self.body.clone().unwrap_or_default())
            .map_err(|err| ConsulError::Request {
                endpoint: self.endpoint(),
                reason: err.to_string(),
            })
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so the result is safe as a
/// path segment and as a query key or value.
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::CheckRegistration;

    fn config() -> ConsulConfig {
        ConsulConfig::new("127.0.0.1:8500").unwrap()
    }

    #[test]
    fn agent_self_is_a_plain_get() {
        let req = ApiRequest::agent_self().to_http(&config()).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "http://127.0.0.1:8500/v1/agent/self");
        assert!(req.headers().get(TOKEN_HEADER).is_none());
        assert!(req.headers().get(CONTENT_TYPE).is_none());
        assert!(req.body().is_empty());
        assert_eq!(
            ApiRequest::agent_self().timeout(&config()),
            Duration::from_secs(10)
        );
        let leader = ApiRequest::status_leader().to_http(&config()).unwrap();
        assert_eq!(leader.uri(), "http://127.0.0.1:8500/v1/status/leader");
    }

    #[test]
    fn token_and_datacenter_are_sent_everywhere() {
        let config = config().with_token("my-token").with_datacenter("eu1");
        for req in [
            ApiRequest::agent_self(),
            ApiRequest::status_leader(),
            ApiRequest::agent_service("a"),
            ApiRequest::agent_service_deregister("a"),
            ApiRequest::catalog_services(&QueryOptions::default()),
        ] {
            let http = req.to_http(&config).unwrap();
            let token = http.headers().get(TOKEN_HEADER).unwrap();
            assert_eq!(token, "my-token");
            assert!(token.is_sensitive());
            assert_eq!(http.uri().query(), Some("dc=eu1"), "{}", req.endpoint());
        }
        // The token must not leak into error messages' endpoint names.
        assert!(!ApiRequest::agent_self().endpoint().contains("my-token"));
    }

    #[test]
    fn bad_token_is_a_request_error() {
        let config = config().with_token("bad\ntoken");
        let err = ApiRequest::agent_self().to_http(&config).unwrap_err();
        assert!(matches!(err, ConsulError::Request { .. }), "{err:?}");
        assert!(!err.to_string().contains("bad\ntoken"));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        let req = ApiRequest::agent_service("we ird/id?x")
            .to_http(&config())
            .unwrap();
        assert_eq!(
            req.uri(),
            "http://127.0.0.1:8500/v1/agent/service/we%20ird%2Fid%3Fx"
        );
        let req = ApiRequest::agent_service_deregister("a/b")
            .to_http(&config())
            .unwrap();
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.uri().path(), "/v1/agent/service/deregister/a%2Fb");
        let req = ApiRequest::health_service("my svc", &QueryOptions::default());
        assert_eq!(req.path, "/v1/health/service/my%20svc");
        assert_eq!(encode_component("Az09-._~"), "Az09-._~");
        assert_eq!(encode_component("é&="), "%C3%A9%26%3D");
    }

    #[test]
    fn health_service_query_string() {
        let opts = QueryOptions {
            passing: true,
            tag: Some("v1 beta".to_owned()),
            index: Some(42),
            wait: Some(Duration::from_millis(500)),
            datacenter: Some("eu1".to_owned()),
        };
        let config = config().with_datacenter("us1");
        let req = ApiRequest::health_service("greeter", &opts);
        let http = req.to_http(&config).unwrap();
        assert_eq!(http.method(), Method::GET);
        assert_eq!(http.uri().path(), "/v1/health/service/greeter");
        // The options' datacenter overrides the configuration's.
        assert_eq!(
            http.uri().query(),
            Some("passing&tag=v1%20beta&index=42&wait=500ms&dc=eu1")
        );
        // Blocking: wait + wait/16 + request timeout.
        assert_eq!(
            req.timeout(&config),
            Duration::from_millis(500) + Duration::from_millis(500) / 16 + Duration::from_secs(10)
        );
    }

    #[test]
    fn plain_health_query_has_no_query_string() {
        let req = ApiRequest::health_service("greeter", &QueryOptions::default());
        let http = req.to_http(&config()).unwrap();
        assert_eq!(
            http.uri(),
            "http://127.0.0.1:8500/v1/health/service/greeter"
        );
        assert_eq!(req.timeout(&config()), Duration::from_secs(10));
    }

    #[test]
    fn catalog_services_blocking_query() {
        let opts = QueryOptions {
            index: Some(7),
            wait: Some(Duration::from_secs(30)),
            ..QueryOptions::default()
        };
        let req = ApiRequest::catalog_services(&opts);
        let http = req.to_http(&config()).unwrap();
        assert_eq!(
            http.uri(),
            "http://127.0.0.1:8500/v1/catalog/services?index=7&wait=30s"
        );
        assert_eq!(
            req.timeout(&config()),
            Duration::from_secs(30 + 1) + Duration::from_millis(875) + Duration::from_secs(10)
        );
        // `index` without `wait`: Consul waits up to 5 minutes.
        let opts = QueryOptions {
            index: Some(7),
            ..QueryOptions::default()
        };
        let req = ApiRequest::catalog_services(&opts);
        assert_eq!(
            req.timeout(&config()),
            Duration::from_secs(300 + 18) + Duration::from_millis(750) + Duration::from_secs(10)
        );
    }

    #[test]
    fn check_update_sends_status_and_output() {
        let config = config().with_token("t");
        let req =
            ApiRequest::agent_check_update("web 1/ttl", CheckStatus::Warning, "slow: 2s").unwrap();
        assert_eq!(req.endpoint(), "PUT /v1/agent/check/update/web%201%2Fttl");
        assert_eq!(req.timeout(&config), Duration::from_secs(10));
        let http = req.to_http(&config).unwrap();
        assert_eq!(http.method(), Method::PUT);
        assert_eq!(
            http.uri(),
            "http://127.0.0.1:8500/v1/agent/check/update/web%201%2Fttl"
        );
        assert_eq!(http.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(http.headers()[TOKEN_HEADER], "t");
        let body: serde_json::Value = serde_json::from_slice(http.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"Status": "warning", "Output": "slow: 2s"})
        );
        for (status, name) in [
            (CheckStatus::Passing, "passing"),
            (CheckStatus::Critical, "critical"),
        ] {
            let http = ApiRequest::agent_check_update("c", status, "")
                .unwrap()
                .to_http(&config)
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(http.body()).unwrap();
            assert_eq!(body, serde_json::json!({"Status": name, "Output": ""}));
        }
    }

    #[test]
    fn register_sends_json_body_with_grpc_check() {
        let reg = ServiceRegistration::new("greeter-1", "greeter")
            .with_address("127.0.0.1", 50051)
            .with_check(
                CheckRegistration::grpc(
                    "greeter gRPC health",
                    "127.0.0.1:50051/helloworld.Greeter",
                    Duration::from_secs(2),
                )
                .with_timeout(Duration::from_millis(500)),
            );
        let config = config().with_token("t");
        let http = ApiRequest::agent_service_register(&reg)
            .unwrap()
            .to_http(&config)
            .unwrap();
        assert_eq!(http.method(), Method::PUT);
        assert_eq!(
            http.uri(),
            "http://127.0.0.1:8500/v1/agent/service/register"
        );
        assert_eq!(http.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(http.headers()[TOKEN_HEADER], "t");
        let body: serde_json::Value = serde_json::from_slice(http.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "ID": "greeter-1",
                "Name": "greeter",
                "Address": "127.0.0.1",
                "Port": 50051,
                "Checks": [{
                    "Name": "greeter gRPC health",
                    "GRPC": "127.0.0.1:50051/helloworld.Greeter",
                    "Interval": "2s",
                    "Timeout": "500ms"
                }]
            })
        );
    }
}
