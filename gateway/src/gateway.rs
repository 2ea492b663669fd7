//! What every handler of the gateway shares: the [`Gateway`] (mesh client, the discovered
//! state, the options and the edge policies) and its [`GatewayOptions`].

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use protomesh::client::Mesh;
use protomesh_consul::ConsulClient;
use tokio::sync::watch;

use crate::discovery::GatewayState;
use crate::edge::{Edge, EdgeOptions};
use crate::transcode::JsonOptions;

/// How the gateway handles requests.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Largest request body accepted, in bytes (413 above it, before any of it is read).
    pub body_limit: usize,
    /// Time a request body has to arrive whole (408 after it).
    pub body_timeout: Duration,
    /// Deadline of a call when the request sets none (`Grpc-Timeout`).
    pub default_timeout: Duration,
    /// Longest deadline a request may ask for.
    pub max_timeout: Duration,
    /// JSON mapping options.
    pub json: JsonOptions,
    /// Request headers passed on as gRPC metadata, besides `authorization`, `x-request-id` and
    /// `traceparent`/`tracestate`.
    pub forward_headers: Vec<HeaderName>,
    /// Prefix of response headers carrying the answer's gRPC metadata.
    pub metadata_prefix: String,
    /// Authentication, authorization, rate limits and CORS ([`crate::edge`]).
    pub edge: EdgeOptions,
    /// Keep-alive and limits of WebSockets bridged to streaming methods.
    pub websocket: WebSocketOptions,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            body_limit: 4 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            json: JsonOptions::default(),
            forward_headers: Vec::new(),
            metadata_prefix: "grpc-metadata-".to_owned(),
            edge: EdgeOptions::default(),
            websocket: WebSocketOptions::default(),
        }
    }
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) mesh: Mesh,
    pub(crate) state: watch::Receiver<Arc<GatewayState>>,
    pub(crate) options: Arc<GatewayOptions>,
    pub(crate) edge: Arc<Edge>,
    /// The Consul agent the dashboard reads instances' health from (none in tests without one).
    pub(crate) consul: Option<ConsulClient>,
}

impl Gateway {
    /// A gateway calling through `mesh`, routing by the states `state` publishes.
    pub fn new(
        mesh: Mesh,
        state: watch::Receiver<Arc<GatewayState>>,
        options: GatewayOptions,
    ) -> Self {
        let edge = Edge::new(&options.edge, &mesh, &options.forward_headers);
        Self {
            mesh,
            state,
            options: Arc::new(options),
            edge: Arc::new(edge),
            consul: None,
        }
    }

    /// The gateway with `consul` as the source of the dashboard's instance health.
    pub fn with_consul(mut self, consul: ConsulClient) -> Self {
        self.consul = Some(consul);
        self
    }

    /// Rate-limit refusals so far, per rate-limit class.
    pub(crate) fn rate_limit_rejections(&self) -> Vec<(String, u64)> {
        self.edge.rate_limit_rejections()
    }

    /// The state published last.
    pub(crate) fn current(&self) -> Arc<GatewayState> {
        Arc::clone(&self.state.borrow())
    }
}

/// Keep-alive and limits of bridged WebSockets.
#[derive(Debug, Clone)]
pub struct WebSocketOptions {
    /// How often the gateway pings. Default 20 s.
    pub ping_interval: Duration,
    /// A socket the client sent nothing on (not even a pong) for this long is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// The deadline of a bridged call whose method's policy states no default. Default 1 h.
    pub max_duration: Duration,
}

impl Default for WebSocketOptions {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_duration: Duration::from_secs(3600),
        }
    }
}
