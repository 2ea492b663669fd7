//! What the HTTP and WebSocket handlers share: a request message's protobuf bytes from the
//! route's path, query and JSON body; a response message's JSON; the request headers a service
//! sees as metadata; and the descriptors that word a route's errors.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use protomesh::telemetry::REQUEST_ID_HEADER;

use crate::discovery::GatewayState;
use crate::errors::HttpError;
use crate::gateway::GatewayOptions;
use crate::routes::Route;
use crate::template::Binding;
use crate::transcode::{self, RequestParts};

/// The descriptors that word `route`'s errors: its service's pool, else its method's own.
pub(crate) fn route_pool(state: &GatewayState, route: &Route) -> DescriptorPool {
    state
        .services
        .get(&route.service)
        .map(|s| s.pool.clone())
        .unwrap_or_else(|| route.method.parent_pool().clone())
}

/// The request message's protobuf bytes: written straight from the JSON where the route's plan
/// can, else built as a message by the descriptors (which also words every error).
pub(crate) fn request_bytes(
    route: &Route,
    bindings: &[Binding],
    parts: &http::request::Parts,
    body: &[u8],
    options: &GatewayOptions,
) -> Result<Bytes, HttpError> {
    let bound = bindings
        .iter()
        .map(|b| (b.field_path.as_slice(), b.value.as_str()));
    if let Some(bytes) = route.plan.request(bound, parts.uri.query(), body) {
        return Ok(Bytes::from(bytes));
    }
    let path_bindings: Vec<(Vec<String>, String)> = bindings
        .iter()
        .map(|b| (b.field_path.clone(), b.value.clone()))
        .collect();
    let message = transcode::request_message(
        &route.method.input(),
        &RequestParts {
            path_bindings: &path_bindings,
            query: parts.uri.query(),
            body,
            body_rule: &route.body,
            fill_update_mask: parts.method == http::Method::PATCH,
        },
        &options.json,
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
    Ok(Bytes::from(message.encode_to_vec()))
}

/// A response message (its protobuf bytes) as the JSON the route answers with: written straight
/// from the bytes where the route's plan can, else through a decoded message.
pub(crate) fn answer_json(
    route: &Route,
    wire: &[u8],
    options: &transcode::JsonOptions,
    pool: &DescriptorPool,
) -> Result<Vec<u8>, HttpError> {
    if let Some(json) = route.plan.response(wire, options) {
        return Ok(json);
    }
    let output = route.method.output();
    let message = DynamicMessage::decode(output.clone(), wire).map_err(|err| {
        let status = tonic::Status::internal(format!(
            "cannot decode the response as {}: {err}",
            output.full_name()
        ));
        HttpError::from_status(&status, pool)
    })?;
    transcode::response_json(&message, route.response_body.as_deref(), options).map_err(|err| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            format!("cannot encode the answer as JSON: {err}"),
        )
    })
}

/// Request headers the service sees as metadata.
pub(crate) fn copy_metadata(
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
        metadata.insert(REQUEST_ID_HEADER, value);
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
