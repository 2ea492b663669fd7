//! The fan-out: one reader per hub instance follows the hub's streams in Redis (`XREAD`, blocking
//! up to [`HubOptions::block`]) and hands each entry to the subscribers of its topics, each
//! through a bounded buffer of its own.
//!
//! - **Live**: the reader delivers with `try_send`, so it never waits for a subscriber. One whose
//!   buffer is full is dropped: it gets what its buffer holds, then `RESOURCE_EXHAUSTED` with its
//!   last cursor, and resumes with it.
//! - **Resume**: a subscription registers first and takes the reader's position at that moment
//!   (every later entry reaches it live), then reads what lies between its `after` and that
//!   position with `XRANGE`. Live entries at or before its `after` (this instance's reader may be
//!   behind the one it came from) are skipped, and its cursors never go back.
//! - **Retention**: a cursor from before an entry trimmed from a stream (`XINFO STREAM`'s
//!   `max-deleted-entry-id`) or past a stream's end (Redis lost the stream) is `OUT_OF_RANGE`, as
//!   is one over [`HubOptions::max_catch_up`] entries behind.
//! - **Shutdown**: [`Hub::close`] ends every subscription with `UNAVAILABLE` and its cursor, so
//!   clients resume on another instance.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::prelude::{Client, ClientLike, StreamsInterface};
use fred::types::Key;
use futures::Stream;
use protomesh_data::fred;
use protomesh_data::stream::Event as StreamEvent;
use tokio::sync::mpsc;
use tonic::Status;

use crate::cursor::{Cursor, CursorError, StreamId};
use crate::json;
use crate::proto::protomesh::hub::v1::Event;
use crate::topic::topics_of;
use crate::STREAMS;

/// Why a read of the streams failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// Redis refused or did not answer.
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    /// Redis answered an entry id that is not one.
    #[error("Redis answered an entry id that is not one: {0}")]
    Id(#[from] CursorError),
}

/// The fields of a stream entry, each read apart (one that is not UTF-8 spoils only its entry).
type RawEntry = (String, HashMap<Key, fred::types::Value>);

/// A subject's first subscription to a topic opened on this instance, or its last closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The first opened.
    Joined {
        /// The topic.
        topic: String,
        /// Who.
        subject: String,
    },
    /// The last closed.
    Left {
        /// The topic.
        topic: String,
        /// Who.
        subject: String,
    },
}

/// Settings of a [`Hub`].
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// This instance's name in presence and stats (`<host>-<pid>`).
    pub instance: String,
    /// Events a subscriber's buffer holds before it is dropped. Default 256.
    pub buffer: usize,
    /// Longest blocking read of the reader. Default 1 s.
    pub block: Duration,
    /// Most entries the reader takes at once. Default 512.
    pub batch: u64,
    /// Most entries of one stream a resuming subscriber may be behind. Default 10,000.
    pub max_catch_up: u64,
    /// Most subscriptions resuming at once (each reads up to `max_catch_up` entries per stream).
    /// Default 8.
    pub max_resuming: usize,
    /// How often a subscription checks again that its subscriber may still see its topics
    /// (a member removed from a project loses its events within it). Default 60 s, each
    /// subscription's first check at a random point of the first period.
    pub recheck_every: Duration,
}

impl HubOptions {
    /// The defaults, for instance `instance`.
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
            buffer: 256,
            block: Duration::from_secs(1),
            batch: 512,
            max_catch_up: 10_000,
            max_resuming: 8,
            recheck_every: Duration::from_secs(60),
        }
    }
}

/// One stream entry, made once for all its subscribers.
#[derive(Debug)]
struct Entry {
    stream: &'static str,
    id: StreamId,
    /// The event, without its topic and cursor.
    event: Event,
    topics: Vec<String>,
}

/// An entry on its way to one subscriber.
#[derive(Debug)]
struct Delivery {
    entry: Arc<Entry>,
    /// Which of the entry's topics the subscriber took it for.
    topic: usize,
    /// The reader's position just after the entry.
    cursor: Arc<str>,
}

