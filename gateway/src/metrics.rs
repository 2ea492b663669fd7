//! The gateway's Prometheus metrics, served as `/metrics` on its admin listener (`--admin`, never
//! the public port) with `/healthz`, `/readyz`, `/mesh` and the detailed `/routes`:
//! - RED per route: `gateway_http_requests_total{route,method,code}` and
//!   `gateway_http_request_duration_seconds{route,method}` (until the response head), where
//!   `route` is the matched route's path template (`/v1/tasks/{id}`), never the raw path, so the
//!   label stays bounded: the gateway's own endpoints are named by their path (`/routes`), native
//!   gRPC requests are `grpc`, anything no route matched is `unmatched`; `method` is the HTTP
//!   method (`other` for non-standard ones);
//! - the gateway's mesh client state (`mesh_client_*`, as in every service) and `process_*`;
//! - the listener's connections: `gateway_connections_open`, `gateway_connections_refused_total`
//!   (over the cap), `gateway_connections_timed_out_total` (head or idle timeout);
//! - rate-limit rejections per class, `gateway_rate_limited_total{class}`, from the edge's rate
//!   limiter ([`Gateway::rate_limit_rejections`], through [`watch_rate_limits`]).
//!
//! [`router_with_admin`] sets it all up for the binary.
//!
//! The transcoding handler tells the middleware which route it matched with [`note_route`]; a
//! request answered before it got there (refused by the edge policies, say) is looked up in the
//! route table by the middleware itself.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use protomesh::admin::{AdminError, AdminHandle, AdminServer, AdminState};
use protomesh::client::Mesh;
use protomesh::metrics::{Metrics, LATENCY_BUCKETS};
use tokio::sync::watch;

use crate::discovery::GatewayState;
use crate::routes::{Lookup, Route};
use crate::server::Gateway;

/// The `route` of requests no route matched.
pub const UNMATCHED: &str = "unmatched";
/// The `route` of native gRPC requests (forwarded by path).
pub const GRPC: &str = "grpc";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    method: &'static str,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
    method: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The gateway's HTTP metrics; cheap to clone.
#[derive(Clone)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    state: watch::Receiver<Arc<GatewayState>>,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

impl GatewayMetrics {
    /// Registers the `gateway_http_*` families in `metrics`; routes are those of the gateway
    /// states `state` publishes.
    pub fn register(metrics: &Metrics, state: watch::Receiver<Arc<GatewayState>>) -> Self {
        let this = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            state,
        };
        metrics.register(
            "gateway_http_requests",
            "HTTP requests answered by the gateway, by route template, method and status code",
            this.requests.clone(),
        );
        metrics.register(
            "gateway_http_request_duration_seconds",
            "Time from an HTTP request to its response head, by route template and method",
            this.duration.clone(),
        );
        this
    }

    /// `router` with every request recorded.
    pub fn instrument(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), record))
    }

    /// The template of the route `method` and `path` match, if any.
    fn lookup(&self, method: &http::Method, path: &str) -> Option<Arc<str>> {
        match self.state.borrow().table.lookup(method, path) {
            Lookup::Found(route, _) => Some(route.template.to_string().into()),
            _ => None,
        }
    }

    fn observe(&self, route: Arc<str>, method: &'static str, code: u16, seconds: f64) {
        let labels = RouteLabels {
            route: Arc::clone(&route),
            method,
        };
        self.duration.get_or_create(&labels).observe(seconds);
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                code,
            })
            .inc();
    }
}

/// Where the transcoding handler leaves the template of the route it matched.
#[derive(Clone, Default)]
struct MatchedRoute(Arc<OnceLock<Arc<str>>>);

/// Tells the metrics middleware which route the request matched (call it from the handler with
/// the request's extensions; without the middleware it does nothing).
pub fn note_route(extensions: &http::Extensions, route: &Route) {
    if let Some(MatchedRoute(slot)) = extensions.get::<MatchedRoute>() {
        let _ = slot.set(route.template.to_string().into());
    }
}

/// The `method` label of an HTTP method: its name when standard, else `other`.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "other",
    }
}

