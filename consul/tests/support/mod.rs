//! Helpers shared by the consul integration tests (`agent.rs`, `watcher.rs`): unique names,
//! options for and start-up of a real `consul agent -dev` (one log file per test), test
//! logging, a client for an address, a closed loopback port, polling with a deadline, and a
//! recorder of the crate's tracing events.
//! Each test binary uses a subset, hence `dead_code` is allowed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protomesh_consul::{ConsulClient, ConsulConfig, DevAgent, DevAgentOptions};
use tracing::subscriber::DefaultGuard;
use tracing::Level;

/// How long a dev agent may take to become ready (at start and after a restart).
pub const READY: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or concurrent test run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Options for the consul binary; fails (never skips) when there is none.
///
/// The agent logs to `target/tmp/<log_prefix>-<test>.log`, fresh at every run.
pub fn options(log_prefix: &str, test: &str) -> DevAgentOptions {
    let options = DevAgentOptions::discover().unwrap_or_else(|err| {
        panic!("these tests need a real consul binary: {err}");
    });
    let log =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{log_prefix}-{test}.log"));
    let _ = std::fs::remove_file(&log);
    options.with_log_file(log)
}

/// Sends the crate's logs to the test output (shown for failing tests or with --nocapture).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "protomesh_consul=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Starts a dev agent with `options` and waits until it is ready.
pub async fn start_agent(options: DevAgentOptions) -> DevAgent {
    init_logs();
    let agent = DevAgent::start(options).expect("start consul dev agent");
    agent.wait_ready(READY).await.expect("dev agent ready");
    agent
}

/// A client for the agent at `addr` (`host:port`).
pub fn client_at(addr: &str) -> ConsulClient {
    ConsulClient::new(ConsulConfig::new(addr).unwrap()).unwrap()
}

/// A loopback port nothing listens on (very likely).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Polls `f` every 100 ms until it gives `Some`, panicking after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The level and message of each event of one tracing target, recorded by the subscriber that
/// [`Events::capture`] installs for the current thread. Run the test on a `current_thread`
/// runtime, so that the tasks it spawns log on that thread too.
#[derive(Clone)]
pub struct Events {
    target: &'static str,
    seen: Arc<Mutex<Vec<(Level, String)>>>,
}

impl Events {
    /// Records the events of `target` (e.g. `protomesh_consul::watcher`) logged on this thread
    /// until the guard drops.
    pub fn capture(target: &'static str) -> (Self, DefaultGuard) {
        use tracing_subscriber::layer::SubscriberExt;
        let events = Self {
            target,
            seen: Arc::default(),
        };
        let guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
        (events, guard)
    }

    /// How many events at `level` were recorded.
    pub fn at(&self, level: Level) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l == level)
            .count()
    }

    /// How many recorded events have a message starting with `prefix`.
    pub fn starting_with(&self, prefix: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, message)| message.starts_with(prefix))
            .count()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let meta = event.metadata();
        if meta.target() != self.target {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.seen.lock().unwrap().push((*meta.level(), message.0));
    }
}
