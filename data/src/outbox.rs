//! The transactional outbox: a write and the event that announces it commit together, and a relay
//! publishes the events to Redis Streams afterwards, in order, at least once.
//!
//! A service includes [`OUTBOX_DDL`] among its migration steps, calls [`insert`] inside every
//! write's transaction, and runs one [`OutboxRelay`] per process. The relay takes unsent rows in
//! id order, `XADD`s each to the stream `{key_prefix}{stream}` with the fields `event_id`, `type`,
//! `aggregate_id`, `payload` (JSON text) and `created_at` (RFC 3339, UTC), and marks them sent in
//! the transaction that locked them, after Redis took them. A crash between the `XADD` and the
//! commit publishes the event again later, so consumers deduplicate by `event_id` (see
//! [`mark_applied`](super::stream::mark_applied)). While Redis is down the events wait in the
//! table; nothing is lost.
//!
//! Order: events are published in `id` order, and only one relay of a schema publishes at a time
//! (a transaction-level advisory lock, plus `FOR UPDATE SKIP LOCKED` on the rows), so instances of
//! a service never interleave. Ids are taken when a transaction inserts and rows become visible
//! when it commits, so two transactions committing concurrently may publish in commit order rather
//! than id order; events of one aggregate written one after the other keep their order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use fred::prelude::{Client, ClientLike, Options, StreamsInterface};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::postgres::describe_pg_error;
use super::stream::CONNECT_GRACE;
use super::{prefixed, Backoff, DataError};
use protomesh::telemetry::spans;

/// The `outbox` table and its index of unsent rows: a migration step for every service that
/// publishes events (`(1, OUTBOX_DDL)` among its steps). Tables are created in the schema of the
/// service's connections (see [`DataConfig::db_schema`](super::DataConfig::db_schema)).
pub const OUTBOX_DDL: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    stream text NOT NULL,
    event_type text NOT NULL,
    aggregate_id text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
";

/// The Postgres channel [`insert`] notifies and the relay listens to.
pub const NOTIFY_CHANNEL: &str = "outbox";

const INSERT_SQL: &str = "WITH inserted AS (
    INSERT INTO outbox (event_id, stream, event_type, aggregate_id, payload)
    VALUES ($1, $2, $3, $4, $5)
    RETURNING id
)
SELECT pg_notify('outbox', '') FROM inserted";

/// One statement: bounds the batch's statements and takes the schema's relay lock.
const LOCK_SQL: &str = "SELECT set_config('statement_timeout', '5s', true),
    pg_try_advisory_xact_lock(hashtext('protomesh.outbox.' || coalesce(current_schema(), '')))";

const SELECT_SQL: &str = "SELECT id, event_id, stream, event_type, aggregate_id, payload::text,
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
FROM outbox
WHERE sent_at IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED";

const MARK_SENT_SQL: &str = "UPDATE outbox SET sent_at = now() WHERE id = ANY($1)";

const PURGE_SQL: &str = "DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)
    LIMIT 1000
)";

const LAG_SQL: &str = "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8
FROM outbox WHERE sent_at IS NULL";

/// Records an event in the outbox inside the caller's transaction and returns its event id (a
/// new UUID v4). It is published to the stream `{key_prefix}{stream}` once the transaction
/// commits (and not at all if it rolls back); the relay is woken by a `NOTIFY outbox` that
/// Postgres delivers at commit.
pub async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    stream: &str,
    event_type: &str,
    aggregate_id: &str,
    payload: &serde_json::Value,
) -> Result<Uuid, tokio_postgres::Error> {
    let event_id = Uuid::new_v4();
    let insert = async {
        let statement = tx.prepare_cached(INSERT_SQL).await?;
        tx.execute(
            &statement,
            &[&event_id, &stream, &event_type, &aggregate_id, payload],
        )
        .await
    };
    spans::in_span(spans::postgres("INSERT", "outbox"), insert).await?;
    Ok(event_id)
}

/// How far the relay is behind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxLag {
    /// Events not published yet.
    pub unsent: i64,
    /// Age of the oldest of them; `None` when there is none.
    pub oldest_unsent_age: Option<Duration>,
}