/// A subscriber, as the reader sees it.
#[derive(Debug)]
struct Subscriber {
    topics: Vec<String>,
    subject: String,
    sender: mpsc::Sender<Delivery>,
    lagged: Arc<AtomicBool>,
}

/// Who is subscribed to what, and where the reader is.
#[derive(Debug, Default)]
struct Registry {
    /// The reader's position: `None` until it knows where the streams end.
    positions: Option<Cursor>,
    closed: bool,
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
    by_topic: HashMap<String, Vec<u64>>,
    /// Subscriptions per (topic, subject).
    present: HashMap<(String, String), usize>,
}

/// What this instance serves: open subscriptions, per topic, and those dropped for falling behind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Open subscriptions.
    pub subscriptions: u64,
    /// Open subscriptions per topic.
    pub topics: HashMap<String, u64>,
    /// (topic, subject) pairs with a subscription.
    pub present: Vec<(String, String)>,
    /// Subscribers dropped since the start.
    pub dropped: u64,
}

#[derive(Debug)]
struct Shared {
    redis: Client,
    prefix: String,
    options: HubOptions,
    registry: Mutex<Registry>,
    dropped: AtomicU64,
    presence: mpsc::Sender<Change>,
    resuming: tokio::sync::Semaphore,
}

/// The fan-out of one hub instance (see the [module](self)); clones share it.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// Checks again that a subscriber may still see its topics: `Err` with the status that ends the
/// subscription (`NOT_FOUND`: no longer visible), `Ok` to go on (also when nobody could say).
pub type Recheck =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), Status>> + Send + Sync>;

/// The stream of one subscription, as the gRPC answer sends it.
pub type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

