//! Rate limits shared by every instance of a process kind, with the generic cell rate algorithm
//! (GCRA) in Redis: one atomic Lua script per decision keeps a single timestamp per key (the
//! "theoretical arrival time"), so a quota of `limit` calls per `period` lets `limit` calls
//! through at once and then one every `period / limit`, across all instances sharing the Redis.
//!
//! When Redis is unreachable (not connected, an error, or no answer within the limiter's timeout,
//! 50 ms by default), the decision is taken by an in-process GCRA with the same quota instead:
//! limiting stays on (fail-safe), but per instance rather than shared, so N instances let up to N
//! times the quota through. The switch to and from the local limiter is logged once each way
//! (WARN, then INFO) and visible through [`RateLimiter::is_degraded`].
//!
//! A quota can also count only some calls, decided after the fact: [`RateLimiter::check`] takes
//! one call's share up front (so concurrent calls cannot all slip through on the last one), and
//! [`RateLimiter::refund`] gives it back when the call turned out not to count (a login that
//! succeeded, say).
//!
//! ```no_run
//! # async fn run(redis: fred::prelude::Client) {
//! use protomesh_data::ratelimit::{Quota, RateLimiter};
//! let limiter = RateLimiter::new(redis, "gw:");
//! let quota: Quota = "5/1m".parse().expect("a quota");
//! let decision = limiter.check("login:ada@example.com", quota).await;
//! if !decision.allowed {
//!     println!("retry after {:?}", decision.retry_after);
//! }
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike};
use fred::types::scripts::Script;

/// How long a decision may wait for Redis before the local limiter takes it.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// Keys the local limiter keeps at most; past that, keys whose bucket is full again are dropped,
/// and if that is not enough, all of them (the limiter then forgets recent calls).
pub const MAX_LOCAL_KEYS: usize = 100_000;

/// The GCRA step. KEYS[1]: the key. ARGV[1]: the emission interval (µs), ARGV[2]: the period
/// (µs). Returns {allowed (0/1), remaining, retry_after µs, reset_after µs}.
const GCRA_LUA: &str = r"
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
";

/// Gives back one call's share. KEYS[1]: the key. ARGV[1]: the emission interval (µs). Moves the
/// theoretical arrival time back by one interval, never before now (deleting the key then).
const REFUND_LUA: &str = r"
local interval = tonumber(ARGV[1])
local stored = redis.call('GET', KEYS[1])
if not stored then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(stored) - interval
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
end
return 1
";

/// `limit` calls per `period`, all of them allowed at once after a quiet `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u32,
    period: Duration,
}

/// Why a quota is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// Not `LIMIT/PERIOD`.
    #[error("`{0}` is not a quota: write LIMIT/PERIOD, such as 100/1m or 5/30s")]
    Syntax(String),
    /// A zero limit or period, or a period under a millisecond per call.
    #[error(
        "quota `{0}`: the limit and the period must be positive, and period/limit at least 1 µs"
    )]
    Range(String),
}

impl Quota {
    /// `limit` calls per `period`.
    pub fn new(limit: u32, period: Duration) -> Result<Self, QuotaError> {
        let quota = Self { limit, period };
        if limit == 0 || quota.interval().is_zero() {
            return Err(QuotaError::Range(quota.to_string()));
        }
        Ok(quota)
    }

    /// Calls allowed per period (and at once).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The steady spacing between calls: `period / limit`.
    pub fn interval(&self) -> Duration {
        self.period.checked_div(self.limit).unwrap_or_default()
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.limit,
            humantime::format_duration(self.period)
        )
    }
}

impl FromStr for Quota {
    type Err = QuotaError;

    /// `LIMIT/PERIOD` with a humantime period: `100/1m`, `5/30s`, `10/1s`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || QuotaError::Syntax(text.to_owned());
        let (limit, period) = text.trim().split_once('/').ok_or_else(syntax)?;
        let limit = limit.trim().parse::<u32>().map_err(|_| syntax())?;
        let period = humantime::parse_duration(period.trim()).map_err(|_| syntax())?;
        Self::new(limit, period).map_err(|_| QuotaError::Range(text.to_owned()))
    }
}

/// Which limiter took a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The shared limiter in Redis.
    Redis,
    /// The in-process fallback.
    Local,
}

/// The answer for one call, with what the `RateLimit-*` and `Retry-After` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call may go on.
    pub allowed: bool,
    /// The quota's limit.
    pub limit: u32,
    /// Calls still allowed right now.
    pub remaining: u32,
    /// When refused: how long until one call is allowed again (zero when allowed).
    pub retry_after: Duration,
    /// How long until the whole quota is available again.
    pub reset_after: Duration,
    /// Which limiter decided.
    pub backend: Backend,
}

