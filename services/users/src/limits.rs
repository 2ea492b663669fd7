//! Login rate limits, shared by every instance through [`protomesh_data::ratelimit`] (GCRA in Redis,
//! in-process when Redis is down), after OWASP's "device cookie" scheme: a stranger's failures
//! must not lock the account's owner out.
//!
//! - **Per client on an account** (`--login-limit-account`, default 5 a minute): *failed*
//!   attempts on one account by one client, where the client is the device token the request
//!   presents when it is a valid one of that account ([`crate::tokens::DeviceToken`]), else the
//!   client address. A client past it is refused on that account; other clients are not.
//! - **Per address** (`--login-limit-ip`, default 20 a minute): *every* attempt from one address,
//!   on any account.
//! - **Per account** (`--login-limit-account-total`, default 20 per 15 minutes): failed attempts
//!   on one account by clients without a valid device token of it. Past this ceiling only
//!   requests with such a token are still checked; the others are refused. It bounds guessing by
//!   a caller that spreads its attempts over many (or forged) addresses, while the owner, who got
//!   a device token at an earlier login, still gets in.
//!
//! A right password uses none of the failure quotas. To stay exact under concurrency, an attempt
//! takes its share of the failure quotas before the password is checked
//! ([`LoginLimits::begin`]), so parallel guesses cannot all pass on the last free share, and
//! gives it back unless the password turned out wrong ([`LoginAttempt::refund`]). Refused
//! attempts use no failure share; the address quota is counted first, so calls refused for
//! their address use no account quota either.
//!
//! The address is the one the gateway passed on (`x-protomesh-client-ip`), else the gRPC peer's.
//! A caller that reaches the service without the gateway can set that header itself, so behind
//! the gateway only does the address limit really hold; the per-account ceiling holds either way.
//!
//! A refused call is `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail saying when to try
//! again, and the metadata `retry-after` (whole seconds, at least 1), `ratelimit-limit`,
//! `ratelimit-remaining` and `ratelimit-reset` (whole seconds until the quota is full again) —
//! the gateway's `Retry-After` and `RateLimit-*` headers.

use std::net::IpAddr;
use std::time::Duration;

use prost::Message;
use protomesh::proto::google::rpc;
use protomesh_data::ratelimit::{Decision, Quota, RateLimiter};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Type URL of `google.rpc.RetryInfo` inside a `google.protobuf.Any`.
pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// Default `--login-limit-account`: failures per client on one account.
pub const DEFAULT_ACCOUNT_QUOTA: &str = "5/1m";
/// Default `--login-limit-ip`: attempts per address.
pub const DEFAULT_IP_QUOTA: &str = "20/1m";
/// Default `--login-limit-account-total`: failures on one account by clients without a device
/// token.
pub const DEFAULT_ACCOUNT_TOTAL_QUOTA: &str = "20/15m";

/// Metadata of a refusal: whole seconds until one attempt is allowed again.
pub const RETRY_AFTER: &str = "retry-after";
/// Metadata of a refusal: the limit of the quota that refused.
pub const RATELIMIT_LIMIT: &str = "ratelimit-limit";
/// Metadata of a refusal: attempts still allowed now (0).
pub const RATELIMIT_REMAINING: &str = "ratelimit-remaining";
/// Metadata of a refusal: whole seconds until the quota is full again.
pub const RATELIMIT_RESET: &str = "ratelimit-reset";

/// The rate-limit key of all login attempts from address `ip`.
pub fn ip_key(ip: &str) -> String {
    format!("login:ip:{ip}")
}

/// The rate-limit key of failed logins on the account with (normalized) `email` by `client`.
pub fn client_key(email: &str, client: &LoginClient<'_>) -> String {
    match client {
        LoginClient::Device(hash) => format!("login:client:{email}:device:{}", hex(&hash[..16])),
        LoginClient::Address(ip) => format!("login:client:{email}:ip:{ip}"),
    }
}

