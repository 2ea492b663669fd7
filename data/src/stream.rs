//! Reading the event streams with a Redis consumer group, at least once, applied exactly once.
//!
//! A [`StreamConsumer`] makes sure its group exists on every stream (`XGROUP CREATE … MKSTREAM`,
//! from the start of the stream), reads new messages with `XREADGROUP` (blocking up to a second),
//! hands each to the handler as an [`Event`], and acknowledges it (`XACK`) only when the handler
//! returned `Ok` — so the handler acknowledges by committing its own Postgres transaction first.
//! Messages whose handler failed, and those a crashed consumer of the group had read but not
//! acknowledged, stay pending; every few seconds the consumer claims pending messages idle for
//! longer than [`ConsumerOptions::claim_idle`] (`XAUTOCLAIM`) and handles them again.
//!
//! A message can therefore reach a handler more than once (after a crash, a lost `XACK`, or a
//! re-sent outbox row). Handlers apply idempotently: in the same transaction as their effect they
//! call [`mark_applied`], which records the event id in `applied_events` ([`APPLIED_EVENTS_DDL`])
//! and says whether it was new:
//!
//! ```no_run
//! # use protomesh_data::stream::{self, Event, StreamConsumer, ConsumerOptions};
//! # async fn run(pool: deadpool_postgres::Pool, redis: fred::prelude::Client) {
//! let options = ConsumerOptions::new("analytics", "analytics-1", ["task", "time"]);
//! let consumer = StreamConsumer::new(&redis, "", options);
//! let handle = consumer.spawn(move |event: Event| {
//!     let pool = pool.clone();
//!     async move {
//!         let mut client = pool.get().await?;
//!         let tx = client.transaction().await?;
//!         if stream::mark_applied(&tx, event.event_id).await? {
//!             // … update the read model from event.payload …
//!         }
//!         tx.commit().await?;
//!         Ok::<_, protomesh_data::DataError>(())
//!     }
//! });
//! # drop(handle); }
//! ```
//!
//! Within one stream, messages reach the handler in stream order, except that retried ones come
//! later; across streams there is no order.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fred::prelude::{Client, ClientLike, Options, StreamsInterface};
use fred::types::streams::XReadValue;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{prefixed, Backoff, DataError};
use protomesh::telemetry::spans;

/// The `applied_events` table of [`mark_applied`]: a migration step for every service that
/// consumes events.
pub const APPLIED_EVENTS_DDL: &str = "CREATE TABLE IF NOT EXISTS applied_events (
    event_id uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Records that the event `event_id` is applied, inside the handler's transaction; returns `true`
/// the first time and `false` when it was already applied (then the handler skips its effect and
/// commits, so the message is acknowledged). A concurrent transaction applying the same event
/// waits for this one, then sees `false`.
pub async fn mark_applied(
    tx: &deadpool_postgres::Transaction<'_>,
    event_id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached("INSERT INTO applied_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .await?;
    Ok(tx.execute(&statement, &[&event_id]).await? == 1)
}

/// One event read from a stream, as the outbox relay published it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The unique id given by [`outbox::insert`](super::outbox::insert): the key to deduplicate on.
    pub event_id: Uuid,
    /// The event's type (`task.created`).
    pub event_type: String,
    /// The id of the thing the event is about.
    pub aggregate_id: String,
    /// The event's data.
    pub payload: serde_json::Value,
    /// When the event was written to the outbox, if the message says.
    pub created_at: Option<SystemTime>,
    /// The stream it came from, without the key prefix (`task`).
    pub stream: String,
    /// The Redis message id (`1700000000000-0`).
    pub message_id: String,
}

/// Why a stream message is not an [`Event`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MalformedEvent {
    /// A field is missing.
    #[error("field {0} is missing")]
    Missing(&'static str),
    /// A field does not parse.
    #[error("field {field} is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Event {
    /// The event in the fields of a stream message.
    pub fn from_fields(
        stream: &str,
        message_id: &str,
        fields: &HashMap<String, String>,
    ) -> Result<Self, MalformedEvent> {
        let field = |name: &'static str| {
            fields
                .get(name)
                .map(String::as_str)
                .ok_or(MalformedEvent::Missing(name))
        };
        let event_id =
            field("event_id")?
                .parse::<Uuid>()
                .map_err(|err| MalformedEvent::Invalid {
                    field: "event_id",
                    reason: err.to_string(),
                })?;
        let payload =
            serde_json::from_str(field("payload")?).map_err(|err| MalformedEvent::Invalid {
                field: "payload",
                reason: err.to_string(),
            })?;
        let created_at = fields
            .get("created_at")
            .and_then(|text| humantime::parse_rfc3339(text).ok());
        Ok(Self {
            event_id,
            event_type: field("type")?.to_owned(),
            aggregate_id: field("aggregate_id")?.to_owned(),
            payload,
            created_at,
            stream: stream.to_owned(),
            message_id: message_id.to_owned(),
        })
    }
}

