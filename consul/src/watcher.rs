//! [`HealthWatcher`]: follows one service's healthy instances with Consul blocking queries on
//! `GET /v1/health/service/<name>` and publishes the instance set as a [`WatchState`] (a tokio
//! watch channel) and as a stream of [`InstanceChange`]s, for a discovery cache;
//! [`follow_sources`] keeps a value made of several such watches up to date.
//!
//! The loop follows Consul's rules for blocking queries: the first query is non-blocking,
//! the index is reset when it goes backwards and never sent as 0, consecutive queries are
//! rate limited, and errors back off with jitter while the last known instances are kept.
//!
//! ```no_run
//! # async fn demo(client: protomesh_consul::ConsulClient) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use protomesh_consul::{HealthWatcher, InstanceChange, WatchOptions};
//! use tokio_stream::StreamExt;
//!
//! let handle = HealthWatcher::spawn(client, "greeter", WatchOptions::default());
//! let state = handle.initialized(Duration::from_secs(5)).await?;
//! println!("{} healthy instance(s)", state.instances.len());
//! let mut changes = handle.changes();
//! while let Some(change) = changes.next().await {
//!     match change {
//!         InstanceChange::Insert(instance) => println!("up: {}", instance.socket_addr_text()),
//!         InstanceChange::Remove(id) => println!("down: {id}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt, StreamMap};

use crate::client::{ConsulClient, QueryOptions};
use crate::error::error_chain;
use crate::types::ServiceEntry;

/// Default longest time Consul holds one blocking query.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Default first delay before retrying a failed query.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Default longest delay between two retries of a failing query.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Default shortest time between the starts of two consecutive queries.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(50);

/// The smallest backoff used (a zero backoff would never grow).
const MIN_BACKOFF_FLOOR: Duration = Duration::from_millis(1);

/// One instance of the watched service, as a discovery cache needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInstance {
    /// The instance (service) id. When several nodes register the same id, it is made unique
    /// as `<id>@<node>` (Consul ids are only unique per agent).
    pub id: String,
    /// Address to dial: the service's address, or its node's when the service has none.
    pub address: String,
    /// Port to dial.
    pub port: u16,
    /// The instance's tags.
    pub tags: Vec<String>,
    /// The instance's metadata.
    pub meta: BTreeMap<String, String>,
    /// The datacenter the instance is in, when the watcher asks another one than its client's
    /// own ([`WatchOptions::datacenter`]); `None` for the local datacenter.
    pub datacenter: Option<String>,
}

impl ServiceInstance {
    /// The instance described by a health entry (its id as is).
    pub fn from_entry(entry: &ServiceEntry) -> Self {
        Self {
            id: entry.service.id.clone(),
            address: entry.address(),
            port: entry.service.port,
            tags: entry.service.tags.clone(),
            meta: entry.service.meta.clone(),
            datacenter: None,
        }
    }

    /// `host:port`, with an IPv6 address in brackets (`[::1]:8080`), ready to dial.
    pub fn socket_addr_text(&self) -> String {
        if self.address.contains(':') && !self.address.starts_with('[') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// Turns a health answer from `datacenter` (the local one when `None`) into the instance set
/// keyed by instance id; ids registered on more than one node are keyed (and named)
/// `<id>@<node>` so that no instance is lost.
fn instance_map(
    entries: &[ServiceEntry],
    datacenter: Option<&str>,
) -> BTreeMap<String, ServiceInstance> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in entries {
        *counts.entry(entry.service.id.as_str()).or_default() += 1;
    }
    entries
        .iter()
        .map(|entry| {
            let mut instance = ServiceInstance::from_entry(entry);
            instance.datacenter = datacenter.map(str::to_owned);
            if counts.get(entry.service.id.as_str()).copied().unwrap_or(0) > 1 {
                instance.id = format!("{}@{}", entry.service.id, entry.node.node);
            }
            (instance.id.clone(), instance)
        })
        .collect()
}

/// How a [`HealthWatcher`] queries Consul.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Longest time Consul holds one blocking query (default 30 s; zero means the default).
    pub wait: Duration,
    /// Only instances with this tag.
    pub tag: Option<String>,
    /// Only instances whose checks all pass (`?passing`; default true).
    pub passing_only: bool,
    /// First retry delay after a failed query (default 100 ms; at least 1 ms).
    pub min_backoff: Duration,
    /// Longest retry delay (default 5 s; at least `min_backoff`).
    pub max_backoff: Duration,
    /// Shortest time between the starts of two consecutive queries (default 50 ms), so that a
    /// query that keeps returning at once cannot hammer the agent.
    pub min_interval: Duration,
    /// The datacenter asked (`?dc=`; the client's own when `None`): the local agent forwards
    /// the query to that datacenter's servers over the WAN.
    pub datacenter: Option<String>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            wait: DEFAULT_WAIT,
            tag: None,
            passing_only: true,
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            min_interval: DEFAULT_MIN_INTERVAL,
            datacenter: None,
        }
    }
}

