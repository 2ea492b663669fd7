//! RED metrics of a gRPC server, recorded by a tower layer in front of every served service:
//! `grpc_server_requests_total{service,method,code}`,
//! `grpc_server_request_duration_seconds{service,method}` and `grpc_server_in_flight{service,method}`.
//!
//! A call starts when the request reaches the layer and ends with the response's last frame: its
//! `grpc-status` comes from the trailers, or from the headers of a trailers-only answer (errors
//! usually are). A call whose response is dropped before it ended (the client went away) counts
//! as `CANCELLED`.
//!
//! Cardinality is bounded: the label sets are resolved once, when the layer is built, for the
//! methods of the served services found in the descriptor sets; any other path counts under
//! `service="unknown", method="unknown"`. On the hot path a call costs one hash lookup by path
//! (no allocation), an `Instant`, and a few atomic operations; each method's series are created
//! on its first call, so methods never called show nothing.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use super::histogram::latency_histogram;

/// The label value of calls to a path no served method has.
pub const UNKNOWN: &str = "unknown";

/// gRPC status code names by number (`OK` … `UNAUTHENTICATED`), the `code` label's values.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CODE_CANCELLED: usize = 1;
const CODE_UNKNOWN: usize = 2;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: Arc<str>,
    method: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    service: Arc<str>,
    method: Arc<str>,
    code: &'static str,
}

/// The three `grpc_server_*` families of a registry.
#[derive(Debug)]
pub(super) struct GrpcServerFamilies {
    requests: Family<CodeLabels, Counter>,
    duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<MethodLabels, Gauge>,
}

impl Default for GrpcServerFamilies {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
        }
    }
}

impl GrpcServerFamilies {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_server_requests",
            "gRPC calls served, by service, method and status code",
            self.requests.clone(),
        );
        registry.register(
            "grpc_server_request_duration_seconds",
            "Duration of served gRPC calls, from the request to the last response frame",
            self.duration.clone(),
        );
        registry.register(
            "grpc_server_in_flight",
            "gRPC calls being served",
            self.in_flight.clone(),
        );
    }
}

/// The series of one method, created on its first call.
struct CallSeries {
    duration: Histogram,
    in_flight: Gauge,
}

/// One method's label set and series.
struct MethodSeries {
    families: Arc<GrpcServerFamilies>,
    labels: MethodLabels,
    calls: OnceLock<CallSeries>,
    by_code: [OnceLock<Counter>; 17],
}

impl MethodSeries {
    fn new(families: Arc<GrpcServerFamilies>, service: &str, method: &str) -> Self {
        Self {
            families,
            labels: MethodLabels {
                service: service.into(),
                method: method.into(),
            },
            calls: OnceLock::new(),
            by_code: Default::default(),
        }
    }

    fn calls(&self) -> &CallSeries {
        self.calls.get_or_init(|| CallSeries {
            duration: self.families.duration.get_or_create_owned(&self.labels),
            in_flight: self.families.in_flight.get_or_create_owned(&self.labels),
        })
    }

    fn requests(&self, code: usize) -> &Counter {
        let code = code.min(CODE_NAMES.len() - 1);
        self.by_code[code].get_or_init(|| {
            self.families.requests.get_or_create_owned(&CodeLabels {
                service: Arc::clone(&self.labels.service),
                method: Arc::clone(&self.labels.method),
                code: CODE_NAMES[code],
            })
        })
    }
}

/// The served methods by request path, and the series of unknown paths.
struct MethodTable {
    by_path: HashMap<Box<str>, Arc<MethodSeries>>,
    unknown: Arc<MethodSeries>,
}

impl MethodTable {
    fn series(&self, path: &str) -> &Arc<MethodSeries> {
        self.by_path.get(path).unwrap_or(&self.unknown)
    }
}

/// The methods (`/package.Service/Method` paths) of `served` services described in `pools`.
fn served_methods(
    served: &[&str],
    pools: &[&prost_reflect::DescriptorPool],
) -> Vec<(String, String)> {
    let served: HashSet<&str> = served.iter().copied().collect();
    let mut methods = Vec::new();
    for service in pools.iter().flat_map(|pool| pool.services()) {
        if !served.contains(service.full_name()) {
            continue;
        }
        for method in service.methods() {
            let pair = (service.full_name().to_owned(), method.name().to_owned());
            if !methods.contains(&pair) {
                methods.push(pair);
            }
        }
    }
    methods
}

/// Tower layer recording the `grpc_server_*` metrics (see the [module](self)); a
/// [disabled](GrpcServerMetricsLayer::disabled) one records nothing.
#[derive(Clone)]
pub struct GrpcServerMetricsLayer {
    table: Option<Arc<MethodTable>>,
}

