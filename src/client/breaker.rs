//! The circuit breaker of one target service, shared by every channel to it in the process.
//!
//! **Closed**: calls go through; their outcomes are counted in a tumbling window. Too many
//! failures (a run of [`BreakerPolicy::consecutive_failures`], or a failure share of at least
//! [`BreakerPolicy::failure_ratio`] over at least [`BreakerPolicy::min_calls`] calls) open it.
//! **Open**: calls fail at once with `UNAVAILABLE` (marked so that [`is_circuit_open`] knows it)
//! for [`BreakerPolicy::open_for`]. **Half-open**: up to [`BreakerPolicy::probes`] calls go
//! through as probes; if they all succeed the breaker closes, if one fails it opens again.
//!
//! A failure is what says the service is down, not what says the request was wrong: a
//! connection error, `UNAVAILABLE`, or the call's deadline running out. Every other answer —
//! `INVALID_ARGUMENT` included — proves the service is up and counts as a success.
//! [`with_fallback`] gives the caller's own answer when the breaker is open or the service down.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use super::deadline::{Deadline, DEADLINE_FAILURE_FLOOR};
use super::options::BoxError;
pub use super::options::BreakerPolicy;

/// Metadata key set on the status of a call the open breaker refused.
pub const CIRCUIT_OPEN_METADATA: &str = "x-protomesh-circuit";

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused for this much longer.
    Open {
        /// Time left before probing.
        remaining: Duration,
    },
    /// A few probe calls go through.
    HalfOpen,
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("closed"),
            Self::Open { remaining } => write!(f, "open ({}ms left)", remaining.as_millis()),
            Self::HalfOpen => f.write_str("half-open"),
        }
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// State changed only under the lock: transitions and failures (rare when all is well).
#[derive(Debug)]
struct Core {
    phase: Phase,
    window_start: Instant,
    failures: u32,
    times_opened: u64,
}

/// What every call touches, without a lock: while closed, a call is admitted and its success
/// counted with a few atomic operations.
#[derive(Debug)]
struct FastPath {
    /// Mirrors `Core::phase == Closed`.
    closed: AtomicBool,
    /// Successes in the current window.
    successes: AtomicU32,
    /// Failures in a row.
    in_a_row: AtomicU32,
}

/// The breaker of one service; clones share their state.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    service: Arc<str>,
    policy: BreakerPolicy,
    fast: Arc<FastPath>,
    core: Arc<Mutex<Core>>,
}

/// How a call ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The service answered.
    Success,
    /// The service could not be reached or did not answer in time.
    Failure,
}

/// A call let through by the breaker; records its outcome when it ends. Dropped without an
/// outcome, it counts as a failure if the call's deadline had passed (the deadline layer gave
/// up on it) after it waited at least [`DEADLINE_FAILURE_FLOOR`], and as nothing otherwise (the
/// caller went away, or chose a deadline too short to say anything about the service).
#[derive(Debug)]
pub struct Permit {
    breaker: CircuitBreaker,
    probe: bool,
    deadline: Option<Deadline>,
    admitted: Instant,
    done: bool,
}

impl Permit {
    /// Records the call's outcome. A failure that comes with the call's deadline passed, before
    /// [`DEADLINE_FAILURE_FLOOR`], counts as nothing: the caller's deadline was too short.
    pub fn record(mut self, outcome: Outcome) {
        self.done = true;
        let outcome = match outcome {
            Outcome::Failure if self.cut_short() => None,
            outcome => Some(outcome),
        };
        self.breaker.record(self.probe, outcome);
    }