impl WatchOptions {
    /// Sets the blocking-query wait.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Only instances with `tag`.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Only passing instances (true) or every registered instance (false).
    pub fn with_passing_only(mut self, passing_only: bool) -> Self {
        self.passing_only = passing_only;
        self
    }

    /// Sets the retry delays' range.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max;
        self
    }

    /// Asks `datacenter` instead of the client's own.
    pub fn in_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// Sets the shortest time between two queries.
    pub fn with_min_interval(mut self, min_interval: Duration) -> Self {
        self.min_interval = min_interval;
        self
    }

    /// The options with their documented floors applied.
    fn normalized(mut self) -> Self {
        if self.wait.is_zero() {
            self.wait = DEFAULT_WAIT;
        }
        self.min_backoff = self.min_backoff.max(MIN_BACKOFF_FLOOR);
        self.max_backoff = self.max_backoff.max(self.min_backoff);
        self
    }

    /// The query for the next round: blocking on `index` unless it is 0.
    fn query(&self, index: u64) -> QueryOptions {
        let blocking = index > 0;
        QueryOptions {
            passing: self.passing_only,
            tag: self.tag.clone(),
            index: blocking.then_some(index),
            wait: blocking.then_some(self.wait),
            datacenter: self.datacenter.clone(),
        }
    }
}

/// What a watcher knows about its service; published on its watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchState {
    /// The watched service's name.
    pub service: String,
    /// The instances of the last successful answer, keyed by instance id (kept while
    /// queries fail).
    pub instances: Arc<BTreeMap<String, ServiceInstance>>,
    /// `X-Consul-Index` of the last successful answer (0 before the first).
    pub index: u64,
    /// At least one query succeeded.
    pub initialized: bool,
    /// When the last query succeeded.
    pub last_success: Option<Instant>,
    /// The latest query's error, while queries fail (the instances are then stale).
    pub last_error: Option<String>,
    /// Failed queries since the last success.
    pub consecutive_errors: u32,
}

impl WatchState {
    /// The state of a watcher that has no answer yet.
    fn new(service: String) -> Self {
        Self {
            service,
            instances: Arc::new(BTreeMap::new()),
            index: 0,
            initialized: false,
            last_success: None,
            last_error: None,
            consecutive_errors: 0,
        }
    }

    /// True while the latest query failed: `instances` may be out of date.
    pub fn is_stale(&self) -> bool {
        self.last_error.is_some()
    }

    /// While stale, the time since the last successful answer (`None` when not stale or
    /// when no query ever succeeded).
    pub fn staleness(&self) -> Option<Duration> {
        if self.is_stale() {
            self.last_success.map(|at| at.elapsed())
        } else {
            None
        }
    }

    /// Records a successful answer; true when it must be published: first success, a
    /// different instance set, or recovery from errors. An unchanged set only refreshes
    /// `index` and `last_success`, silently.
    fn apply_success(
        &mut self,
        instances: BTreeMap<String, ServiceInstance>,
        index: u64,
        now: Instant,
    ) -> bool {
        let set_changed = *self.instances != instances;
        let publish = set_changed || !self.initialized || self.is_stale();
        if set_changed {
            self.instances = Arc::new(instances);
        }
        self.index = index;
        self.initialized = true;
        self.last_success = Some(now);
        self.last_error = None;
        self.consecutive_errors = 0;
        publish
    }