impl Decision {
    /// `retry_after` in whole seconds, rounded up, at least 1 (the `Retry-After` header).
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// `reset_after` in whole seconds, rounded up (the `RateLimit-Reset` header).
    pub fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

/// Rate limits in Redis with an in-process fallback. Clones share their state.
#[derive(Clone)]
pub struct RateLimiter {
    redis: Option<Client>,
    key_prefix: String,
    timeout: Duration,
    script: Script,
    refund_script: Script,
    local: Arc<LocalLimiter>,
    degraded: Arc<AtomicBool>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("redis", &self.redis.is_some())
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter keeping its state in `redis` under keys `{key_prefix}ratelimit:{key}`.
    pub fn new(redis: Client, key_prefix: impl Into<String>) -> Self {
        Self {
            redis: Some(redis),
            ..Self::local_only()
        }
        .with_key_prefix(key_prefix)
    }

    /// A limiter that only ever decides in process (no Redis configured).
    pub fn local_only() -> Self {
        Self {
            redis: None,
            key_prefix: String::new(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            script: Script::from_lua(GCRA_LUA),
            refund_script: Script::from_lua(REFUND_LUA),
            local: Arc::new(LocalLimiter::default()),
            degraded: Arc::new(AtomicBool::new(false)),
        }
    }

    fn with_key_prefix(mut self, key_prefix: impl Into<String>) -> Self {
        self.key_prefix = key_prefix.into();
        self
    }

    /// The same limiter waiting at most `timeout` for Redis per decision.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the last decision had to be taken locally because Redis failed.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Counts one call against `key` under `quota` and says whether it may go on. Never fails:
    /// a Redis problem moves the decision to the local limiter.
    pub async fn check(&self, key: &str, quota: Quota) -> Decision {
        if let Some(redis) = &self.redis {
            if redis.is_connected() {
                match self.check_redis(redis, key, quota).await {
                    Ok(decision) => {
                        if self.degraded.swap(false, Ordering::Relaxed) {
                            tracing::info!("rate limits: Redis answers again, limits are shared");
                        }
                        return decision;
                    }
                    Err(reason) => self.mark_degraded(&reason),
                }
            } else {
                self.mark_degraded("not connected");
            }
        }
        self.local.check(key, quota, Instant::now())
    }

    /// Gives back the share of one call that [`check`](Self::check) allowed on `key` under
    /// `quota`, for a call that turned out not to count. Giving back more than was taken only
    /// empties the bucket (it never holds more than `quota.limit()`). Never fails: a Redis
    /// problem gives the share back in the local limiter instead.
    pub async fn refund(&self, key: &str, quota: Quota) {
        if let Some(redis) = &self.redis {
            if redis.is_connected() {
                match self.refund_redis(redis, key, quota).await {
                    Ok(()) => return,
                    Err(reason) => self.mark_degraded(&reason),
                }
            } else {
                self.mark_degraded("not connected");
            }
        }
        self.local.refund(key, quota, Instant::now());
    }

    fn mark_degraded(&self, reason: &str) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason,
                "rate limits: Redis unavailable, limiting in this process only until it is back"
            );
        }
    }

    async fn check_redis(
        &self,
        redis: &Client,
        key: &str,
        quota: Quota,
    ) -> Result<Decision, String> {
        let redis_key = format!("{}ratelimit:{key}", self.key_prefix);
        let interval = micros(quota.interval());
        let period = micros(quota.period);
        let call = self.script.evalsha_with_reload::<Vec<i64>, _, _>(
            redis,
            redis_key,
            vec![interval, period],
        );
        let answer = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|err| err.to_string())?;
        let [allowed, remaining, retry_after, reset_after] = answer[..] else {
            return Err(format!("unexpected script answer {answer:?}"));
        };
        Ok(Decision {
            allowed: allowed == 1,
            limit: quota.limit,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            retry_after: from_micros(retry_after),
            reset_after: from_micros(reset_after),
            backend: Backend::Redis,
        })
    }
}

impl RateLimiter {
    async fn refund_redis(&self, redis: &Client, key: &str, quota: Quota) -> Result<(), String> {
        let redis_key = format!("{}ratelimit:{key}", self.key_prefix);
        let call = self.refund_script.evalsha_with_reload::<i64, _, _>(
            redis,
            redis_key,
            vec![micros(quota.interval())],
        );
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|err| err.to_string())?;
        Ok(())
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn from_micros(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros.max(0)).unwrap_or(0))
}

/// The in-process GCRA: one theoretical arrival time per key.
#[derive(Debug, Default)]
struct LocalLimiter {
    arrivals: Mutex<HashMap<String, Instant>>,
}

