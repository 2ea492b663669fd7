//! Native gRPC through the gateway, so that one address serves grpcurl and gRPC clients too.
//!
//! A request whose `content-type` is `application/grpc` (or `application/grpc+…`; see
//! [`is_grpc`]) is not transcoded: its target ([`crate::resolve::Target`]) names the gRPC
//! service of its path (`/pkg.Service/Method`) and the Consul service serving it, and
//! [`forward`] sends the request as it came — headers (`grpc-timeout`, metadata) and a streaming
//! body — through the mesh client's channel to that service. The answer goes back as it came
//! too: headers, streaming body, trailers. Streams are not buffered, so unary, client-, server-
//! and bidirectional-streaming calls all work, and a caller that goes away cancels the upstream
//! call. What the mesh client adds applies: discovery, balancing, the service's circuit
//! breaker, retries of unary calls to methods the gateway knows to be safe (their request is
//! kept to be sent again, and their answer read whole within its attempt, so that one that
//! breaks off is retried), and a deadline (the caller's `grpc-timeout`, or the mesh channel's
//! 10 s default, which bounds the wait for the answer). A request message over [`message_limit`]'s limit is refused as soon as its
//! frame header arrives.
//!
//! The gateway answers server reflection itself ([`reflection_server`]).
//!
//! Every answer's `grpc-message` is capped at [`MAX_GRPC_MESSAGE`] bytes, as the services'
//! runtime caps theirs ([`protomesh::server::message_limit`]), and the client input a message
//! quotes is shortened ([`protomesh::status::echo`]).
//!
//! Errors are gRPC answers, never HTTP errors: trailers-only responses
//! ([`crate::errors::status_response`]). An unknown service is `UNIMPLEMENTED` naming it; a
//! service without a reachable instance, or an open circuit breaker, is the mesh client's
//! status (`UNAVAILABLE`); a connection failure is `UNAVAILABLE` naming the Consul service.

mod message_limit;
mod reflection_server;

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderValue};
use protomesh::client::{BoxError, Mesh};
use protomesh::server::message_limit::{limit_response, MAX_GRPC_MESSAGE};
use protomesh::status::echo;
use tonic::Status;
use tower::ServiceExt;

use crate::discovery::GatewayState;
use crate::errors::status_response;
use crate::resolve::{Resolved, Target};
use message_limit::{MessageSizeLimit, MAX_FORWARDED_MESSAGE};
pub use reflection_server::ReflectionCache;

pub use crate::resolve::is_grpc;

/// Request headers that describe one hop of the connection and are not forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Forwards one native gRPC call by its path, answering reflection from the process-wide
/// [`ReflectionCache::global`]. See [`forward_with`].
pub async fn forward(mesh: &Mesh, state: &GatewayState, request: http::Request<Body>) -> Response {
    forward_with(mesh, state, ReflectionCache::global(), request).await
}

/// Forwards one native gRPC call, its target read from its path in `state`: see
/// [`forward_to`]. The caller checks [`is_grpc`] first.
pub async fn forward_with(
    mesh: &Mesh,
    state: &GatewayState,
    reflection: &ReflectionCache,
    request: http::Request<Body>,
) -> Response {
    let target = Target::of_grpc(state, request.uri().path());
    forward_to(mesh, state, &target, reflection, request).await
}

/// Forwards one native gRPC call whose context the front of the pipeline resolved.
pub(crate) async fn forward_resolved(
    mesh: &Mesh,
    resolved: &Resolved,
    request: http::Request<Body>,
) -> Response {
    forward_to(
        mesh,
        &resolved.state,
        &resolved.target,
        ReflectionCache::global(),
        request,
    )
    .await
}