/// What handles the events of a [`StreamConsumer`]: any `Fn(Event) -> impl Future<Output =
/// Result<(), E>>` (a closure returning an `async` block) is one. `Ok` acknowledges the message;
/// `Err` leaves it pending, to be retried after [`ConsumerOptions::claim_idle`].
pub trait EventHandler: Send + Sync + 'static {
    /// The handler's error, logged when it fails.
    type Error: Display + Send;
    /// Applies one event.
    fn handle(&self, event: Event) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl<F, Fut, E> EventHandler for F
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Display + Send,
{
    type Error = E;

    fn handle(&self, event: Event) -> impl Future<Output = Result<(), E>> + Send {
        self(event)
    }
}

/// Settings of a [`StreamConsumer`].
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// The consumer group (usually the consuming service's name).
    pub group: String,
    /// This consumer's name within the group, unique per process (`analytics-<host>-<pid>`).
    pub consumer: String,
    /// The streams to read, without the key prefix.
    pub streams: Vec<String>,
    /// Most messages taken from each stream per read. Default 64.
    pub count: u64,
    /// How long a read waits for new messages. Default 1 s.
    pub block: Duration,
    /// Pending messages idle for longer than this are claimed from their consumer (which is taken
    /// for dead, or whose handler failed). Default 30 s.
    pub claim_idle: Duration,
    /// How often pending messages are looked for. Default 5 s.
    pub claim_every: Duration,
    /// Bound on each non-blocking Redis command. Default 2 s.
    pub redis_timeout: Duration,
    /// Longest delay between attempts while Redis is down. Default 5 s.
    pub backoff_max: Duration,
}

