//! The trace spans of the mesh, named and attributed by the OpenTelemetry semantic conventions,
//! all with the target [`TARGET`] (what the exporting layer records):
//!
//! | span | level | kind | attributes |
//! |---|---|---|---|
//! | [`grpc_server`] | info | server | `rpc.system=grpc`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `request_id` |
//! | [`grpc_client`] | debug | client | the same, and `peer.service`, `server.address`, `server.port` |
//! | [`http_server`] | info | server | `http.request.method`, `url.path`, `http.route`, `http.response.status_code`, `request_id` |
//! | [`postgres`] | debug | client | `db.system=postgresql`, `db.operation`, `db.sql.table` |
//! | [`redis`] | debug | client | `db.system=redis`, `db.operation` |
//! | [`outbox_relay`], [`stream_consume`] | debug | internal / consumer | `messaging.*` |
//!
//! Server spans are at `info` so that logs carry the request id even while traces are off; the
//! others are at `debug`, so while traces are off (and `RUST_LOG` is `info`) they are never
//! created. Attribute values are static strings or borrowed slices; nothing is formatted per
//! call unless the span is recorded.

use std::fmt::Display;
use std::future::Future;

use http::HeaderMap;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::propagation;
use super::request_id::REQUEST_ID_HEADER_NAME;

/// Target of every trace span.
pub const TARGET: &str = module_path!();

/// gRPC services whose calls are not traced: health checks and server reflection are the mesh's
/// own plumbing (Consul checks every instance every few seconds).
const UNTRACED_SERVICES: [&str; 2] = ["grpc.health.", "grpc.reflection."];

/// `(service, method)` of a gRPC path `/pkg.Service/Method`.
pub fn grpc_method_of(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some((service, method))
}

/// Whether calls to gRPC `service` are traced.
fn traced_service(service: &str) -> bool {
    !UNTRACED_SERVICES
        .iter()
        .any(|prefix| service.starts_with(prefix))
}

/// The request id in `headers` (`x-request-id`), if it is text.
fn request_id_in(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(REQUEST_ID_HEADER_NAME)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty())
}

/// The server span of one incoming gRPC call to `path`, the child of the caller's span named by
/// `headers` (`traceparent`), carrying their `x-request-id`. A disabled span for health checks,
/// reflection and paths that are not gRPC methods.
pub fn grpc_server(path: &str, headers: &HeaderMap) -> Span {
    let Some((service, method)) = grpc_method_of(path).filter(|(s, _)| traced_service(s)) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: TARGET,
        "grpc.server",
        otel.name = &path[1..],
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        request_id = Empty,
    );
    if let Some(request_id) = request_id_in(headers) {
        span.record("request_id", request_id);
    }
    propagation::set_remote_parent(&span, headers);
    span
}

/// The client span of one outgoing gRPC call to `path` on the mesh service `peer` (its Consul
/// name), a child of the current span. A disabled span for health checks and reflection.
pub fn grpc_client(path: &str, peer: &str) -> Span {
    let Some((service, method)) = grpc_method_of(path).filter(|(s, _)| traced_service(s)) else {
        return Span::none();
    };
    tracing::debug_span!(
        target: TARGET,
        "grpc.client",
        otel.name = &path[1..],
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        peer.service = peer,
        server.address = Empty,
        server.port = Empty,
    )
}

/// The server span of one HTTP request, the child of the caller's span named by `headers`
/// (`traceparent`), carrying their `x-request-id`. Record the matched route with
/// [`record_http_route`] and the answer's status with [`record_http_status`].
pub fn http_server(method: &http::Method, path: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "http.server",
        otel.name = method.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = method.as_str(),
        url.path = path,
        http.route = Empty,
        http.response.status_code = Empty,
        request_id = Empty,
    );
    if let Some(request_id) = request_id_in(headers) {
        span.record("request_id", request_id);
    }
    propagation::set_remote_parent(&span, headers);
    span
}

/// Records the route template an HTTP request matched (`/v1/projects/{project_id}/tasks`) on
/// `span`, and names the span `METHOD template` (the name is only formatted while traces are
/// exported).
pub fn record_http_route(span: &Span, method: &http::Method, route: &dyn Display) {
    if span.is_disabled() {
        return;
    }
    span.record("http.route", tracing::field::display(route));
    if super::exporting::tracing_enabled() {
        span.record("otel.name", format!("{method} {route}"));
    }
}

/// Records the HTTP status of the answer on `span`; a 5xx marks the span as failed.
pub fn record_http_status(span: &Span, status: http::StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// A client span for one Postgres call (a statement, or a transaction of a few) doing
/// `operation` (`SELECT`, `INSERT`, …) on `table`.
pub fn postgres(operation: &'static str, table: &'static str) -> Span {
    let span = tracing::debug_span!(
        target: TARGET,
        "postgres",
        otel.name = Empty,
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        db.system = "postgresql",
        db.operation = operation,
        db.sql.table = table,
    );
    if super::exporting::tracing_enabled() && !span.is_disabled() {
        span.record("otel.name", format!("{operation} {table}"));
    }
    span
}

/// A client span for one Redis command (`GET`, `XADD`, …).
pub fn redis(command: &'static str) -> Span {
    tracing::debug_span!(
        target: TARGET,
        "redis",
        otel.name = command,
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        db.system = "redis",
        db.operation = command,
    )
}

/// The span of one outbox relay batch publishing `events` events to Redis Streams (a root span:
/// the relay works for no caller).
pub fn outbox_relay(events: usize) -> Span {
    tracing::debug_span!(
        target: TARGET,
        parent: None,
        "outbox.relay",
        otel.name = "outbox publish",
        otel.kind = "producer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = "redis",
        messaging.operation = "publish",
        messaging.batch.message_count = events,
    )
}

/// The span of handling one message of the Redis Stream `stream` (a root span).
pub fn stream_consume(stream: &str, message_id: &str) -> Span {
    tracing::debug_span!(
        target: TARGET,
        parent: None,
        "stream.consume",
        otel.name = "stream process",
        otel.kind = "consumer",
        otel.status_code = Empty,
        otel.status_description = Empty,
        messaging.system = "redis",
        messaging.operation = "process",
        messaging.destination.name = stream,
        messaging.message.id = message_id,
    )
}

/// Marks `span` as failed with `error` as its status description.
pub fn record_error(span: &Span, error: &dyn Display) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", tracing::field::display(error));
}

/// Runs `future` inside `span` and marks the span as failed if the future fails.
pub async fn in_span<F, T, E>(span: Span, future: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: Display,
{
    let result = future.instrument(span.clone()).await;
    if let Err(err) = &result {
        record_error(&span, err);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            grpc_method_of("/protomesh.tasks.v1.TasksService/CreateTask"),
            Some(("protomesh.tasks.v1.TasksService", "CreateTask"))
        );
        assert_eq!(grpc_method_of("/nope"), None);
        assert_eq!(grpc_method_of("//M"), None);
        assert!(!traced_service("grpc.health.v1.Health"));
        assert!(!traced_service("grpc.reflection.v1.ServerReflection"));
        assert!(traced_service("protomesh.priority.v1.PriorityService"));
    }

    #[test]
    fn plumbing_calls_get_no_span() {
        let headers = HeaderMap::new();
        assert!(grpc_server("/grpc.health.v1.Health/Check", &headers).is_none());
        assert!(grpc_client("/grpc.reflection.v1.ServerReflection/Info", "tasks").is_none());
    }
}
