//! Login rate limits, shared by every instance through [`protomesh::ratelimit`] (GCRA in Redis,
//! in-process when Redis is down): one quota per account (`login:account:{email}`, default
//! 5 a minute) and one per client address (`login:ip:{ip}`, default 20 a minute). Every attempt
//! counts, failed or successful; the address is checked first, so calls refused for their
//! address do not use up the account's quota.
//!
//! The address is the one the gateway passed on (`x-protomesh-client-ip`), else the gRPC peer's.
//! A caller that reaches the service without the gateway can set that header itself, so behind
//! the gateway only does the address limit really hold; the account limit holds either way.
//!
//! A refused call is `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail saying when to try
//! again.

use std::net::IpAddr;
use std::time::Duration;

use prost::Message;
use protomesh::proto::google::rpc;
use protomesh::ratelimit::{Quota, RateLimiter};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// Type URL of `google.rpc.RetryInfo` inside a `google.protobuf.Any`.
pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// Default `--login-limit-account`.
pub const DEFAULT_ACCOUNT_QUOTA: &str = "5/1m";
/// Default `--login-limit-ip`.
pub const DEFAULT_IP_QUOTA: &str = "20/1m";

/// The rate-limit key of login attempts on the account with (normalized) `email`.
pub fn account_key(email: &str) -> String {
    format!("login:account:{email}")
}

/// The rate-limit key of login attempts from address `ip`.
pub fn ip_key(ip: &str) -> String {
    format!("login:ip:{ip}")
}

/// The caller's address: the gateway's `x-protomesh-client-ip` when it is an IP address, else
/// the gRPC peer's, else `unknown`.
pub fn client_address(metadata: &MetadataMap, peer: Option<IpAddr>) -> String {
    protomesh::identity::client_ip(metadata)
        .and_then(|text| text.trim().parse::<IpAddr>().ok())
        .or(peer)
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The login quotas and the limiter that counts against them.
#[derive(Debug, Clone)]
pub struct LoginLimits {
    limiter: RateLimiter,
    per_account: Quota,
    per_address: Quota,
}

impl LoginLimits {
    /// `per_account` and `per_address` quotas counted by `limiter`.
    pub fn new(limiter: RateLimiter, per_account: Quota, per_address: Quota) -> Self {
        Self {
            limiter,
            per_account,
            per_address,
        }
    }

    /// Counts one login attempt on `email` from `address`: `RESOURCE_EXHAUSTED` with a
    /// `RetryInfo` when either has tried too often.
    pub async fn check(&self, email: &str, address: &str) -> Result<(), Status> {
        let by_address = self.limiter.check(&ip_key(address), self.per_address).await;
        if !by_address.allowed {
            tracing::info!(%address, "login refused: too many attempts from this address");
            return Err(resource_exhausted(
                "too many login attempts from this address",
                by_address.retry_after,
            ));
        }
        let by_account = self
            .limiter
            .check(&account_key(email), self.per_account)
            .await;
        if !by_account.allowed {
            tracing::info!("login refused: too many attempts on one account");
            return Err(resource_exhausted(
                "too many login attempts for this account",
                by_account.retry_after,
            ));
        }
        Ok(())
    }
}

/// `RESOURCE_EXHAUSTED` saying `what`, with a `google.rpc.RetryInfo` detail of `retry_after`
/// rounded up to whole seconds (at least one).
pub fn resource_exhausted(what: &str, retry_after: Duration) -> Status {
    let secs = retry_after
        .as_secs()
        .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
        .max(1);
    let message = format!("{what}; try again in {secs} s");
    let retry_info = rpc::RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: i64::try_from(secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    };
    let status = rpc::Status {
        code: Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: RETRY_INFO_TYPE_URL.to_owned(),
            value: retry_info.encode_to_vec(),
        }],
    };
    Status::with_details(
        Code::ResourceExhausted,
        message,
        status.encode_to_vec().into(),
    )
}

/// The `RetryInfo` delay of a status built by [`resource_exhausted`] (or any server that sends
/// one), if it has one.
pub fn retry_delay(status: &Status) -> Option<Duration> {
    let details = rpc::Status::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .filter(|any| any.type_url == RETRY_INFO_TYPE_URL)
        .find_map(|any| rpc::RetryInfo::decode(any.value.as_slice()).ok())
        .and_then(|info| info.retry_delay)
        .and_then(|delay| {
            Some(Duration::new(
                u64::try_from(delay.seconds).ok()?,
                u32::try_from(delay.nanos).ok()?,
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_a_retry_delay_in_whole_seconds() {
        let status = resource_exhausted("too many", Duration::from_millis(11_200));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "too many; try again in 12 s");
        assert_eq!(retry_delay(&status), Some(Duration::from_secs(12)));
        let soon = resource_exhausted("too many", Duration::ZERO);
        assert_eq!(retry_delay(&soon), Some(Duration::from_secs(1)));
        assert_eq!(retry_delay(&Status::internal("x")), None);
    }

    #[test]
    fn addresses_come_from_the_gateway_else_the_peer() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut metadata = MetadataMap::new();
        assert_eq!(client_address(&metadata, Some(peer)), "10.0.0.9");
        assert_eq!(client_address(&metadata, None), "unknown");
        metadata.insert(
            protomesh::identity::CLIENT_IP,
            "203.0.113.7".parse().unwrap(),
        );
        assert_eq!(client_address(&metadata, Some(peer)), "203.0.113.7");
        metadata.insert(protomesh::identity::CLIENT_IP, "not an ip".parse().unwrap());
        assert_eq!(client_address(&metadata, Some(peer)), "10.0.0.9");
        assert_eq!(account_key("ada@x.org"), "login:account:ada@x.org");
        assert_eq!(ip_key("::1"), "login:ip:::1");
    }

    #[tokio::test]
    async fn the_address_quota_is_checked_before_the_account_quota() {
        let limits = LoginLimits::new(
            RateLimiter::local_only(),
            "2/1m".parse().unwrap(),
            "3/1m".parse().unwrap(),
        );
        assert!(limits.check("a@x.org", "192.0.2.1").await.is_ok());
        assert!(limits.check("a@x.org", "192.0.2.1").await.is_ok());
        let account = limits.check("a@x.org", "192.0.2.2").await.unwrap_err();
        assert!(account.message().contains("account"), "{account:?}");
        assert!(limits.check("b@x.org", "192.0.2.1").await.is_ok());
        let address = limits.check("c@x.org", "192.0.2.1").await.unwrap_err();
        assert!(address.message().contains("address"), "{address:?}");
        assert!(retry_delay(&address).is_some());
        // c@x.org was refused for its address only: its own quota is untouched.
        assert!(limits.check("c@x.org", "192.0.2.3").await.is_ok());
        assert!(limits.check("c@x.org", "192.0.2.3").await.is_ok());
    }
}
