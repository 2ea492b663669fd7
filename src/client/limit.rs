//! A cap on the calls in flight to one target from a channel and its clones. Unlike tower's
//! `ConcurrencyLimit`, which waits for a slot in `poll_ready` (before the deadline layer has
//! seen the request), the slot is taken inside the call, so waiting for it counts against the
//! call's deadline like everything else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tower::{Layer, Service};

use super::options::BoxError;

/// Layer that allows at most `max` calls in flight through the services it wraps.
#[derive(Debug, Clone)]
pub struct LimitLayer {
    slots: Arc<Semaphore>,
}

impl LimitLayer {
    /// At most `max` calls in flight (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            slots: Arc::clone(&self.slots),
        }
    }
}

/// See [`LimitLayer`].
#[derive(Debug, Clone)]
pub struct Limit<S> {
    inner: S,
    slots: Arc<Semaphore>,
}

impl<S, R> Service<R> for Limit<S>
where
    S: Service<R, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The inner future does nothing until polled, so holding it back until a slot is free
        // holds the call back.
        let call = self.inner.call(request);
        let slots = Arc::clone(&self.slots);
        Box::pin(async move {
            let _slot = match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => slots
                    .acquire_owned()
                    .await
                    .map_err(|err| Box::new(err) as BoxError)?,
            };
            call.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    /// A call that holds its slot until its gate opens; `started` says it is running.
    type Gated = (oneshot::Sender<()>, oneshot::Receiver<()>);

    #[tokio::test]
    async fn a_call_waits_for_a_slot_and_goes_when_one_frees() {
        let service = tower::service_fn(|(started, gate): Gated| async move {
            let _ = started.send(());
            let _ = gate.await;
            Ok::<_, BoxError>(())
        });
        let limited = LimitLayer::new(1).layer(service);

        let (first_started, first_running) = oneshot::channel();
        let (open_first, first_gate) = oneshot::channel();
        let first = tokio::spawn(limited.clone().oneshot((first_started, first_gate)));
        first_running.await.expect("the first call runs");

        let (second_started, mut second_running) = oneshot::channel();
        let (_open_second, second_gate) = oneshot::channel::<()>();
        let second = tokio::spawn(limited.clone().oneshot((second_started, second_gate)));
        // Whatever the scheduling, the second cannot start while the first holds the slot.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(second_running.try_recv().is_err(), "the second call waits");

        open_first.send(()).expect("first still waiting");
        first.await.expect("joined").expect("first call");
        second_running
            .await
            .expect("the second call runs once the slot is free");
        second.abort();
    }
}
