//! Deadlines: every call through a mesh channel has one. It is the earliest of the caller's
//! `grpc-timeout` and the deadline of the server call being handled (propagated through a
//! task-local set by [`IncomingDeadlineLayer`] on the server side); when neither is set, the
//! method's own default (the `default_timeout` of its `(protomesh.options.v1.policy)`, read by the
//! [`MethodTable`]) or else the channel's default timeout. The remaining budget goes out in
//! `grpc-timeout`; when it runs out the call ends with `DEADLINE_EXCEEDED`.
//!
//! On the server side, a call that arrives without `grpc-timeout` to a method whose policy names a
//! default timeout is handled under that deadline, so the calls its handler makes inherit it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use super::grpc_timeout::{self, GRPC_TIMEOUT_HEADER};
use super::methods::MethodTable;
use super::options::BoxError;

tokio::task_local! {
    /// Deadline of the server call this task is handling.
    static INCOMING_DEADLINE: Instant;
}

/// The deadline of the call being handled by this task, if the caller sent one.
pub fn incoming_deadline() -> Option<Instant> {
    INCOMING_DEADLINE.try_with(|d| *d).ok()
}

/// Least time a call must have waited for its deadline running out to count as a failure of
/// the service (its circuit breaker) or of the endpoint (outlier ejection): shorter deadlines are
/// the caller's choice — a caller sending `grpc-timeout: 1n` must not open a breaker or get
/// healthy endpoints ejected — while longer waits say the service did not answer.
pub(crate) const DEADLINE_FAILURE_FLOOR: Duration = Duration::from_secs(1);

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
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    default_timeout: Duration,
    methods: Arc<MethodTable>,
}

impl DeadlineLayer {
    /// Deadlines default to the method's own default timeout in `methods`, else to
    /// `default_timeout`, when neither the caller nor an incoming call set one.
    pub fn new(default_timeout: Duration, methods: Arc<MethodTable>) -> Self {
        Self {
            default_timeout,
            methods,
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            default_timeout: self.default_timeout,
            methods: Arc::clone(&self.methods),
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    default_timeout: Duration,
    methods: Arc<MethodTable>,
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
            .unwrap_or_else(|| {
                let default = self
                    .methods
                    .default_timeout(request.uri().path())
                    .unwrap_or(self.default_timeout);
                now + default
            });
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
                // An answer that comes after the deadline is too late, even when the timer (which
                // rounds up to the millisecond) has not fired yet: a `1n` budget always expires.
                Ok(_) if deadline.remaining().is_zero() => Err(exceeded()),
                Ok(result) => result,
            }
        })
    }
}

/// Server layer: runs each handler with the caller's deadline (or, when the caller sent none, the
/// method's default timeout from `methods`) in a task-local, so calls the handler makes through
/// mesh channels inherit what is left of it.
#[derive(Debug, Clone, Default)]
pub struct IncomingDeadlineLayer {
    methods: Arc<MethodTable>,
}

impl IncomingDeadlineLayer {
    /// The layer for a server whose methods' defaults are in `methods`.
    pub fn new(methods: Arc<MethodTable>) -> Self {
        Self { methods }
    }
}

impl<S> Layer<S> for IncomingDeadlineLayer {
    type Service = IncomingDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IncomingDeadline {
            inner,
            methods: Arc::clone(&self.methods),
        }
    }
}

/// See [`IncomingDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct IncomingDeadline<S> {
    inner: S,
    methods: Arc<MethodTable>,
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
            .or_else(|| self.methods.default_timeout(request.uri().path()))
            .map(|t| Instant::now() + t);
        let call = self.inner.call(request);
        match deadline {
            Some(deadline) => Box::pin(INCOMING_DEADLINE.scope(deadline, call)),
            None => Box::pin(call),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Sends one request to `path` through a [`DeadlineLayer`] and returns the `grpc-timeout` the
    /// inner service received.
    async fn sent_timeout(path: &str, caller_timeout: Option<&str>) -> Duration {
        let methods = Arc::new(
            MethodTable::from_descriptor_sets(crate::test_protos::SETS).expect("descriptors"),
        );
        let seen = Arc::new(Mutex::new(None));
        let record = Arc::clone(&seen);
        let inner = tower::service_fn(move |request: http::Request<()>| {
            let header = request
                .headers()
                .get(GRPC_TIMEOUT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(grpc_timeout::parse);
            *record.lock().expect("lock") = header;
            async { Ok::<_, BoxError>(http::Response::new(())) }
        });
        let mut service = DeadlineLayer::new(Duration::from_secs(10), methods).layer(inner);
        let mut request = http::Request::builder().uri(path);
        if let Some(timeout) = caller_timeout {
            request = request.header(GRPC_TIMEOUT_HEADER, timeout);
        }
        service
            .call(request.body(()).expect("request"))
            .await
            .expect("answer");
        let sent = *seen.lock().expect("lock");
        sent.expect("a grpc-timeout was sent")
    }

    #[tokio::test]
    async fn a_method_policy_timeout_is_the_default_and_the_caller_s_wins() {
        let score = "/protomesh.priority.v1.PriorityService/Score";
        let policy = sent_timeout(score, None).await;
        assert!(
            policy <= Duration::from_secs(2) && policy > Duration::from_millis(1_900),
            "{policy:?}"
        );
        let channel = sent_timeout("/protomesh.tasks.v1.TasksService/GetTask", None).await;
        assert!(channel > Duration::from_secs(9), "{channel:?}");
        let caller = sent_timeout(score, Some("5S")).await;
        assert!(
            caller > Duration::from_secs(4),
            "the caller's own wins: {caller:?}"
        );
    }
}
