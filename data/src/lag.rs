//! How far a process's event plumbing is behind, read when scraped (these reads are `async`, so
//! they are [scrape-time refreshers](Metrics::on_scrape) updating gauges):
//! - the outbox of a publishing service: `outbox_unsent_events` and
//!   `outbox_oldest_unsent_age_seconds` ([`LagMetrics::watch_outbox`]);
//! - the consumer groups of a consuming service: `stream_consumer_lag_events{stream,group}` (the
//!   group's `lag` in `XINFO GROUPS`, Redis 7: entries not yet delivered to the group) and
//!   `stream_consumer_pending_events{stream,group}` (delivered, not acknowledged)
//!   ([`LagMetrics::watch_stream_groups`]).
//!
//! When a read fails the gauges keep their last values and a warning is logged.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use deadpool_postgres::Pool;
use fred::prelude::{Client, StreamsInterface};
use fred::types::Value;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::{outbox, prefixed, DataError};
use protomesh::metrics::Metrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamGroupLabels {
    stream: Arc<str>,
    group: Arc<str>,
}

/// A consumer group's position in one stream, from `XINFO GROUPS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLag {
    /// Entries of the stream not delivered to the group yet; `None` when Redis cannot tell
    /// (older than 7, or after deletions in the stream).
    pub lag: Option<u64>,
    /// Entries delivered to the group's consumers and not acknowledged.
    pub pending: u64,
}

/// The position of `group` in the stream at `key`; `None` when the group does not exist on it.
pub async fn stream_group_lag(
    redis: &Client,
    key: &str,
    group: &str,
) -> Result<Option<GroupLag>, DataError> {
    let groups: Vec<HashMap<String, Value>> = redis.xinfo_groups(key).await?;
    Ok(groups
        .into_iter()
        .find(|info| info.get("name").and_then(Value::as_string).as_deref() == Some(group))
        .map(|info| GroupLag {
            lag: info.get("lag").and_then(Value::as_u64),
            pending: info.get("pending").and_then(Value::as_u64).unwrap_or(0),
        }))
}

/// The data layer's scrape-time gauges, added to a process's [`Metrics`] registry.
pub trait LagMetrics {
    /// Adds `outbox_unsent_events` and `outbox_oldest_unsent_age_seconds`, the lag of the outbox
    /// of `pool`'s schema, read at every scrape.
    fn watch_outbox(&self, pool: Pool);

    /// Adds `stream_consumer_lag_events` and `stream_consumer_pending_events` of consumer `group`
    /// on each of `streams` (names without `key_prefix`, the `stream` label), read through `redis`
    /// at every scrape.
    fn watch_stream_groups(&self, redis: Client, key_prefix: &str, group: &str, streams: &[String]);
}

impl LagMetrics for Metrics {
    fn watch_outbox(&self, pool: Pool) {
        let unsent = Gauge::<i64>::default();
        let oldest_age = Gauge::<f64, AtomicU64>::default();
        self.register(
            "outbox_unsent_events",
            "Events in the outbox not published to Redis yet",
            unsent.clone(),
        );
        self.register(
            "outbox_oldest_unsent_age_seconds",
            "Age of the oldest event not published yet, 0 when there is none",
            oldest_age.clone(),
        );
        self.on_scrape(move || {
            let (pool, unsent, oldest_age) = (pool.clone(), unsent.clone(), oldest_age.clone());
            async move {
                match outbox::lag(&pool).await {
                    Ok(lag) => {
                        unsent.set(lag.unsent);
                        oldest_age.set(lag.oldest_unsent_age.map_or(0.0, |age| age.as_secs_f64()));
                    }
                    Err(err) => tracing::warn!(error = %err, "metrics: cannot read the outbox lag"),
                }
            }
        });
    }

    fn watch_stream_groups(
        &self,
        redis: Client,
        key_prefix: &str,
        group: &str,
        streams: &[String],
    ) {
        let lag = Family::<StreamGroupLabels, Gauge>::default();
        let pending = Family::<StreamGroupLabels, Gauge>::default();
        self.register(
            "stream_consumer_lag_events",
            "Stream entries not delivered to the consumer group yet (XINFO GROUPS lag)",
            lag.clone(),
        );
        self.register(
            "stream_consumer_pending_events",
            "Stream entries delivered to the consumer group and not acknowledged",
            pending.clone(),
        );
        let group: Arc<str> = group.into();
        let watched: Arc<Vec<(String, StreamGroupLabels)>> = Arc::new(
            streams
                .iter()
                .map(|stream| {
                    let labels = StreamGroupLabels {
                        stream: stream.as_str().into(),
                        group: Arc::clone(&group),
                    };
                    (prefixed(key_prefix, stream), labels)
                })
                .collect(),
        );
        self.on_scrape(move || {
            let (redis, watched) = (redis.clone(), Arc::clone(&watched));
            let (lag, pending) = (lag.clone(), pending.clone());
            async move {
                for (key, labels) in watched.iter() {
                    match stream_group_lag(&redis, key, &labels.group).await {
                        Ok(Some(position)) => {
                            match position.lag {
                                Some(behind) => {
                                    lag.get_or_create(labels).set(gauge_value(behind));
                                }
                                None => {
                                    lag.remove(labels);
                                }
                            }
                            pending
                                .get_or_create(labels)
                                .set(gauge_value(position.pending));
                        }
                        Ok(None) => {
                            lag.remove(labels);
                            pending.remove(labels);
                        }
                        Err(err) => tracing::warn!(
                            stream = %key,
                            error = %err,
                            "metrics: cannot read the consumer group's lag"
                        ),
                    }
                }
            }
        });
    }
}

fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
