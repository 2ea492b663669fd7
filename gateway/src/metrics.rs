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
//!   limiter (through [`watch_rate_limits`]).
//!
//! [`crate::app::app_with_admin`] sets it all up for the binary. The [`record`] middleware labels
//! a request by the target [`crate::resolve`] found for it, so a request refused by the edge
//! policies is labelled by its route too.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use protomesh::metrics::{latency_histogram, Metrics};

use crate::resolve::{Resolved, Target};

/// The `route` of requests no route matched.
const UNMATCHED: &str = "unmatched";
/// The `route` of native gRPC requests (forwarded by path).
const GRPC: &str = "grpc";

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

/// The gateway's HTTP metrics; cheap to clone.
#[derive(Clone)]
pub(crate) struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// The request counts alone, for the dashboard ([`GatewayMetrics::requests_text`]).
    requests_only: Arc<prometheus_client::registry::Registry>,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

impl GatewayMetrics {
    /// Registers the `gateway_http_*` families in `metrics`.
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let requests: Family<RequestLabels, Counter> = Family::default();
        let mut requests_only = prometheus_client::registry::Registry::default();
        requests_only.register(
            "gateway_http_requests",
            "HTTP requests answered by the gateway, by route template, method and status code",
            requests.clone(),
        );
        let this = Self {
            requests,
            duration: Family::new_with_constructor(latency_histogram),
            requests_only: Arc::new(requests_only),
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

    /// `gateway_http_requests_total` in the text exposition format (what `/metrics` shows of it),
    /// for the dashboard's per-route rates and errors.
    pub(crate) fn requests_text(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.requests_only)
        {
            tracing::warn!(error = %err, "the request counts could not be encoded");
        }
        text
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

/// Records every request: its route label, HTTP method, status code and time to the response
/// head.
pub(crate) async fn record(
    State(metrics): State<GatewayMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = route_label(&request);
    let response = next.run(request).await;
    metrics.observe(
        route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The `route` label: the gateway's own endpoint by its path, the route template of a routed
/// request, `grpc` for native gRPC, else `unmatched`.
fn route_label(request: &Request) -> Arc<str> {
    if let Some(path) = request.extensions().get::<MatchedPath>() {
        return path.as_str().into();
    }
    match request
        .extensions()
        .get::<Arc<Resolved>>()
        .map(|r| &r.target)
    {
        Some(Target::Route { route, .. }) => route.template.to_string().into(),
        Some(target) if target.is_grpc() => GRPC.into(),
        _ if crate::resolve::is_grpc(request.headers()) => GRPC.into(),
        _ => UNMATCHED.into(),
    }
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
pub(crate) fn watch_rate_limits(
    metrics: &Metrics,
    rejections: impl Fn() -> Vec<(String, u64)> + Send + Sync + 'static,
) {
    metrics.register_collector(RateLimitCollector {
        rejections: Box::new(rejections),
    });
}

/// The listener's connection counters ([`crate::listener::COUNTERS`]) at each scrape.
#[derive(Debug)]
pub(crate) struct ConnectionCollector;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::GatewayState;
    use crate::routes::RouteTable;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use protomesh::metrics::Format;
    use tokio::sync::watch;
    use tower::ServiceExt;

    /// The state of a gateway routing the tasks service.
    fn tasks_state() -> watch::Receiver<Arc<GatewayState>> {
        let pool = crate::test_support::pool();
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

    /// A router layered like the gateway's: a fixed endpoint, and a fallback that answers by the
    /// resolved target, unless `x-refuse` makes it answer 429 first (as the edge policies do).
    fn app(metrics: &GatewayMetrics) -> Router {
        let fallback = |request: Request| async move {
            if request.headers().contains_key("x-refuse") {
                return http::StatusCode::TOO_MANY_REQUESTS;
            }
            match request
                .extensions()
                .get::<Arc<Resolved>>()
                .map(|r| &r.target)
            {
                Some(Target::Route { .. }) => http::StatusCode::OK,
                _ => http::StatusCode::NOT_FOUND,
            }
        };
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .fallback(fallback)
            .layer(axum::middleware::from_fn_with_state(
                metrics.clone(),
                record,
            ))
            .layer(axum::middleware::from_fn_with_state(
                tasks_state(),
                crate::resolve::resolve,
            ))
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
        let gateway = GatewayMetrics::register(&metrics);
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
