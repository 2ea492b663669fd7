//! The gateway's request pipeline, composed here and nowhere else. A request meets, outermost
//! first:
//!
//! 1. **resolve** ([`crate::resolve`]): the request id (the caller's or a new one) and the
//!    request's target — its route and path bindings, or the native gRPC service it calls —
//!    looked up once in one snapshot of the gateway state, and handed on in the request's
//!    extensions. First, because every layer below reads them: the span carries the id and the
//!    route, the metrics label by the route, the edge takes the route's policy and the handler
//!    calls it, and none of them looks the route up again.
//! 2. **metrics** ([`crate::metrics::record`], only with an admin listener): RED per route
//!    template. Outside everything else below, so a request refused by the edge, or answered by
//!    the gateway's own endpoints, is counted and timed too.
//! 3. **trace** ([`crate::trace::HttpTraceLayer`]): one server span per request, child of the
//!    caller's `traceparent`; outside the edge and the handler, so the mesh call the handler makes
//!    (and a refusal) sits inside it. The probes are not traced.
//! 4. **router**: the gateway's own endpoints (`/healthz`, `/readyz`, `/routes`,
//!    `/openapi.json`; [`crate::handlers::info`]) answer here, before any edge policy; everything
//!    else falls back to the routed requests below.
//! 5. **edge** ([`crate::edge`]): CORS, reserved headers, authentication, authorization, rate
//!    limits — only for routed requests (HTTP and native gRPC alike), after routing so a request
//!    with no route passes untouched to its 404/405/`UNIMPLEMENTED`.
//! 6. **handler** ([`crate::handlers::transcoded`]): transcodes an HTTP request and calls the
//!    service through the mesh client, or forwards a native gRPC one ([`crate::grpc_proxy`]).
//!
//! Every refusal and error on the way becomes an answer in [`crate::errors`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use protomesh::admin::{AdminError, AdminHandle, AdminServer, AdminState};
use protomesh::metrics::Metrics;

use crate::gateway::Gateway;
use crate::handlers::{info, transcoded};
use crate::metrics::{watch_rate_limits, ConnectionCollector, GatewayMetrics};
use crate::resolve::{resolve, Resolved};
use crate::trace::HttpTraceLayer;

/// The gateway's public router, recording no metrics (see [`app_with_admin`] for those).
pub fn app(gateway: Gateway) -> Router {
    pipeline(gateway, None)
}

/// The admin listener's `/routes` (`--admin`, never the public port): every route with its
/// policy, the route table's conflicts and errors, and why each unreachable service is
/// (upstream errors, which may name internal addresses).
pub fn admin_app(gateway: Gateway) -> Router {
    Router::new()
        .route("/routes", get(info::admin_routes))
        .with_state(gateway)
}

/// The gateway's public router and, when `admin` is set, its admin listener there: the router
/// then records the `gateway_http_*` metrics, and the listener serves `/metrics` (with the mesh
/// client's state, the listener's connections and the rate-limit rejections), `/healthz`,
/// `/readyz` (ready once the gateway has read the Consul catalog), `/mesh` and the detailed
/// `/routes`, until the returned handle is dropped. Without `admin`, nothing is recorded.
pub async fn app_with_admin(
    admin: Option<SocketAddr>,
    gateway: Gateway,
) -> Result<(Router, Option<AdminHandle>), AdminError> {
    let Some(addr) = admin else {
        return Ok((app(gateway), None));
    };
    let server = AdminServer::bind(addr).await?;
    let metrics = Metrics::new();
    metrics.watch_mesh(gateway.mesh.clone());
    let limits = gateway.clone();
    watch_rate_limits(&metrics, move || limits.rate_limit_rejections());
    metrics.register_collector(ConnectionCollector);
    let http = GatewayMetrics::register(&metrics);
    let state = gateway.state.clone();
    let admin = AdminState::new(Some(gateway.mesh.clone()))
        .with_metrics(metrics)
        // The detailed routes (addresses, upstream errors) are for operators only.
        .with_routes(admin_app(gateway.clone()))
        .with_readiness(move || state.borrow().ready);
    let handle = server.spawn(admin);
    tracing::info!(admin = %handle.local_addr(), "admin listener: /healthz /readyz /mesh /metrics /routes");
    Ok((pipeline(gateway, Some(http)), Some(handle)))
}

/// The pipeline of the [module](self), in one place. `Router::layer` wraps what is above it,
/// so the layers read bottom-up: the last one added is the one a request meets first.
fn pipeline(gateway: Gateway, metrics: Option<GatewayMetrics>) -> Router {
    let state = gateway.state.clone();
    // 5 and 6: the edge in front of the handler, for routed requests only.
    let routed = transcoded::handle.layer(from_fn_with_state(gateway.clone(), edge_policies));
    // 4: the gateway's own endpoints, then everything else.
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(info::readyz))
        .route("/routes", get(info::routes))
        .route("/openapi.json", get(info::openapi))
        .fallback(routed)
        .with_state(gateway)
        // 3: the span.
        .layer(HttpTraceLayer);
    // 2: the metrics, when recorded.
    let router = match metrics {
        Some(metrics) => router.layer(from_fn_with_state(metrics, crate::metrics::record)),
        None => router,
    };
    // 1: the request id and the target, first.
    router.layer(from_fn_with_state(state, resolve))
}

/// The edge policies ([`crate::edge`]) in front of every routed request.
async fn edge_policies(State(gateway): State<Gateway>, request: Request, next: Next) -> Response {
    let resolved: Arc<Resolved> = Resolved::of(&request, &gateway.state);
    gateway.edge.enforce(&resolved, request, next).await
}
