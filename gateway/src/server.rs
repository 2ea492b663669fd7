//! The gateway's HTTP side: an axum router that answers `/healthz`, `/readyz`, `/routes` (each
//! route's template, HTTP method, target gRPC method and its service's coarse state; the detail
//! with addresses and errors is on the admin listener, [`admin_router`]) and
//! `/openapi.json`, and
//! transcodes every other request by the live route table: route lookup (404 / 405 with `Allow`),
//! body limit (413), JSON → request message (400 naming the field or the JSON position), a unary
//! or server-streaming call through the mesh client (deadline from `Grpc-Timeout` or the default;
//! `Authorization`, `X-Request-Id`, `traceparent` and configured headers as metadata), and the
//! answer back as JSON (errors by the standard table, streams as NDJSON or SSE). A client that
//! goes away drops the handler, which cancels the upstream call. Every routed request (HTTP or
//! native gRPC) first passes the edge policies ([`crate::edge`]): CORS, authentication,
//! authorization, rate limits.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use prost_reflect::{DescriptorPool, DynamicMessage};
use protomesh::client::Mesh;
use serde::Serialize;
use tokio::sync::watch;

use crate::codec::DynamicCodec;
use crate::discovery::GatewayState;
use crate::errors::HttpError;
use crate::routes::{Lookup, Route};
use crate::transcode::{self, JsonOptions, RequestParts};

/// `X-Request-Id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
    pub edge: crate::edge::EdgeOptions,
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
            edge: crate::edge::EdgeOptions::default(),
        }
    }
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    mesh: Mesh,
    state: watch::Receiver<Arc<GatewayState>>,
    options: Arc<GatewayOptions>,
    edge: Arc<crate::edge::Edge>,
}

impl Gateway {
    /// A gateway calling through `mesh`, routing by the states `state` publishes.
    pub fn new(
        mesh: Mesh,
        state: watch::Receiver<Arc<GatewayState>>,
        options: GatewayOptions,
    ) -> Self {
        let edge = crate::edge::Edge::new(&options.edge, &mesh, &options.forward_headers);
        Self {
            mesh,
            state,
            options: Arc::new(options),
            edge: Arc::new(edge),
        }
    }

    /// Rate-limit refusals so far, per rate-limit class.
    pub fn rate_limit_rejections(&self) -> Vec<(String, u64)> {
        self.edge.rate_limit_rejections()
    }

    fn current(&self) -> Arc<GatewayState> {
        Arc::clone(&self.state.borrow())
    }
}

/// The gateway's routes.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/routes", get(routes))
        .route("/openapi.json", get(openapi))
        .fallback(
            transcode_request.layer(axum::middleware::from_fn_with_state(
                gateway.clone(),
                edge_policies,
            )),
        )
        .with_state(gateway)
        // Outermost: the request's server span (and request id) covers everything below.
        .layer(crate::trace::HttpTraceLayer)
}

/// The edge policies ([`crate::edge`]) in front of every routed request.
async fn edge_policies(State(gateway): State<Gateway>, request: Request, next: Next) -> Response {
    gateway
        .edge
        .enforce(&gateway.current(), request, next)
        .await
}

async fn readyz(State(gateway): State<Gateway>) -> Response {
    if gateway.current().ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the Consul catalog\n",
        )
            .into_response()
    }
}

/// A route as anyone may see it on the public port: no address, no upstream error.
#[derive(Serialize)]
struct PublicRouteView {
    method: String,
    path: String,
    grpc_method: String,
    service: String,
    streaming: bool,
    /// `public`, `authenticated` or `role:a,b` (as `/openapi.json` shows it too).
    auth: String,
    /// The service's state: `available` or `unavailable`.
    state: &'static str,
}

/// The public `/routes`: the routes, and the state of every service of the catalog.
#[derive(Serialize)]
struct PublicRoutesView {
    routes: Vec<PublicRouteView>,
    /// Consul service → `available` or `unavailable` (its descriptors cannot be fetched now).
    services: std::collections::BTreeMap<String, &'static str>,
}