/// How far the outbox of the pool's schema is behind (for metrics and readiness).
pub async fn lag(pool: &Pool) -> Result<OutboxLag, DataError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(LAG_SQL).await?;
    let row = client.query_one(&statement, &[]).await?;
    let unsent: i64 = row.get(0);
    let age: Option<f64> = row.get(1);
    Ok(OutboxLag {
        unsent,
        oldest_unsent_age: age.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
    })
}

/// Settings of an [`OutboxRelay`].
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Most events taken (and locked) in one transaction. Default 100.
    pub batch_size: usize,
    /// How often the relay looks for events when no notification woke it. Default 500 ms.
    pub poll_interval: Duration,
    /// First delay after a failure; it doubles (with jitter) up to `backoff_max`. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest delay between attempts while Postgres or Redis is down. Default 5 s.
    pub backoff_max: Duration,
    /// Bound on each `XADD`. Default 2 s.
    pub redis_timeout: Duration,
    /// Connection settings for a dedicated `LISTEN outbox` connection (usually
    /// [`DataConfig::pg_config`](super::DataConfig::pg_config)); without them the relay only
    /// polls every `poll_interval`.
    pub listen: Option<tokio_postgres::Config>,
    /// Sent events are deleted from the outbox once they are this old; `None` keeps them.
    /// Default 24 h.
    pub retain_sent: Option<Duration>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            redis_timeout: Duration::from_secs(2),
            listen: None,
            retain_sent: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

impl RelayOptions {
    /// Wakes the relay on `NOTIFY outbox`, through a connection made with `pg`.
    pub fn listen(mut self, pg: tokio_postgres::Config) -> Self {
        self.listen = Some(pg);
        self
    }
}

/// The background task that publishes outbox rows to Redis Streams (see the [module](self)).
#[derive(Debug)]
pub struct OutboxRelay;

impl OutboxRelay {
    /// Starts the relay of a service's outbox as its binary runs it: events go under `config`'s
    /// key prefix, and the relay wakes on the notifications of `config`'s database (see
    /// [`OutboxRelay::spawn`]).
    pub fn start(
        pool: Pool,
        redis: Client,
        config: &crate::DataConfig,
    ) -> Result<RelayHandle, crate::DataError> {
        Ok(Self::spawn(
            pool,
            redis,
            config.key_prefix.clone(),
            RelayOptions::default().listen(config.pg_config()?),
        ))
    }

    /// Starts the relay on the current Tokio runtime. It runs until the returned handle is
    /// dropped or [stopped](RelayHandle::stop); it never gives up: while Postgres or Redis is
    /// down it retries with back-off and jitter, logging a warning once per outage and a line
    /// when it recovers.
    pub fn spawn(
        pool: Pool,
        redis: Client,
        key_prefix: impl Into<String>,
        options: RelayOptions,
    ) -> RelayHandle {
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared::default());
        let wake = Arc::new(Notify::new());
        let relay = Relay {
            pool: pool.clone(),
            redis,
            prefix: key_prefix.into(),
            options,
            shared: shared.clone(),
            wake: wake.clone(),
        };
        let task = tokio::spawn(relay.run(stop.clone()));
        RelayHandle {
            stop,
            task: Some(task),
            shared,
            wake,
            pool,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    published: AtomicU64,
    healthy: AtomicBool,
}

/// Controls a running [`OutboxRelay`]; dropping it stops the relay (after the batch in flight).
#[derive(Debug)]
pub struct RelayHandle {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    pool: Pool,
}

impl RelayHandle {
    /// Events published (`XADD` accepted) since the relay started, counting re-sends.
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// Whether the relay's last attempt reached both Postgres and Redis.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Makes the relay look for events now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// How far the outbox is behind (see [`lag`]).
    pub async fn lag(&self) -> Result<OutboxLag, DataError> {
        lag(&self.pool).await
    }