/// The rate-limit key of failed logins on the account with (normalized) `email` by clients
/// without a device token of it.
pub fn account_key(email: &str) -> String {
    format!("login:account:{email}")
}

/// The caller's address: the gateway's `x-protomesh-client-ip` when it is an IP address, else
/// the gRPC peer's, else `unknown`.
pub fn client_address(metadata: &MetadataMap, peer: Option<IpAddr>) -> String {
    protomesh::identity::client_ip(metadata)
        .and_then(|text| text.trim().parse::<IpAddr>().ok())
        .or(peer)
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// Who a login's failures are counted against on its account.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LoginClient<'a> {
    /// A device with a valid device token of the account: the token's stored SHA-256.
    Device(&'a [u8; 32]),
    /// Anyone else: the client address.
    Address(&'a str),
}

impl std::fmt::Debug for LoginClient<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Even the hash stays out of logs.
            Self::Device(_) => f.write_str("Device([redacted])"),
            Self::Address(ip) => f.debug_tuple("Address").field(ip).finish(),
        }
    }
}

/// The three login quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginQuotas {
    /// Failures on one account by one client (`--login-limit-account`).
    pub per_client: Quota,
    /// Attempts from one address, on any account (`--login-limit-ip`).
    pub per_address: Quota,
    /// Failures on one account by clients without a device token (`--login-limit-account-total`).
    pub per_account: Quota,
}

/// The login quotas and the limiter that counts against them.
#[derive(Debug, Clone)]
pub struct LoginLimits {
    limiter: RateLimiter,
    quotas: LoginQuotas,
}

/// One login attempt the limits let through, holding its share of the failure quotas until the
/// outcome is known: [`failed`](Self::failed) keeps it, [`refund`](Self::refund) gives it back.
#[derive(Debug)]
#[must_use = "an attempt ends as failed() or refund()"]
pub struct LoginAttempt<'a> {
    limits: &'a LoginLimits,
    client_key: String,
    /// Set when the attempt took a share of the account's ceiling (no device token).
    account_key: Option<String>,
}

impl LoginLimits {
    /// `quotas` counted by `limiter`.
    pub fn new(limiter: RateLimiter, quotas: LoginQuotas) -> Self {
        Self { limiter, quotas }
    }

    /// The quotas.
    pub fn quotas(&self) -> &LoginQuotas {
        &self.quotas
    }

    /// Lets one login attempt on `email` from `address` by `client` through, or refuses it with
    /// `RESOURCE_EXHAUSTED` (see [`resource_exhausted`]): counts it against the address, then
    /// takes its share of the client's failures on the account and, for a client without a
    /// device token, of the account's ceiling.
    pub async fn begin(
        &self,
        email: &str,
        address: &str,
        client: LoginClient<'_>,
    ) -> Result<LoginAttempt<'_>, Status> {
        let limiter = &self.limiter;
        let by_address = limiter
            .check(&ip_key(address), self.quotas.per_address)
            .await;
        if !by_address.allowed {
            tracing::info!(%address, "login refused: too many attempts from this address");
            return Err(resource_exhausted(
                "too many login attempts from this address",
                &by_address,
            ));
        }
        let client_key = client_key(email, &client);
        let by_client = limiter.check(&client_key, self.quotas.per_client).await;
        if !by_client.allowed {
            tracing::info!(%address, ?client, "login refused: too many failures by this client");
            return Err(resource_exhausted(
                "too many failed logins on this account from this client",
                &by_client,
            ));
        }
        let account_key = match client {
            LoginClient::Device(_) => None,
            LoginClient::Address(_) => {
                let key = account_key(email);
                let by_account = limiter.check(&key, self.quotas.per_account).await;
                if !by_account.allowed {
                    // Not this client's failure: give its share back.
                    limiter.refund(&client_key, self.quotas.per_client).await;
                    tracing::warn!(
                        %address,
                        "login refused: too many failures on this account; \
                         only devices that logged in to it before are let through"
                    );
                    return Err(resource_exhausted(
                        "too many failed logins on this account; \
                         log in from a device that logged in to it before, or try again later",
                        &by_account,
                    ));
                }
                Some(key)
            }
        };
        Ok(LoginAttempt {
            limits: self,
            client_key,
            account_key,
        })
    }
}

