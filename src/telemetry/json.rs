//! The JSON log line: one object per event with, in this order, `timestamp` (RFC 3339, UTC),
//! `level`, `service`, `trace_id` and `span_id` (of the event's span, while traces are exported),
//! `request_id` (of the nearest span that has one), `message`, then the event's own fields. An
//! event field named like one of those keys is written as `event.<name>`.

use std::fmt::{self, Write as _};
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use serde_json::Value;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use super::request_id::request_id_of;

/// Keys every line has (or may have); event fields of these names are renamed.
const RESERVED: [&str; 7] = [
    "timestamp",
    "level",
    "service",
    "trace_id",
    "span_id",
    "request_id",
    "message",
];

/// The dispatcher a [`JsonLogFormat`] asks for span contexts: the one it is installed in, set
/// once that exists (while formatting an event, the current dispatcher is not reachable).
pub(crate) type DispatchSlot = Arc<OnceLock<WeakDispatch>>;

/// Formats events as JSON lines for `service`.
pub(crate) struct JsonLogFormat {
    /// `"service":"<name>",` ready to write.
    service_entry: String,
    dispatch: DispatchSlot,
}

impl JsonLogFormat {
    pub(crate) fn new(service: &str) -> Self {
        Self {
            service_entry: format!("\"service\":{},", Value::from(service)),
            dispatch: DispatchSlot::default(),
        }
    }

    /// Where to put the dispatcher the format is installed in.
    pub(crate) fn dispatch_slot(&self) -> DispatchSlot {
        Arc::clone(&self.dispatch)
    }
}

impl<S, N> FormatEvent<S, N> for JsonLogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":\"");
        SystemTime.format_time(&mut Writer::new(&mut line))?;
        line.push_str("\",\"level\":\"");
        line.push_str(event.metadata().level().as_str());
        line.push_str("\",");
        line.push_str(&self.service_entry);

        if let Some(span) = ctx.event_scope().and_then(|mut scope| scope.next()) {
            // OpenTelemetry's own events are emitted while it holds a span's data: never ask it
            // for a context then.
            if !event.metadata().target().starts_with("opentelemetry") {
                let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
                if let Some((trace_id, span_id)) = dispatch.and_then(|d| trace_ids(&span.id(), &d))
                {
                    write!(
                        line,
                        "\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\","
                    )?;
                }
            }
            if let Some(request_id) = request_id_of(&span) {
                line.push_str("\"request_id\":");
                line.push_str(&Value::from(request_id).to_string());
                line.push(',');
            }
        }

        let mut fields = JsonFields::default();
        event.record(&mut fields);
        line.push_str("\"message\":");
        line.push_str(&fields.message.unwrap_or(Value::from("")).to_string());
        for (name, value) in fields.fields {
            line.push(',');
            if RESERVED.contains(&name) {
                line.push_str(&Value::from(format!("event.{name}")).to_string());
            } else {
                line.push_str(&Value::from(name).to_string());
            }
            line.push(':');
            line.push_str(&value.to_string());
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// The trace and span ids of span `id`, when the OpenTelemetry layer of `dispatch` records it.
fn trace_ids(id: &tracing::span::Id, dispatch: &Dispatch) -> Option<(String, String)> {
    let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// An event's message and fields as JSON values.
#[derive(Default)]
struct JsonFields {
    message: Option<Value>,
    fields: Vec<(&'static str, Value)>,
}

impl JsonFields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(value);
        } else if !field.name().starts_with("log.") {
            self.fields.push((field.name(), value));
        }
    }
}

impl Visit for JsonFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(protomesh_consul::error_chain(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

/// Span fields are not formatted at all: the JSON line takes what it needs (the request id) from
/// the span's extensions, so formatting every span's fields would be wasted work.
pub(crate) struct NoSpanFields;

impl<'writer> FormatFields<'writer> for NoSpanFields {
    fn format_fields<R: RecordFields>(&self, _writer: Writer<'writer>, _fields: R) -> fmt::Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(captured: &Captured) -> Vec<serde_json::Map<String, Value>> {
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| match serde_json::from_str(line).unwrap() {
                Value::Object(map) => map,
                other => panic!("not an object: {other}"),
            })
            .collect()
    }

    fn keys(line: &serde_json::Map<String, Value>) -> Vec<&str> {
        // serde_json keeps keys sorted unless told otherwise: compare as sets.
        let mut keys: Vec<&str> = line.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn lines_have_the_agreed_keys_and_the_call_s_request_id() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(vec![
            super::super::request_id::layer(),
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .fmt_fields(NoSpanFields)
                .event_format(JsonLogFormat::new("tasks"))
                .boxed(),
        ]);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, "outside any call");
            let call = tracing::info_span!("call", request_id = "req-7");
            let _entered = call.enter();
            tracing::warn!(service = "other", error = %"refused \"x\"", "inside");
        });
        let lines = lines_of(&captured);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            keys(&lines[0]),
            vec!["answer", "level", "message", "service", "timestamp"]
        );
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["service"], "tasks");
        assert_eq!(lines[0]["answer"], 42);
        let timestamp = lines[0]["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() >= 20 && timestamp.ends_with('Z') && timestamp.contains('T'),
            "{timestamp}"
        );

        assert_eq!(
            keys(&lines[1]),
            vec![
                "error",
                "event.service",
                "level",
                "message",
                "request_id",
                "service",
                "timestamp"
            ]
        );
        assert_eq!(lines[1]["request_id"], "req-7");
        assert_eq!(lines[1]["service"], "tasks");
        assert_eq!(lines[1]["event.service"], "other");
        assert_eq!(lines[1]["error"], "refused \"x\"");
        assert_eq!(lines[1]["message"], "inside");
    }

    #[test]
    fn lines_in_a_traced_span_carry_its_trace_and_span_ids() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let captured = Captured::default();
        let writer = captured.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let format = JsonLogFormat::new("priority");
        let slot = format.dispatch_slot();
        let subscriber = tracing_subscriber::registry().with(vec![
            super::super::request_id::layer(),
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .fmt_fields(NoSpanFields)
                .event_format(format)
                .boxed(),
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .boxed(),
        ]);
        let dispatch = Dispatch::new(subscriber);
        slot.set(dispatch.downgrade()).unwrap();
        let (trace_id, span_id) = tracing::dispatcher::with_default(&dispatch, || {
            let call = tracing::info_span!("call", request_id = "req-8");
            let _entered = call.enter();
            tracing::info!("inside");
            let context = call.context();
            let span = context.span();
            let span_context = span.span_context();
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        });
        let lines = lines_of(&captured);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["trace_id"], trace_id.as_str());
        assert_eq!(lines[0]["span_id"], span_id.as_str());
        assert_eq!(trace_id.len(), 32);
        assert_eq!(span_id.len(), 16);
        assert_eq!(lines[0]["request_id"], "req-8");
    }
}
