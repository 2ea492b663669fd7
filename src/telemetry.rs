//! Telemetry shared by every binary: logs and distributed traces, set up by one call to [`init`].
//!
//! - **Logs**: `tracing` to standard error, as JSON lines or text, filtered by `RUST_LOG` (default
//!   `info`). A JSON line has `timestamp`, `level`, `service`, `trace_id` and `span_id` (of the
//!   current span, while traces are exported), `request_id` (the caller's `x-request-id`,
//!   recorded on the call's server span), `message` and the event's fields.
//! - **Traces**: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the spans of [`spans`] are exported
//!   as OpenTelemetry traces over OTLP/gRPC in batches ([`export`]); W3C `traceparent` /
//!   `tracestate` travel in gRPC metadata and HTTP headers ([`propagation`]). Unset, no exporter
//!   exists and the trace spans below `info` are never even created.
//! - **Where spans come from**: [`grpc::GrpcServerTraceLayer`] in every mesh server (one server
//!   span per call), [`grpc::GrpcClientTraceLayer`] in every mesh channel (one client span per
//!   call, its context injected into the request), the gateway's HTTP layer, and the data layer's
//!   Postgres and Redis calls ([`spans::postgres`], [`spans::redis`]).
//!
//! [`init`] returns a [`TelemetryGuard`]: keep it for the whole of `main` and call
//! [`TelemetryGuard::shutdown`] (or drop it) at the end, so the last spans are flushed.

pub mod export;
mod exporting;
pub mod grpc;
mod json;
mod log_filter;
pub mod propagation;
pub mod request_id;
pub mod spans;

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer, Registry};

pub use export::{ExporterError, SamplerSetting, TraceConfigError, TraceExportConfig};
pub use exporting::tracing_enabled;
pub use grpc::{CallSide, GrpcClientTraceLayer, GrpcServerTraceLayer, TracedBody};
pub use request_id::{current_request_id, REQUEST_ID_HEADER, REQUEST_ID_HEADER_NAME};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A global subscriber is already installed.
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
    /// An `OTEL_*` setting is invalid.
    #[error(transparent)]
    Config(#[from] TraceConfigError),
    /// The OTLP exporter could not be built.
    #[error(transparent)]
    Exporter(#[from] ExporterError),
}

/// Keeps trace export running; [`shutdown`](TelemetryGuard::shutdown) (or dropping it) flushes
/// the spans not yet sent and stops the exporter. Does nothing when traces are not exported.
#[must_use = "dropping the guard stops trace export: keep it until the end of main"]
#[derive(Debug)]
pub struct TelemetryGuard {
    export: Option<export::TraceExport>,
}

impl TelemetryGuard {
    /// Flushes the spans not yet exported (bounded by a few seconds) and stops the exporter.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(export) = self.export.take() {
            exporting::set_exporting(false);
            export.shutdown();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// JSON lines when standard error is not a terminal, human-readable text when it is.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Installs the global `tracing` subscriber for `service` and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set, the OTLP trace exporter (see [`TraceExportConfig::from_env`]). Call once, first thing
/// in `main`, and keep the guard until `main` ends.
pub fn init(format: LogFormat, service: &str) -> Result<TelemetryGuard, TelemetryError> {
    let config = TraceExportConfig::from_env(service)?;
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    // `RUST_LOG`, or `info` when it is unset, blank or invalid.
    let (log_filter, directives) = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| Some((EnvFilter::try_new(&directives).ok()?, directives)))
        .unwrap_or_else(|| (EnvFilter::new("info"), "info".to_owned()));

    let mut dispatch_slot = None;
    let export = match &config.endpoint {
        Some(endpoint) => Some(export::TraceExport::start(&config, endpoint)?),
        None => None,
    };
    let installed = match &export {
        // Nothing exported: one global filter and unfiltered layers (see `log_filter`).
        None => tracing_subscriber::registry()
            .with(log_filter::LogFilter::new(log_filter, &directives))
            .with(request_id::RequestIdLayer)
            .with(log_layer(json, terminal, &config, &mut dispatch_slot))
            .try_init(),
        // The exporter sees spans and events the logs leave out: each layer filters for itself.
        Some(export) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(export.tracer())
                .with_location(false)
                // Spans start when first needed (a child, a log line, the end), not when first
                // entered: the gateway names its span after the route it finds inside it.
                .with_context_activation(false)
                .with_filter(exported_filter())
                .boxed();
            let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![
                request_id::layer(),
                log_layer(json, terminal, &config, &mut dispatch_slot)
                    .with_filter(log_filter)
                    .boxed(),
                otel,
            ];
            tracing_subscriber::registry().with(layers).try_init()
        }
    };
    if let Err(err) = installed {
        if let Some(export) = export {
            export.shutdown();
        }
        return Err(TelemetryError::AlreadyInitialised(err.to_string()));
    }
    if let Some(slot) = dispatch_slot {
        // Outside any event now: this is the global dispatcher just installed.
        tracing::dispatcher::get_default(|dispatch| slot.set(dispatch.downgrade()).ok());
    }
    exporting::set_exporting(export.is_some());
    tracing::debug!(
        service,
        traces = config.endpoint.is_some(),
        sampler = ?config.sampler,
        "telemetry initialised"
    );
    Ok(TelemetryGuard { export })
}

/// The log lines' layer, JSON or text, unfiltered; with JSON, `dispatch_slot` is set to where
/// the format finds the subscriber once it is installed.
fn log_layer<S>(
    json: bool,
    terminal: bool,
    config: &TraceExportConfig,
    dispatch_slot: &mut Option<json::DispatchSlot>,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if json {
        let format = json::JsonLogFormat::new(&config.service_name);
        *dispatch_slot = Some(format.dispatch_slot());
        fmt::layer()
            .with_writer(std::io::stderr)
            .fmt_fields(json::NoSpanFields)
            .event_format(format)
            .boxed()
    } else {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(terminal)
            .with_target(false)
            .boxed()
    }
}

/// What the OpenTelemetry layer sees: the trace spans of [`spans`] (down to `debug`), and events
/// up to `info` (they become span events) except those of the transport crates the exporter
/// itself uses.
fn exported_filter() -> impl tracing_subscriber::layer::Filter<Registry> + Send + Sync {
    filter_fn(|metadata| {
        if metadata.is_span() {
            metadata.target() == spans::TARGET
        } else {
            *metadata.level() <= Level::INFO && !is_transport_target(metadata.target())
        }
    })
    .with_max_level_hint(LevelFilter::DEBUG)
}

/// Targets whose events must not be traced: the exporter's own gRPC stack and OpenTelemetry.
fn is_transport_target(target: &str) -> bool {
    ["opentelemetry", "h2", "hyper", "tonic", "tower"]
        .iter()
        .any(|prefix| target.starts_with(prefix))
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already holds: the one rule of the workspace, kept in the Consul client crate every other
/// depends on.
pub use protomesh_consul::error_chain;

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

    #[test]
    fn the_exporter_s_own_transport_is_never_traced() {
        assert!(is_transport_target("h2::codec"));
        assert!(is_transport_target("opentelemetry_sdk::trace"));
        assert!(!is_transport_target("protomesh::server"));
    }
}