    /// The call's deadline passed before it had waited [`DEADLINE_FAILURE_FLOOR`].
    fn cut_short(&self) -> bool {
        self.deadline.is_some_and(|d| d.remaining().is_zero())
            && self.admitted.elapsed() < DEADLINE_FAILURE_FLOOR
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            let timed_out = self.deadline.is_some_and(|d| d.remaining().is_zero());
            let failed = timed_out && !self.cut_short();
            self.breaker
                .record(self.probe, failed.then_some(Outcome::Failure));
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker for `service`.
    pub fn new(service: &str, policy: BreakerPolicy) -> Self {
        Self {
            service: Arc::from(service),
            policy,
            fast: Arc::new(FastPath {
                closed: AtomicBool::new(true),
                successes: AtomicU32::new(0),
                in_a_row: AtomicU32::new(0),
            }),
            core: Arc::new(Mutex::new(Core {
                phase: Phase::Closed,
                window_start: Instant::now(),
                failures: 0,
                times_opened: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        match self.core.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        let core = self.lock();
        match core.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } => {
                let remaining = until.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    BreakerState::HalfOpen
                } else {
                    BreakerState::Open { remaining }
                }
            }
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker opened.
    pub fn times_opened(&self) -> u64 {
        self.lock().times_opened
    }

    /// Lets a call through, or refuses it with `UNAVAILABLE` while open.
    pub fn admit(&self, deadline: Option<Deadline>) -> Result<Permit, tonic::Status> {
        if self.fast.closed.load(Ordering::Acquire) {
            return Ok(Permit {
                breaker: self.clone(),
                probe: false,
                deadline,
                admitted: Instant::now(),
                done: false,
            });
        }
        let now = Instant::now();
        let mut core = self.lock();
        if let Phase::Open { until } = core.phase {
            if now < until {
                return Err(self.refusal(until - now));
            }
            tracing::info!(service = %self.service, "circuit breaker half-open: probing");
            core.phase = Phase::HalfOpen {
                in_flight: 0,
                succeeded: 0,
            };
        }
        let probe = match &mut core.phase {
            Phase::HalfOpen { in_flight, .. } => {
                if *in_flight >= self.policy.probes.max(1) {
                    return Err(self.refusal(Duration::ZERO));
                }
                *in_flight += 1;
                true
            }
            _ => false,
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            deadline,
            admitted: Instant::now(),
            done: false,
        })
    }

    fn refusal(&self, remaining: Duration) -> tonic::Status {
        let mut status = tonic::Status::unavailable(format!(
            "circuit breaker open for service \"{}\" after repeated failures; next probe in {}ms",
            self.service,
            remaining.as_millis()
        ));
        status.metadata_mut().insert(
            CIRCUIT_OPEN_METADATA,
            tonic::metadata::MetadataValue::from_static("open"),
        );
        status
    }

    /// Counts a call's outcome (`None`: the call left without one).
    fn record(&self, probe: bool, outcome: Option<Outcome>) {
        if !probe {
            match outcome {
                None => return,
                Some(Outcome::Success) if self.fast.closed.load(Ordering::Acquire) => {
                    self.fast.successes.fetch_add(1, Ordering::Relaxed);
                    if self.fast.in_a_row.load(Ordering::Relaxed) != 0 {
                        self.fast.in_a_row.store(0, Ordering::Relaxed);
                    }
                    return;
                }
                _ => {}
            }
        }
        let now = Instant::now();
        let mut core = self.lock();
        match (&mut core.phase, probe) {
            (
                Phase::HalfOpen {
                    in_flight,
                    succeeded,
                },
                true,
            ) => {
                *in_flight = in_flight.saturating_sub(1);
                match outcome {
                    Some(Outcome::Success) => {
                        *succeeded += 1;
                        if *succeeded >= self.policy.probes.max(1) {
                            tracing::info!(service = %self.service, "circuit breaker closed: probes succeeded");
                            core.phase = Phase::Closed;
                            core.window_start = now;
                            core.failures = 0;
                            self.fast.successes.store(0, Ordering::Relaxed);
                            self.fast.in_a_row.store(0, Ordering::Relaxed);
                            self.fast.closed.store(true, Ordering::Release);
                        }
                    }
                    Some(Outcome::Failure) => self.open(&mut core, now, "a probe failed"),
                    None => {}
                }
            }
            // Successes while closed took the fast path; this is a failure.
            (Phase::Closed, _) if outcome == Some(Outcome::Failure) => {
                // The window starts again with the first failure after it ran out.
                if now.saturating_duration_since(core.window_start) >= self.policy.window {
                    core.window_start = now;
                    core.failures = 0;
                    self.fast.successes.store(0, Ordering::Relaxed);
                }
                core.failures += 1;
                let in_a_row = self.fast.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                let calls = core.failures + self.fast.successes.load(Ordering::Relaxed);
                let ratio_tripped = calls >= self.policy.min_calls.max(1)
                    && f64::from(core.failures) >= self.policy.failure_ratio * f64::from(calls);
                if in_a_row >= self.policy.consecutive_failures.max(1) || ratio_tripped {
                    self.open(&mut core, now, "too many failures");
                }
            }
            // Calls admitted before the breaker opened, ending while it is open or probing:
            // the probes decide.
            _ => {}
        }
    }

    fn open(&self, core: &mut Core, now: Instant, why: &str) {
        self.fast.closed.store(false, Ordering::Release);
        core.phase = Phase::Open {
            until: now + self.policy.open_for,
        };
        core.times_opened += 1;
        tracing::warn!(
            service = %self.service,
            reason = why,
            successes = self.fast.successes.load(Ordering::Relaxed),
            failures = core.failures,
            open_for = ?self.policy.open_for,
            "circuit breaker opened"
        );
    }
}

/// True when `status` is the open breaker's refusal.
pub fn is_circuit_open(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && status.metadata().get(CIRCUIT_OPEN_METADATA).is_some()
}

/// True when `status` says the service is down or out of reach — the breaker's failures, and
/// what a fallback stands in for.
pub fn is_service_down(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

/// Runs `call`; when the breaker refused it or the service is down, answers with `fallback`
/// instead (given the status, to log it). Any other error (a bad request, say) is returned as is.
pub async fn with_fallback<T, F>(
    call: F,
    fallback: impl FnOnce(&tonic::Status) -> T,
) -> Result<T, tonic::Status>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match call.await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) if is_service_down(&status) => Ok(fallback(&status)),
        Err(status) => Err(status),
    }
}

/// How a finished call counts for the breaker.
fn outcome<B>(result: &Result<http::Response<B>, BoxError>) -> Outcome {
    match result {
        Ok(response) => match response
            .headers()
            .get(super::grpc_timeout::GRPC_STATUS_HEADER)
            .map(|s| s.as_bytes())
        {
            Some(b"14") | Some(b"4") => Outcome::Failure,
            _ => Outcome::Success,
        },
        Err(err) => match err.downcast_ref::<tonic::Status>() {
            Some(status) if !is_service_down(status) => Outcome::Success,
            _ => Outcome::Failure,
        },
    }
}

/// Layer that puts a [`CircuitBreaker`] in front of a service.
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    breaker: CircuitBreaker,
}

