//! [`ConsulConfig`]: where the agent is and how to talk to it, read from the standard
//! `CONSUL_*` environment variables or given explicitly.

use std::fmt;
use std::time::Duration;

use crate::error::ConsulError;

/// Default agent address when `CONSUL_HTTP_ADDR` is not set (the same as Consul's own CLI).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";

/// Default time limit of one (non-blocking) request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection settings of a [`ConsulClient`](crate::ConsulClient).
///
/// `Debug` never prints the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// Normalized agent address, always `http://host:port` (no trailing slash).
    pub address: String,
    /// ACL token sent as `X-Consul-Token`, if any.
    pub token: Option<String>,
    /// Datacenter sent as `?dc=` on every request, if any (the agent's own otherwise).
    pub datacenter: Option<String>,
    /// Time limit of one request; blocking queries get their `wait` on top of it.
    pub request_timeout: Duration,
}

impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl ConsulConfig {
    /// A configuration for the agent at `addr` (`host:port` or `http://host:port`), without
    /// token or datacenter and with the default request timeout. Does not read the
    /// environment.
    pub fn new(addr: &str) -> Result<Self, ConsulError> {
        let address = normalize_address(addr).map_err(|reason| ConsulError::InvalidAddress {
            value: addr.to_owned(),
            reason,
        })?;
        Ok(Self {
            address,
            token: None,
            datacenter: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Reads `CONSUL_HTTP_ADDR` (default `127.0.0.1:8500`), `CONSUL_HTTP_TOKEN` (empty means
    /// none) and `CONSUL_DATACENTER` (empty means the agent's own).
    pub fn from_env() -> Result<Self, ConsulError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`ConsulConfig::from_env`] but reads variables through `lookup`, so that it can be
    /// used (and tested) without touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConsulError> {
        let non_empty = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut config = match non_empty("CONSUL_HTTP_ADDR") {
            None => Self::new(DEFAULT_ADDRESS)?,
            Some(addr) => Self::new(&addr).map_err(|err| match err {
                ConsulError::InvalidAddress { value, reason } => ConsulError::InvalidAddress {
                    value,
                    reason: format!("{reason} (check the CONSUL_HTTP_ADDR environment variable)"),
                },
                other => other,
            })?,
        };
        config.token = non_empty("CONSUL_HTTP_TOKEN");
        config.datacenter = non_empty("CONSUL_DATACENTER");
        Ok(config)
    }

    /// Sets the ACL token (an empty token means none).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = if token.is_empty() { None } else { Some(token) };
        self
    }

    /// Sets the datacenter sent with every request (an empty name means the agent's own).
    pub fn with_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        let datacenter = datacenter.into();
        self.datacenter = if datacenter.is_empty() {
            None
        } else {
            Some(datacenter)
        };
        self
    }

    /// Sets the time limit of one request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The time limit for a request that blocks for up to `wait` on the server:
    /// `wait + wait/16 + request_timeout` (Consul adds up to `wait/16` of jitter).
    pub fn blocking_timeout(&self, wait: Duration) -> Duration {
        wait + wait / 16 + self.request_timeout
    }
}

