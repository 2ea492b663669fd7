//! protomesh-data: the data layer shared by the stateful services (`tasks`, `timetrack`,
//! `analytics`, `users`) and the gateway's shared rate limits, on top of the runtime
//! (`protomesh`): Postgres
//! through a `deadpool-postgres` pool, schema migrations run at start-up, a transactional outbox
//! relayed to Redis Streams, consumer-group readers of those streams with idempotent apply, and a
//! Redis read cache that steps aside when Redis is down.
//!
//! | piece | what it gives a service |
//! |---|---|
//! | [`DataConfig`] | `--database-url`, `--redis-url`, `--db-pool-size`, `--db-schema`, `--db-timeout`, `--key-prefix` (flatten it into the binary's parser next to [`ServeConfig`](protomesh::config::ServeConfig)) |
//! | [`postgres`] | [`connect_pool`] (never fails because the database is down), [`ensure_database`], [`migrate`], [`prepare_database`] (all three at start-up), [`status_from_pg`] (database errors → gRPC codes; [`db_error`] for `map_err`) |
//! | [`outbox`] | the `outbox` table ([`outbox::OUTBOX_DDL`]), [`outbox::insert`] inside the write's transaction, [`outbox::OutboxRelay`] publishing to Redis Streams |
//! | [`stream`] | [`stream::StreamConsumer`] (consumer group, ack after the handler committed, claims of a dead consumer's messages), [`stream::APPLIED_EVENTS_DDL`] and [`stream::mark_applied`] for idempotent apply |
//! | [`keyset`] | pages of newest-first lists: [`keyset::PageQuery`] (the filtered `SELECT` of one page), [`keyset::TimeCursor`] (where the next page starts), [`keyset::open_cursor`] and [`keyset::next_page_token`] (the cursor in and out of a page token) |
//! | [`cache`] | [`cache::Cache`]: JSON get/set/del with a TTL; Redis errors are misses |
//! | [`page_token`] | [`page_token::PageTokens`]: list page tokens signed with the deployment's key (kept in the service's schema, [`page_token::PAGE_TOKEN_KEY_DDL`]) and bound to the request's filter |
//! | [`ratelimit`] | [`ratelimit::RateLimiter`]: quotas shared by every instance through Redis (GCRA), per instance while Redis is down |
//! | [`lag`] | [`lag::LagMetrics`]: the outbox's and stream consumers' lag as scrape-time gauges on the runtime's `/metrics` |
//! | `testing` | for tests only (feature `test-util`): a throw-away database per test, unique Redis key prefixes and their clean-up |
//!
//! A service's start-up, in outline:
//!
//! ```no_run
//! # use protomesh_data::{self as data, outbox::{OutboxRelay, RelayOptions}};
//! # async fn run(config: data::DataConfig) -> Result<(), data::DataError> {
//! // Tables of different services sharing one database stay apart in one schema per service.
//! let config = config.with_default_schema("tasks");
//! data::ensure_database(&config).await?;
//! let pool = data::connect_pool(&config)?;
//! data::migrate(&pool, "tasks", &[
//!     (1, data::outbox::OUTBOX_DDL),
//!     (2, "CREATE TABLE projects (id uuid PRIMARY KEY, name text NOT NULL UNIQUE)"),
//! ]).await?;
//! let redis = data::connect_redis(&config)?;
//! let relay = OutboxRelay::start(pool.clone(), redis.clone(), &config)?;
//! # drop(relay); Ok(()) }
//! ```
//!
//! Failure model: a database that is down makes calls fail with `UNAVAILABLE` (through
//! [`status_from_pg`]) within `--db-timeout`, and the pool connects again by itself once the
//! database is back. Redis being down delays events (they wait in the outbox) and bypasses the
//! cache; it never fails a write. Events are delivered at least once, each with a unique event id
//! that consumers deduplicate with [`stream::mark_applied`].

use std::time::Duration;

use clap::Args;

pub mod cache;
pub mod keyset;
pub mod lag;
pub mod outbox;
pub mod page_token;
pub mod postgres;
pub mod ratelimit;
pub mod redis;
mod start;
pub mod stream;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use cache::Cache;
pub use postgres::{
    connect_pool, db_error, ensure_database, migrate, prepare_database, status_from_pg,
};
pub use redis::connect_redis;
pub use start::StartError;

/// Re-exports of the clients the data layer is built on, so services need no extra dependency to
/// name their types.
pub use deadpool_postgres;
pub use fred;
pub use tokio_postgres;

/// Default `DATABASE_URL`: database `protomesh` on the machine's Postgres, through its Unix socket,
/// as the `postgres` role (trust authentication on the socket).
pub const DEFAULT_DATABASE_URL: &str =
    "postgresql:///protomesh?host=/var/run/postgresql&user=postgres";

