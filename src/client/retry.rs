//! Retries: a call that failed with a connection error or `UNAVAILABLE` is sent again, but only for
//! methods the proto marks `NO_SIDE_EFFECTS` or `IDEMPOTENT`, only while a retry budget (a share of
//! recent calls) allows, with jittered exponential backoff, and never past the call's deadline.
//!
//! Such a call's attempts also have a timeout of their own, so that one stalled on an endpoint
//! that accepts and never answers (a hung process, a host gone silent without a reset) is sent
//! to another endpoint within the call's deadline: `max(floor, k × the method's observed
//! latency)` (a peak EWMA of its successful attempts, [`PeakEwma`]), at most the remaining budget
//! shared by the attempts left (`remaining / attempts left`; none when the floor does not fit
//! it), so a retry always
//! fits; the last attempt has all that is left. When the attempt timeout fires, the attempt had
//! another endpoint to go to, and the budget allows a retry, the attempt is abandoned (its stream
//! reset) and counted as a failure of its endpoint, which feeds outlier ejection; otherwise the
//! call keeps waiting for it. (With one endpoint a retry would only queue the call again on the
//! same busy server, and a burst of resets of streams it has not accepted yet makes hyper's
//! server close the whole connection, `ENHANCE_YOUR_CALM`, failing every call on it.)
//!
//! The answer of a unary retryable call is read whole by the balancer within its attempt (see
//! [`super::whole`]): a connection lost after the answer's headers but before its message — an
//! instance killed in the middle of answering — fails the attempt, which is retried, instead of
//! failing the call after the layer had returned it. Streams are returned as they come.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rand::Rng;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service};

use super::attempt::Attempts;
use super::balance::is_unavailable;
use super::deadline::{set_remaining, Deadline};
use super::latency::PeakEwma;
use super::methods::MethodTable;
pub use super::options::RetryPolicy;
use super::options::{BoxError, MAX_REPLAYED_BODY};

/// Layer that retries retryable calls.
#[derive(Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
    methods: Arc<MethodTable>,
    budget: Arc<TpsBudget>,
}