/// A service's coarse state for the public `/routes`.
fn service_state(state: &GatewayState, service: &str) -> &'static str {
    if state.unreachable.contains_key(service) {
        "unavailable"
    } else {
        "available"
    }
}

async fn routes(State(gateway): State<Gateway>) -> Json<PublicRoutesView> {
    let state = gateway.current();
    let mut services: std::collections::BTreeMap<String, &'static str> = state
        .services
        .keys()
        .map(|name| (name.clone(), service_state(&state, name)))
        .collect();
    for name in state.unreachable.keys() {
        services.insert(name.clone(), "unavailable");
    }
    Json(PublicRoutesView {
        routes: state
            .table
            .routes()
            .iter()
            .map(|r| PublicRouteView {
                method: r.http_method.to_string(),
                path: r.template.to_string(),
                grpc_method: r.method.full_name().to_owned(),
                service: r.service.clone(),
                streaming: r.method.is_server_streaming(),
                auth: gateway
                    .edge
                    .policy_of(&state, &r.grpc_path())
                    .auth
                    .to_string(),
                state: service_state(&state, &r.service),
            })
            .collect(),
        services,
    })
}

/// The admin listener's `/routes` (`--admin`, never the public port): every route with its
/// policy, the route table's conflicts and errors, and why each unreachable service is
/// (upstream errors, which may name internal addresses).
pub fn admin_router(gateway: Gateway) -> Router {
    Router::new()
        .route("/routes", get(admin_routes))
        .with_state(gateway)
}

#[derive(Serialize)]
struct RouteView {
    method: String,
    path: String,
    grpc_method: String,
    service: String,
    streaming: bool,
    /// `public`, `authenticated` or `role:a,b`.
    auth: String,
    rate_limit_class: String,
}

#[derive(Serialize)]
struct RoutesView {
    routes: Vec<RouteView>,
    conflicts: Vec<String>,
    errors: Vec<String>,
    unreachable: std::collections::BTreeMap<String, String>,
}

async fn admin_routes(State(gateway): State<Gateway>) -> Json<RoutesView> {
    let state = gateway.current();
    Json(RoutesView {
        routes: state
            .table
            .routes()
            .iter()
            .map(|r| {
                let policy = gateway.edge.policy_of(&state, &r.grpc_path());
                RouteView {
                    method: r.http_method.to_string(),
                    path: r.template.to_string(),
                    grpc_method: r.method.full_name().to_owned(),
                    service: r.service.clone(),
                    streaming: r.method.is_server_streaming(),
                    auth: policy.auth.to_string(),
                    rate_limit_class: policy.rate_limit_class,
                }
            })
            .collect(),
        conflicts: state
            .table
            .conflicts()
            .iter()
            .map(ToString::to_string)
            .collect(),
        errors: state
            .table
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect(),
        unreachable: state.unreachable.clone(),
    })
}

/// The OpenAPI 3 document of the live routes (built from the same table, so always in sync).
async fn openapi(State(gateway): State<Gateway>) -> Json<serde_json::Value> {
    let state = gateway.current();
    let mut document = crate::openapi::document(
        &state.table,
        &gateway.options.json,
        "protomesh gateway",
        env!("CARGO_PKG_VERSION"),
    );
    let requirements = crate::edge::route_requirements(&gateway.edge, &state, state.table.routes());
    crate::openapi::add_security(&mut document, &requirements);
    Json(document)
}

/// The request ID: the caller's, or a new random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .cloned()
        .unwrap_or_else(|| {
            let id: u128 = rand::random();
            HeaderValue::from_str(&format!("{id:032x}"))
                .unwrap_or_else(|_| HeaderValue::from_static("0"))
        })
}

