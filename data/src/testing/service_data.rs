//! For tests only: the data a service's handler runs on in an in-process test, set up the way
//! its binary does (a pool migrated with the service's steps, a Redis client, the outbox relay),
//! so each service's tests need not repeat it; and a database that is down
//! ([`unreachable_database`]).
//!
//! ```no_run
//! # use protomesh_data::testing::{ServiceData, TestDatabase, TestKeys};
//! # async fn test() -> Result<(), protomesh_data::DataError> {
//! let db = TestDatabase::create().await?;
//! let keys = TestKeys::new();
//! let data = ServiceData::start(&db, &keys, "tasks", &[(1, "CREATE TABLE t (id int)")]).await?;
//! let relay = data.spawn_relay()?; // events of `data.pool`'s outbox to Redis Streams
//! # drop(relay); Ok(()) }
//! ```

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use fred::prelude::{Client, ClientLike};

use super::isolated::{TestDatabase, TestKeys};
use crate::outbox::{OutboxRelay, RelayHandle};
use crate::{connect_pool, connect_redis, migrate, DataConfig, DataError};

/// Longest wait for the Redis client to connect.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A service's settings, pool (migrated) and Redis client (connected).
#[derive(Debug, Clone)]
pub struct ServiceData {
    /// The settings: the test database, the test Redis, the key prefix, the service's schema.
    pub config: DataConfig,
    /// The pool, migrated with the service's steps.
    pub pool: Pool,
    /// The Redis client, connected.
    pub redis: Client,
}

impl ServiceData {
    /// The data of `service` on `db` (in the schema named after the service) with the key prefix
    /// of `keys`, migrated with `migrations`.
    pub async fn start(
        db: &TestDatabase,
        keys: &TestKeys,
        service: &str,
        migrations: &[(i64, &str)],
    ) -> Result<Self, DataError> {
        let config = db
            .config()
            .with_key_prefix(keys.prefix())
            .with_default_schema(service);
        Self::on(config, service, migrations).await
    }

    /// The data of `service` on the stores `config` names, migrated with `migrations`.
    pub async fn on(
        config: DataConfig,
        service: &str,
        migrations: &[(i64, &str)],
    ) -> Result<Self, DataError> {
        let pool = connect_pool(&config)?;
        migrate(&pool, service, migrations).await?;
        let redis = connect_redis(&config)?;
        let deadline = Instant::now() + REDIS_CONNECT_TIMEOUT;
        while !redis.is_connected() {
            if Instant::now() >= deadline {
                return Err(DataError::Timeout {
                    what: "connecting to redis",
                    after: REDIS_CONNECT_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            config,
            pool,
            redis,
        })
    }

    /// The outbox relay of the pool to Redis Streams, woken by the database's notifications, as
    /// the service's binary runs it.
    pub fn spawn_relay(&self) -> Result<RelayHandle, DataError> {
        OutboxRelay::start(self.pool.clone(), self.redis.clone(), &self.config)
    }
}

/// A loopback port nothing listens on (free a moment ago: the listener that found it is closed).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or(1)
}

/// Settings of a database that is down: Postgres at `port` of the loopback address (see
/// [`closed_port`]), giving up on a connection after 500 ms.
pub fn unreachable_database(port: u16) -> DataConfig {
    let mut config =
        DataConfig::with_database_url(format!("postgresql://postgres@127.0.0.1:{port}/protomesh"));
    config.db_timeout = Duration::from_millis(500);
    config
}
