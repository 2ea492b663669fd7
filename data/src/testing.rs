//! For tests only: a database of its own per test on the machine's Postgres, unique Redis key
//! prefixes, and their clean-up; and, for outage tests, private Redis and Postgres servers a test
//! stops and starts again ([`PrivateRedis`], [`PrivatePostgres`], in [`private_servers`]); a
//! service's migrated pool, connected Redis and outbox relay ([`ServiceData`]). Not for
//! production code.
//!
//! ```no_run
//! # use protomesh_data::{self as data, testing::{TestDatabase, TestKeys}};
//! # async fn test() -> Result<(), data::DataError> {
//! let db = TestDatabase::create().await?;          // dropped (WITH (FORCE)) when `db` goes
//! let keys = TestKeys::new();                      // keys deleted when `keys` goes
//! let config = db.config().with_key_prefix(keys.prefix());
//! let pool = data::connect_pool(&config)?;
//! # Ok(()) }
//! ```
//!
//! The server is the one of `PROTOMESH_TEST_DATABASE_URL`, else `DATABASE_URL`, else
//! [`DEFAULT_DATABASE_URL`](crate::DEFAULT_DATABASE_URL); Redis is `REDIS_URL`'s, else
//! [`DEFAULT_REDIS_URL`](crate::DEFAULT_REDIS_URL).

mod isolated;
pub mod private_servers;
pub mod service_data;

pub use isolated::*;
pub use private_servers::{PrivatePostgres, PrivateRedis, PrivateServerError};
pub use service_data::{closed_port, unreachable_database, ServiceData};
