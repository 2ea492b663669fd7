//! Helpers for tests that wait on real processes: bound a whole test in time, and poll for a
//! condition with a deadline instead of sleeping. For servers run in-process see
//! [`crate::server::testing`]; for databases and Redis key prefixes, `protomesh_data::testing`. Built with the
//! `test-util` feature (dev-dependencies only).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `test` and fails it if it takes longer than `limit`.
///
/// # Panics
/// When `limit` passes first: that is the test failing.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, test: F) {
    if tokio::time::timeout(limit, test).await.is_err() {
        panic!("test took longer than {limit:?}");
    }
}

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Some`, and returns that value.
///
/// # Panics
/// When `timeout` passes without `Some`, naming `what` was awaited: that is the test failing.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One descriptor pool of every file of the encoded descriptor `sets` (files they share, such as
/// the shared protos every service set imports, once).
///
/// # Panics
/// When a set does not decode or two sets disagree on a file: test fixtures only.
pub fn descriptor_pool(sets: &[&[u8]]) -> prost_reflect::DescriptorPool {
    let mut pool = prost_reflect::DescriptorPool::new();
    for set in sets {
        pool.decode_file_descriptor_set(*set)
            .expect("a service's descriptor set");
    }
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_some() {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), "the third call", || {
            calls += 1;
            let n = calls;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for nothing")]
    async fn eventually_fails_after_its_timeout() {
        eventually(Duration::from_millis(50), "nothing", || async {
            None::<()>
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "test took longer than")]
    async fn bounded_fails_a_slow_test() {
        bounded(
            Duration::from_millis(20),
            tokio::time::sleep(Duration::from_secs(5)),
        )
        .await;
    }
}
