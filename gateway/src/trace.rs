//! Traces of the gateway's requests: [`HttpTraceLayer`] opens a server span per request — an
//! HTTP span ([`spans::http_server`]: method, route template, status) for JSON requests, a gRPC
//! span ([`spans::grpc_server`]) for native gRPC ones — as the child of the caller's
//! `traceparent`, carrying the request id and the route template that [`crate::resolve`] found
//! (it sits inside that layer). The mesh client's call made
//! inside it is its child and carries its context to the service (see
//! [`protomesh::telemetry::grpc`]). The span ends when the answer's body does.
//!
//! The gateway's own probes (`/healthz`, `/readyz`, `/metrics`) are not traced.

use std::convert::Infallible;
use std::task::{Context, Poll};

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use futures::future::{BoxFuture, Either};
use protomesh::telemetry::grpc::TracedCall;
use protomesh::telemetry::{spans, CallSide};
use tower::{Layer, Service};

use crate::resolve::{is_grpc, Resolved, Target};

/// Paths of the gateway's own probes, answered without a span.
const UNTRACED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Traces every request but the probes (see the [module](self)).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HttpTraceLayer;

impl<S> Layer<S> for HttpTraceLayer {
    type Service = HttpTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpTrace { inner }
    }
}

/// The service of [`HttpTraceLayer`].
#[derive(Debug, Clone)]
pub(crate) struct HttpTrace<S> {
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

    fn call(&mut self, request: Request) -> Self::Future {
        if UNTRACED_PATHS.contains(&request.uri().path()) {
            return Either::Left(self.inner.call(request));
        }
        let resolved = request.extensions().get::<Arc<Resolved>>();
        let grpc = resolved.map_or_else(|| is_grpc(request.headers()), |r| r.target.is_grpc());
        let (span, side) = if grpc {
            let span = spans::grpc_server(request.uri().path(), request.headers());
            (span, CallSide::GrpcServer)
        } else {
            let span =
                spans::http_server(request.method(), request.uri().path(), request.headers());
            if let Some(Target::Route { route, .. }) = resolved.map(|r| &r.target) {
                spans::record_http_route(&span, request.method(), &route.template);
            }
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