impl Hub {
    /// A hub on `redis` with keys under `prefix`; presence changes go to `presence` (see
    /// [`crate::presence::run`]). Nothing is read until [`Hub::run_reader`] runs.
    pub fn new(
        redis: Client,
        prefix: impl Into<String>,
        options: HubOptions,
        presence: mpsc::Sender<Change>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                redis,
                prefix: prefix.into(),
                registry: Mutex::new(Registry::default()),
                dropped: AtomicU64::new(0),
                resuming: tokio::sync::Semaphore::new(options.max_resuming),
                presence,
                options,
            }),
        }
    }

    /// The settings.
    pub fn options(&self) -> &HubOptions {
        &self.shared.options
    }

    /// The Redis client of the hub's commands.
    pub fn redis(&self) -> &Client {
        &self.shared.redis
    }

    /// The Redis key of `name` (a stream or the hub's presence and stats keys).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.shared.prefix)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while the lock was held leaves plain data behind: go on with it.
        self.shared
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What this instance serves now.
    pub fn snapshot(&self) -> Snapshot {
        let registry = self.registry();
        Snapshot {
            subscriptions: registry.subscribers.len() as u64,
            topics: registry
                .by_topic
                .iter()
                .map(|(topic, ids)| (topic.clone(), ids.len() as u64))
                .collect(),
            present: registry.present.keys().cloned().collect(),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// Ends every subscription with `UNAVAILABLE` (they resume elsewhere) and takes no more.
    pub fn close(&self) {
        let ids: Vec<u64> = {
            let mut registry = self.registry();
            registry.closed = true;
            registry.subscribers.keys().copied().collect()
        };
        for id in ids {
            self.remove(id);
        }
    }

    /// Subscribes `subject` to `topics` (checked and visible to it) from `after`, when given;
    /// `recheck` checks again every [`HubOptions::recheck_every`].
    pub async fn subscribe(
        &self,
        topics: Vec<String>,
        subject: String,
        after: Option<Cursor>,
        recheck: Recheck,
    ) -> Result<EventStream, Status> {
        let (registration, receiver) = self.register(topics.clone(), subject)?;
        let mut backlog = VecDeque::new();
        let mut cursor = registration.positions.clone();
        if let Some(after) = &after {
            backlog = self
                .catch_up(&topics, after, &registration.positions)
                .await?;
            cursor = after.clone();
            for (stream, id) in registration.positions.positions() {
                cursor.set(stream, (*id).max(after.get(stream)));
            }
        }
        let subscription = Subscription {
            backlog,
            receiver,
            floor: after,
            cursor: cursor.to_string(),
            registration,
            buffer: self.shared.options.buffer,
            recheck,
            recheck_every: self.shared.options.recheck_every,
            next_check: tokio::time::Instant::now()
                + self
                    .shared
                    .options
                    .recheck_every
                    .mul_f64(rand::random_range(0.5..1.0)),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            subscription,
            |mut subscription| async move {
                let item = subscription.next().await?;
                Some((item, subscription))
            },
        )))
    }

    /// Registers a subscriber: from now on it gets every entry after the returned position.
    fn register(
        &self,
        topics: Vec<String>,
        subject: String,
    ) -> Result<(Registration, mpsc::Receiver<Delivery>), Status> {
        let (sender, receiver) = mpsc::channel(self.shared.options.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut changes = Vec::new();
        let (id, positions) = {
            let mut registry = self.registry();
            if registry.closed {
                return Err(Status::unavailable("this hub instance is shutting down"));
            }
            let Some(positions) = registry.positions.clone() else {
                return Err(Status::unavailable(
                    "this hub instance has not reached its event streams yet",
                ));
            };
            let id = registry.next_id;
            registry.next_id += 1;
            for topic in &topics {
                registry.by_topic.entry(topic.clone()).or_default().push(id);
                let count = registry
                    .present
                    .entry((topic.clone(), subject.clone()))
                    .or_default();
                *count += 1;
                if *count == 1 {
                    changes.push(Change::Joined {
                        topic: topic.clone(),
                        subject: subject.clone(),
                    });
                }
            }
            registry.subscribers.insert(
                id,
                Subscriber {
                    topics,
                    subject,
                    sender,
                    lagged: Arc::clone(&lagged),
                },
            );
            (id, positions)
        };
        self.announce(changes);
        let registration = Registration {
            hub: self.clone(),
            id,
            positions,
            lagged,
        };
        Ok((registration, receiver))
    }

    /// Removes subscriber `id` (its sender dropped: its stream ends once its buffer is read).
    fn remove(&self, id: u64) {
        let mut changes = Vec::new();
        {
            let mut registry = self.registry();
            let Some(subscriber) = registry.subscribers.remove(&id) else {
                return;
            };
            for topic in subscriber.topics {
                if let Some(ids) = registry.by_topic.get_mut(&topic) {
                    ids.retain(|other| *other != id);
                    if ids.is_empty() {
                        registry.by_topic.remove(&topic);
                    }
                }
                let key = (topic, subscriber.subject.clone());
                if let Some(count) = registry.present.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        registry.present.remove(&key);
                        changes.push(Change::Left {
                            topic: key.0,
                            subject: key.1,
                        });
                    }
                }
            }
        }
        self.announce(changes);
    }

    /// Hands presence changes to the presence task (dropped, with a warning, when it is behind).
    fn announce(&self, changes: Vec<Change>) {
        for change in changes {
            if self.shared.presence.try_send(change).is_err() {
                tracing::warn!("presence updates are behind; one is skipped");
            }
        }
    }

    /// Follows the streams and delivers their entries until the task is dropped. Redis errors
    /// are logged and retried (100 ms doubling to 2 s).
    pub async fn run_reader(self) {
        // Blocking reads hold a connection: the reader has its own.
        let reader = self.shared.redis.clone_new();
        reader.connect();
        let keys: Vec<String> = STREAMS.iter().map(|s| self.key(s)).collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            let positions = self.registry().positions.clone();
            let step = match positions {
                None => self.find_ends(&reader, &keys).await,
                Some(positions) => self.read_once(&reader, &keys, &positions).await,
            };
            match step {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => {
                    tracing::warn!(error = %err, "reading the event streams failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Sets the reader's position to the last entry of every stream.
    async fn find_ends(&self, reader: &Client, keys: &[String]) -> Result<(), ReadError> {
        let mut positions = Cursor::at(&STREAMS, StreamId::ZERO);
        for (stream, key) in STREAMS.iter().zip(keys) {
            let last: Vec<RawEntry> = reader.xrevrange(key.as_str(), "+", "-", Some(1)).await?;
            if let Some((id, _)) = last.first() {
                positions.set(stream, id.parse()?);
            }
        }
        tracing::info!(%positions, "following the event streams");
        self.registry().positions = Some(positions);
        Ok(())
    }

    /// One blocking read from `positions`, delivered.
    async fn read_once(
        &self,
        reader: &Client,
        keys: &[String],
        positions: &Cursor,
    ) -> Result<(), ReadError> {
        let ids: Vec<String> = positions
            .positions()
            .iter()
            .map(|(_, id)| id.to_string())
            .collect();
        let block = u64::try_from(self.shared.options.block.as_millis()).unwrap_or(u64::MAX);
        let reply: fred::types::Value = reader
            .with_options(&fred::prelude::Options {
                timeout: Some(self.shared.options.block + Duration::from_secs(2)),
                ..Default::default()
            })
            .xread(
                Some(self.shared.options.batch),
                Some(block),
                keys.to_vec(),
                ids,
            )
            .await?;
        if reply.is_null() {
            return Ok(());
        }
        let mut messages: HashMap<String, Vec<RawEntry>> = reply.into_xread_response()?;
        for (stream, key) in STREAMS.iter().zip(keys) {
            for (id, fields) in messages.remove(key).unwrap_or_default() {
                let id = id.parse()?;
                let entry = entry(stream, id, fields);
                self.deliver(stream, id, entry);
            }
        }
        Ok(())
    }

    /// Moves the reader past `id` of `stream` and hands `entry` (when it is one) to its
    /// subscribers.
    fn deliver(&self, stream: &'static str, id: StreamId, entry: Option<Entry>) {
        let mut lagging = Vec::new();
        {
            let mut registry = self.registry();
            let Some(positions) = registry.positions.as_mut() else {
                return;
            };
            positions.set(stream, id);
            let Some(entry) = entry else {
                return;
            };
            let cursor: Arc<str> = Arc::from(positions.to_string());
            let entry = Arc::new(entry);
            let mut reached = HashSet::new();
            for (index, topic) in entry.topics.iter().enumerate() {
                let Some(ids) = registry.by_topic.get(topic) else {
                    continue;
                };
                for id in ids {
                    if !reached.insert(*id) {
                        continue;
                    }
                    let Some(subscriber) = registry.subscribers.get(id) else {
                        continue;
                    };
                    let delivery = Delivery {
                        entry: Arc::clone(&entry),
                        topic: index,
                        cursor: Arc::clone(&cursor),
                    };
                    match subscriber.sender.try_send(delivery) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            subscriber.lagged.store(true, Ordering::Relaxed);
                            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                            lagging.push(*id);
                        }
                        // Its client went away; its registration is being dropped.
                        Err(mpsc::error::TrySendError::Closed(_)) => lagging.push(*id),
                    }
                }
            }
        }
        for id in lagging {
            self.remove(id);
        }
    }

    /// The entries of `topics` after `after` up to `upto` (the reader's position when the
    /// subscription registered), oldest first, each with its cursor.
    async fn catch_up(
        &self,
        topics: &[String],
        after: &Cursor,
        upto: &Cursor,
    ) -> Result<VecDeque<Event>, Status> {
        let wait = Duration::from_secs(5);
        let _permit = tokio::time::timeout(wait, self.shared.resuming.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                Status::unavailable(
                    "too many subscriptions are resuming on this hub instance; retry",
                )
            })?;
        let redis_error = |err: ReadError| {
            tracing::warn!(error = %err, "reading a stream to resume a subscription failed");
            Status::unavailable(format!("cannot read the event streams: {err}"))
        };
        let max = self.shared.options.max_catch_up;
        let mut entries = Vec::new();
        for (stream, from) in after.positions() {
            let key = self.key(stream);
            let to = upto.get(stream);
            if *from < to {
                let read: Vec<RawEntry> = self
                    .shared
                    .redis
                    .xrange(&key, format!("({from}"), to.to_string(), Some(max + 1))
                    .await
                    .map_err(|err| redis_error(err.into()))?;
                if read.len() as u64 > max {
                    return Err(Status::out_of_range(format!(
                        "the cursor is more than {max} events behind in stream {stream}: subscribe without after"
                    )));
                }
                for (id, fields) in read {
                    let id = id
                        .parse()
                        .map_err(|err: CursorError| redis_error(err.into()))?;
                    if let Some(entry) = entry(stream, id, fields) {
                        if let Some(topic) = entry.topics.iter().find(|t| topics.contains(t)) {
                            let mut event = entry.event.clone();
                            event.topic.clone_from(topic);
                            entries.push((id, *stream, event));
                        }
                    }
                }
            }
            // After the read: a trim between the two cannot go unnoticed.
            self.check_retained(stream, &key, *from).await?;
        }
        // Oldest first across the streams; within a stream, in its order.
        entries.sort_by_key(|(id, stream, _)| (*id, STREAMS.iter().position(|s| s == stream)));
        let mut cursor = after.clone();
        Ok(entries
            .into_iter()
            .map(|(id, stream, mut event)| {
                cursor.set(stream, id);
                event.cursor = cursor.to_string();
                event
            })
            .collect())
    }

    /// `OUT_OF_RANGE` when `stream` no longer holds all that follows `from`: an entry after it
    /// was deleted (`max-deleted-entry-id`), the stream was trimmed past it (it lost entries, and
    /// its first is after `from`), or it ends before `from` (Redis lost the stream).
    async fn check_retained(&self, stream: &str, key: &str, from: StreamId) -> Result<(), Status> {
        let info: Result<HashMap<String, fred::types::Value>, _> =
            self.shared.redis.xinfo_stream(key, false, None).await;
        let gone = || {
            Status::out_of_range(format!(
                "stream {stream} no longer holds the events after the cursor ({from}): subscribe without after"
            ))
        };
        let info = match info {
            Ok(info) => info,
            // No such stream (fred has no kind of its own for it): nothing was ever published to
            // it, or Redis lost it.
            Err(err) if err.details().contains("no such key") => {
                return if from == StreamId::ZERO {
                    Ok(())
                } else {
                    Err(gone())
                };
            }
            Err(err) => {
                return Err(Status::unavailable(format!(
                    "cannot read the event streams: {err}"
                )))
            }
        };
        let id_of = |name: &str| {
            info.get(name)
                .and_then(|v| v.as_string())
                .and_then(|text| text.parse::<StreamId>().ok())
                .unwrap_or(StreamId::ZERO)
        };
        let number = |name: &str| info.get(name).and_then(|v| v.as_u64()).unwrap_or(0);
        let lost_entries = number("entries-added") > number("length");
        let first = if number("length") == 0 {
            id_of("last-generated-id")
        } else {
            id_of("recorded-first-entry-id")
        };
        if id_of("max-deleted-entry-id") > from
            || (lost_entries && from < first)
            || from > id_of("last-generated-id")
        {
            return Err(gone());
        }
        Ok(())
    }
}

