//! The log filter as the subscriber's one global filter, for when no trace is exported: `RUST_LOG`
//! (default `info`) decides, and every span that carries a request id is let through whatever
//! its level, so the id still reaches the log lines of its call.
//!
//! A per-layer filter would do the same, but tracing-subscriber then checks each layer's filter
//! state on every span enter, exit and record; with one global filter and unfiltered layers a
//! span costs a registry lookup and little else. (While traces are exported the layers need
//! different filters, and [`super::init`] keeps them per layer.)

use tracing::metadata::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use super::request_id::is_request_span;

/// See the [module](self).
pub(crate) struct LogFilter {
    filter: EnvFilter,
    /// The filter has span directives (`target[span{field=value}]=level`), which follow the
    /// spans as they are entered and left; without them its span callbacks do nothing but take a
    /// lock, and are not made.
    follows_spans: bool,
}

impl LogFilter {
    /// `filter`, parsed from `directives`.
    pub(crate) fn new(filter: EnvFilter, directives: &str) -> Self {
        Self {
            filter,
            follows_spans: directives.contains('['),
        }
    }
}

impl<S> Layer<S> for LogFilter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // Asked first in every case: the filter records here the span directives that match a
        // callsite (`[http.server]=debug`), request spans included.
        let interest = Layer::<S>::register_callsite(&self.filter, metadata);
        if is_request_span(metadata) {
            Interest::always()
        } else {
            interest
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        is_request_span(metadata) || self.filter.enabled(metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Request spans are `info`: they must get past the level check even when the filter
        // asks for less; the filter decides the rest.
        self.filter
            .max_level_hint()
            .map(|hint| hint.max(LevelFilter::INFO))
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_new_span(attrs, id, ctx);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_record(id, values, ctx);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_enter(id, ctx);
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_exit(id, ctx);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_close(id, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::telemetry::request_id::{current_request_id, RequestIdLayer};

    fn subscriber(directives: &str) -> impl Subscriber + Send + Sync {
        let filter = LogFilter::new(EnvFilter::new(directives), directives);
        tracing_subscriber::registry()
            .with(filter)
            .with(RequestIdLayer)
    }

    #[test]
    fn request_spans_pass_a_quieter_filter_other_spans_and_events_do_not() {
        tracing::subscriber::with_default(subscriber("warn"), || {
            let call = tracing::info_span!("call", request_id = "r-7");
            assert!(!call.is_disabled(), "a request span is kept");
            assert!(tracing::info_span!("other").is_disabled());
            call.in_scope(|| {
                assert_eq!(current_request_id().as_deref(), Some("r-7"));
                assert!(!tracing::enabled!(Level::INFO), "info events stay out");
                assert!(tracing::enabled!(Level::WARN));
            });
        });
    }

    #[test]
    fn span_directives_follow_the_spans_entered() {
        tracing::subscriber::with_default(subscriber("warn,[job]=debug"), || {
            assert!(!tracing::enabled!(Level::DEBUG), "outside the span");
            let job = tracing::warn_span!("job");
            job.in_scope(|| assert!(tracing::enabled!(Level::DEBUG), "inside the span"));
            assert!(!tracing::enabled!(Level::DEBUG), "after the span");
        });
    }

    #[test]
    fn span_directives_reach_request_spans_too() {
        tracing::subscriber::with_default(subscriber("warn,[call]=debug"), || {
            let call = tracing::info_span!("call", request_id = "r-9");
            call.in_scope(|| assert!(tracing::enabled!(Level::DEBUG), "inside the request span"));
            assert!(!tracing::enabled!(Level::DEBUG), "outside it");
        });
    }
}
