//! The shared rate limiter on a real Redis: two limiters (two connections, as two gateway
//! instances would have) share one quota; on a private `redis-server` that is stopped, the local
//! fallback keeps limiting, and the shared limiter takes over again when Redis is back.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use protomesh_data::ratelimit::{Backend, Quota, RateLimiter};
use protomesh_data::testing::{redis_url, PrivateRedis, TestKeys};
use protomesh_data::{connect_redis, DataConfig};

fn config(redis: &str) -> DataConfig {
    DataConfig::with_database_url(protomesh_data::DEFAULT_DATABASE_URL).with_redis_url(redis)
}

async fn connected(redis: &str) -> protomesh_data::fred::prelude::Client {
    let client = connect_redis(&config(redis)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !protomesh_data::fred::prelude::ClientLike::is_connected(&client) {
        assert!(Instant::now() < deadline, "Redis at {redis} not connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
}

#[tokio::test]
async fn two_limiters_share_one_quota_in_redis() {
    let keys = TestKeys::new();
    let a = RateLimiter::new(connected(&redis_url()).await, keys.prefix());
    let b = RateLimiter::new(connected(&redis_url()).await, keys.prefix());
    let quota: Quota = "4/1m".parse().unwrap();
    let mut allowed = 0;
    for n in 0..10 {
        let limiter = if n % 2 == 0 { &a } else { &b };
        let decision = limiter.check("client-1", quota).await;
        assert_eq!(decision.backend, Backend::Redis);
        assert_eq!(decision.limit, 4);
        if decision.allowed {
            allowed += 1;
            assert_eq!(decision.remaining, 4 - allowed);
        } else {
            // One call every 15 s: the next is at most 15 s away.
            assert!(decision.retry_after <= Duration::from_secs(15));
            assert!(decision.retry_after > Duration::from_secs(13));
            assert_eq!(decision.retry_after_secs(), 15);
        }
    }
    assert_eq!(allowed, 4, "the quota is shared, not per limiter");
    // Another client key has its own quota.
    assert!(a.check("client-2", quota).await.allowed);
    assert!(!a.is_degraded());
}

#[tokio::test]
async fn refunds_in_redis_give_back_one_share_and_never_more_than_the_burst() {
    let keys = TestKeys::new();
    let a = RateLimiter::new(connected(&redis_url()).await, keys.prefix());
    let b = RateLimiter::new(connected(&redis_url()).await, keys.prefix());
    let quota: Quota = "2/1m".parse().unwrap();
    assert!(a.check("k", quota).await.allowed);
    assert!(b.check("k", quota).await.allowed);
    assert!(!a.check("k", quota).await.allowed);
    // A share given back by one instance is usable from the other.
    a.refund("k", quota).await;
    let decision = b.check("k", quota).await;
    assert_eq!((decision.allowed, decision.backend), (true, Backend::Redis));
    assert!(!b.check("k", quota).await.allowed);
    // More refunds than calls leave a full bucket, not a bigger one; unknown keys are a no-op.
    for _ in 0..5 {
        b.refund("k", quota).await;
    }
    a.refund("never-used", quota).await;
    assert_eq!(a.check("k", quota).await.remaining, 1);
    assert!(a.check("k", quota).await.allowed);
    assert!(!a.check("k", quota).await.allowed);
    assert!(!a.is_degraded() && !b.is_degraded());
}

#[tokio::test]
async fn limiting_holds_while_redis_is_down_and_is_shared_again_after() {
    let mut redis = PrivateRedis::start().await.unwrap();
    let limiter = RateLimiter::new(connected(&redis.url()).await, "rl-test:");
    let quota: Quota = "3/1m".parse().unwrap();
    assert!(limiter.check("warm", quota).await.allowed);
    assert_eq!(limiter.check("warm", quota).await.backend, Backend::Redis);

    redis.stop().await.unwrap();
    let started = Instant::now();
    let decisions: Vec<_> = {
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(limiter.check("client", quota).await);
        }
        out
    };
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "decisions stay fast with Redis down: {:?}",
        started.elapsed()
    );
    assert!(decisions.iter().all(|d| d.backend == Backend::Local));
    let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
    assert_eq!(
        allowed,
        [true, true, true, false, false],
        "3/1m still holds"
    );
    assert!(limiter.is_degraded());

    redis.start_again().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let decision = limiter.check("after", quota).await;
        if decision.backend == Backend::Redis {
            assert!(decision.allowed);
            break;
        }
        assert!(Instant::now() < deadline, "Redis never took over again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!limiter.is_degraded());
}