impl BreakerLayer {
    /// Calls pass through `breaker`.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// See [`BreakerLayer`].
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    breaker: CircuitBreaker,
}

impl<S, B, R> Service<http::Request<B>> for Breaker<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>, Error = BoxError>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = request.extensions().get::<Deadline>().copied();
        let permit = match self.breaker.admit(deadline) {
            Ok(permit) => permit,
            Err(refused) => {
                return Box::pin(std::future::ready(Err(Box::new(refused) as BoxError)))
            }
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            permit.record(outcome(&result));
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_calls: 10,
            window: Duration::from_secs(60),
            open_for: Duration::from_millis(50),
            probes: 2,
        }
    }

    fn fail(breaker: &CircuitBreaker) {
        breaker
            .admit(None)
            .expect("admitted")
            .record(Outcome::Failure);
    }

    fn succeed(breaker: &CircuitBreaker) {
        breaker
            .admit(None)
            .expect("admitted")
            .record(Outcome::Success);
    }

    #[tokio::test]
    async fn failures_in_a_row_open_it_and_it_refuses_with_a_marked_unavailable() {
        let breaker = CircuitBreaker::new("priority", policy());
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker);
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
        let refused = breaker.admit(None).expect_err("open refuses");
        assert!(is_circuit_open(&refused));
        assert!(refused.message().contains("\"priority\""), "{refused:?}");
        assert_eq!(breaker.times_opened(), 1);
    }

    #[tokio::test]
    async fn a_failure_share_opens_it_even_without_a_run() {
        let breaker = CircuitBreaker::new("priority", policy());
        for _ in 0..5 {
            succeed(&breaker);
            fail(&breaker);
        }
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
    }

    #[tokio::test]
    async fn half_open_lets_a_few_probes_through_and_closes_when_they_succeed() {
        let breaker = CircuitBreaker::new("priority", policy());
        for _ in 0..3 {
            fail(&breaker);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let first = breaker.admit(None).expect("probe 1");
        let second = breaker.admit(None).expect("probe 2");
        assert!(breaker.admit(None).is_err(), "only two probes at once");
        first.record(Outcome::Success);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        second.record(Outcome::Success);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_failed_probe_opens_it_again() {
        let breaker = CircuitBreaker::new("priority", policy());
        for _ in 0..3 {
            fail(&breaker);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        fail(&breaker);
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
        assert_eq!(breaker.times_opened(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_dropped_after_its_deadline_is_a_failure_and_before_it_nothing() {
        let breaker = CircuitBreaker::new("priority", policy());
        for _ in 0..5 {
            drop(breaker.admit(Some(Deadline(Instant::now() + Duration::from_secs(5)))));
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "cancelled calls do not count"
        );
        // Deadlines too short to say anything about the service (`grpc-timeout: 1n`): nothing,
        // dropped or answered DEADLINE_EXCEEDED.
        for _ in 0..5 {
            drop(breaker.admit(Some(Deadline(Instant::now()))));
            let permit = breaker.admit(Some(Deadline(Instant::now()))).unwrap();
            permit.record(Outcome::Failure);
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "caller's short deadlines"
        );
        // Calls that waited past the floor for their deadline: failures.
        let permits: Vec<_> = (0..3)
            .map(|_| {
                breaker
                    .admit(Some(Deadline(Instant::now() + DEADLINE_FAILURE_FLOOR)))
                    .unwrap()
            })
            .collect();
        tokio::time::advance(DEADLINE_FAILURE_FLOOR).await;
        drop(permits);
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn bad_requests_prove_the_service_is_up() {
        let invalid: Result<http::Response<()>, BoxError> =
            Err(Box::new(tonic::Status::invalid_argument("urgency")));
        assert_eq!(outcome(&invalid), Outcome::Success);
        let unavailable: Result<http::Response<()>, BoxError> =
            Err(Box::new(tonic::Status::unavailable("down")));
        assert_eq!(outcome(&unavailable), Outcome::Failure);
        let reset: Result<http::Response<()>, BoxError> =
            Err(Box::new(std::io::Error::other("reset")));
        assert_eq!(outcome(&reset), Outcome::Failure);
        let trailers_only = http::Response::builder()
            .header("grpc-status", "14")
            .body(())
            .expect("response");
        assert_eq!(outcome(&Ok(trailers_only)), Outcome::Failure);
    }

    #[tokio::test]
    async fn fallback_stands_in_for_a_down_service_but_not_for_a_bad_request() {
        let down = with_fallback(
            async { Err::<tonic::Response<u32>, _>(tonic::Status::unavailable("down")) },
            |_| 7,
        )
        .await;
        assert_eq!(down.expect("fallback"), 7);
        let bad = with_fallback(
            async { Err::<tonic::Response<u32>, _>(tonic::Status::invalid_argument("x")) },
            |_| 7,
        )
        .await;
        assert_eq!(bad.expect_err("kept").code(), tonic::Code::InvalidArgument);
    }
}