    /// Stops the relay and waits until its batch in flight is done.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Relay {
    pool: Pool,
    redis: Client,
    prefix: String,
    options: RelayOptions,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
}

/// Why a batch did not go through.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("{0}")]
    Postgres(#[from] DataError),
    #[error("redis not connected")]
    RedisDisconnected,
    #[error("XADD failed after {sent} events were published: {source}")]
    Redis {
        sent: usize,
        #[source]
        source: fred::error::Error,
    },
}

impl BatchError {
    fn dependency(&self) -> &'static str {
        match self {
            BatchError::Postgres(_) => "postgres",
            BatchError::RedisDisconnected | BatchError::Redis { .. } => "redis",
        }
    }
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(err: tokio_postgres::Error) -> Self {
        BatchError::Postgres(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for BatchError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        BatchError::Postgres(err.into())
    }
}

/// What one batch did.
struct Batch {
    sent: usize,
    /// Another relay holds the schema's lock.
    busy: bool,
}

impl Relay {
    async fn run(self, stop: CancellationToken) {
        let listener = self.options.listen.clone().map(|pg| {
            tokio::spawn(listen(
                pg,
                self.wake.clone(),
                stop.child_token(),
                self.options.backoff_max,
            ))
        });
        let batch_size = self.options.batch_size.max(1);
        let mut backoff = Backoff::new(self.options.backoff_min, self.options.backoff_max);
        let mut outage: Option<(&'static str, Instant)> = None;
        let mut last_purge = Instant::now();
        while !stop.is_cancelled() {
            if !self.redis.is_connected() {
                // Give a connection in progress (at start-up, after a blip) a moment.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::timeout(CONNECT_GRACE, self.redis.wait_for_connect()) => {}
                }
            }
            match self.batch(batch_size).await {
                Ok(batch) => {
                    self.shared.healthy.store(true, Ordering::Relaxed);
                    self.count(batch.sent);
                    if let Some((dependency, since)) = outage.take() {
                        tracing::info!(
                            dependency,
                            after = ?since.elapsed(),
                            "outbox relay recovered"
                        );
                    }
                    backoff.reset();
                    if batch.sent == batch_size {
                        continue;
                    }
                    if batch.sent == 0 && !batch.busy && last_purge.elapsed() > PURGE_EVERY {
                        last_purge = Instant::now();
                        self.purge().await;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.options.poll_interval) => {}
                    }
                }
                Err(err) => {
                    self.shared.healthy.store(false, Ordering::Relaxed);
                    if let BatchError::Redis { sent, .. } = &err {
                        self.count(*sent);
                    }
                    let dependency = err.dependency();
                    match outage {
                        Some((current, _)) if current == dependency => {
                            tracing::debug!(dependency, error = %err, "outbox relay still waiting");
                        }
                        _ => {
                            tracing::warn!(
                                dependency,
                                error = %err,
                                "outbox relay cannot publish; events wait in the outbox"
                            );
                            outage = Some((dependency, Instant::now()));
                        }
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        if let Some(listener) = listener {
            listener.abort();
        }
        tracing::debug!("outbox relay stopped");
    }

    fn count(&self, sent: usize) {
        self.shared
            .published
            .fetch_add(u64::try_from(sent).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Publishes up to `batch_size` unsent events in one transaction.
    async fn batch(&self, batch_size: usize) -> Result<Batch, BatchError> {
        if !self.redis.is_connected() {
            return Err(BatchError::RedisDisconnected);
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let locked: bool = tx.query_one(LOCK_SQL, &[]).await?.get(1);
        if !locked {
            return Ok(Batch {
                sent: 0,
                busy: true,
            });
        }
        let select = tx.prepare_cached(SELECT_SQL).await?;
        let limit = i64::try_from(batch_size).unwrap_or(i64::MAX);
        let rows = tx.query(&select, &[&limit]).await?;
        if rows.is_empty() {
            return Ok(Batch {
                sent: 0,
                busy: false,
            });
        }
        // Only a batch with events is traced: an idle relay polls twice a second.
        let span = spans::outbox_relay(rows.len());
        self.publish(tx, &rows).instrument(span).await
    }

    /// Publishes `rows` (locked by `tx`) in order, then marks those Redis took as sent and
    /// commits.
    async fn publish(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        rows: &[tokio_postgres::Row],
    ) -> Result<Batch, BatchError> {
        let redis = self.redis.with_options(&Options {
            timeout: Some(self.options.redis_timeout),
            ..Default::default()
        });
        let mut sent_ids: Vec<i64> = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in rows {
            let id: i64 = row.get(0);
            let event_id: Uuid = row.get(1);
            let stream: &str = row.get(2);
            let fields = vec![
                ("event_id", event_id.to_string()),
                ("type", row.get::<_, String>(3)),
                ("aggregate_id", row.get::<_, String>(4)),
                ("payload", row.get::<_, String>(5)),
                ("created_at", row.get::<_, String>(6)),
            ];
            let xadd = redis.xadd(
                prefixed(&self.prefix, stream),
                false,
                None::<()>,
                "*",
                fields,
            );
            let added: Result<String, _> = spans::in_span(spans::redis("XADD"), xadd).await;
            match added {
                Ok(_) => sent_ids.push(id),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        if !sent_ids.is_empty() {
            let mark_sent = async {
                let mark = tx.prepare_cached(MARK_SENT_SQL).await?;
                tx.execute(&mark, &[&sent_ids]).await?;
                tx.commit().await
            };
            spans::in_span(spans::postgres("UPDATE", "outbox"), mark_sent).await?;
        }
        match failure {
            Some(source) => Err(BatchError::Redis {
                sent: sent_ids.len(),
                source,
            }),
            None => Ok(Batch {
                sent: sent_ids.len(),
                busy: false,
            }),
        }
    }

    /// Deletes sent events older than `retain_sent` (a bounded number per call).
    async fn purge(&self) {
        let Some(retain) = self.options.retain_sent else {
            return;
        };
        match purge_sent(&self.pool, retain).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "old sent events removed from the outbox"),
            Err(err) => tracing::debug!(error = %err, "outbox purge failed"),
        }
    }
}

/// Deletes up to 1000 events that were sent more than `older_than` ago; returns how many. The
/// relay calls it about once a minute when idle (see [`RelayOptions::retain_sent`]).
pub async fn purge_sent(pool: &Pool, older_than: Duration) -> Result<u64, DataError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(PURGE_SQL).await?;
    Ok(client
        .execute(&statement, &[&older_than.as_secs_f64()])
        .await?)
}

/// How often an idle relay deletes old sent events.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Keeps a `LISTEN outbox` connection open (connecting again after it breaks) and wakes the relay
/// on every notification, and once after each (re)connection in case some were missed.
async fn listen(
    pg: tokio_postgres::Config,
    wake: Arc<Notify>,
    stop: CancellationToken,
    backoff_max: Duration,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), backoff_max);
    let connect_timeout = pg
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(2));
    while !stop.is_cancelled() {
        let connecting = tokio::time::timeout(connect_timeout, pg.connect(tokio_postgres::NoTls));
        match connecting.await {
            Ok(Ok((client, mut connection))) => {
                let notified = wake.clone();
                let mut driver = tokio::spawn(async move {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => notified.notify_one(),
                            Ok(_) => {}
                            Err(err) => return Err(err),
                        }
                    }
                    Ok(())
                });
                let listening = client
                    .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                    .await;
                match listening {
                    Ok(()) => {
                        backoff.reset();
                        wake.notify_one();
                        tokio::select! {
                            _ = stop.cancelled() => {
                                driver.abort();
                                return;
                            }
                            ended = &mut driver => {
                                let error = match ended {
                                    Ok(Err(err)) => describe_pg_error(&err),
                                    _ => "closed".to_owned(),
                                };
                                tracing::debug!(error, "outbox LISTEN connection ended");
                            }
                        }
                    }
                    Err(err) => {
                        driver.abort();
                        tracing::debug!(error = %describe_pg_error(&err), "LISTEN outbox failed");
                    }
                }
                drop(client);
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %describe_pg_error(&err), "outbox LISTEN connection failed");
            }
            Err(_) => tracing::debug!("outbox LISTEN connection timed out"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
