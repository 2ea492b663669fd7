//! The admin HTTP listener every mesh process can open with `--admin ADDR`, apart from its public
//! port: `/healthz` (the process runs), `/readyz` (it takes traffic; 503 once shutdown began or
//! while its readiness check fails), `/mesh`, what its mesh client knows about the services it
//! calls (JSON, or a table with `?format=text`; `mesh status --client ADDR` prints it), and
//! `/metrics`, its Prometheus metrics ([`crate::metrics`]; the Prometheus text format, or
//! OpenMetrics when the `Accept` header asks for it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::Mesh;
use crate::metrics::{Format, Metrics};

/// A readiness check `/readyz` runs besides the shutdown flag.
type ReadinessCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the admin listener on {addr} (--admin / PROTOMESH_ADMIN): {source}")]
pub struct AdminError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The operating system's reason.
    #[source]
    pub source: std::io::Error,
}

/// What the admin endpoints report on; clones share it.
#[derive(Clone, Default)]
pub struct AdminState {
    mesh: Option<Mesh>,
    ready: Arc<AtomicBool>,
    readiness: Option<ReadinessCheck>,
    metrics: Option<Metrics>,
    /// More endpoints of the process (the gateway's detailed `/routes`).
    extra: Option<Router>,
}

impl AdminState {
    /// State reporting `mesh`'s client view (none: `/mesh` lists no service), ready at first.
    pub fn new(mesh: Option<Mesh>) -> Self {
        Self {
            mesh,
            ready: Arc::new(AtomicBool::new(true)),
            readiness: None,
            metrics: None,
            extra: None,
        }
    }

    /// Serves `metrics` as `/metrics` (without, `/metrics` answers 404).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Makes `/readyz` answer 503 while `check` returns false too (the gateway: until it has read
    /// the Consul catalog).
    pub fn with_readiness(mut self, check: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.readiness = Some(Arc::new(check));
        self
    }

    /// Serves `routes` on the admin listener too (for what only operators may see: the
    /// gateway's `/routes` with addresses and upstream errors).
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.extra = Some(routes);
        self
    }

    /// Sets what `/readyz` answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// A bound admin listener.
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminError { addr, source })?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The address really bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, state: AdminState, stop: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, router(state))
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    }

    /// Serves in a background task until the returned handle is dropped.
    pub fn spawn(self, state: AdminState) -> AdminHandle {
        let local_addr = self.local_addr;
        let stop = CancellationToken::new();
        let serving = stop.clone();
        tokio::spawn(async move {
            if let Err(err) = self.serve(state, serving).await {
                tracing::error!(error = %err, "admin listener failed");
            }
        });
        AdminHandle {
            local_addr,
            _stop: stop.drop_guard(),
        }
    }
}

/// A running admin listener (see [`AdminServer::spawn`]); dropping it stops the listener.
#[derive(Debug)]
pub struct AdminHandle {
    local_addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

impl AdminHandle {
    /// The address the listener bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let extra = state.extra.clone();
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/mesh", get(mesh_status))
        .route("/metrics", get(metrics))
        .with_state(state);
    match extra {
        Some(extra) => router.merge(extra),
        None => router,
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if state.readiness.as_ref().is_some_and(|check| !check()) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(metrics) = state.metrics.as_ref() else {
        return (StatusCode::NOT_FOUND, "metrics are off in this process\n").into_response();
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::negotiate(accept);
    match metrics.render(format).await {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

async fn mesh_status(
    State(state): State<AdminState>,
    Query(query): Query<FormatQuery>,
) -> Response {
    let status = state
        .mesh
        .as_ref()
        .map(Mesh::status)
        .unwrap_or(crate::client::status::ClientStatus(Vec::new()));
    match query.format.as_deref() {
        None | Some("json") => Json(status).into_response(),
        Some("text") => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            status.to_string(),
        )
            .into_response(),
        Some(other) => (
            StatusCode::BAD_REQUEST,
            format!("unknown format {other:?}: use json or text\n"),
        )
            .into_response(),
    }
}
