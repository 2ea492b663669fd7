//! Rate limits at the edge, on [`protomesh_data::ratelimit`]: every call counts against the quota of
//! its method's rate-limit class (the policy's `rate_limit_class`, `default` when empty), per
//! client — the API key's name (`key:`), else the JWT subject (`sub:`), else the client address
//! (`ip:`). Requests with bad credentials count per address in their own class,
//! [`INVALID_CREDENTIALS_CLASS`], so a flood of made-up tokens is refused too.
//!
//! Quotas are shared through Redis by every gateway instance when Redis is configured, and kept in
//! process otherwise (or while Redis is down). A class without a quota of its own uses the
//! `default` quota (in buckets of its own). Refusals are counted per class ([`EdgeRateLimits::rejections`])
//! and answered with `429`, `Retry-After` and the IETF draft's `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` headers, which every limited answer carries.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use protomesh::policy::DEFAULT_RATE_LIMIT_CLASS;
use protomesh_data::fred::prelude::Client;
use protomesh_data::ratelimit::{Decision, Quota, RateLimiter};

/// The class counting requests with bad credentials, per client address.
pub(crate) const INVALID_CREDENTIALS_CLASS: &str = "invalid-credentials";

/// `RateLimit-Limit`.
pub(crate) const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub(crate) const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub(crate) const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The quotas used when the configuration names none: `default=600/1m`, `auth=20/1m`,
/// `public=1200/1m`, `invalid-credentials=30/1m`.
pub(crate) fn default_quotas() -> BTreeMap<String, Quota> {
    [
        (DEFAULT_RATE_LIMIT_CLASS, 600),
        ("auth", 20),
        ("public", 1200),
        (INVALID_CREDENTIALS_CLASS, 30),
    ]
    .into_iter()
    .filter_map(|(class, limit)| {
        Quota::new(limit, std::time::Duration::from_secs(60))
            .ok()
            .map(|quota| (class.to_owned(), quota))
    })
    .collect()
}

/// Parses a `--rate-limit CLASS=QUOTA` setting (`auth=20/1m`).
pub(crate) fn parse_class_quota(text: &str) -> Result<(String, Quota), String> {
    let (class, quota) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected CLASS=QUOTA, such as auth=20/1m"))?;
    let class = class.trim();
    if class.is_empty() {
        return Err(format!("{text:?}: the class name is empty"));
    }
    let quota = quota.parse::<Quota>().map_err(|err| err.to_string())?;
    Ok((class.to_owned(), quota))
}

/// How the edge limits rates.
#[derive(Clone)]
pub struct RateLimitConfig {
    /// Quota per class; `default` is used for classes not listed.
    pub quotas: BTreeMap<String, Quota>,
    /// The shared Redis, if any.
    pub redis: Option<Client>,
    /// Prefix of the Redis keys.
    pub key_prefix: String,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            quotas: default_quotas(),
            redis: None,
            key_prefix: String::new(),
        }
    }
}

impl fmt::Debug for RateLimitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("quotas", &self.quotas)
            .field("redis", &self.redis.is_some())
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// Who a call is counted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientKey {
    /// An API key, by name.
    ApiKey(String),
    /// A JWT subject.
    Subject(String),
    /// The client address (anonymous calls, and bad credentials).
    Ip(IpAddr),
}