impl RetryLayer {
    /// Retries by `policy`, for methods `methods` marks safe.
    pub fn new(policy: RetryPolicy, methods: Arc<MethodTable>) -> Self {
        let budget = Arc::new(TpsBudget::new(
            Duration::from_secs(10),
            policy.min_retries_per_second,
            policy.budget_ratio,
        ));
        Self {
            policy,
            methods,
            budget,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RetryLayer`].
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

type Req = http::Request<tonic::body::Body>;
type Resp = http::Response<tonic::body::Body>;

/// What a retry needs of a request whose body was read: the first attempt takes the original
/// request; retries are rebuilt from this copy (the deadline is the only extension they keep).
struct Replayable {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    deadline: Option<Deadline>,
    body: Bytes,
}

impl Replayable {
    fn new(parts: &http::request::Parts, body: Bytes) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            deadline: parts.extensions.get::<Deadline>().copied(),
            body,
        }
    }

    fn body(&self) -> tonic::body::Body {
        tonic::body::Body::new(Full::new(self.body.clone()))
    }

    /// Another attempt, with `grpc-timeout` set to what is left of the deadline.
    fn request(&self) -> Req {
        let mut request = http::Request::new(self.body());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        if let Some(deadline) = self.deadline {
            request.extensions_mut().insert(deadline);
            set_remaining(&mut request, deadline);
        }
        request
    }
}

fn should_retry(result: &Result<Resp, BoxError>) -> bool {
    match result {
        Ok(response) => is_unavailable(response),
        // Errors the balancer made itself (no endpoint) are statuses; retrying cannot help them.
        Err(err) => !err.is::<tonic::Status>(),
    }
}

impl<S> Service<Req> for Retry<S>
where
    S: Service<Req, Response = Resp, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let layer = self.layer.clone();
        layer.budget.deposit();
        let Some((latency, unary)) = layer.methods.retry_latency(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        // Take the service that was made ready; keep a clone for the retries.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Kept whole to be sent again: bounded, so a caller cannot make this process buffer
            // more than one request message may hold.
            let body = http_body_util::Limited::new(body, MAX_REPLAYED_BODY)
                .collect()
                .await
                .map_err(|err| {
                    if err.is::<http_body_util::LengthLimitError>() {
                        Box::new(tonic::Status::resource_exhausted(format!(
                            "the request is larger than {MAX_REPLAYED_BODY} bytes"
                        ))) as BoxError
                    } else {
                        err
                    }
                })?
                .to_bytes();
            let replay = Replayable::new(&parts, body);
            let deadline = replay.deadline;
            let attempts = Attempts::default();
            attempts.set_reads_whole(unary);
            let mut request = http::Request::from_parts(parts, replay.body());
            let max_attempts = layer.policy.max_attempts.max(1);
            let mut attempt = 1;
            // An attempt failed (rather than being abandoned as slow).
            let mut failed_before = false;
            loop {
                request.extensions_mut().insert(attempts.clone());
                let limit = deadline.and_then(|d| {
                    attempt_timeout(
                        &layer.policy,
                        &latency,
                        d.remaining(),
                        max_attempts - attempt + 1,
                    )
                });
                // An attempt that may be abandoned steers clear of endpoints already tried, and so
                // does any after a failure (an endpoint that refused the call is no better for
                // the next attempt, and with no latency sample it looks the least loaded); the
                // last attempt after abandoned ones only goes where the balancer sees least load.
                attempts.set_prefer_untried(limit.is_some() || failed_before);
                // A retry with no attempt timeout is the call's last chance: the balancer keeps it
                // off endpoints whose last call failed (a first attempt is not steered: with
                // attempt timeouts off, or a deadline too short for them, every first attempt
                // would be, and an endpoint that failed once would never be called again).
                attempts.set_last_chance(limit.is_none() && attempt > 1);
                let started = tokio::time::Instant::now();
                match run_attempt(&mut inner, request, limit, &layer.budget, &attempts).await {
                    Attempt::Done(result) => {
                        let failed = should_retry(&result);
                        if !failed && result.is_ok() {
                            latency.observe(started.elapsed());
                        }
                        if attempt >= max_attempts || !failed {
                            return result;
                        }
                        failed_before = true;
                        let backoff = backoff(&layer.policy, attempt);
                        if deadline.is_some_and(|d| d.remaining() <= backoff)
                            || !layer.budget.withdraw()
                        {
                            return result;
                        }
                        tokio::time::sleep(backoff).await;
                    }
                    // The budget was drawn on already, and the wait was the attempt timeout.
                    Attempt::Abandoned => {
                        tracing::debug!(path = %replay.uri.path(), attempt, ?limit, "attempt timed out; trying another endpoint");
                    }
                }
                attempt += 1;
                std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                tracing::debug!(path = %replay.uri.path(), attempt, "retrying");
                request = replay.request();
            }
        })
    }
}

/// How one attempt ended.
enum Attempt {
    /// It answered or failed.
    Done(Result<Resp, BoxError>),
    /// It was abandoned at its timeout, a retry drawn from the budget.
    Abandoned,
}

/// Sends one attempt; past `limit`, abandons it if another endpoint could take it and the budget
/// allows a retry (marking it in `attempts` while it is dropped, so the balancer counts it
/// against its endpoint), else keeps waiting for it. A timer that fires more than half a period late (this process was stalled)
/// is given one more period first.
async fn run_attempt<S>(
    inner: &mut S,
    request: Req,
    limit: Option<Duration>,
    budget: &TpsBudget,
    attempts: &Attempts,
) -> Attempt
where
    S: Service<Req, Response = Resp, Error = BoxError>,
{
    let call = inner.call(request);
    let Some(limit) = limit else {
        return Attempt::Done(call.await);
    };
    let outcome = {
        tokio::pin!(call);
        let timer = tokio::time::sleep(limit);
        tokio::pin!(timer);
        let mut rearmed = false;
        loop {
            tokio::select! {
                biased;
                result = &mut call => break Attempt::Done(result),
                () = &mut timer => {
                    // A timer that fired well past its time says this process was stalled (CPU
                    // starved), not the endpoint: the attempt gets one more period.
                    if !rearmed && timer.deadline().elapsed() > limit / 2 {
                        rearmed = true;
                        timer.as_mut().reset(tokio::time::Instant::now() + limit);
                        continue;
                    }
                    if attempts.has_other_endpoint() && budget.withdraw() {
                        attempts.abandon();
                        break Attempt::Abandoned;
                    }
                    break Attempt::Done(call.await);
                }
            }
        }
        // The attempt is dropped here: its endpoint's guard reads the mark.
    };
    // Cleared in case the attempt had not reached an endpoint yet.
    attempts.take_abandoned();
    outcome
}

/// The timeout of an attempt when `attempts_left` attempts (this one included) share
/// `remaining`: `max(floor, multiple × observed latency)`, at most `remaining / attempts_left`
/// (a method that got slow under load still has its hung attempts abandoned in time for the
/// next); none when even the floor does not fit (the attempt may use all that is left, as the
/// last one always does).
fn attempt_timeout(
    policy: &RetryPolicy,
    latency: &PeakEwma,
    remaining: Duration,
    attempts_left: u32,
) -> Option<Duration> {
    if attempts_left < 2 {
        return None;
    }
    let observed = Duration::try_from_secs_f64(
        latency.get().as_secs_f64() * policy.attempt_timeout_latency_multiple,
    )
    .unwrap_or(Duration::MAX);
    let share = remaining / attempts_left;
    let wanted = observed.max(policy.attempt_timeout_floor);
    (!wanted.is_zero() && policy.attempt_timeout_floor <= share).then(|| wanted.min(share))
}

/// Full-jitter exponential backoff before retry number `attempt` (1-based).
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let cap = policy
        .base_backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(policy.max_backoff);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_a_growing_capped_ceiling() {
        let policy = RetryPolicy::default();
        for attempt in 1..10 {
            let ceiling = policy
                .base_backoff
                .saturating_mul(1 << (attempt - 1))
                .min(policy.max_backoff);
            for _ in 0..50 {
                assert!(backoff(&policy, attempt) <= ceiling);
            }
        }
    }

    #[test]
    fn attempt_timeouts_follow_the_latency_above_the_floor_and_leave_room_for_retries() {
        let policy = RetryPolicy::default();
        let latency = PeakEwma::new(Duration::ZERO);
        let two_s = Duration::from_secs(2);
        // Unobserved or fast: the floor.
        assert_eq!(
            attempt_timeout(&policy, &latency, two_s, 3),
            Some(policy.attempt_timeout_floor)
        );
        latency.observe(Duration::from_millis(1));
        assert_eq!(
            attempt_timeout(&policy, &latency, two_s, 3),
            Some(Duration::from_millis(100))
        );
        // A slower method: k × its latency.
        let slow = PeakEwma::new(Duration::ZERO);
        slow.observe(Duration::from_millis(40));
        assert_eq!(
            attempt_timeout(&policy, &slow, two_s, 3),
            Some(Duration::from_millis(400))
        );
        // At most the attempts' share of what is left; none when the floor does not fit, nor
        // for the last attempt.
        assert_eq!(attempt_timeout(&policy, &slow, two_s, 6), Some(two_s / 6));
        assert_eq!(
            attempt_timeout(&policy, &latency, Duration::from_millis(50), 3),
            None
        );
        assert_eq!(attempt_timeout(&policy, &latency, two_s, 1), None);
        let off = RetryPolicy {
            attempt_timeout_floor: Duration::MAX,
            ..policy
        };
        assert_eq!(attempt_timeout(&off, &latency, two_s, 3), None);
    }

    #[test]
    fn only_unavailable_and_transport_errors_are_retried() {
        let unavailable = http::Response::builder()
            .header("grpc-status", "14")
            .body(tonic::body::Body::empty())
            .expect("response");
        assert!(should_retry(&Ok(unavailable)));
        let invalid = http::Response::builder()
            .header("grpc-status", "3")
            .body(tonic::body::Body::empty())
            .expect("response");
        assert!(!should_retry(&Ok(invalid)));
        assert!(should_retry(&Err(Box::new(std::io::Error::other("reset")))));
        assert!(!should_retry(&Err(Box::new(tonic::Status::unavailable(
            "no endpoint"
        )))));
    }
}
