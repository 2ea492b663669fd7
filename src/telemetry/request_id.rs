//! Request ids: the gateway's `x-request-id`, recorded as the `request_id` field of a call's
//! server span, kept in that span's extensions so that every log line of the call carries it,
//! and passed on by the mesh client to the services the call reaches.

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};
use tracing_subscriber::Registry;

/// The header (and gRPC metadata key) carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// [`REQUEST_ID_HEADER`] as a header name, so that lookups on every call skip parsing the name.
pub const REQUEST_ID_HEADER_NAME: http::HeaderName =
    http::HeaderName::from_static(REQUEST_ID_HEADER);

/// The span field holding the request id.
pub const REQUEST_ID_FIELD: &str = "request_id";

/// The request id of a span, in its extensions.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

/// The layer that keeps the `request_id` field of spans in their extensions, with a per-layer
/// filter that lets it see only spans that have that field (for subscribers whose layers filter
/// each for itself: see [`RequestIdLayer`] for the others).
pub(crate) fn layer() -> Box<dyn Layer<Registry> + Send + Sync> {
    RequestIdLayer
        .with_filter(filter_fn(is_request_span))
        .boxed()
}

/// Whether `metadata` is that of a span with a `request_id` field.
pub(crate) fn is_request_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.fields().field(REQUEST_ID_FIELD).is_some()
}

/// Keeps the `request_id` field of spans in their extensions; spans without that field are left
/// alone, so it needs no filter of its own.
pub(crate) struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !is_request_span(attrs.metadata()) {
            return;
        }
        let mut visitor = RequestIdVisitor(None);
        attrs.record(&mut visitor);
        store(visitor.0, id, &ctx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut visitor = RequestIdVisitor(None);
        values.record(&mut visitor);
        store(visitor.0, id, &ctx);
    }
}

fn store<S>(request_id: Option<String>, id: &Id, ctx: &Context<'_, S>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if let (Some(request_id), Some(span)) = (request_id, ctx.span(id)) {
        span.extensions_mut().insert(RequestId(request_id));
    }
}

/// Reads the `request_id` field of a span.
struct RequestIdVisitor(Option<String>);

impl Visit for RequestIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == REQUEST_ID_FIELD {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == REQUEST_ID_FIELD {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// The request id of `span` or of its nearest ancestor that has one.
pub(crate) fn request_id_of<'a, R>(span: &SpanRef<'a, R>) -> Option<String>
where
    R: LookupSpan<'a>,
{
    span.scope()
        .find_map(|span| span.extensions().get::<RequestId>().map(|id| id.0.clone()))
}

/// The request id of the current span (or of its nearest ancestor that has one): the id of the
/// call being handled.
pub fn current_request_id() -> Option<String> {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<Registry>()?;
            let span = registry.span(id)?;
            request_id_of(&span)
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn the_nearest_request_id_of_the_current_span_is_found() {
        let subscriber = tracing_subscriber::registry().with(vec![layer()]);
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(current_request_id(), None);
            let call = tracing::info_span!("call", request_id = "r-1");
            let _call = call.enter();
            let inner = tracing::info_span!("inner");
            let _inner = inner.enter();
            assert_eq!(current_request_id().as_deref(), Some("r-1"));
            let late = tracing::info_span!("late", request_id = tracing::field::Empty);
            let _late = late.enter();
            late.record("request_id", "r-2");
            assert_eq!(current_request_id().as_deref(), Some("r-2"));
        });
    }
}
