//! W3C trace context (`traceparent`, `tracestate`) in HTTP headers and gRPC metadata (which are
//! HTTP/2 headers): [`set_remote_parent`] makes a server span the child of the caller's span,
//! [`inject`] writes a client span's context into an outgoing request. Both do nothing while
//! traces are not exported ([`super::exporting::tracing_enabled`]), so an incoming `traceparent` then goes
//! on unchanged wherever a hop copies it.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";

/// Reads trace context from headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes trace context into headers (replacing what was there).
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` (just created, not yet entered) a child of the span `headers` name in their
/// `traceparent`, if they carry a valid one and traces are exported.
pub fn set_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !super::exporting::tracing_enabled()
        || span.is_disabled()
        || !headers.contains_key(TRACEPARENT)
    {
        return;
    }
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if context.span().span_context().is_valid() {
        // Fails only for a span already started, which a new span is not.
        let _ = span.set_parent(context);
    }
}

/// Writes the context of `span` into `headers` as `traceparent` (and `tracestate`), replacing
/// any the caller's request carried, if traces are exported and the span is recorded.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if !super::exporting::tracing_enabled() || span.is_disabled() {
        return;
    }
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let propagator = TraceContextPropagator::new();
        let context = propagator.extract(&HeaderExtractor(&headers));
        let span = context.span();
        let span_context = span.span_context();
        assert!(span_context.is_valid() && span_context.is_remote());
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );

        let mut out = HeaderMap::new();
        propagator.inject_context(&context, &mut HeaderInjector(&mut out));
        assert_eq!(out[TRACEPARENT], headers[TRACEPARENT]);
    }

    #[test]
    fn nothing_is_done_while_traces_are_off() {
        let span = tracing::Span::none();
        let mut headers = HeaderMap::new();
        inject(&span, &mut headers);
        set_remote_parent(&span, &headers);
        assert!(headers.is_empty());
    }
}
