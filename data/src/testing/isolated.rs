//! A database of its own per test on the machine's Postgres and a Redis key prefix of its own,
//! both cleaned up when dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::{Client, ClientLike, KeysInterface};
use futures::TryStreamExt;

use crate::postgres::{connect_once, pg_config, quote_ident};
use crate::{DataConfig, DataError, DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL};

/// Name prefix of the databases [`TestDatabase`] creates.
pub const TEST_DATABASE_PREFIX: &str = "protomesh_test_";

/// Bound on each administrative step (connecting, `CREATE DATABASE`, `DROP DATABASE`).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The URL of the test server: `PROTOMESH_TEST_DATABASE_URL`, else `DATABASE_URL`, else the default.
pub fn server_url() -> String {
    std::env::var("PROTOMESH_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

/// The Redis URL for tests: `REDIS_URL`, else the default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned())
}

/// `url` with its database name replaced by `name` (a `postgresql://…` URL, or a `key=value`
/// connection string).
pub fn with_database_name(url: &str, name: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={name}");
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let (before_query, query) = match rest.find('?') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match before_query.find('/') {
        Some(at) => &before_query[..at],
        None => before_query,
    };
    format!("{scheme}{authority}/{name}{query}")
}

/// A database of its own on the test server, named `protomesh_test_<pid>_<n>`, dropped
/// (`WITH (FORCE)`, closing whatever connections are left) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a fresh, empty database. Databases left behind by test processes that no longer
    /// run are dropped first.
    pub async fn create() -> Result<Self, DataError> {
        let database = Self::not_created().await?;
        let admin = connect_once(
            &pg_config(&DataConfig::with_database_url(&database.admin_url))?,
            ADMIN_TIMEOUT,
        )
        .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&database.name)))
            .await?;
        Ok(database)
    }

    /// A name and URL of its own for a database that does not exist yet (for tests of whatever
    /// creates it); dropped like the others if it exists by then. Databases left behind by test
    /// processes that no longer run are dropped first.
    pub async fn not_created() -> Result<Self, DataError> {
        let server = server_url();
        let admin_url = with_database_name(&server, "postgres");
        let admin = connect_once(
            &pg_config(&DataConfig::with_database_url(&admin_url))?,
            ADMIN_TIMEOUT,
        )
        .await?;
        drop_stale_databases(&admin).await;
        let name = format!(
            "{TEST_DATABASE_PREFIX}{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&name)
            ))
            .await?;
        Ok(Self {
            url: with_database_name(&server, &name),
            name,
            admin_url,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Data settings pointing at this database and the test Redis, with every other default
    /// (no key prefix: add one with [`DataConfig::with_key_prefix`]).
    pub fn config(&self) -> DataConfig {
        DataConfig::with_database_url(&self.url).with_redis_url(redis_url())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let admin_url = std::mem::take(&mut self.admin_url);
        // Drop may run inside a runtime (where blocking on another is not allowed): do the work
        // on a thread of its own, with a runtime of its own, and wait for it.
        let dropper = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("test database {name} not dropped: {err}");
                    return;
                }
            };
            let dropped = runtime.block_on(async {
                let pg = pg_config(&DataConfig::with_database_url(&admin_url))?;
                let admin = connect_once(&pg, ADMIN_TIMEOUT).await?;
                let statement = format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&name)
                );
                tokio::time::timeout(ADMIN_TIMEOUT, admin.batch_execute(&statement))
                    .await
                    .map_err(|_| DataError::Timeout {
                        what: "dropping the test database",
                        after: ADMIN_TIMEOUT,
                    })??;
                Ok::<_, DataError>(())
            });
            if let Err(err) = dropped {
                eprintln!("test database {name} not dropped: {err}");
            }
        });
        let _ = dropper.join();
    }
}

/// Drops `protomesh_test_<pid>_<n>` databases whose process is gone (left by a killed test run).
async fn drop_stale_databases(admin: &tokio_postgres::Client) {
    let Ok(rows) = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'protomesh\\_test\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name
            .strip_prefix(TEST_DATABASE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let statement = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&name)
        );
        if admin.batch_execute(&statement).await.is_ok() {
            tracing::debug!(database = %name, "stale test database dropped");
        }
    }
}

/// A Redis key prefix no other test uses: `test:<pid>:<n>:<random>:`.
pub fn unique_prefix() -> String {
    use rand::Rng;
    format!(
        "test:{}:{}:{:08x}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::rng().random::<u32>()
    )
}

/// `text` with the glob characters of Redis patterns escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Deletes every key starting with `prefix` (`SCAN … MATCH` + `DEL`); returns how many it
/// deleted. Refuses an empty prefix (that would be every key).
pub async fn delete_keys_with_prefix(redis: &Client, prefix: &str) -> Result<u64, DataError> {
    if prefix.is_empty() {
        return Ok(0);
    }
    let pattern = format!("{}*", glob_escape(prefix));
    let keys: Vec<fred::types::Key> = redis
        .scan_buffered(pattern, Some(500), None)
        .try_collect()
        .await?;
    let mut deleted = 0;
    for chunk in keys.chunks(500) {
        let n: u64 = redis.del(chunk.to_vec()).await?;
        deleted += n;
    }
    Ok(deleted)
}

/// A unique Redis key prefix whose keys are deleted when this value is dropped.
#[derive(Debug)]
pub struct TestKeys {
    prefix: String,
    redis_url: String,
}

impl TestKeys {
    /// A fresh prefix on the test Redis.
    pub fn new() -> Self {
        Self {
            prefix: unique_prefix(),
            redis_url: redis_url(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Default for TestKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestKeys {
    fn drop(&mut self) {
        let prefix = std::mem::take(&mut self.prefix);
        let url = std::mem::take(&mut self.redis_url);
        let cleaner = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(client) = crate::redis::build_client(&url) else {
                    return;
                };
                let cleaned = tokio::time::timeout(Duration::from_secs(5), async {
                    client.init().await?;
                    delete_keys_with_prefix(&client, &prefix).await?;
                    let _ = client.quit().await;
                    Ok::<_, DataError>(())
                })
                .await;
                if !matches!(cleaned, Ok(Ok(()))) {
                    eprintln!("redis keys {prefix}* not cleaned up");
                }
            });
        });
        let _ = cleaner.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database_name(
                "postgresql:///protomesh?host=/var/run/postgresql&user=postgres",
                "t1"
            ),
            "postgresql:///t1?host=/var/run/postgresql&user=postgres"
        );
        assert_eq!(
            with_database_name("postgresql://postgres@127.0.0.1:5432/x", "t1"),
            "postgresql://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database_name("postgres://127.0.0.1:5432", "t1"),
            "postgres://127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database_name("host=/tmp user=postgres", "t1"),
            "host=/tmp user=postgres dbname=t1"
        );
    }

    #[test]
    fn prefixes_are_unique_and_globs_escaped() {
        assert_ne!(unique_prefix(), unique_prefix());
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