/// Forwards one native gRPC call to `target`: reflection is answered from `reflection` (built
/// over `state`); a call to a service of the mesh goes as it is through
/// `mesh.channel(consul_name)`, and its answer comes back as it is (headers, streaming body,
/// trailers). Every failure is a trailers-only gRPC answer: an unknown service or a malformed
/// path is `UNIMPLEMENTED`, a mesh failure is its status, a transport failure `UNAVAILABLE`.
async fn forward_to(
    mesh: &Mesh,
    state: &GatewayState,
    target: &Target,
    reflection: &ReflectionCache,
    request: http::Request<Body>,
) -> Response {
    let consul = match target {
        Target::Grpc { consul, .. } => consul,
        Target::Reflection => return reflection_server::reflect(state, reflection, request).await,
        Target::UnknownGrpc { service } => {
            tracing::debug!(%service, "gateway: native gRPC call to an unknown service");
            return status_response(&Status::unimplemented(format!(
                "unknown service {}: no service in the mesh serves it",
                echo(service)
            )));
        }
        Target::MalformedGrpc | Target::Route { .. } | Target::NoRoute { .. } => {
            return status_response(&Status::unimplemented(format!(
                "malformed method name: {:?}",
                echo(request.uri().path())
            )));
        }
    };

    let (parts, body) = request.into_parts();
    let body = MessageSizeLimit::new(body, MAX_FORWARDED_MESSAGE);
    let refused = Arc::clone(&body.refused);
    let mut upstream = http::Request::new(tonic::body::Body::new(body));
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = parts.uri;
    *upstream.version_mut() = http::Version::HTTP_2;
    *upstream.headers_mut() = forwarded_headers(parts.headers);

    let answer = mesh.channel(consul).oneshot(upstream).await;
    // A message over the limit ended the call (the upstream stream was reset): say why.
    if let Some(status) = refused.get() {
        return status_response(status);
    }
    match answer {
        // The service's own runtime caps its messages; a service on another runtime may not.
        Ok(response) => limit_response(response, MAX_GRPC_MESSAGE).map(Body::new),
        Err(err) => {
            let status = mesh_status(consul, err);
            tracing::debug!(%consul, %status, "gateway: native gRPC call failed");
            status_response(&status)
        }
    }
}

/// The caller's headers without those of its connection (`te` only as `trailers`).
fn forwarded_headers(mut headers: HeaderMap) -> HeaderMap {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers
}

/// A mesh channel's error as a status: the status it carries (no instance, open breaker,
/// deadline), what tonic makes of a transport error, or `UNAVAILABLE` naming the service.
fn mesh_status(consul: &str, err: BoxError) -> Status {
    match Status::try_from_error(err) {
        Ok(status) => status,
        Err(err) => Status::unavailable(format!("cannot reach service \"{consul}\": {err}")),
    }
}

#[cfg(test)]
mod tests {

    use protomesh::client::{MethodTable, StaticDiscovery};

    use super::*;

    use crate::test_support::{priority_descriptors, state_with};

    /// A mesh that knows no instance of anything (no channel is made in these tests).
    fn mesh() -> Mesh {
        let methods = MethodTable::from_descriptor_sets(crate::test_support::SETS).unwrap();
        Mesh::with_discovery(StaticDiscovery::new(), methods)
    }

    fn grpc_request(path: &str) -> http::Request<Body> {
        http::Request::builder()
            .method(http::Method::POST)
            .uri(path)
            .version(http::Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn an_unknown_service_is_unimplemented_naming_it() {
        let state = state_with(&[("priority", priority_descriptors())]);
        let response = forward_with(
            &mesh(),
            &state,
            &ReflectionCache::new(),
            grpc_request("/acme.Nope/Call"),
        )
        .await;
        assert_eq!(response.status(), http::StatusCode::OK);
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("acme.Nope"), "{status:?}");

        let response = forward_with(
            &mesh(),
            &state,
            &ReflectionCache::new(),
            grpc_request("/not-a-method"),
        )
        .await;
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("malformed"), "{status:?}");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_metadata_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("host", HeaderValue::from_static("gateway:8080"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("grpc-timeout", HeaderValue::from_static("5S"));
        headers.insert("x-custom", HeaderValue::from_static("kept"));
        let forwarded = forwarded_headers(headers);
        assert!(forwarded.get("connection").is_none());
        assert!(forwarded.get("host").is_none());
        assert_eq!(forwarded["te"], "trailers");
        assert_eq!(forwarded["grpc-timeout"], "5S");
        assert_eq!(forwarded["x-custom"], "kept");
    }
}
