//! Traces of the gateway's requests: [`HttpTraceLayer`] opens a server span per request — an
//! HTTP span ([`spans::http_server`]: method, route template, status) for JSON requests, a gRPC
//! span ([`spans::grpc_server`]) for native gRPC ones — as the child of the caller's
//! `traceparent`, and makes sure the request has an `x-request-id` (the caller's, or a new one)
//! that the span, the logs and the services it reaches all carry. The mesh client's call made
//! inside it is its child and carries its context to the service (see
//! [`protomesh::telemetry::grpc`]). The span ends when the answer's body does.
//!
//! The gateway's own probes (`/healthz`, `/readyz`, `/metrics`) are not traced.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use futures::future::{BoxFuture, Either};
use http::header::HeaderValue;
use protomesh::telemetry::grpc::TracedCall;
use protomesh::telemetry::{spans, CallSide, REQUEST_ID_HEADER};
use tower::{Layer, Service};

use crate::grpc_proxy::is_grpc;

/// Paths of the gateway's own probes, answered without a span.
const UNTRACED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Longest request id taken from a caller; a longer (or empty, or non-text) one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// Traces every request but the probes (see the [module](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpTraceLayer;

impl<S> Layer<S> for HttpTraceLayer {
    type Service = HttpTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpTrace { inner }
    }
}

/// The service of [`HttpTraceLayer`].
#[derive(Debug, Clone)]
pub struct HttpTrace<S> {
    inner: S,
}

impl<S> Service<Request> for HttpTrace<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if UNTRACED_PATHS.contains(&request.uri().path()) {
            return Either::Left(self.inner.call(request));
        }
        ensure_request_id(request.headers_mut());
        let (span, side) = if is_grpc(request.headers()) {
            let span = spans::grpc_server(request.uri().path(), request.headers());
            (span, CallSide::GrpcServer)
        } else {
            let span =
                spans::http_server(request.method(), request.uri().path(), request.headers());
            (span, CallSide::Http)
        };
        let call = span.in_scope(|| self.inner.call(request));
        let traced = TracedCall::new(call, span, side);
        Either::Right(Box::pin(async move {
            let response = traced.await?;
            Ok(response.map(Body::new))
        }))
    }
}

/// Gives `headers` a usable `x-request-id` if they have none: 32 random hex digits.
pub fn ensure_request_id(headers: &mut http::HeaderMap) {
    let usable = headers
        .get(REQUEST_ID_HEADER)
        .is_some_and(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.to_str().is_ok());
    if !usable {
        let id: u128 = rand::random();
        if let Ok(value) = HeaderValue::from_str(&format!("{id:032x}")) {
            headers.insert(REQUEST_ID_HEADER, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_kept_or_made() {
        let mut headers = http::HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-1"));
        ensure_request_id(&mut headers);
        assert_eq!(headers[REQUEST_ID_HEADER], "abc-1");

        for bad in [String::new(), "x".repeat(MAX_REQUEST_ID + 1)] {
            let mut headers = http::HeaderMap::new();
            headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&bad).unwrap());
            ensure_request_id(&mut headers);
            let made = headers[REQUEST_ID_HEADER].to_str().unwrap();
            assert_eq!(made.len(), 32, "{made}");
            assert!(made.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }
}
