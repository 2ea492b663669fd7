//! The admin HTTP listener every mesh process can open with `--admin ADDR`, apart from its public
//! port: `/healthz` (the process runs), `/readyz` (it takes traffic; 503 once shutdown began) and
//! `/mesh`, what its mesh client knows about the services it calls (JSON, or a table with
//! `?format=text`; `mesh status --client ADDR` prints it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::Mesh;

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
}

impl AdminState {
    /// State reporting `mesh`'s client view (none: `/mesh` lists no service), ready at first.
    pub fn new(mesh: Option<Mesh>) -> Self {
        Self {
            mesh,
            ready: Arc::new(AtomicBool::new(true)),
        }
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
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/mesh", get(mesh_status))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
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