/// Turns `host:port` or `http://host:port` (optionally with a trailing `/`) into
/// `http://host:port`; the error is a human-readable reason.
pub(crate) fn normalize_address(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("the address is empty (expected host:port, e.g. 127.0.0.1:8500)".to_owned());
    }
    let rest = match value.split_once("://") {
        None => value,
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => rest,
            "https" => {
                return Err(
                    "TLS (https://) is not supported yet; use a plain http:// address \
                            such as a local agent's 127.0.0.1:8500"
                        .to_owned(),
                )
            }
            other => {
                return Err(format!(
                    "unsupported scheme {other:?} (only http:// is supported)"
                ))
            }
        },
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if let Some(bad) = rest.chars().find(|c| matches!(c, '/' | '?' | '#' | '@')) {
        return Err(format!(
            "unexpected {bad:?}: the address must be just host:port, without path, query or user"
        ));
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "unterminated IPv6 address bracket".to_owned())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "missing port (expected [ipv6]:port)".to_owned())?;
        if inside.is_empty()
            || !inside
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("{inside:?} is not an IPv6 address"));
        }
        (format!("[{inside}]"), port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| "missing port (expected host:port, e.g. 127.0.0.1:8500)".to_owned())?;
        if host.contains(':') {
            return Err("IPv6 addresses must be written in brackets, e.g. [::1]:8500".to_owned());
        }
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(format!("{host:?} is not a valid host name or IP address"));
        }
        (host.to_owned(), port)
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a valid port number"))?;
    if port == 0 {
        return Err("port 0 is not a valid agent port".to_owned());
    }
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn accepts_host_port_and_http_urls() {
        for (input, expected) in [
            ("127.0.0.1:8500", "http://127.0.0.1:8500"),
            ("http://127.0.0.1:8500", "http://127.0.0.1:8500"),
            ("HTTP://consul.local:8500/", "http://consul.local:8500"),
            ("  localhost:18500 ", "http://localhost:18500"),
            ("[::1]:8500", "http://[::1]:8500"),
            ("http://[::1]:8500", "http://[::1]:8500"),
        ] {
            assert_eq!(
                ConsulConfig::new(input).unwrap().address,
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_https_with_a_clear_reason() {
        let err = ConsulConfig::new("https://127.0.0.1:8501").unwrap_err();
        match &err {
            ConsulError::InvalidAddress { value, reason } => {
                assert_eq!(value, "https://127.0.0.1:8501");
                assert!(reason.contains("TLS"), "{reason}");
                assert!(reason.contains("not supported yet"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "127.0.0.1:0",
            "http://127.0.0.1:8500/v1",
            "unix:///var/run/consul.sock",
            "::1:8500",
            "not a host:8500",
            "user@host:8500",
        ] {
            assert!(
                matches!(
                    ConsulConfig::new(input),
                    Err(ConsulError::InvalidAddress { .. })
                ),
                "{input:?} should be rejected"
            );
        }
    }

    #[test]
    fn from_env_defaults() {
        let config = ConsulConfig::from_lookup(env(&[])).unwrap();
        assert_eq!(config.address, "http://127.0.0.1:8500");
        assert_eq!(config.token, None);
        assert_eq!(config.datacenter, None);
        assert_eq!(config.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn from_env_reads_all_variables() {
        let config = ConsulConfig::from_lookup(env(&[
            ("CONSUL_HTTP_ADDR", "http://10.0.0.5:8500"),
            ("CONSUL_HTTP_TOKEN", "s3cr3t"),
            ("CONSUL_DATACENTER", "eu1"),
        ]))
        .unwrap();
        assert_eq!(config.address, "http://10.0.0.5:8500");
        assert_eq!(config.token.as_deref(), Some("s3cr3t"));
        assert_eq!(config.datacenter.as_deref(), Some("eu1"));
    }

    #[test]
    fn from_env_empty_token_is_none() {
        let config = ConsulConfig::from_lookup(env(&[
            ("CONSUL_HTTP_ADDR", ""),
            ("CONSUL_HTTP_TOKEN", ""),
            ("CONSUL_DATACENTER", " "),
        ]))
        .unwrap();
        assert_eq!(config.address, "http://127.0.0.1:8500");
        assert_eq!(config.token, None);
        assert_eq!(config.datacenter, None);
    }

    #[test]
    fn from_env_error_names_variable_and_value() {
        let err = ConsulConfig::from_lookup(env(&[("CONSUL_HTTP_ADDR", "bogus")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("CONSUL_HTTP_ADDR"), "{msg}");
        assert!(msg.contains("\"bogus\""), "{msg}");
        let err =
            ConsulConfig::from_lookup(env(&[("CONSUL_HTTP_ADDR", "https://h:8501")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("TLS"), "{msg}");
        assert!(msg.contains("CONSUL_HTTP_ADDR"), "{msg}");
    }

    #[test]
    fn debug_redacts_token() {
        let config = ConsulConfig::new("127.0.0.1:8500")
            .unwrap()
            .with_token("top-secret-token");
        let debug = format!("{config:?}");
        assert!(!debug.contains("top-secret-token"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn blocking_timeout_adds_wait_and_jitter() {
        let config = ConsulConfig::new("127.0.0.1:8500")
            .unwrap()
            .with_request_timeout(Duration::from_secs(10));
        assert_eq!(
            config.blocking_timeout(Duration::from_secs(32)),
            Duration::from_secs(32 + 2 + 10)
        );
    }
}