impl LoginAttempt<'_> {
    /// The password was wrong (or the account unknown): the shares stay used.
    pub fn failed(self) {}

    /// The attempt did not fail (it succeeded, or could not be decided): gives its shares back.
    pub async fn refund(self) {
        let limits = self.limits;
        limits
            .limiter
            .refund(&self.client_key, limits.quotas.per_client)
            .await;
        if let Some(key) = &self.account_key {
            limits.limiter.refund(key, limits.quotas.per_account).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// `RESOURCE_EXHAUSTED` saying `what`, with a `google.rpc.RetryInfo` detail and the
/// `retry-after`, `ratelimit-limit`, `ratelimit-remaining` and `ratelimit-reset` metadata of the
/// refusing `decision` (whole seconds, rounded up; the retry delay at least one).
pub fn resource_exhausted(what: &str, decision: &Decision) -> Status {
    let secs = decision.retry_after_secs();
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
    let mut metadata = MetadataMap::new();
    for (name, value) in [
        (RETRY_AFTER, secs),
        (RATELIMIT_LIMIT, u64::from(decision.limit)),
        (RATELIMIT_REMAINING, u64::from(decision.remaining)),
        (RATELIMIT_RESET, decision.reset_after_secs()),
    ] {
        metadata.insert(name, MetadataValue::from(value));
    }
    Status::with_details_and_metadata(
        Code::ResourceExhausted,
        message,
        status.encode_to_vec().into(),
        metadata,
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
    use protomesh_data::ratelimit::Backend;

    use super::*;

    fn refused(retry_after: Duration) -> Decision {
        Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            retry_after,
            reset_after: Duration::from_millis(59_500),
            backend: Backend::Local,
        }
    }

    fn quotas(per_client: &str, per_address: &str, per_account: &str) -> LoginQuotas {
        LoginQuotas {
            per_client: per_client.parse().unwrap(),
            per_address: per_address.parse().unwrap(),
            per_account: per_account.parse().unwrap(),
        }
    }

    #[test]
    fn refusals_carry_a_retry_delay_and_headers_in_whole_seconds() {
        let status = resource_exhausted("too many", &refused(Duration::from_millis(11_200)));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "too many; try again in 12 s");
        assert_eq!(retry_delay(&status), Some(Duration::from_secs(12)));
        let metadata = status.metadata();
        assert_eq!(metadata.get(RETRY_AFTER).unwrap(), "12");
        assert_eq!(metadata.get(RATELIMIT_LIMIT).unwrap(), "5");
        assert_eq!(metadata.get(RATELIMIT_REMAINING).unwrap(), "0");
        assert_eq!(metadata.get(RATELIMIT_RESET).unwrap(), "60");
        let soon = resource_exhausted("too many", &refused(Duration::ZERO));
        assert_eq!(retry_delay(&soon), Some(Duration::from_secs(1)));
        assert_eq!(soon.metadata().get(RETRY_AFTER).unwrap(), "1");
        assert_eq!(retry_delay(&Status::internal("x")), None);
    }

    #[test]
    fn the_default_quotas_are_valid() {
        let defaults = quotas(
            DEFAULT_ACCOUNT_QUOTA,
            DEFAULT_IP_QUOTA,
            DEFAULT_ACCOUNT_TOTAL_QUOTA,
        );
        assert_eq!(defaults.per_account.period(), Duration::from_secs(15 * 60));
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
        assert_eq!(
            client_key("ada@x.org", &LoginClient::Address("::1")),
            "login:client:ada@x.org:ip:::1"
        );
        let device = client_key("ada@x.org", &LoginClient::Device(&[0xab; 32]));
        assert_eq!(
            device,
            format!("login:client:ada@x.org:device:{}", "ab".repeat(16))
        );
        assert_eq!(
            format!("{:?}", LoginClient::Device(&[0xab; 32])),
            "Device([redacted])"
        );
    }

    #[tokio::test]
    async fn only_failures_count_per_client_and_the_address_counts_everything() {
        let limits = LoginLimits::new(RateLimiter::local_only(), quotas("2/1m", "6/1m", "100/1m"));
        let (a, b) = (
            LoginClient::Address("192.0.2.1"),
            LoginClient::Address("192.0.2.2"),
        );
        // Successes give their share back.
        for _ in 0..3 {
            limits
                .begin("a@x.org", "192.0.2.1", a)
                .await
                .unwrap()
                .refund()
                .await;
        }
        limits
            .begin("a@x.org", "192.0.2.1", a)
            .await
            .unwrap()
            .failed();
        limits
            .begin("a@x.org", "192.0.2.1", a)
            .await
            .unwrap()
            .failed();
        let client = limits.begin("a@x.org", "192.0.2.1", a).await.unwrap_err();
        assert!(client.message().contains("this client"), "{client:?}");
        // Another client on the same account is not affected.
        limits
            .begin("a@x.org", "192.0.2.2", b)
            .await
            .unwrap()
            .refund()
            .await;
        // The address counted all six attempts from 192.0.2.1: the seventh is refused on any
        // account, and uses none of that account's quota.
        let address = limits.begin("c@x.org", "192.0.2.1", a).await.unwrap_err();
        assert!(address.message().contains("address"), "{address:?}");
        assert!(retry_delay(&address).is_some());
        limits
            .begin("c@x.org", "192.0.2.3", LoginClient::Address("192.0.2.3"))
            .await
            .unwrap()
            .failed();
        limits
            .begin("c@x.org", "192.0.2.3", LoginClient::Address("192.0.2.3"))
            .await
            .unwrap()
            .failed();
    }

    #[tokio::test]
    async fn past_the_account_ceiling_only_devices_get_through() {
        let limits = LoginLimits::new(RateLimiter::local_only(), quotas("2/1m", "100/1m", "3/15m"));
        for n in 1..=3 {
            let ip = format!("192.0.2.{n}");
            limits
                .begin("a@x.org", &ip, LoginClient::Address(&ip))
                .await
                .unwrap()
                .failed();
        }
        let ceiling = limits
            .begin("a@x.org", "192.0.2.9", LoginClient::Address("192.0.2.9"))
            .await
            .unwrap_err();
        assert!(ceiling.message().contains("on this account"), "{ceiling:?}");
        assert_eq!(ceiling.metadata().get(RATELIMIT_LIMIT).unwrap(), "3");
        // The refusal gave back 192.0.2.9's share of its per-client quota.
        limits
            .begin("b@x.org", "192.0.2.9", LoginClient::Address("192.0.2.9"))
            .await
            .unwrap()
            .refund()
            .await;
        // A device is checked against its own quota only, and its failures do not feed the
        // ceiling.
        let device = LoginClient::Device(&[7; 32]);
        limits
            .begin("a@x.org", "192.0.2.9", device)
            .await
            .unwrap()
            .failed();
        limits
            .begin("a@x.org", "192.0.2.9", device)
            .await
            .unwrap()
            .refund()
            .await;
        limits
            .begin("a@x.org", "192.0.2.9", device)
            .await
            .unwrap()
            .failed();
        let device_limit = limits
            .begin("a@x.org", "192.0.2.9", device)
            .await
            .unwrap_err();
        assert!(
            device_limit.message().contains("this client"),
            "{device_limit:?}"
        );
        // Another device is fine.
        limits
            .begin("a@x.org", "192.0.2.9", LoginClient::Device(&[8; 32]))
            .await
            .unwrap()
            .refund()
            .await;
    }
}
