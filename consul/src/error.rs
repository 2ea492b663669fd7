//! The error type of the client, the registrar and the dev-agent launcher, [`ConsulError`],
//! and its classification helpers (the watcher's own is [`WatchError`](crate::WatchError)); and
//! [`error_chain`], how any error is written on one line (here because every protomesh crate
//! depends on this one).

use std::path::PathBuf;
use std::time::Duration;

/// A boxed transport-level error (hyper / hyper-util), kept opaque so that the public
/// API does not depend on hyper-util's error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when talking to (or launching) a Consul agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsulError {
    /// The agent address (usually `CONSUL_HTTP_ADDR`) could not be used.
    #[error("invalid Consul agent address {value:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The agent could not be reached at all (connection refused, no route, DNS failure...).
    #[error(
        "cannot connect to the Consul agent at {address} (is the agent running? \
         check CONSUL_HTTP_ADDR)"
    )]
    Connect {
        /// The agent address that was tried, e.g. `http://127.0.0.1:8500`.
        address: String,
        /// The underlying connection error.
        #[source]
        source: BoxError,
    },

    /// The request (including reading the whole answer) did not finish in time.
    #[error("Consul request {endpoint} timed out after {after:?}")]
    Timeout {
        /// Method and path of the request, e.g. `GET /v1/agent/self`.
        endpoint: String,
        /// The time limit that was exceeded.
        after: Duration,
    },

    /// The agent answered with a non-2xx status.
    #[error("Consul answered {status} to {endpoint}{}: {body}", status_hint(*.status))]
    Status {
        /// Method and path of the request.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// The answer's body (Consul puts its error message there), possibly truncated.
        body: String,
    },

    /// The agent answered 2xx but the body was not the JSON we expected.
    #[error("cannot decode Consul's answer to {endpoint}")]
    Decode {
        /// Method and path of the request.
        endpoint: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// A request body could not be encoded as JSON.
    #[error("cannot encode the request body for {endpoint}")]
    Encode {
        /// Method and path of the request.
        endpoint: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// The request could not be built (for example the token contains characters that are
    /// not allowed in an HTTP header).
    #[error("cannot build the Consul request {endpoint}: {reason}")]
    Request {
        /// Method and path of the request.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },

    /// Any other HTTP transport failure after the connection was established (connection
    /// reset, malformed answer...).
    #[error("HTTP error talking to Consul ({endpoint})")]
    Http {
        /// Method and path of the request.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// The `consul` binary could not be started.
    #[error(
        "cannot start the Consul binary {}: {source} (install it with scripts/setup.sh, \
         or point CONSUL_BIN at a consul binary)",
        binary.display()
    )]
    Spawn {
        /// The binary that was tried.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// No `consul` binary was found (see [`DevAgentOptions::find_binary`](crate::DevAgentOptions::find_binary)).
    #[error(
        "no consul binary found: run scripts/setup.sh (it installs Consul 1.8.7 into .tools/bin), \
         put consul on PATH, or set CONSUL_BIN"
    )]
    BinaryNotFound,

    /// A dev agent exited before it became ready.
    #[error(
        "the Consul dev agent ({}) exited before it was ready: {status}{}",
        binary.display(),
        log_hint(log_file.as_ref())
    )]
    AgentExited {
        /// The binary that was run.
        binary: PathBuf,
        /// Its exit status, as text.
        status: String,
        /// Where its output went, if anywhere.
        log_file: Option<PathBuf>,
    },

    /// A dev agent did not become ready (elect itself leader) in time.
    #[error("the Consul dev agent at {address} was not ready after {after:?} (last problem: {last_error})")]
    NotReady {
        /// The agent's HTTP address.
        address: String,
        /// How long we waited.
        after: Duration,
        /// The last error or state seen while polling.
        last_error: String,
    },

    /// A service had no instance passing its health checks in time
    /// ([`DevAgent::wait_passing`](crate::DevAgent::wait_passing)).
    #[error("no instance of {service} was passing after {after:?} (last problem: {last_error})")]
    NotPassing {
        /// The service waited for.
        service: String,
        /// How long we waited.
        after: Duration,
        /// The last error or state seen while polling.
        last_error: String,
    },

    /// A local I/O operation failed (opening a log file, finding a free port...).
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ConsulError {
    /// True when the agent could not be reached: connection failures and timeouts.
    ///
    /// Callers typically retry these, while other errors (bad request, ACL denied...) are
    /// configuration problems.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Timeout { .. })
    }

    /// True when Consul answered `404 Not Found`.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The HTTP status Consul answered with, for [`ConsulError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Extra explanation appended to a status error's message for well-known codes.
