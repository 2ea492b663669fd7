//! Whether this process exports traces: set by [`super::init`] and cleared when its guard stops
//! the exporter; read on every call by propagation and the trace spans.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this process exports traces.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported as OpenTelemetry traces in this process: `OTEL_EXPORTER_OTLP_ENDPOINT`
/// was set when [`super::init`] ran. Propagation does nothing while it is `false`.
pub fn tracing_enabled() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Records whether traces are exported.
pub(super) fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, Ordering::Relaxed);
}