impl std::fmt::Debug for GrpcServerMetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServerMetricsLayer")
            .field("enabled", &self.table.is_some())
            .finish()
    }
}

impl GrpcServerMetricsLayer {
    /// The layer recording, in `families`, the calls to the methods of `served` services found
    /// in `pools` (see [`crate::metrics::Metrics::grpc_server_layer`]).
    pub(super) fn new(
        families: Arc<GrpcServerFamilies>,
        served: &[&str],
        pools: &[&prost_reflect::DescriptorPool],
    ) -> Self {
        let by_path = served_methods(served, pools)
            .into_iter()
            .map(|(service, method)| {
                let path: Box<str> = format!("/{service}/{method}").into();
                let series = MethodSeries::new(Arc::clone(&families), &service, &method);
                (path, Arc::new(series))
            })
            .collect();
        let unknown = Arc::new(MethodSeries::new(families, UNKNOWN, UNKNOWN));
        Self {
            table: Some(Arc::new(MethodTable { by_path, unknown })),
        }
    }

    /// A layer that passes calls through without recording them (no admin listener to show them).
    pub fn disabled() -> Self {
        Self { table: None }
    }
}

impl<S> Layer<S> for GrpcServerMetricsLayer {
    type Service = GrpcServerMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerMetrics {
            inner,
            table: self.table.clone(),
        }
    }
}

/// See [`GrpcServerMetricsLayer`].
#[derive(Clone)]
pub struct GrpcServerMetrics<S> {
    inner: S,
    table: Option<Arc<MethodTable>>,
}

impl<S, B, R> Service<http::Request<B>> for GrpcServerMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<MetricsBody<R>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self
            .table
            .as_ref()
            .map(|table| CallRecord::start(Arc::clone(table.series(request.uri().path()))));
        ResponseFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

/// One call being recorded: in flight until finished; dropped unfinished, it counts as
/// `CANCELLED`.
struct CallRecord {
    series: Option<Arc<MethodSeries>>,
    started: Instant,
}

impl CallRecord {
    fn start(series: Arc<MethodSeries>) -> Self {
        series.calls().in_flight.inc();
        Self {
            series: Some(series),
            started: Instant::now(),
        }
    }

    fn finish(&mut self, code: usize) {
        if let Some(series) = self.series.take() {
            let calls = series.calls();
            calls.in_flight.dec();
            calls.duration.observe(self.started.elapsed().as_secs_f64());
            series.requests(code).inc();
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(CODE_CANCELLED);
    }
}

/// The `grpc-status` of a header map, if it has one (`UNKNOWN` when it is not a code).
fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get(crate::client::grpc_timeout::GRPC_STATUS_HEADER)?;
    Some(
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|text| text.parse::<usize>().ok())
            .filter(|code| *code < CODE_NAMES.len())
            .unwrap_or(CODE_UNKNOWN),
    )
}