impl ConsumerOptions {
    /// Defaults for `consumer` of `group` reading `streams`.
    pub fn new<S: Into<String>>(
        group: impl Into<String>,
        consumer: impl Into<String>,
        streams: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            group: group.into(),
            consumer: consumer.into(),
            streams: streams.into_iter().map(Into::into).collect(),
            count: 64,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_every: Duration::from_secs(5),
            redis_timeout: Duration::from_secs(2),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// A member of a consumer group reading several streams (see the [module](self)).
pub struct StreamConsumer {
    redis: Client,
    prefix: String,
    options: ConsumerOptions,
    /// `(stream, key)` pairs, in the order of `options.streams`.
    streams: Vec<(String, String)>,
}

impl std::fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("prefix", &self.prefix)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// How long a loop waits for a connection in progress before it counts Redis as down.
pub(crate) const CONNECT_GRACE: Duration = Duration::from_secs(1);

/// Most `XAUTOCLAIM` pages one claim pass goes through per stream.
const MAX_CLAIM_PAGES: usize = 10;

impl StreamConsumer {
    /// A consumer with a Redis connection of its own (its reads block), made like `redis`'s and
    /// connecting in the background; reads `{key_prefix}{stream}` for each of `options.streams`.
    /// Call it inside a Tokio runtime.
    pub fn new(redis: &Client, key_prefix: impl Into<String>, options: ConsumerOptions) -> Self {
        let own = redis.clone_new();
        own.connect();
        let prefix = key_prefix.into();
        let streams = options
            .streams
            .iter()
            .map(|stream| (stream.clone(), prefixed(&prefix, stream)))
            .collect();
        Self {
            redis: own,
            prefix,
            options,
            streams,
        }
    }

    /// This consumer's settings.
    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    fn command_options(&self, extra: Duration) -> Options {
        Options {
            timeout: Some(self.options.redis_timeout + extra),
            ..Default::default()
        }
    }

    /// Creates the group on every stream (and the stream, if missing) unless it exists; a new
    /// group starts at the beginning of its stream.
    pub async fn ensure_groups(&self) -> Result<(), DataError> {
        let redis = self
            .redis
            .with_options(&self.command_options(Duration::ZERO));
        for (_, key) in &self.streams {
            let created: Result<(), fred::error::Error> = redis
                .xgroup_create(key.as_str(), self.options.group.as_str(), "0", true)
                .await;
            match created {
                Ok(()) => {
                    tracing::debug!(stream = %key, group = %self.options.group, "consumer group created")
                }
                Err(err) if err.details().contains("BUSYGROUP") => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Reads new messages once (blocking up to [`ConsumerOptions::block`]) and handles them;
    /// returns how many were handled successfully.
    pub async fn poll<H: EventHandler>(&self, handler: &H) -> Result<usize, DataError> {
        self.read(handler, ">").await
    }

    /// Handles again the messages this consumer (by name) read earlier but did not acknowledge,
    /// as after a restart; returns how many were handled successfully.
    pub async fn retry_own_pending<H: EventHandler>(
        &self,
        handler: &H,
    ) -> Result<usize, DataError> {
        self.read(handler, "0").await
    }

    async fn read<H: EventHandler>(&self, handler: &H, from: &str) -> Result<usize, DataError> {
        if self.streams.is_empty() {
            tokio::time::sleep(self.options.block).await;
            return Ok(0);
        }
        let keys: Vec<&str> = self.streams.iter().map(|(_, key)| key.as_str()).collect();
        let ids: Vec<&str> = vec![from; keys.len()];
        let block = if from == ">" {
            Some(u64::try_from(self.options.block.as_millis()).unwrap_or(u64::MAX))
        } else {
            None
        };
        let redis = self
            .redis
            .with_options(&self.command_options(self.options.block));
        let reply: fred::types::Value = redis
            .xreadgroup(
                self.options.group.as_str(),
                self.options.consumer.as_str(),
                Some(self.options.count),
                block,
                false,
                keys,
                ids,
            )
            .await?;
        // A blocking read that timed out answers nil, which is no map.
        let mut messages: HashMap<String, Vec<XReadValue<String, String, String>>> =
            if reply.is_null() {
                HashMap::new()
            } else {
                reply.into_xread_response()?
            };
        let mut handled = 0;
        for (stream, key) in &self.streams {
            for (message_id, fields) in messages.remove(key).unwrap_or_default() {
                if self
                    .process(handler, stream, key, &message_id, &fields)
                    .await
                {
                    handled += 1;
                }
            }
        }
        Ok(handled)
    }

    /// Claims the group's messages pending for longer than [`ConsumerOptions::claim_idle`]
    /// (whichever consumer holds them) and handles them; returns how many were handled
    /// successfully.
    pub async fn claim<H: EventHandler>(&self, handler: &H) -> Result<usize, DataError> {
        let idle = u64::try_from(self.options.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let redis = self
            .redis
            .with_options(&self.command_options(Duration::ZERO));
        let mut handled = 0;
        for (stream, key) in &self.streams {
            let mut cursor = "0-0".to_owned();
            for _ in 0..MAX_CLAIM_PAGES {
                let (next, entries): (String, Vec<XReadValue<String, String, String>>) = redis
                    .xautoclaim_values(
                        key.as_str(),
                        self.options.group.as_str(),
                        self.options.consumer.as_str(),
                        idle,
                        cursor.as_str(),
                        Some(self.options.count),
                        false,
                    )
                    .await?;
                if !entries.is_empty() {
                    tracing::info!(
                        stream = %stream,
                        claimed = entries.len(),
                        "claimed pending messages of the group"
                    );
                }
                for (message_id, fields) in entries {
                    if self
                        .process(handler, stream, key, &message_id, &fields)
                        .await
                    {
                        handled += 1;
                    }
                }
                if next == "0-0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(handled)
    }

    /// Handles one message; acknowledges it when the handler succeeded, or when it is not an event
    /// at all (it could never succeed). Returns whether the handler succeeded.
    async fn process<H: EventHandler>(
        &self,
        handler: &H,
        stream: &str,
        key: &str,
        message_id: &str,
        fields: &HashMap<String, String>,
    ) -> bool {
        let event = match Event::from_fields(stream, message_id, fields) {
            Ok(event) => event,
            Err(err) => {
                tracing::error!(stream, message_id, error = %err, "malformed stream message skipped");
                self.ack(key, message_id).await;
                return false;
            }
        };
        let event_id = event.event_id;
        let span = spans::stream_consume(stream, message_id);
        async {
            match handler.handle(event).await {
                Ok(()) => {
                    self.ack(key, message_id).await;
                    true
                }
                Err(err) => {
                    spans::record_error(&tracing::Span::current(), &err);
                    tracing::warn!(
                        stream,
                        message_id,
                        %event_id,
                        error = %err,
                        "event handler failed; the message stays pending and is retried"
                    );
                    false
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn ack(&self, key: &str, message_id: &str) {
        let redis = self
            .redis
            .with_options(&self.command_options(Duration::ZERO));
        let xack = redis.xack(key, self.options.group.as_str(), message_id);
        let acked: Result<i64, _> = spans::in_span(spans::redis("XACK"), xack).await;
        if let Err(err) = acked {
            // The message stays pending: it is claimed and handled again (idempotently) later.
            tracing::debug!(key, message_id, error = %err, "XACK failed");
        }
    }

    /// Runs until `stop` is cancelled: creates the groups, handles this consumer's own pending
    /// messages, then reads new messages and claims idle pending ones every
    /// [`ConsumerOptions::claim_every`]. While Redis is down it retries with back-off, logging a
    /// warning once per outage. Stops between messages (within about
    /// [`ConsumerOptions::block`]), never in the middle of a handler.
    pub async fn run<H: EventHandler>(self, handler: H, stop: CancellationToken) {
        self.run_counting(handler, stop, Arc::default()).await;
    }

    async fn run_counting<H: EventHandler>(
        self,
        handler: H,
        stop: CancellationToken,
        handled: Arc<AtomicU64>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.options.backoff_max);
        let mut groups_ready = false;
        let mut own_pending_done = false;
        let mut last_claim: Option<Instant> = None;
        let mut outage: Option<Instant> = None;
        let count = |n: usize| {
            handled.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        };
        while !stop.is_cancelled() {
            if !self.redis.is_connected() {
                // Give a connection in progress (at start-up, after a blip) a moment.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::timeout(CONNECT_GRACE, self.redis.wait_for_connect()) => {}
                }
            }
            let step: Result<(), DataError> = async {
                if !self.redis.is_connected() {
                    return Err(DataError::RedisDisconnected);
                }
                if !groups_ready {
                    self.ensure_groups().await?;
                    groups_ready = true;
                }
                if !own_pending_done {
                    count(self.retry_own_pending(&handler).await?);
                    own_pending_done = true;
                }
                if last_claim.is_none_or(|at| at.elapsed() >= self.options.claim_every) {
                    count(self.claim(&handler).await?);
                    last_claim = Some(Instant::now());
                }
                count(self.poll(&handler).await?);
                Ok(())
            }
            .await;
            match step {
                Ok(()) => {
                    if let Some(since) = outage.take() {
                        tracing::info!(after = ?since.elapsed(), "stream consumer recovered");
                    }
                    backoff.reset();
                }
                Err(err) => {
                    if matches!(&err, DataError::Redis(e) if e.details().contains("NOGROUP")) {
                        // The stream or the group was deleted: create them again.
                        groups_ready = false;
                    }
                    if outage.is_none() {
                        tracing::warn!(error = %err, group = %self.options.group, "stream consumer cannot read; retrying");
                        outage = Some(Instant::now());
                    } else {
                        tracing::debug!(error = %err, "stream consumer still failing");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.redis.quit()).await;
        tracing::debug!(consumer = %self.options.consumer, "stream consumer stopped");
    }

    /// Starts [`run`](Self::run) on the current Tokio runtime; the consumer stops when the handle
    /// is dropped or [stopped](ConsumerHandle::stop).
    pub fn spawn<H: EventHandler>(self, handler: H) -> ConsumerHandle {
        let stop = CancellationToken::new();
        let handled = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(self.run_counting(handler, stop.clone(), handled.clone()));
        ConsumerHandle {
            stop,
            task: Some(task),
            handled,
        }
    }
}

/// Controls a running [`StreamConsumer`]; dropping it stops the consumer.
#[derive(Debug)]
pub struct ConsumerHandle {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    handled: Arc<AtomicU64>,
}

impl ConsumerHandle {
    /// Messages handled successfully (and acknowledged) so far.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Stops the consumer and waits until it has (after the message in hand).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_message_parses_into_an_event() {
        let id = Uuid::new_v4();
        let id_text = id.to_string();
        let event = Event::from_fields(
            "task",
            "1-0",
            &fields(&[
                ("event_id", &id_text),
                ("type", "task.created"),
                ("aggregate_id", "t1"),
                ("payload", r#"{"title":"ship"}"#),
                ("created_at", "2024-05-01T10:00:00.123456Z"),
            ]),
        )
        .expect("parses");
        assert_eq!(event.event_id, id);
        assert_eq!(event.event_type, "task.created");
        assert_eq!(event.payload["title"], "ship");
        assert_eq!(event.stream, "task");
        assert_eq!(event.message_id, "1-0");
        assert!(event.created_at.is_some());
    }

    #[test]
    fn a_malformed_message_says_why() {
        let err = Event::from_fields("task", "1-0", &fields(&[("event_id", "x")]))
            .expect_err("must fail");
        assert!(matches!(
            err,
            MalformedEvent::Invalid {
                field: "event_id",
                ..
            }
        ));
        let id = Uuid::new_v4().to_string();
        let err = Event::from_fields("task", "1-0", &fields(&[("event_id", &id)]))
            .expect_err("must fail");
        assert_eq!(err, MalformedEvent::Missing("payload"));
    }
}