/// Transcodes one HTTP request (or forwards a native gRPC one).
async fn transcode_request(State(gateway): State<Gateway>, request: Request) -> Response {
    // Native gRPC (h2c) goes to the service by its path, reflection is answered here.
    if crate::grpc_proxy::is_grpc(request.headers()) {
        let state = gateway.current();
        return crate::grpc_proxy::forward(&gateway.mesh, &state, request).await;
    }
    let id = request_id(request.headers());
    let mut response = match handle(&gateway, request, &id).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

async fn handle(
    gateway: &Gateway,
    request: Request,
    request_id: &HeaderValue,
) -> Result<Response, HttpError> {
    let state = gateway.current();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let (route, bindings) = match state.table.lookup(&parts.method, path) {
        Lookup::Found(route, bindings) => (Arc::clone(route), bindings),
        Lookup::MethodNotAllowed(allowed) => {
            return Err(HttpError::method_not_allowed(&parts.method, path, &allowed))
        }
        Lookup::NotFound => return Err(HttpError::not_found(path)),
    };
    // The metrics label the request by this route's template.
    crate::metrics::note_route(&parts.extensions, &route);
    protomesh::telemetry::spans::record_http_route(
        &tracing::Span::current(),
        &parts.method,
        &route.template,
    );
    let pool = state
        .services
        .get(&route.service)
        .map(|s| s.pool.clone())
        .unwrap_or_else(|| route.method.parent_pool().clone());

    let body = read_body(body, &parts.headers, &gateway.options).await?;

    let path_bindings: Vec<(Vec<String>, String)> = bindings
        .into_iter()
        .map(|b| (b.field_path, b.value))
        .collect();
    let message = transcode::request_message(
        &route.method.input(),
        &RequestParts {
            path_bindings: &path_bindings,
            query: parts.uri.query(),
            body: &body,
            body_rule: &route.body,
            fill_update_mask: parts.method == http::Method::PATCH,
        },
        &gateway.options.json,
    )
    .map_err(|err| match err.field() {
        Some(field) => HttpError::bad_field(&field, err.to_string()),
        None if err.is_client_error() => HttpError::bad_request(err.to_string()),
        None => HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            err.to_string(),
        ),
    })?;

    let timeout = match parts.headers.get("grpc-timeout") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(protomesh::client::grpc_timeout::parse)
            .ok_or_else(|| {
                HttpError::bad_request(format!(
                    "invalid Grpc-Timeout header {value:?}: use e.g. 500m, 2S, 1M"
                ))
            })?,
        // The method's policy may state its own default deadline.
        None => parts
            .extensions
            .get::<Arc<protomesh::policy::ResolvedPolicy>>()
            .and_then(|policy| policy.default_timeout)
            .unwrap_or(gateway.options.default_timeout),
    }
    .min(gateway.options.max_timeout);

    let mut call = tonic::Request::new(message);
    call.set_timeout(timeout);
    copy_metadata(
        &parts.headers,
        request_id,
        &gateway.options,
        call.metadata_mut(),
    );

    let mut grpc = tonic::client::Grpc::new(gateway.mesh.channel(&route.service));
    grpc.ready().await.map_err(|err| {
        HttpError::from_status(&tonic::Status::unavailable(err.to_string()), &pool)
    })?;
    let codec = DynamicCodec::new(route.method.output());
    let grpc_path: http::uri::PathAndQuery = route
        .grpc_path()
        .parse()
        .map_err(|_| HttpError::bad_request("invalid gRPC method path"))?;

    if route.method.is_server_streaming() {
        let wants_sse = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        let response = grpc
            .server_streaming(call, grpc_path, codec)
            .await
            .map_err(|status| HttpError::from_status(&status, &pool))?;
        return Ok(stream_response(
            response,
            &route,
            &gateway.options,
            pool,
            wants_sse,
        ));
    }

    let response = grpc
        .unary(call, grpc_path, codec)
        .await
        .map_err(|status| HttpError::from_status(&status, &pool))?;
    let (metadata, message, _) = response.into_parts();
    let json = transcode::response_json(
        &message,
        route.response_body.as_deref(),
        &gateway.options.json,
    )
    .map_err(|err| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            format!("cannot encode the answer as JSON: {err}"),
        )
    })?;
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response();
    copy_response_metadata(&metadata, &gateway.options, response.headers_mut());
    Ok(response)
}