/// The entry `id` of `stream` with `fields`, when it is an event routed to some topic.
fn entry(
    stream: &'static str,
    id: StreamId,
    raw: HashMap<Key, fred::types::Value>,
) -> Option<Entry> {
    let mut fields = HashMap::with_capacity(raw.len());
    for (name, value) in raw {
        match (name.into_string(), value.into_string()) {
            (Some(name), Some(value)) => fields.insert(name, value),
            _ => {
                tracing::warn!(stream, %id, "a stream entry has a field that is not text; skipped");
                return None;
            }
        };
    }
    let event = match StreamEvent::from_fields(stream, &id.to_string(), &fields) {
        Ok(event) => event,
        Err(err) => {
            tracing::warn!(stream, %id, error = %err, "a stream entry is not an event; skipped");
            return None;
        }
    };
    let topics = topics_of(&event);
    if topics.is_empty() {
        return None;
    }
    let data = match event.payload {
        serde_json::Value::Object(map) => Some(json::to_struct(map)),
        _ => None,
    };
    Some(Entry {
        stream,
        id,
        event: Event {
            cursor: String::new(),
            topic: String::new(),
            r#type: event.event_type,
            stream: stream.to_owned(),
            stream_id: id.to_string(),
            event_id: event.event_id.to_string(),
            data,
            created_at: event.created_at.map(prost_types::Timestamp::from),
        },
        topics,
    })
}

