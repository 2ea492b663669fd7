//! Deadlines: every call through a mesh channel has one. It is the earliest of the caller's
//! `grpc-timeout`, the deadline of the server call being handled (propagated through a task-local
//! set by [`IncomingDeadlineLayer`] on the server side), and the channel's default timeout. The
//! remaining budget goes out in `grpc-timeout`; when it runs out the call ends with
//! `DEADLINE_EXCEEDED`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use super::grpc_timeout::{self, GRPC_TIMEOUT_HEADER};
use super::BoxError;

tokio::task_local! {
    /// Deadline of the server call this task is handling.
    static INCOMING_DEADLINE: Instant;
}

/// The deadline of the call being handled by this task, if the caller sent one.
pub fn incoming_deadline() -> Option<Instant> {
    INCOMING_DEADLINE.try_with(|d| *d).ok()
}

/// The deadline a request carries to the inner layers (set by [`DeadlineLayer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// Time left, zero when passed.
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// Sets `grpc-timeout` on `request` to what is left of `deadline`.
pub(crate) fn set_remaining<B>(request: &mut http::Request<B>, deadline: Deadline) {
    request.headers_mut().insert(
        GRPC_TIMEOUT_HEADER,
        grpc_timeout::encode_header(deadline.remaining()),
    );
}

/// Client layer: resolves the call's deadline and enforces it.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    default_timeout: Duration,
}

impl DeadlineLayer {
    /// Deadlines default to `default_timeout` when neither the caller nor an incoming call set one.
    pub fn new(default_timeout: Duration) -> Self {
        Self { default_timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            default_timeout: self.default_timeout,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    default_timeout: Duration,
}

impl<S, B, R> Service<http::Request<B>> for DeadlineService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let now = Instant::now();
        let from_header = request
            .headers()
            .get(GRPC_TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout::parse)
            .map(|t| now + t);
        let deadline = [from_header, incoming_deadline()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + self.default_timeout);
        let deadline = Deadline(deadline);
        request.extensions_mut().insert(deadline);
        set_remaining(&mut request, deadline);
        let call = self.inner.call(request);
        Box::pin(async move {
            let exceeded = || {
                Box::new(tonic::Status::deadline_exceeded(format!(
                    "deadline exceeded after {:?}",
                    now.elapsed()
                ))) as BoxError
            };
            match tokio::time::timeout_at(deadline.0, call).await {
                // tonic's channel enforces the `grpc-timeout` we send too; when its timer wins
                // the race with ours, its "timeout expired" is this same deadline.
                Err(_) => Err(exceeded()),
                Ok(Err(_)) if deadline.remaining().is_zero() => Err(exceeded()),
                Ok(result) => result,
            }
        })
    }
}

/// Server layer: runs each handler with the caller's deadline in a task-local, so calls the handler
/// makes through mesh channels inherit what is left of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct IncomingDeadlineLayer;

impl<S> Layer<S> for IncomingDeadlineLayer {
    type Service = IncomingDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IncomingDeadline { inner }
    }
}

/// See [`IncomingDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct IncomingDeadline<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for IncomingDeadline<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = request
            .headers()
            .get(GRPC_TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout::parse)
            .map(|t| Instant::now() + t);
        let call = self.inner.call(request);
        match deadline {
            Some(deadline) => Box::pin(INCOMING_DEADLINE.scope(deadline, call)),
            None => Box::pin(call),
        }
    }
}