/// Default `REDIS_URL`: the machine's Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Where a service keeps its data: the options every stateful service binary accepts
/// (`#[command(flatten)]` it into the binary's parser, next to
/// [`ServeConfig`](protomesh::config::ServeConfig)).
#[derive(Debug, Clone, Args)]
pub struct DataConfig {
    /// Postgres connection URL (`postgresql://user@host:port/db` or, for a Unix socket,
    /// `postgresql:///db?host=/var/run/postgresql`).
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,

    /// Redis URL (`redis://host:port[/db]`).
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Most Postgres connections this process holds.
    #[arg(
        long = "db-pool-size",
        env = "PROTOMESH_DB_POOL_SIZE",
        default_value_t = 16
    )]
    pub db_pool_size: usize,

    /// Postgres schema holding this service's tables (set as the connections' `search_path`,
    /// created by the migrations); defaults to what the service passes to
    /// [`DataConfig::with_default_schema`], usually its name.
    #[arg(long = "db-schema", env = "PROTOMESH_DB_SCHEMA")]
    pub db_schema: Option<String>,

    /// Bound on waiting for a database connection (checkout from the pool, connecting, the
    /// connection check): past it a call fails with `UNAVAILABLE`.
    #[arg(long = "db-timeout", env = "PROTOMESH_DB_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub db_timeout: Duration,

    /// Prefix of every Redis key and stream name this process uses (tests use a unique one).
    #[arg(long = "key-prefix", env = "PROTOMESH_KEY_PREFIX", default_value = "")]
    pub key_prefix: String,
}

impl DataConfig {
    /// Every default, with the given database URL: handy for tests and examples.
    pub fn with_database_url(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            db_pool_size: 16,
            db_schema: None,
            db_timeout: Duration::from_secs(2),
            key_prefix: String::new(),
        }
    }

    /// Sets the Postgres schema to `schema` unless `--db-schema` chose one.
    pub fn with_default_schema(mut self, schema: impl Into<String>) -> Self {
        if self.db_schema.as_deref().is_none_or(str::is_empty) {
            self.db_schema = Some(schema.into());
        }
        self
    }

    /// Sets the Redis URL.
    pub fn with_redis_url(mut self, redis_url: impl Into<String>) -> Self {
        self.redis_url = redis_url.into();
        self
    }

    /// Sets the Redis key prefix.
    pub fn with_key_prefix(mut self, key_prefix: impl Into<String>) -> Self {
        self.key_prefix = key_prefix.into();
        self
    }

    /// The Postgres connection settings these options describe: the URL, plus the connect timeout
    /// (`--db-timeout` unless the URL sets `connect_timeout`) and the schema as `search_path`.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, DataError> {
        postgres::pg_config(self)
    }
}

/// What can go wrong in the data layer. Map it to a gRPC status with [`DataError::to_status`] (or
/// `Status::from`), which tells an unavailable dependency (`UNAVAILABLE`) from a bad request or a
/// bug.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// `--database-url` does not parse.
    #[error("invalid database URL: {0}")]
    DatabaseUrl(#[source] tokio_postgres::Error),
    /// `--db-schema` is not a plain identifier.
    #[error("invalid database schema {0:?}: use letters, digits and underscores, not starting with a digit")]
    Schema(String),
    /// The pool could not be built (a bug: the settings are checked before).
    #[error("database pool: {0}")]
    PoolBuild(#[from] deadpool_postgres::BuildError),
    /// No database connection could be had (the database is down, or every connection is busy).
    #[error("database unavailable: {}", postgres::describe_pool_error(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed, or the connection broke.
    #[error("database: {}", postgres::describe_pg_error(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A migration step failed; nothing of it was applied.
    #[error("migration {version} of {service}: {}", postgres::describe_pg_error(.source))]
    Migration {
        /// The service whose migration failed.
        service: String,
        /// The version of the failed step.
        version: i64,
        /// The database's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The migration steps given are not in strictly increasing version order.
    #[error(
        "migrations of {service}: versions must be positive and strictly increasing, {detail}"
    )]
    MigrationOrder {
        /// The service whose steps are wrong.
        service: String,
        /// Which versions are out of order.
        detail: String,
    },
    /// `--redis-url` does not parse.
    #[error("invalid Redis URL {url:?}: {source}")]
    RedisUrl {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: fred::error::Error,
    },
    /// A Redis command failed (Redis down, timeout, unexpected reply).
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// The Redis client is not connected (Redis is down or unreachable; it keeps reconnecting).
    #[error("redis not connected")]
    RedisDisconnected,
    /// An operation took longer than its bound.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        what: &'static str,
        /// The bound.
        after: Duration,
    },
}

