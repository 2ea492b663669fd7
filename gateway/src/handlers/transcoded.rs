//! The handler behind the edge: a native gRPC request goes to [`crate::grpc_proxy`]; an HTTP
//! request is transcoded by its route — body limit (413, 408), JSON → request message (400
//! naming the field or the JSON position), a unary or server-streaming call through the mesh
//! client (deadline from `Grpc-Timeout`, the method's policy or the default; `Authorization`,
//! `X-Request-Id`, `traceparent` and configured headers as metadata), and the answer back as
//! JSON (errors by the standard table, streams as NDJSON or SSE). A request with no route is
//! 404 or 405 with `Allow`. A client that goes away drops the handler, which cancels the
//! upstream call.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use prost_reflect::DescriptorPool;
use protomesh::telemetry::REQUEST_ID_HEADER_NAME;

use crate::codec::BytesCodec;
use crate::errors::HttpError;
use crate::gateway::{Gateway, GatewayOptions};
use crate::resolve::{Resolved, Target};
use crate::routes::Route;
use crate::template::Binding;

use super::messages::{answer_json, copy_metadata, request_bytes, route_pool};
use super::websocket;
use crate::upgrade;

/// Answers one routed request (after the edge policies).
pub(crate) async fn handle(State(gateway): State<Gateway>, request: Request) -> Response {
    let resolved = Resolved::of(&request, &gateway.state);
    let (route, bindings) = match &resolved.target {
        Target::Route { route, bindings } => (route, bindings),
        Target::NoRoute { allowed } => {
            let path = request.uri().path();
            let error = if allowed.is_empty() {
                HttpError::not_found(path)
            } else {
                HttpError::method_not_allowed(request.method(), path, allowed)
            };
            return with_request_id(error.into_response(), &resolved);
        }
        // Native gRPC (h2c) goes to the service by its path, reflection is answered here.
        _ => return crate::grpc_proxy::forward_resolved(&gateway.mesh, &resolved, request).await,
    };
    if route.is_streaming() && upgrade::is_upgrade(request.method(), request.headers()) {
        let response = websocket::bridge(&gateway, &resolved, route, bindings, request).await;
        return with_request_id(response, &resolved);
    }
    let response = match transcode(&gateway, &resolved, route, bindings, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    with_request_id(response, &resolved)
}

/// `response` with the request's `X-Request-Id`.
fn with_request_id(mut response: Response, resolved: &Resolved) -> Response {
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER_NAME, resolved.request_id.clone());
    response
}

/// Calls `route`'s method with the request's message and answers with its JSON.
async fn transcode(
    gateway: &Gateway,
    resolved: &Resolved,
    route: &Arc<Route>,
    bindings: &[Binding],
    request: Request,
) -> Result<Response, HttpError> {
    let state = &resolved.state;
    let request_id = &resolved.request_id;
    let (parts, body) = request.into_parts();
    let pool = route_pool(state, route);

    let body = read_body(body, &parts.headers, &gateway.options).await?;

    let message = request_bytes(route, bindings, &parts, &body, &gateway.options)?;

    let timeout = match parts
        .headers
        .get(protomesh::client::grpc_timeout::GRPC_TIMEOUT_HEADER)
    {
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
    let codec = BytesCodec;
    let grpc_path = route.grpc_path.clone();

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
            route,
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
    let json = answer_json(route, &message, &gateway.options.json, &pool)?;
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response();
    copy_response_metadata(metadata, &gateway.options, response.headers_mut());
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

/// The answer's metadata as prefixed response headers (binary metadata and gRPC's own left out).
fn copy_response_metadata(
    metadata: tonic::metadata::MetadataMap,
    options: &GatewayOptions,
    headers: &mut http::HeaderMap,
) {
    for (key, value) in metadata.into_headers() {
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
    response: tonic::Response<tonic::Streaming<Bytes>>,
    route: &Arc<Route>,
    options: &GatewayOptions,
    pool: DescriptorPool,
    sse: bool,
) -> Response {
    let (metadata, stream, _) = response.into_parts();
    let json_options = options.json;
    let route = Arc::clone(route);
    let lines = stream.map(move |item| {
        let json = item
            .map_err(|status| HttpError::from_status(&status, &pool))
            .and_then(|message| answer_json(&route, &message, &json_options, &pool));
        let json = match json {
            Ok(json) => json,
            // An error mid-stream: a line with the error body (the HTTP status is already sent).
            Err(error) => {
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
    copy_response_metadata(metadata, options, response.headers_mut());
    response
}
