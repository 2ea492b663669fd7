//! Tower layers that trace gRPC calls on both sides, and the response body that ends a call's
//! span when the answer is complete.
//!
//! - [`GrpcServerTraceLayer`] (in every mesh server): a server span per call
//!   ([`spans::grpc_server`]), child of the caller's `traceparent`, carrying its `x-request-id`;
//!   the handler runs inside it, so its logs, database spans and outgoing calls belong to it.
//! - [`GrpcClientTraceLayer`] (outermost in every mesh channel): a client span per call
//!   ([`spans::grpc_client`], retries included), whose context goes out as `traceparent`; the
//!   current request id goes out as `x-request-id` when the request has none.
//!
//! Both record `rpc.grpc.status_code` from the answer: its headers for a trailers-only answer,
//! else its trailers, read by [`TracedBody`] as the body streams past. The span ends when the
//! body does (or is dropped: a call cancelled midway is recorded as `CANCELLED`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::future::{BoxFuture, Either};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::{Instrument, Level, Span};

use super::request_id::{current_request_id, REQUEST_ID_HEADER_NAME};
use super::{propagation, spans};
use tower::BoxError;

/// gRPC `CANCELLED`: what a call whose answer was never complete is recorded as.
const CANCELLED: i32 = 1;
/// gRPC `UNAVAILABLE`: what tonic makes of a transport error.
const UNAVAILABLE: i32 = 14;

/// Which side of which kind of call a [`TracedBody`] ends the span of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallSide {
    /// The server of a gRPC call: statuses that say the server failed mark the span as failed.
    GrpcServer,
    /// The client of a gRPC call: every status but `OK` marks the span as failed.
    GrpcClient,
    /// An HTTP exchange (the gateway's): the status is recorded from the response head.
    Http,
}

/// The `grpc-status` in `headers` (response headers or trailers).
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get(crate::client::grpc_timeout::GRPC_STATUS_HEADER)
        .and_then(|value| std::str::from_utf8(value.as_bytes()).ok())
        .and_then(|text| text.parse().ok())
}

/// Records gRPC status `code` on `span` as `side` sees it.
pub fn record_grpc_status(span: &Span, code: i32, side: CallSide) {
    span.record("rpc.grpc.status_code", code);
    let failed = match side {
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
        CallSide::GrpcServer => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        CallSide::GrpcClient => code != 0,
        CallSide::Http => false,
    };
    if failed {
        span.record("otel.status_code", "ERROR");
    }
}

/// Traces incoming gRPC calls (see the [module](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServerTraceLayer;

impl<S> Layer<S> for GrpcServerTraceLayer {
    type Service = GrpcServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerTrace { inner }
    }
}

/// The service of [`GrpcServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct GrpcServerTrace<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcServerTrace<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = TracedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let span = spans::grpc_server(request.uri().path(), request.headers());
        let inner = span.in_scope(|| self.inner.call(request));
        TracedCall {
            inner,
            span: Some(span),
            side: CallSide::GrpcServer,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call running inside its span; its answer's body carries the span on ([`TracedBody`]).
    pub struct TracedCall<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
        side: CallSide,
    }
}

impl<F> TracedCall<F> {
    /// `inner` running inside `span`, as `side` of the call.
    pub fn new(inner: F, span: Span, side: CallSide) -> Self {
        Self {
            inner,
            span: Some(span),
            side,
        }
    }
}

impl<F, B, E> Future for TracedCall<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.as_ref().map(Span::enter);
            ready!(this.inner.poll(cx))
        };
        let span = this.span.take().unwrap_or_else(Span::none);
        let side = *this.side;
        Poll::Ready(result.map(|response| {
            if side == CallSide::Http {
                spans::record_http_status(&span, response.status());
            }
            let status = grpc_status(response.headers());
            if let Some(code) = status {
                record_grpc_status(&span, code, side);
            }
            response.map(|body| TracedBody::new(body, span, side, status))
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call's span open until the body ends, recording the
    /// `grpc-status` of its trailers.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Option<Span>,
        side: CallSide,
        status: Option<i32>,
    }

    impl<B> PinnedDrop for TracedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(span) = this.span.take() {
                finish(span, *this.side, *this.status);
            }
        }
    }
}