    /// Records a failed query, keeping the instances; true (publish) only when this makes the
    /// state stale, not at every retry.
    fn apply_error(&mut self, message: String) -> bool {
        let went_stale = !self.is_stale();
        self.last_error = Some(message);
        self.consecutive_errors = self.consecutive_errors.saturating_add(1);
        went_stale
    }
}

/// One change of the instance set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceChange {
    /// A new instance, or one whose address, port, tags or metadata changed.
    Insert(ServiceInstance),
    /// The instance with this id is gone (deregistered, no longer passing, or filtered out).
    Remove(String),
}

impl InstanceChange {
    /// The id of the instance concerned.
    pub fn id(&self) -> &str {
        match self {
            Self::Insert(instance) => &instance.id,
            Self::Remove(id) => id,
        }
    }
}

/// The changes turning `old` into `new`: a `Remove` for each id only in `old`, then an
/// `Insert` for each instance of `new` that is not in `old` exactly as is; each group in id
/// order. Equal sets give no change.
pub fn diff(
    old: &BTreeMap<String, ServiceInstance>,
    new: &BTreeMap<String, ServiceInstance>,
) -> Vec<InstanceChange> {
    let removed = old
        .keys()
        .filter(|id| !new.contains_key(*id))
        .map(|id| InstanceChange::Remove(id.clone()));
    let inserted = new
        .iter()
        .filter(|(id, instance)| old.get(*id) != Some(*instance))
        .map(|(_, instance)| InstanceChange::Insert(instance.clone()));
    removed.chain(inserted).collect()
}

/// The index to block on after an answer with index `returned` when `held` was sent
/// (Consul's rules): a 0 index counts as 1, and an index lower than the held one resets the
/// loop to 0 (next query non-blocking). The result is never used as a blocking index when 0.
fn next_index(held: u64, returned: u64) -> u64 {
    let returned = returned.max(1);
    if returned < held {
        0
    } else {
        returned
    }
}

/// The delay before the next retry, with decorrelated jitter: uniform in
/// `[min, min(max, 3 × previous)]`, where `previous` is the last delay (`min` before the
/// first retry). `unit` is a random number in `[0, 1]`.
fn next_backoff(previous: Option<Duration>, min: Duration, max: Duration, unit: f64) -> Duration {
    let max = max.max(min);
    let upper = previous.unwrap_or(min).saturating_mul(3).clamp(min, max);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    (min + (upper - min).mul_f64(unit)).min(max)
}

/// Retry delays of one outage (see [`next_backoff`]).
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    previous: Option<Duration>,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            previous: None,
        }
    }

    /// The next delay (random).
    fn next_delay(&mut self) -> Duration {
        let delay = next_backoff(self.previous, self.min, self.max, rand::random::<f64>());
        self.previous = Some(delay);
        delay
    }

    /// Back to the first delay (after a success).
    fn reset(&mut self) {
        self.previous = None;
    }
}

/// Why [`WatchHandle::initialized`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// No query succeeded within the time limit.
    #[error(
        "no answer from Consul about service {service:?} within {after:?} ({})",
        last_error.as_deref().map_or_else(
            || "no query finished yet".to_owned(),
            |err| format!("last Consul error: {err}"),
        )
    )]
    NotInitialized {
        /// The watched service.
        service: String,
        /// The time limit.
        after: Duration,
        /// The latest query's error, if one failed.
        last_error: Option<String>,
    },

    /// The watcher's task is gone (it panicked).
    #[error("the Consul watcher of service {service:?} stopped")]
    Stopped {
        /// The watched service.
        service: String,
    },
}

/// Starts discovery watchers (see [`HealthWatcher::spawn`]).
#[derive(Debug, Clone, Copy)]
pub struct HealthWatcher;