pin_project_lite::pin_project! {
    /// The response future of [`GrpcServerMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<CallRecord>,
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = Result<http::Response<MetricsBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                let header_code = grpc_status(response.headers());
                Ok(response.map(|inner| MetricsBody {
                    inner,
                    call,
                    header_code,
                }))
            }
            Err(err) => {
                if let Some(call) = call.as_mut() {
                    call.finish(CODE_UNKNOWN);
                }
                Err(err)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its call's record with the last frame (see the [module](self)).
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        call: Option<CallRecord>,
        header_code: Option<usize>,
    }

    impl<B> PinnedDrop for MetricsBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A trailers-only answer the server never polled is complete; anything else was cut.
            if let (Some(call), Some(code)) = (this.call.as_mut(), *this.header_code) {
                call.finish(code);
            }
        }
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        call.finish(grpc_status(trailers).unwrap_or(CODE_UNKNOWN));
                    }
                }
                Some(Err(_)) => call.finish(this.header_code.unwrap_or(CODE_UNKNOWN)),
                None => call.finish(this.header_code.unwrap_or(CODE_UNKNOWN)),
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Format, Metrics};
    use http_body_util::BodyExt;
    use std::convert::Infallible;

    /// A served method: answers `OK` in trailers, or (trailers-only) the code in `x-fail`.
    async fn handler(
        request: http::Request<String>,
    ) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, Infallible> {
        let mut response =
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from("message")));
        if let Some(code) = request.headers().get("x-fail") {
            response.headers_mut().insert("grpc-status", code.clone());
            *response.body_mut() = http_body_util::Full::default();
        }
        Ok(response)
    }

    fn layer(metrics: &Metrics) -> GrpcServerMetricsLayer {
        metrics.grpc_server_layer(
            &[
                "protomesh.priority.v1.PriorityService",
                "grpc.health.v1.Health",
            ],
            &[&crate::descriptors::lean_pool(&[
                protomesh_priority::proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ])
            .expect("descriptors")],
        )
    }

    fn request(path: &str, fail: Option<&str>) -> http::Request<String> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(code) = fail {
            builder = builder.header("x-fail", code);
        }
        builder.body(String::new()).unwrap()
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn only_methods_of_served_services_are_known() {
        let methods = served_methods(
            &["protomesh.priority.v1.PriorityService"],
            &[
                &crate::descriptors::lean_pool(&[protomesh_priority::proto::FILE_DESCRIPTOR_SET])
                    .expect("descriptors"),
            ],
        );
        assert!(methods.contains(&(
            "protomesh.priority.v1.PriorityService".to_owned(),
            "Score".to_owned()
        )));
        assert!(methods
            .iter()
            .all(|(service, _)| service == "protomesh.priority.v1.PriorityService"));
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_code_with_durations() {
        let metrics = Metrics::new();
        let mut service = layer(&metrics).layer(tower::service_fn(handler));
        let score = "/protomesh.priority.v1.PriorityService/Score";
        for fail in [None, None, Some("3")] {
            let response = service.call(request(score, fail)).await.unwrap();
            // Trailers-only answers are complete without being polled.
            if fail.is_none() {
                response.into_body().collect().await.unwrap();
            }
        }
        let response = service
            .call(request("/no.Such/Method", None))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();

        let text = metrics.encode(Format::PrometheusText).unwrap();
        let labels = r#"service="protomesh.priority.v1.PriorityService",method="Score""#;
        // A body that ends without trailers (not gRPC) counts as UNKNOWN.
        assert_eq!(
            line(
                &text,
                &format!("grpc_server_requests_total{{{labels},code=\"UNKNOWN\"}}")
            ),
            Some(&*format!(
                "grpc_server_requests_total{{{labels},code=\"UNKNOWN\"}} 2"
            ))
        );
        assert!(
            text.contains(&format!(
                "grpc_server_requests_total{{{labels},code=\"INVALID_ARGUMENT\"}} 1\n"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "grpc_server_request_duration_seconds_count{{{labels}}} 3\n"
        )));
        assert!(text.contains(&format!("grpc_server_in_flight{{{labels}}} 0\n")));
        assert!(
            text.contains(
                r#"grpc_server_requests_total{service="unknown",method="unknown",code="UNKNOWN"} 1"#
            ),
            "{text}"
        );
        // Methods never called show nothing.
        assert!(!text.contains(r#"method="Prioritize""#), "{text}");
    }

    #[tokio::test]
    async fn the_code_comes_from_the_trailers_and_unfinished_calls_are_cancelled() {
        let metrics = Metrics::new();
        let trailing = tower::service_fn(|_: http::Request<String>| async {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
            let body = http_body_util::StreamBody::new(futures::stream::iter([
                Ok::<_, Infallible>(Frame::data(bytes::Bytes::from("m"))),
                Ok(Frame::trailers(trailers)),
            ]));
            Ok::<_, Infallible>(http::Response::new(body))
        });
        let mut service = layer(&metrics).layer(trailing);
        let check = "/grpc.health.v1.Health/Check";
        let response = service.call(request(check, None)).await.unwrap();
        let in_flight = metrics.encode(Format::PrometheusText).unwrap();
        assert!(
            in_flight.contains(
                r#"grpc_server_in_flight{service="grpc.health.v1.Health",method="Check"} 1"#
            ),
            "{in_flight}"
        );
        response.into_body().collect().await.unwrap();
        // Dropped after its first frame, before the trailers: the client went away.
        let response = service.call(request(check, None)).await.unwrap();
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);

        let text = metrics.encode(Format::PrometheusText).unwrap();
        let labels = r#"service="grpc.health.v1.Health",method="Check""#;
        assert!(
            text.contains(&format!(
                "grpc_server_requests_total{{{labels},code=\"NOT_FOUND\"}} 1\n"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "grpc_server_requests_total{{{labels},code=\"CANCELLED\"}} 1\n"
        )));
        assert!(text.contains(&format!("grpc_server_in_flight{{{labels}}} 0\n")));
    }

    #[tokio::test]
    async fn a_disabled_layer_records_nothing() {
        let metrics = Metrics::new();
        let mut service = GrpcServerMetricsLayer::disabled().layer(tower::service_fn(handler));
        let response = service
            .call(request(
                "/protomesh.priority.v1.PriorityService/Score",
                None,
            ))
            .await
            .unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "message"
        );
        assert!(!metrics
            .encode(Format::PrometheusText)
            .unwrap()
            .contains("grpc_server"));
    }
}