/// A subscriber's registration: removed from the hub when dropped (the client went away).
#[derive(Debug)]
struct Registration {
    hub: Hub,
    id: u64,
    /// The reader's position when it registered.
    positions: Cursor,
    lagged: Arc<AtomicBool>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

/// One subscription's state, read by its answer stream.
struct Subscription {
    /// Resumed events not sent yet.
    backlog: VecDeque<Event>,
    receiver: mpsc::Receiver<Delivery>,
    /// The cursor it resumed from: live entries at or before it were sent already.
    floor: Option<Cursor>,
    /// The last cursor sent (or where it started).
    cursor: String,
    registration: Registration,
    buffer: usize,
    recheck: Recheck,
    recheck_every: Duration,
    next_check: tokio::time::Instant,
    done: bool,
}

impl Subscription {
    /// The next delivery; meanwhile, the subscriber's visibility is checked when due. `Err` ends
    /// the subscription with that status.
    async fn delivery(&mut self) -> Result<Option<Delivery>, Status> {
        loop {
            tokio::select! {
                delivery = self.receiver.recv() => return Ok(delivery),
                () = tokio::time::sleep_until(self.next_check) => {
                    self.next_check = tokio::time::Instant::now() + self.recheck_every;
                    (self.recheck)().await?;
                }
            }
        }
    }