impl HealthWatcher {
    /// Spawns a task that follows the instances of `service` with blocking queries on the
    /// agent behind `client`, and returns the handle to read them.
    ///
    /// Each round queries `GET /v1/health/service/<service>` (`passing`, `tag`, and, after the
    /// first answer, `index` and `wait`), then publishes a new [`WatchState`] only when the
    /// instance set changed, on the first success, when queries start failing (the state
    /// goes stale, keeping the last instances) and when they recover. Failures are retried
    /// with jittered exponential backoff; the index restarts from 0 after a failure.
    ///
    /// Must be called within a tokio runtime (it panics otherwise, like `tokio::spawn`). The
    /// task runs until the last [`WatchHandle`] clone and the last [`InstanceChanges`]
    /// stream are dropped.
    pub fn spawn(
        client: ConsulClient,
        service: impl Into<String>,
        options: WatchOptions,
    ) -> WatchHandle {
        let service: String = service.into();
        let (tx, rx) = watch::channel(WatchState::new(service.clone()));
        tracing::debug!(
            service = %service,
            consul = %client.address(),
            "watching service health in Consul"
        );
        let task = tokio::spawn(watch_loop(
            client,
            service.clone(),
            options.normalized(),
            tx,
        ));
        WatchHandle {
            service: Arc::from(service),
            rx,
            task: Arc::new(AbortOnDrop(Some(task))),
        }
    }
}

/// Aborts the watcher's task (if there is one) when the last owner drops it.
#[derive(Debug)]
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Calls `update` on `tx`'s value (as [`watch::Sender::send_if_modified`] does: it returns
/// whether it changed the value) for each source's value when it starts and again whenever one
/// of `sources` changes, until `tx` has no receiver left or every source is closed: for a value
/// made of several watches, such as a service's instances in several datacenters or the
/// services of several catalogs.
pub async fn follow_sources<T, U>(
    sources: impl IntoIterator<Item = watch::Receiver<T>>,
    tx: &watch::Sender<U>,
    mut update: impl FnMut(&mut U) -> bool,
) where
    T: Clone + Send + Sync + 'static,
{
    let mut changes = StreamMap::new();
    // Each stream yields its current value first: nothing published before this runs is missed.
    for (i, source) in sources.into_iter().enumerate() {
        changes.insert(i, WatchStream::new(source));
    }
    loop {
        tokio::select! {
            () = tx.closed() => return,
            next = changes.next() => if next.is_none() { return },
        }
        tx.send_if_modified(&mut update);
    }
}

/// A running watcher's state. Cheap to clone; the watcher stops when the last clone (and the
/// last [`InstanceChanges`] stream) is dropped.
#[derive(Debug, Clone)]
pub struct WatchHandle {
    service: Arc<str>,
    rx: watch::Receiver<WatchState>,
    task: Arc<AbortOnDrop>,
}

impl WatchHandle {
    /// A handle on the states another source publishes on `rx` (a fixed list of instances, a
    /// test): the API of a watcher's handle, with no Consul query behind it.
    pub fn from_receiver(rx: watch::Receiver<WatchState>) -> Self {
        let service = Arc::from(rx.borrow().service.as_str());
        Self {
            service,
            rx,
            task: Arc::new(AbortOnDrop(None)),
        }
    }

    /// A handle on the states `task` publishes on `rx` (a source that combines watchers): the
    /// task is aborted when the last clone of the handle (and the last [`InstanceChanges`]) is
    /// dropped, as a watcher's is.
    pub fn from_task(rx: watch::Receiver<WatchState>, task: JoinHandle<()>) -> Self {
        let service = Arc::from(rx.borrow().service.as_str());
        Self {
            service,
            rx,
            task: Arc::new(AbortOnDrop(Some(task))),
        }
    }

    /// The watched service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The current state (cheap: the instance set is shared).
    pub fn current(&self) -> WatchState {
        self.rx.borrow().clone()
    }

    /// Whether Consul answered at least once (cheaper than `current().initialized`).
    pub fn is_initialized(&self) -> bool {
        self.rx.borrow().initialized
    }