fn status_hint(status: u16) -> &'static str {
    match status {
        403 => {
            " (permission denied by Consul ACLs: check that CONSUL_HTTP_TOKEN is set to a token \
             with the needed policy)"
        }
        404 => " (not found)",
        _ => "",
    }
}

/// Tells where to look for the dev agent's own explanation of a failure.
fn log_hint(log_file: Option<&PathBuf>) -> String {
    match log_file {
        Some(path) => format!("; see its log in {}", path.display()),
        None => "; set DevAgentOptions::log_file to capture its output".to_owned(),
    }
}

/// An error and its causes on one line, `outer: inner: cause`: the one rule of every log line
/// and message of protomesh that shows an error. A cause whose text the line already holds (as
/// an error that formats its source into its own message does) is left out, so nothing is said
/// twice.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_mentions_acls() {
        let err = ConsulError::Status {
            endpoint: "PUT /v1/agent/service/register".into(),
            status: 403,
            body: "Permission denied".into(),
        };
        let msg = err.to_string();
        assert!(msg.contains("403"), "{msg}");
        assert!(msg.contains("ACL"), "{msg}");
        assert!(msg.contains("Permission denied"), "{msg}");
        assert!(!err.is_unreachable());
        assert!(!err.is_not_found());
    }

    #[test]
    fn not_found_is_classified() {
        let err = ConsulError::Status {
            endpoint: "GET /v1/agent/service/x".into(),
            status: 404,
            body: "unknown service ID: x".into(),
        };
        assert!(err.is_not_found());
        assert_eq!(err.status(), Some(404));
    }

    #[test]
    fn connect_names_address_and_env_var() {
        let err = ConsulError::Connect {
            address: "http://127.0.0.1:1".into(),
            source: "connection refused".into(),
        };
        let msg = err.to_string();
        assert!(msg.contains("http://127.0.0.1:1"), "{msg}");
        assert!(msg.contains("CONSUL_HTTP_ADDR"), "{msg}");
        assert!(err.is_unreachable());
        let timeout = ConsulError::Timeout {
            endpoint: "GET /v1/agent/self".into(),
            after: Duration::from_secs(1),
        };
        assert!(timeout.is_unreachable());
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    /// Formats its source's own source too (as `anyhow`-style messages do).
    #[derive(Debug, thiserror::Error)]
    #[error("wrapper: {0}: refused")]
    struct Wrapper(#[source] Inner);

    #[test]
    fn error_chain_says_each_cause_once() {
        let err = Outer(Inner(std::io::Error::other("refused")));
        assert_eq!(error_chain(&err), "outer: inner: refused");
        // A cause an earlier message (not the one just before) already holds.
        let err = Wrapper(Inner(std::io::Error::other("refused")));
        assert_eq!(error_chain(&err), "wrapper: inner: refused");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }

    #[test]
    fn error_chain_includes_sources() {
        let err = ConsulError::Connect {
            address: "http://127.0.0.1:1".to_owned(),
            source: "connection refused".into(),
        };
        let text = error_chain(&err);
        assert!(text.contains("http://127.0.0.1:1"), "{text}");
        assert!(text.ends_with(": connection refused"), "{text}");
    }
}