impl<B> TracedBody<B> {
    /// `inner`, ending `span` when it ends; `status` is the gRPC status already known from the
    /// response headers (a trailers-only answer), if any.
    pub fn new(inner: B, span: Span, side: CallSide, status: Option<i32>) -> Self {
        Self {
            inner,
            span: Some(span),
            side,
            status,
        }
    }
}

/// Ends the span of a call whose answer is complete (or abandoned).
fn finish(span: Span, side: CallSide, status: Option<i32>) {
    if side == CallSide::Http || span.is_none() {
        return;
    }
    let code = match status {
        Some(code) => code,
        None => {
            record_grpc_status(&span, CANCELLED, side);
            CANCELLED
        }
    };
    if side == CallSide::GrpcServer {
        tracing::event!(target: spans::TARGET, parent: &span, Level::DEBUG, grpc_status = code, "gRPC call handled");
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    *this.status = Some(code);
                    if let Some(span) = this.span.take() {
                        record_grpc_status(&span, code, *this.side);
                        finish(span, *this.side, Some(code));
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(span) = this.span.as_ref() {
                    spans::record_error(span, &"the response body failed");
                }
            }
            Poll::Ready(None) => {
                if let Some(span) = this.span.take() {
                    finish(span, *this.side, *this.status);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Traces outgoing gRPC calls to one mesh service (see the [module](self)).
#[derive(Debug, Clone)]
pub struct GrpcClientTraceLayer {
    peer: Arc<str>,
}

impl GrpcClientTraceLayer {
    /// Traces calls to the mesh service `peer` (its Consul name, recorded as `peer.service`).
    pub fn new(peer: &str) -> Self {
        Self { peer: peer.into() }
    }
}

impl<S> Layer<S> for GrpcClientTraceLayer {
    type Service = GrpcClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcClientTrace {
            inner,
            peer: Arc::clone(&self.peer),
        }
    }
}

/// The service of [`GrpcClientTraceLayer`].
#[derive(Debug, Clone)]
pub struct GrpcClientTrace<S> {
    inner: S,
    peer: Arc<str>,
}

type ClientResult = Result<http::Response<tonic::body::Body>, BoxError>;

impl<S> Service<http::Request<tonic::body::Body>> for GrpcClientTrace<S>
where
    S: Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = BoxError,
    >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<'static, ClientResult>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if !request.headers().contains_key(REQUEST_ID_HEADER_NAME) {
            if let Some(value) =
                current_request_id().and_then(|id| http::HeaderValue::from_str(&id).ok())
            {
                request.headers_mut().insert(REQUEST_ID_HEADER_NAME, value);
            }
        }
        let span = spans::grpc_client(request.uri().path(), &self.peer);
        if span.is_disabled() {
            return Either::Left(self.inner.call(request));
        }
        propagation::inject(&span, request.headers_mut());
        let call = span.in_scope(|| self.inner.call(request));
        Either::Right(Box::pin(async move {
            match call.instrument(span.clone()).await {
                Ok(response) => {
                    let status = grpc_status(response.headers());
                    if let Some(code) = status {
                        record_grpc_status(&span, code, CallSide::GrpcClient);
                    }
                    Ok(response.map(|body| {
                        tonic::body::Body::new(TracedBody::new(
                            body,
                            span,
                            CallSide::GrpcClient,
                            status,
                        ))
                    }))
                }
                Err(err) => {
                    let code = err
                        .downcast_ref::<tonic::Status>()
                        .map_or(UNAVAILABLE, |status| status.code() as i32);
                    record_grpc_status(&span, code, CallSide::GrpcClient);
                    spans::record_error(&span, &err);
                    Err(err)
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn statuses_are_read_from_headers_and_trailers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&headers), Some(14));
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), None);
    }

    #[tokio::test]
    async fn a_traced_body_passes_every_frame_through() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(b"abc"))),
            Ok(Frame::trailers(trailers)),
        ];
        let inner = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let body = TracedBody::new(inner, Span::none(), CallSide::GrpcServer, None);
        let collected = body.collect().await.unwrap();
        assert_eq!(
            collected.trailers().and_then(grpc_status),
            Some(0),
            "trailers kept"
        );
        assert_eq!(collected.to_bytes(), "abc");
    }
}