    /// A receiver of the published states. Its current value counts as seen: `changed()`
    /// resolves at the next publication. It does not keep the watcher running; once the
    /// watcher stops, `changed()` fails.
    pub fn subscribe(&self) -> watch::Receiver<WatchState> {
        let mut rx = self.rx.clone();
        rx.mark_unchanged();
        rx
    }

    /// Waits for the first successful answer (returning at once if there was one) and
    /// returns the state, or fails after `timeout` with an error naming the service and the
    /// last Consul error.
    pub async fn initialized(&self, timeout: Duration) -> Result<WatchState, WatchError> {
        let mut rx = self.rx.clone();
        let outcome = tokio::time::timeout(timeout, async {
            rx.wait_for(|state| state.initialized)
                .await
                .map(|state| state.clone())
        })
        .await;
        match outcome {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(_)) => Err(WatchError::Stopped {
                service: self.service.to_string(),
            }),
            Err(_) => Err(WatchError::NotInitialized {
                service: self.service.to_string(),
                after: timeout,
                last_error: self.rx.borrow().last_error.clone(),
            }),
        }
    }

    /// The instance changes: first an `Insert` for each current instance, then the
    /// differences between consecutive published sets (see [`diff`]). When several states are
    /// published before the stream is polled, it goes straight to the newest one. The stream
    /// keeps the watcher running and never ends while it runs.
    pub fn changes(&self) -> InstanceChanges {
        InstanceChanges {
            states: WatchStream::new(self.rx.clone()),
            seen: Arc::new(BTreeMap::new()),
            pending: VecDeque::new(),
            _task: Arc::clone(&self.task),
        }
    }
}

/// The stream of [`InstanceChange`]s of a watcher (see [`WatchHandle::changes`]).
pub struct InstanceChanges {
    states: WatchStream<WatchState>,
    seen: Arc<BTreeMap<String, ServiceInstance>>,
    pending: VecDeque<InstanceChange>,
    _task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for InstanceChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceChanges")
            .field("seen", &self.seen.len())
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Stream for InstanceChanges {
    type Item = InstanceChange;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(change));
            }
            let Some(state) = ready!(Pin::new(&mut self.states).poll_next(cx)) else {
                return Poll::Ready(None);
            };
            let changes = diff(&self.seen, &state.instances);
            self.seen = state.instances;
            self.pending.extend(changes);
        }
    }
}

