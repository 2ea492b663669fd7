//! Logging set-up shared by every binary: `tracing` to standard error, as JSON lines or text,
//! filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Error returned when a global subscriber is already installed.
#[derive(Debug, thiserror::Error)]
#[error("logging is already initialised: {0}")]
pub struct TelemetryError(String);

/// Installs the global `tracing` subscriber for `service`. Call once, first thing in `main`.
pub fn init(format: LogFormat, service: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| TelemetryError(e.to_string()))?;
    tracing::debug!(service, "logging initialised");
    Ok(())
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the message
/// before it already contains.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut last = text.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !last.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        last = cause_text;
        source = cause.source();
    }
    text
}

/// The exit code of a binary whose work ended with `result`; an error is logged with its causes.
pub fn exit_code<E>(result: Result<(), E>) -> std::process::ExitCode
where
    E: std::error::Error + 'static,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %error_chain(&err), "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn error_chain_skips_causes_already_in_the_message() {
        let err = Outer(Inner(std::io::Error::other("refused")));
        assert_eq!(error_chain(&err), "outer: inner: refused");
    }
}