impl DataError {
    /// Whether the error says that Postgres or Redis could not be reached (rather than a bad
    /// statement or request): what callers should retry later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DataError::Redis(_) | DataError::RedisDisconnected | DataError::Timeout { .. } => true,
            DataError::Pool(err) => {
                postgres::classify(err, "data").code == tonic::Code::Unavailable
            }
            DataError::Postgres(err) | DataError::Migration { source: err, .. } => {
                postgres::classify(err, "data").code == tonic::Code::Unavailable
            }
            DataError::DatabaseUrl(_)
            | DataError::Schema(_)
            | DataError::PoolBuild(_)
            | DataError::MigrationOrder { .. }
            | DataError::RedisUrl { .. } => false,
        }
    }

    /// The gRPC status for this error; `what` names the thing being read or written (`"task"`),
    /// as in [`status_from_pg`].
    pub fn to_status(&self, what: &str) -> tonic::Status {
        match self {
            DataError::Redis(err) => {
                tonic::Status::unavailable(format!("redis unavailable: {err}"))
            }
            DataError::RedisDisconnected => {
                tonic::Status::unavailable("redis unavailable: not connected")
            }
            DataError::Timeout { .. } => tonic::Status::unavailable(self.to_string()),
            DataError::Pool(err) => status_from_pg(err, what),
            DataError::Postgres(err) => status_from_pg(err, what),
            DataError::Migration { source, .. } => status_from_pg(source, what),
            DataError::DatabaseUrl(_)
            | DataError::Schema(_)
            | DataError::PoolBuild(_)
            | DataError::MigrationOrder { .. }
            | DataError::RedisUrl { .. } => {
                tracing::error!(error = %self, "data layer misconfigured");
                tonic::Status::internal(format!("{what}: internal error"))
            }
        }
    }
}

impl From<DataError> for tonic::Status {
    fn from(err: DataError) -> Self {
        err.to_status("data")
    }
}

/// Exponential back-off with jitter for the background loops (relay, consumers, listeners).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min: min.max(Duration::from_millis(1)),
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay: `min × 2^attempt`, capped at `max`, times a random factor in [0.5, 1].
    pub(crate) fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let factor = 2u32.saturating_pow(self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let base = self.min.saturating_mul(factor).min(self.max);
        base.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `{prefix}{name}`: the Redis key of a stream or cache entry.
pub(crate) fn prefixed(prefix: &str, name: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + name.len());
    key.push_str(prefix);
    key.push_str(name);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        data: DataConfig,
    }

    #[test]
    fn defaults_point_at_the_local_servers() {
        let cli = Cli::try_parse_from(["svc"]).expect("defaults parse");
        // The environment of a test run may set these; only check what it cannot.
        assert_eq!(cli.data.db_pool_size, 16);
        assert_eq!(cli.data.db_timeout, Duration::from_secs(2));
        assert!(DEFAULT_DATABASE_URL.contains("host=/var/run/postgresql"));
        DEFAULT_DATABASE_URL
            .parse::<tokio_postgres::Config>()
            .expect("default URL parses");
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "svc",
            "--database-url",
            "postgresql://postgres@127.0.0.1:5432/x",
            "--redis-url",
            "redis://127.0.0.1:6380",
            "--db-pool-size",
            "4",
            "--key-prefix",
            "t1:",
            "--db-schema",
            "tasks",
            "--db-timeout",
            "500ms",
        ])
        .expect("flags parse");
        assert_eq!(cli.data.db_pool_size, 4);
        assert_eq!(cli.data.key_prefix, "t1:");
        assert_eq!(cli.data.redis_url, "redis://127.0.0.1:6380");
        assert_eq!(cli.data.db_timeout, Duration::from_millis(500));
        let config = cli.data.with_default_schema("other");
        assert_eq!(config.db_schema.as_deref(), Some("tasks"));
    }

    #[test]
    fn default_schema_applies_only_when_none_was_chosen() {
        let config =
            DataConfig::with_database_url(DEFAULT_DATABASE_URL).with_default_schema("tasks");
        assert_eq!(config.db_schema.as_deref(), Some("tasks"));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_secs(1), "{delay:?}");
        }
        let late = backoff.next_delay();
        assert!(late >= Duration::from_millis(500), "{late:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn unavailable_errors_say_so() {
        let err = DataError::Timeout {
            what: "connecting",
            after: Duration::from_secs(1),
        };
        assert!(err.is_unavailable());
        let err = DataError::Schema("1x".into());
        assert!(!err.is_unavailable());
        assert_eq!(err.to_status("task").code(), tonic::Code::Internal);
    }
}