impl LocalLimiter {
    fn check(&self, key: &str, quota: Quota, now: Instant) -> Decision {
        let mut arrivals = match self.arrivals.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if arrivals.len() >= MAX_LOCAL_KEYS && !arrivals.contains_key(key) {
            arrivals.retain(|_, tat| *tat > now);
            if arrivals.len() >= MAX_LOCAL_KEYS {
                arrivals.clear();
            }
        }
        let interval = quota.interval();
        let tat = arrivals.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + interval;
        // allow_at = new_tat - period, kept as a comparison to stay within Instant's range.
        let allow_at_offset = new_tat.saturating_duration_since(now);
        if allow_at_offset > quota.period {
            return Decision {
                allowed: false,
                limit: quota.limit,
                remaining: 0,
                retry_after: allow_at_offset - quota.period,
                reset_after: tat.saturating_duration_since(now),
                backend: Backend::Local,
            };
        }
        arrivals.insert(key.to_owned(), new_tat);
        let slack = quota.period - allow_at_offset;
        let remaining = slack.as_nanos() / interval.as_nanos().max(1);
        Decision {
            allowed: true,
            limit: quota.limit,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            retry_after: Duration::ZERO,
            reset_after: allow_at_offset,
            backend: Backend::Local,
        }
    }

    fn refund(&self, key: &str, quota: Quota, now: Instant) {
        let mut arrivals = match self.arrivals.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(tat) = arrivals.get(key).copied() else {
            return;
        };
        match tat.checked_sub(quota.interval()) {
            Some(earlier) if earlier > now => {
                arrivals.insert(key.to_owned(), earlier);
            }
            _ => {
                arrivals.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_and_name_bad_input() {
        let quota: Quota = "5/1m".parse().expect("quota");
        assert_eq!(quota.limit(), 5);
        assert_eq!(quota.period(), Duration::from_secs(60));
        assert_eq!(quota.interval(), Duration::from_secs(12));
        for bad in ["", "5", "x/1m", "5/soon", "-1/1s"] {
            assert!(
                matches!(bad.parse::<Quota>(), Err(QuotaError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!("0/1s".parse::<Quota>(), Err(QuotaError::Range(_))));
        assert!(matches!("5/0s".parse::<Quota>(), Err(QuotaError::Range(_))));
    }

    #[test]
    fn the_local_limiter_allows_the_burst_then_spaces_calls() {
        let limiter = LocalLimiter::default();
        let quota = Quota::new(3, Duration::from_secs(3)).expect("quota");
        let start = Instant::now();
        let remaining: Vec<u32> = (0..3)
            .map(|_| {
                let d = limiter.check("k", quota, start);
                assert!(d.allowed);
                d.remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.check("k", quota, start);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.retry_after_secs(), 1);
        assert_eq!(refused.reset_after, Duration::from_secs(3));
        // Another key has its own budget.
        assert!(limiter.check("other", quota, start).allowed);
        // One interval later, exactly one more call.
        let later = start + Duration::from_secs(1);
        assert!(limiter.check("k", quota, later).allowed);
        assert!(!limiter.check("k", quota, later).allowed);
        // After a whole quiet period, the whole burst again.
        let rested = start + Duration::from_secs(10);
        assert_eq!(limiter.check("k", quota, rested).remaining, 2);
    }

    #[test]
    fn refunds_give_back_one_share_and_never_more_than_the_burst() {
        let limiter = LocalLimiter::default();
        let quota = Quota::new(2, Duration::from_secs(60)).expect("quota");
        let now = Instant::now();
        assert!(limiter.check("k", quota, now).allowed);
        assert!(limiter.check("k", quota, now).allowed);
        assert!(!limiter.check("k", quota, now).allowed);
        limiter.refund("k", quota, now);
        assert!(limiter.check("k", quota, now).allowed);
        assert!(!limiter.check("k", quota, now).allowed);
        // Refunding more than was taken leaves a full bucket, not a bigger one.
        for _ in 0..5 {
            limiter.refund("k", quota, now);
        }
        limiter.refund("never-used", quota, now);
        assert_eq!(limiter.check("k", quota, now).remaining, 1);
        assert!(limiter.check("k", quota, now).allowed);
        assert!(!limiter.check("k", quota, now).allowed);
    }

    #[test]
    fn the_local_limiter_stays_bounded() {
        let limiter = LocalLimiter::default();
        let quota = Quota::new(1, Duration::from_secs(60)).expect("quota");
        let now = Instant::now();
        for n in 0..(MAX_LOCAL_KEYS + 10) {
            limiter.check(&format!("key-{n}"), quota, now);
        }
        let kept = limiter.arrivals.lock().expect("lock").len();
        assert!(kept <= MAX_LOCAL_KEYS, "{kept}");
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