impl ClientKey {
    /// The limiter's key for this client in `class`: `class:` and the client as displayed
    /// (`public:ip:127.0.0.1`), written without the formatting machinery (every call makes one).
    fn key_in(&self, class: &str) -> String {
        let (kind, name) = match self {
            Self::ApiKey(name) => ("key:", name.as_str()),
            Self::Subject(subject) => ("sub:", subject.as_str()),
            Self::Ip(IpAddr::V4(ip)) => {
                let mut key = String::with_capacity(class.len() + 20);
                key.push_str(class);
                key.push_str(":ip:");
                for (i, octet) in ip.octets().iter().enumerate() {
                    if i > 0 {
                        key.push('.');
                    }
                    key.push_str(itoa::Buffer::new().format(*octet));
                }
                return key;
            }
            Self::Ip(IpAddr::V6(_)) => return format!("{class}:{self}"),
        };
        let mut key = String::with_capacity(class.len() + kind.len() + name.len() + 1);
        key.push_str(class);
        key.push(':');
        key.push_str(kind);
        key.push_str(name);
        key
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApiKey(name) => write!(f, "key:{name}"),
            Self::Subject(subject) => write!(f, "sub:{subject}"),
            Self::Ip(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// The edge's limiter: quotas per class, refusals counted per class. Cheap to clone.
#[derive(Clone)]
pub(crate) struct EdgeRateLimits {
    limiter: RateLimiter,
    quotas: Arc<BTreeMap<String, Quota>>,
    /// The `default` class's quota (always configured: [`EdgeRateLimits::new`] adds it).
    default_quota: Option<Quota>,
    /// Refusals per class: one counter per configured class (unconfigured classes count under
    /// `default`, whose quota they use).
    rejections: Arc<BTreeMap<String, AtomicU64>>,
}

impl fmt::Debug for EdgeRateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeRateLimits")
            .field("limiter", &self.limiter)
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

impl EdgeRateLimits {
    /// Limits per `config` (a `default` quota is added if it has none).
    pub(crate) fn new(config: RateLimitConfig) -> Self {
        let limiter = match config.redis {
            Some(redis) => RateLimiter::new(redis, config.key_prefix),
            None => RateLimiter::local_only(),
        };
        let mut quotas = config.quotas;
        for (class, quota) in default_quotas() {
            if class == DEFAULT_RATE_LIMIT_CLASS || class == INVALID_CREDENTIALS_CLASS {
                quotas.entry(class).or_insert(quota);
            }
        }
        let default_quota = quotas.get(DEFAULT_RATE_LIMIT_CLASS).copied();
        let rejections = quotas
            .keys()
            .map(|class| (class.clone(), AtomicU64::new(0)))
            .collect();
        Self {
            limiter,
            quotas: Arc::new(quotas),
            default_quota,
            rejections: Arc::new(rejections),
        }
    }

    /// The quota of `class`, and the class whose quota (and refusal counter) that is.
    fn quota_of<'a>(&'a self, class: &'a str) -> Option<(&'a str, Quota)> {
        match self.quotas.get_key_value(class) {
            Some((name, quota)) => Some((name.as_str(), *quota)),
            None => Some((DEFAULT_RATE_LIMIT_CLASS, self.default_quota?)),
        }
    }

    /// Counts one call of `client` in `class`; `None` when no quota applies.
    pub(crate) async fn check(&self, class: &str, client: &ClientKey) -> Option<Decision> {
        let (counted_as, quota) = self.quota_of(class)?;
        let decision = self.limiter.check(&client.key_in(class), quota).await;
        if !decision.allowed {
            if let Some(counter) = self.rejections.get(counted_as) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(decision)
    }

    /// Refusals so far, per class.
    pub(crate) fn rejections(&self) -> Vec<(String, u64)> {
        self.rejections
            .iter()
            .map(|(class, count)| (class.clone(), count.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Adds the `RateLimit-*` headers of `decision` (and `Retry-After` when it refused) to `headers`,
/// unless `headers` already hold `RateLimit-*` of a limit with no more room than `decision`'s
/// (an upstream service's own on its 429: see [`crate::errors::rate_limit_headers`]).
pub(crate) fn add_headers(decision: &Decision, headers: &mut HeaderMap) {
    // An answer that already reports a limit with no more room left (a service's own, on the
    // 429 it sent) keeps it: the headers describe the limit closest to refusing.
    let upstream_remaining = headers
        .get(RATELIMIT_REMAINING)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u32>().ok());
    if upstream_remaining.is_none_or(|remaining| remaining > decision.remaining) {
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(decision.limit));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
        headers.insert(
            RATELIMIT_RESET,
            HeaderValue::from(decision.reset_after_secs()),
        );
    }
    if !decision.allowed {
        headers.insert(RETRY_AFTER, HeaderValue::from(decision.retry_after_secs()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn class_quotas_parse_and_name_the_mistake() {
        let (class, quota) = parse_class_quota("auth=20/1m").unwrap();
        assert_eq!(class, "auth");
        assert_eq!(quota.limit(), 20);
        assert!(parse_class_quota("auth")
            .unwrap_err()
            .contains("CLASS=QUOTA"));
        assert!(parse_class_quota("=1/1s").unwrap_err().contains("empty"));
        assert!(parse_class_quota("a=lots").is_err());
    }

    #[tokio::test]
    async fn refusals_are_counted_per_class_and_unknown_classes_use_the_default_quota() {
        let limits = EdgeRateLimits::new(RateLimitConfig {
            quotas: [
                ("default".to_owned(), "2/1m".parse().unwrap()),
                ("tight".to_owned(), "1/1m".parse().unwrap()),
            ]
            .into_iter()
            .collect(),
            ..RateLimitConfig::default()
        });
        let ip = ClientKey::Ip("127.0.0.1".parse().unwrap());
        assert!(limits.check("tight", &ip).await.unwrap().allowed);
        let refused = limits.check("tight", &ip).await.unwrap();
        assert!(!refused.allowed);
        let mut headers = HeaderMap::new();
        add_headers(&refused, &mut headers);
        assert_eq!(headers[RATELIMIT_LIMIT], "1");
        assert_eq!(headers[RATELIMIT_REMAINING], "0");
        assert_eq!(headers[RETRY_AFTER], "60");
        // Another client has its own bucket; an unknown class takes the default quota.
        let other = ClientKey::Subject("u-2".into());
        assert!(limits.check("tight", &other).await.unwrap().allowed);
        for _ in 0..2 {
            assert!(limits.check("unlisted", &ip).await.unwrap().allowed);
        }
        assert!(!limits.check("unlisted", &ip).await.unwrap().allowed);
        let counts: BTreeMap<String, u64> = limits.rejections().into_iter().collect();
        assert_eq!(counts["tight"], 1);
        assert_eq!(counts["default"], 1);
        assert_eq!(counts[INVALID_CREDENTIALS_CLASS], 0);
    }

    #[test]
    fn an_upstream_limit_with_less_room_keeps_its_headers() {
        let decision = Decision {
            allowed: true,
            limit: 20,
            remaining: 17,
            retry_after: std::time::Duration::ZERO,
            reset_after: std::time::Duration::from_secs(9),
            backend: protomesh_data::ratelimit::Backend::Local,
        };
        let mut upstream = HeaderMap::new();
        upstream.insert(RATELIMIT_LIMIT, HeaderValue::from(5));
        upstream.insert(RATELIMIT_REMAINING, HeaderValue::from(0));
        upstream.insert(RATELIMIT_RESET, HeaderValue::from(58));
        upstream.insert(RETRY_AFTER, HeaderValue::from(12));
        add_headers(&decision, &mut upstream);
        assert_eq!(upstream[RATELIMIT_LIMIT], "5");
        assert_eq!(upstream[RATELIMIT_REMAINING], "0");
        assert_eq!(upstream[RATELIMIT_RESET], "58");
        assert_eq!(upstream[RETRY_AFTER], "12");
        // An upstream limit with more room (or none) is replaced by the edge's.
        let mut roomy = HeaderMap::new();
        roomy.insert(RATELIMIT_REMAINING, HeaderValue::from(100));
        add_headers(&decision, &mut roomy);
        assert_eq!(roomy[RATELIMIT_REMAINING], "17");
        assert_eq!(roomy[RATELIMIT_LIMIT], "20");
        let mut plain = HeaderMap::new();
        add_headers(&decision, &mut plain);
        assert_eq!(plain[RATELIMIT_RESET], "9");
        assert!(!plain.contains_key(RETRY_AFTER));
    }

    #[test]
    fn limiter_keys_are_the_class_and_the_client_as_displayed() {
        for client in [
            ClientKey::ApiKey("ci".into()),
            ClientKey::Subject("u-1".into()),
            ClientKey::Ip("127.0.0.1".parse().unwrap()),
            ClientKey::Ip("10.255.0.9".parse().unwrap()),
            ClientKey::Ip("::1".parse().unwrap()),
        ] {
            assert_eq!(client.key_in("public"), format!("public:{client}"));
        }
    }

    #[test]
    fn client_keys_are_prefixed_by_kind() {
        assert_eq!(ClientKey::ApiKey("ci".into()).to_string(), "key:ci");
        assert_eq!(ClientKey::Subject("u".into()).to_string(), "sub:u");
        assert_eq!(ClientKey::Ip("::1".parse().unwrap()).to_string(), "ip:::1");
    }
}