/// The watcher's task: one query per round, rate limited, backing off on errors.
async fn watch_loop(
    client: ConsulClient,
    service: String,
    options: WatchOptions,
    tx: watch::Sender<WatchState>,
) {
    let mut index = 0_u64;
    let mut backoff = Backoff::new(options.min_backoff, options.max_backoff);
    let mut last_query: Option<Instant> = None;
    let mut outage_started: Option<Instant> = None;
    loop {
        if let Some(started) = last_query {
            let since = started.elapsed();
            if since < options.min_interval {
                tokio::time::sleep(options.min_interval - since).await;
            }
        }
        last_query = Some(Instant::now());
        match client.health_service(&service, &options.query(index)).await {
            Ok(resp) => {
                let next = next_index(index, resp.index);
                if next == 0 {
                    tracing::debug!(
                        service = %service,
                        held = index,
                        returned = resp.index,
                        "Consul index went backwards; restarting the blocking loop"
                    );
                }
                index = next;
                backoff.reset();
                if let Some(since) = outage_started.take() {
                    tracing::info!(
                        service = %service,
                        consul = %client.address(),
                        outage = ?since.elapsed(),
                        "Consul health query recovered"
                    );
                }
                let instances = instance_map(&resp.value, options.datacenter.as_deref());
                let now = Instant::now();
                tx.send_if_modified(|state| state.apply_success(instances, resp.index, now));
            }
            Err(err) => {
                // The agent may come back restarted with lower indexes: start over.
                index = 0;
                let message = error_chain(&err);
                if outage_started.is_none() {
                    outage_started = Some(Instant::now());
                    tracing::warn!(
                        service = %service,
                        consul = %client.address(),
                        error = %message,
                        "Consul health query failed; keeping the last known instances and \
                         retrying"
                    );
                }
                tx.send_if_modified(|state| state.apply_error(message));
                let delay = backoff.next_delay();
                tracing::debug!(
                    service = %service,
                    retry_in = ?delay,
                    "retrying the Consul health query"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::{AgentService, Node};

    #[tokio::test]
    async fn follow_sources_publishes_what_its_sources_make_until_nobody_listens() {
        let (a_tx, a) = watch::channel(1u32);
        let (b_tx, b) = watch::channel(10u32);
        let (tx, mut rx) = watch::channel(0u32);
        let sources = [a.clone(), b.clone()];
        let task = tokio::spawn(async move {
            follow_sources(sources, &tx, |sum| {
                let now = *a.borrow() + *b.borrow();
                std::mem::replace(sum, now) != now
            })
            .await;
        });
        let within = Duration::from_secs(5);
        tokio::time::timeout(within, rx.wait_for(|sum| *sum == 11))
            .await
            .expect("the first value")
            .unwrap();
        b_tx.send(20).unwrap();
        tokio::time::timeout(within, rx.wait_for(|sum| *sum == 21))
            .await
            .expect("b's change")
            .unwrap();
        a_tx.send(2).unwrap();
        tokio::time::timeout(within, rx.wait_for(|sum| *sum == 22))
            .await
            .expect("a's change")
            .unwrap();
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("it stops once nobody listens")
            .unwrap();
    }

    fn instance(id: &str, port: u16) -> ServiceInstance {
        ServiceInstance {
            id: id.to_owned(),
            address: "10.0.0.1".to_owned(),
            port,
            tags: vec!["v1".to_owned()],
            meta: BTreeMap::new(),
            datacenter: None,
        }
    }

    fn set(instances: &[ServiceInstance]) -> BTreeMap<String, ServiceInstance> {
        instances
            .iter()
            .map(|i| (i.id.clone(), i.clone()))
            .collect()
    }

    fn entry(id: &str, node: &str, address: &str, port: u16) -> ServiceEntry {
        ServiceEntry {
            node: Node {
                node: node.to_owned(),
                address: "192.168.1.7".to_owned(),
                ..Node::default()
            },
            service: AgentService {
                id: id.to_owned(),
                service: "svc".to_owned(),
                address: address.to_owned(),
                port,
                ..AgentService::default()
            },
            checks: Vec::new(),
        }
    }

    #[test]
    fn diff_inserts_removes_and_updates() {
        let a = instance("a", 1);
        let b = instance("b", 2);
        let c = instance("c", 3);
        let empty = BTreeMap::new();
        assert!(diff(&empty, &empty).is_empty());
        assert_eq!(
            diff(&empty, &set(&[b.clone(), a.clone()])),
            [
                InstanceChange::Insert(a.clone()),
                InstanceChange::Insert(b.clone())
            ]
        );
        let old = set(&[a.clone(), b.clone()]);
        assert!(diff(&old, &old.clone()).is_empty());
        assert_eq!(
            diff(&old, &set(&[a.clone(), b.clone(), c.clone()])),
            [InstanceChange::Insert(c.clone())]
        );
        assert_eq!(
            diff(&old, &set(std::slice::from_ref(&b))),
            [InstanceChange::Remove("a".to_owned())]
        );
        assert_eq!(
            diff(&old, &empty),
            [
                InstanceChange::Remove("a".to_owned()),
                InstanceChange::Remove("b".to_owned())
            ]
        );

        // A changed port, tags, address or metadata is an Insert of the new version.
        let moved = instance("a", 9);
        assert_eq!(
            diff(&old, &set(&[moved.clone(), b.clone()])),
            [InstanceChange::Insert(moved)]
        );
        let mut retagged = a.clone();
        retagged.tags.push("canary".to_owned());
        assert_eq!(
            diff(&old, &set(&[retagged.clone(), b.clone()])),
            [InstanceChange::Insert(retagged)]
        );
        let mut annotated = b.clone();
        annotated.meta.insert("zone".to_owned(), "z1".to_owned());
        let changes = diff(&old, &set(&[c.clone(), annotated.clone()]));
        assert_eq!(
            changes,
            [
                InstanceChange::Remove("a".to_owned()),
                InstanceChange::Insert(annotated),
                InstanceChange::Insert(c),
            ]
        );
        assert_eq!(changes[0].id(), "a");
        assert_eq!(changes[1].id(), "b");
    }

    #[test]
    fn index_rules() {
        // First answer: take it; 0 counts as 1 (never block on 0).
        assert_eq!(next_index(0, 14), 14);
        assert_eq!(next_index(0, 0), 1);
        assert_eq!(next_index(1, 0), 1);
        // Moving forward or staying: block on it.
        assert_eq!(next_index(14, 15), 15);
        assert_eq!(next_index(14, 14), 14);
        // Going backwards (e.g. the server restarted): reset, next query non-blocking.
        assert_eq!(next_index(14, 3), 0);
        assert_eq!(next_index(14, 0), 0);

        let options = WatchOptions::default().with_tag("v1");
        let first = options.query(0);
        assert_eq!(first.index, None);
        assert_eq!(first.wait, None);
        assert!(first.passing);
        assert_eq!(first.tag.as_deref(), Some("v1"));
        let blocking = options.query(15);
        assert_eq!(blocking.index, Some(15));
        assert_eq!(blocking.wait, Some(DEFAULT_WAIT));
        assert!(
            !WatchOptions::default()
                .with_passing_only(false)
                .query(0)
                .passing
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_bounded_jitter() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        // Highest draws: x3 per retry until the cap.
        let mut previous = None;
        let mut highest = Vec::new();
        for _ in 0..6 {
            let delay = next_backoff(previous, min, max, 1.0);
            highest.push(delay.as_millis());
            previous = Some(delay);
        }
        assert_eq!(highest, [300, 900, 2700, 5000, 5000, 5000]);
        // Lowest draws stay at min.
        assert_eq!(next_backoff(Some(max), min, max, 0.0), min);
        assert_eq!(
            next_backoff(None, min, max, 0.5),
            Duration::from_millis(200)
        );
        // Odd draws are tamed.
        assert_eq!(next_backoff(None, min, max, f64::NAN), min);
        assert_eq!(
            next_backoff(None, min, max, 7.0),
            Duration::from_millis(300)
        );
        // max below min: min wins.
        assert_eq!(next_backoff(None, min, Duration::ZERO, 1.0), min);

        // Random draws: always within [min, min(max, 3 x previous)], and reaching the cap.
        let mut backoff = Backoff::new(min, max);
        let mut reached_cap_region = false;
        let mut previous = min;
        for _ in 0..500 {
            let delay = backoff.next_delay();
            assert!(delay >= min, "{delay:?}");
            assert!(delay <= max, "{delay:?}");
            assert!(
                delay <= (previous * 3).max(min),
                "{delay:?} after {previous:?}"
            );
            reached_cap_region |= delay >= max / 2;
            previous = delay;
        }
        assert!(reached_cap_region);
        backoff.reset();
        assert!(backoff.next_delay() <= min * 3);
    }

    #[test]
    fn options_are_normalized() {
        let options = WatchOptions {
            wait: Duration::ZERO,
            min_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            ..WatchOptions::default()
        }
        .normalized();
        assert_eq!(options.wait, DEFAULT_WAIT);
        assert_eq!(options.min_backoff, MIN_BACKOFF_FLOOR);
        assert_eq!(options.max_backoff, MIN_BACKOFF_FLOOR);
        let defaults = WatchOptions::default();
        assert_eq!(defaults.clone().normalized(), defaults);
        assert_eq!(defaults.min_interval, Duration::from_millis(50));
        assert!(defaults.passing_only);
    }

    #[test]
    fn publishes_only_on_changes_and_status_transitions() {
        let mut state = WatchState::new("svc".to_owned());
        assert!(!state.is_stale());
        assert_eq!(state.staleness(), None);
        let t0 = Instant::now();

        // An error before any answer: stale (published once), then silent retries.
        assert!(state.apply_error("refused".to_owned()));
        assert!(!state.apply_error("refused again".to_owned()));
        assert!(state.is_stale());
        assert_eq!(state.staleness(), None, "no success yet");
        assert_eq!(state.consecutive_errors, 2);
        assert_eq!(state.last_error.as_deref(), Some("refused again"));

        // First success, even empty: published.
        assert!(state.apply_success(BTreeMap::new(), 5, t0));
        assert!(state.initialized);
        assert!(!state.is_stale());
        assert_eq!(state.consecutive_errors, 0);

        // Same (empty) set: silent, but the index and time move.
        assert!(!state.apply_success(BTreeMap::new(), 6, t0));
        assert_eq!(state.index, 6);

        let two = set(&[instance("a", 1), instance("b", 2)]);
        assert!(state.apply_success(two.clone(), 7, t0));
        let shared = Arc::clone(&state.instances);
        assert!(!state.apply_success(two.clone(), 8, t0));
        assert!(
            Arc::ptr_eq(&shared, &state.instances),
            "an unchanged set is not replaced"
        );

        // Going stale keeps the instances; recovering with the same set is published.
        assert!(state.apply_error("timeout".to_owned()));
        assert_eq!(*state.instances, two);
        assert!(state.staleness().is_some());
        assert!(!state.apply_error("timeout".to_owned()));
        assert!(state.apply_success(two, 9, t0));
        assert!(!state.is_stale());
        assert_eq!(state.staleness(), None);
    }

    #[test]
    fn instances_from_entries() {
        let entries = [
            entry("a", "n1", "10.0.0.1", 80),
            entry("b", "n1", "", 81),
            entry("web", "n1", "10.0.0.2", 82),
            entry("web", "n2", "10.0.0.3", 82),
        ];
        let map = instance_map(&entries, None);
        let ids: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(ids, ["a", "b", "web@n1", "web@n2"]);
        assert_eq!(map["a"].address, "10.0.0.1");
        assert_eq!(map["b"].address, "192.168.1.7", "node address fallback");
        assert_eq!(map["b"].port, 81);
        assert_eq!(map["web@n2"].id, "web@n2");
        assert_eq!(map["web@n2"].address, "10.0.0.3");
    }

    #[test]
    fn socket_addr_text_brackets_ipv6() {
        let mut i = instance("a", 8080);
        assert_eq!(i.socket_addr_text(), "10.0.0.1:8080");
        i.address = "::1".to_owned();
        assert_eq!(i.socket_addr_text(), "[::1]:8080");
        i.address = "fe80::1%eth0".to_owned();
        assert_eq!(i.socket_addr_text(), "[fe80::1%eth0]:8080");
        i.address = "[2001:db8::1]".to_owned();
        assert_eq!(i.socket_addr_text(), "[2001:db8::1]:8080");
        i.address = "greeter.internal".to_owned();
        assert_eq!(i.socket_addr_text(), "greeter.internal:8080");
    }

    #[test]
    fn watch_error_names_the_service_and_the_last_error() {
        let err = WatchError::NotInitialized {
            service: "greeter".to_owned(),
            after: Duration::from_secs(3),
            last_error: Some("cannot connect".to_owned()),
        };
        let msg = err.to_string();
        assert!(msg.contains("\"greeter\""), "{msg}");
        assert!(msg.contains("3s"), "{msg}");
        assert!(msg.contains("last Consul error: cannot connect"), "{msg}");
        let err = WatchError::NotInitialized {
            service: "greeter".to_owned(),
            after: Duration::from_secs(3),
            last_error: None,
        };
        assert!(err.to_string().contains("no query finished yet"));
    }

    #[test]
    fn handles_and_streams_can_move_between_tasks() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        fn assert_stream<S: Stream<Item = InstanceChange> + Send + Unpin + 'static>() {}
        assert_send_sync::<WatchHandle>();
        assert_send_sync::<WatchState>();
        assert_stream::<InstanceChanges>();
    }
}