async fn record(
    State(metrics): State<GatewayMetrics>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let known: Option<Arc<str>> = if let Some(path) = request.extensions().get::<MatchedPath>() {
        Some(path.as_str().into())
    } else if crate::grpc_proxy::is_grpc(request.headers()) {
        Some(GRPC.into())
    } else {
        None
    };
    let matched = MatchedRoute::default();
    let mut unanswered = None;
    if known.is_none() {
        request.extensions_mut().insert(matched.clone());
        unanswered = Some((request.method().clone(), request.uri().clone()));
    }
    let response = next.run(request).await;
    let route = known
        .or_else(|| matched.0.get().cloned())
        // Answered before the handler matched it (an edge policy refused it), or unmatched.
        .or_else(|| unanswered.and_then(|(method, uri)| metrics.lookup(&method, uri.path())))
        .unwrap_or_else(|| UNMATCHED.into());
    metrics.observe(
        route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Counts rate-limit rejections per class at scrape time.
struct RateLimitCollector {
    rejections: Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>,
}

impl std::fmt::Debug for RateLimitCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitCollector").finish_non_exhaustive()
    }
}

impl Collector for RateLimitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rejections = (self.rejections)();
        if rejections.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "gateway_rate_limited",
            "Requests the gateway rejected with 429, by rate-limit class.",
            None,
            MetricType::Counter,
        )?;
        for (class, count) in &rejections {
            let labels = [("class", class.as_str())];
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The hook for the rate limiter's rejection counters: exports what `rejections` returns at each
/// scrape (`(class, rejected so far)` pairs) as `gateway_rate_limited_total{class}`.
pub fn watch_rate_limits(
    metrics: &Metrics,
    rejections: impl Fn() -> Vec<(String, u64)> + Send + Sync + 'static,
) {
    metrics.register_collector(RateLimitCollector {
        rejections: Box::new(rejections),
    });
}

/// The listener's connection counters ([`crate::listener::COUNTERS`]) at each scrape.
#[derive(Debug)]
struct ConnectionCollector;

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = &crate::listener::COUNTERS;
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(
            i64::try_from(counters.open()).unwrap_or(i64::MAX),
        );
        gauge.encode(encoder.encode_descriptor(
            "gateway_connections_open",
            "Client connections open now.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(counters.refused()).encode(encoder.encode_descriptor(
            "gateway_connections_refused",
            "Client connections closed at once because the open-connection cap was reached.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(counters.timed_out()).encode(encoder.encode_descriptor(
            "gateway_connections_timed_out",
            "Client connections closed by the request-head or idle timeout.",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

/// The gateway's router for `gateway` and, when `admin` is set, its admin listener there: the
/// router then records the `gateway_http_*` metrics, and the listener serves `/metrics` (with
/// `mesh`'s client state and the rate-limit rejections), `/healthz`, `/readyz` (ready once the
/// gateway has read the Consul catalog, which `state` publishes) and `/mesh`, until the returned
/// handle is dropped. Without `admin`, nothing is recorded.
pub async fn router_with_admin(
    admin: Option<SocketAddr>,
    gateway: Gateway,
    mesh: Mesh,
    state: watch::Receiver<Arc<GatewayState>>,
) -> Result<(Router, Option<AdminHandle>), AdminError> {
    let Some(addr) = admin else {
        return Ok((crate::server::router(gateway), None));
    };
    let server = AdminServer::bind(addr).await?;
    let metrics = Metrics::new();
    metrics.watch_mesh(mesh.clone());
    let limits = gateway.clone();
    watch_rate_limits(&metrics, move || limits.rate_limit_rejections());
    metrics.register_collector(ConnectionCollector);
    let http = GatewayMetrics::register(&metrics, state.clone());
    let admin = AdminState::new(Some(mesh))
        .with_metrics(metrics)
        // The detailed routes (addresses, upstream errors) are for operators only.
        .with_routes(crate::server::admin_router(gateway.clone()))
        .with_readiness(move || state.borrow().ready);
    let handle = server.spawn(admin);
    tracing::info!(admin = %handle.local_addr(), "admin listener: /healthz /readyz /mesh /metrics /routes");
    Ok((
        http.instrument(crate::server::router(gateway)),
        Some(handle),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;
    use axum::body::Body;
    use axum::routing::get;
    use protomesh::metrics::Format;
    use tower::ServiceExt;

    /// The state of a gateway routing the tasks service.
    fn tasks_state() -> watch::Receiver<Arc<GatewayState>> {
        let pool = crate::test_protos::pool();
        let service = pool
            .get_service_by_name("protomesh.tasks.v1.TasksService")
            .unwrap();
        let state = GatewayState {
            table: RouteTable::build([("tasks", service.methods().collect())]),
            ready: true,
            ..GatewayState::default()
        };
        watch::channel(Arc::new(state)).1
    }

    /// A router like the gateway's: a fixed endpoint, and a fallback that matches routes the way
    /// the transcoding handler does, unless `x-refuse` makes it answer 429 first (as the edge
    /// policies do).
    fn app(metrics: &GatewayMetrics) -> Router {
        let state = metrics.state.clone();
        let fallback = move |request: Request| {
            let state = state.clone();
            async move {
                if request.headers().contains_key("x-refuse") {
                    return http::StatusCode::TOO_MANY_REQUESTS;
                }
                let state = Arc::clone(&state.borrow());
                match state.table.lookup(request.method(), request.uri().path()) {
                    Lookup::Found(route, _) => {
                        note_route(request.extensions(), route);
                        http::StatusCode::OK
                    }
                    _ => http::StatusCode::NOT_FOUND,
                }
            }
        };
        metrics.instrument(
            Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .fallback(fallback),
        )
    }

    async fn send(app: &Router, method: &str, path: &str) -> http::StatusCode {
        let mut request = http::Request::builder().method(method).uri(path);
        if path.ends_with("refuse") {
            request = request.header("x-refuse", "1");
        }
        let request = request.body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn requests_are_labelled_by_route_template_never_by_path() {
        let metrics = Metrics::new();
        let gateway = GatewayMetrics::register(&metrics, tasks_state());
        let app = app(&gateway);
        for id in ["a", "b", "c"] {
            assert_eq!(send(&app, "GET", &format!("/v1/tasks/{id}")).await, 200);
        }
        assert_eq!(send(&app, "GET", "/v1/tasks/refuse").await, 429);
        assert_eq!(send(&app, "GET", "/healthz").await, 200);
        assert_eq!(send(&app, "GET", "/nowhere/1").await, 404);
        assert_eq!(send(&app, "BREW", "/nowhere/2").await, 404);

        let text = metrics.encode(Format::PrometheusText).unwrap();
        for expected in [
            r#"gateway_http_requests_total{route="/v1/tasks/{id}",method="GET",code="200"} 3"#,
            r#"gateway_http_requests_total{route="/v1/tasks/{id}",method="GET",code="429"} 1"#,
            r#"gateway_http_requests_total{route="/healthz",method="GET",code="200"} 1"#,
            r#"gateway_http_requests_total{route="unmatched",method="GET",code="404"} 1"#,
            r#"gateway_http_requests_total{route="unmatched",method="other",code="404"} 1"#,
            r#"gateway_http_request_duration_seconds_count{route="/v1/tasks/{id}",method="GET"} 4"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(!text.contains("/v1/tasks/a"), "{text}");
        assert!(!text.contains("/nowhere"), "{text}");
    }

    #[test]
    fn rate_limit_rejections_are_exported_per_class() {
        let metrics = Metrics::new();
        watch_rate_limits(&metrics, || {
            vec![("default".to_owned(), 4), ("login".to_owned(), 1)]
        });
        let text = metrics.encode(Format::PrometheusText).unwrap();
        assert!(
            text.contains("# TYPE gateway_rate_limited_total counter\n"),
            "{text}"
        );
        assert!(text.contains("gateway_rate_limited_total{class=\"default\"} 4\n"));
        assert!(text.contains("gateway_rate_limited_total{class=\"login\"} 1\n"));
    }
}