    async fn next(&mut self) -> Option<Result<Event, Status>> {
        if self.done {
            return None;
        }
        if let Some(event) = self.backlog.pop_front() {
            self.cursor.clone_from(&event.cursor);
            return Some(Ok(event));
        }
        loop {
            let delivery = match self.delivery().await {
                Ok(Some(delivery)) => delivery,
                Ok(None) => break,
                Err(status) => {
                    self.done = true;
                    return Some(Err(status));
                }
            };
            let entry = &delivery.entry;
            let cursor = match &self.floor {
                None => delivery.cursor.to_string(),
                Some(floor) if entry.id <= floor.get(entry.stream) => continue,
                Some(floor) => {
                    // This instance's reader may be behind the cursor it resumed from: never go back.
                    let mut cursor = floor.clone();
                    if let Ok(live) = Cursor::parse(&STREAMS, &delivery.cursor) {
                        for (stream, id) in live.positions() {
                            cursor.set(stream, (*id).max(floor.get(stream)));
                        }
                    }
                    cursor.to_string()
                }
            };
            let mut event = entry.event.clone();
            event.topic.clone_from(&entry.topics[delivery.topic]);
            event.cursor.clone_from(&cursor);
            self.cursor = cursor;
            return Some(Ok(event));
        }
        self.done = true;
        let status = if self.registration.lagged.load(Ordering::Relaxed) {
            Status::resource_exhausted(format!(
                "the subscriber fell more than {} events behind; resume with after={}",
                self.buffer, self.cursor
            ))
        } else {
            Status::unavailable(format!(
                "this hub instance is shutting down; resume with after={}",
                self.cursor
            ))
        };
        Some(Err(status))
    }
}