/// The request body, whole: 413 when its `Content-Length` is over the limit (before any of it is
/// read, so an `Expect: 100-continue` client gets no `100 Continue`) or when it grows past it,
/// 408 when it has not arrived within the body timeout.
async fn read_body(
    body: Body,
    headers: &http::HeaderMap,
    options: &GatewayOptions,
) -> Result<Bytes, HttpError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > options.body_limit as u64) {
        return Err(HttpError::payload_too_large(options.body_limit));
    }
    let collected = tokio::time::timeout(
        options.body_timeout,
        Limited::new(body, options.body_limit).collect(),
    )
    .await
    .map_err(|_| HttpError::request_timeout(options.body_timeout))?;
    Ok(collected
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                HttpError::payload_too_large(options.body_limit)
            } else {
                HttpError::bad_request(format!("cannot read the request body: {err}"))
            }
        })?
        .to_bytes())
}

/// Request headers the service sees as metadata.
fn copy_metadata(
    headers: &http::HeaderMap,
    request_id: &HeaderValue,
    options: &GatewayOptions,
    metadata: &mut tonic::metadata::MetadataMap,
) {
    // The credential goes on: every service verifies its caller itself.
    let always = [
        header::AUTHORIZATION,
        protomesh::auth::API_KEY_HEADER,
        HeaderName::from_static("traceparent"),
        HeaderName::from_static("tracestate"),
    ];
    // A `--forward-header` naming one of these is not sent twice (a doubled credential is invalid).
    let extra = options
        .forward_headers
        .iter()
        .filter(|name| !always.contains(name));
    for name in always.iter().chain(extra) {
        for value in headers.get_all(name) {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_bytes()),
            ) {
                metadata.append(key, value);
            }
        }
    }
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(request_id.as_bytes()) {
        metadata.insert("x-request-id", value);
    }
    // The verified identity the edge policies set (incoming copies were removed there).
    for (name, value) in headers {
        if name
            .as_str()
            .starts_with(protomesh::identity::RESERVED_PREFIX)
        {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_bytes()),
            ) {
                metadata.insert(key, value);
            }
        }
    }
}

/// The answer's metadata as prefixed response headers (binary metadata and gRPC's own left out).
fn copy_response_metadata(
    metadata: &tonic::metadata::MetadataMap,
    options: &GatewayOptions,
    headers: &mut http::HeaderMap,
) {
    for (key, value) in metadata.clone().into_headers() {
        let Some(key) = key else { continue };
        let name = key.as_str();
        // gRPC's own headers, binary metadata, and HTTP headers of the upstream hop.
        if name.starts_with("grpc-")
            || name.ends_with("-bin")
            || matches!(name, "content-type" | "content-length" | "date" | "server")
        {
            continue;
        }
        if let Ok(prefixed) =
            HeaderName::from_bytes(format!("{}{name}", options.metadata_prefix).as_bytes())
        {
            headers.append(prefixed, value);
        }
    }
}

/// A server stream as newline-delimited JSON, or as server-sent events.
fn stream_response(
    response: tonic::Response<tonic::Streaming<DynamicMessage>>,
    route: &Route,
    options: &GatewayOptions,
    pool: DescriptorPool,
    sse: bool,
) -> Response {
    let (metadata, stream, _) = response.into_parts();
    let json_options = options.json;
    let response_body = route.response_body.clone();
    let lines = stream.map(move |item| {
        let json = match item {
            Ok(message) => {
                transcode::response_json(&message, response_body.as_deref(), &json_options)
                    .unwrap_or_else(|err| {
                        HttpError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            tonic::Code::Internal,
                            err.to_string(),
                        )
                        .body_bytes()
                        .to_vec()
                    })
            }
            // An error mid-stream: one last line with the error body (HTTP status already sent).
            Err(status) => {
                let error = HttpError::from_status(&status, &pool);
                serde_json::to_vec(&serde_json::json!({ "error": error.body })).unwrap_or_default()
            }
        };
        let mut frame = Vec::with_capacity(json.len() + 8);
        if sse {
            frame.extend_from_slice(b"data: ");
            frame.extend_from_slice(&json);
            frame.extend_from_slice(b"\n\n");
        } else {
            frame.extend_from_slice(&json);
            frame.push(b'\n');
        }
        Ok::<_, std::convert::Infallible>(Bytes::from(frame))
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut response = Response::new(Body::from_stream(lines));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    copy_response_metadata(&metadata, options, response.headers_mut());
    response
}
