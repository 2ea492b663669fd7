//! A Redis read cache of JSON values that never fails its caller: a Redis error, a timeout, a
//! disconnected client or a value that does not decode is a miss (or a no-op), logged at debug.

use std::time::Duration;

use fred::prelude::{Client, ClientLike, Expiration, KeysInterface, Options};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::prefixed;
use protomesh::telemetry::spans;

/// Bound on each cache command: a slow or dead Redis costs a request at most this much.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// JSON values in Redis under `{key_prefix}{key}`, with a TTL. Cheap to clone (clones share the
/// connection).
///
/// While the client is not connected every call returns at once (a miss, or nothing done); fred
/// reconnects in the background and the cache is used again as soon as it has. Readers should
/// treat it as a hint: write the database first, then [`del`](Cache::del) (or
/// [`set`](Cache::set)) the entry; a `del` that Redis did not get leaves the old value until its
/// TTL runs out, so keep TTLs short.
#[derive(Clone)]
pub struct Cache {
    client: Client,
    prefix: String,
    options: Options,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("prefix", &self.prefix)
            .field("timeout", &self.options.timeout)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache on `client` whose keys start with `key_prefix`; commands time out after
    /// [`DEFAULT_TIMEOUT`].
    pub fn new(client: Client, key_prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: key_prefix.into(),
            options: Options {
                timeout: Some(DEFAULT_TIMEOUT),
                // Do not retry a command on another connection attempt: a miss is cheaper.
                max_attempts: Some(1),
                fail_fast: true,
                ..Default::default()
            },
        }
    }

    /// The same cache with another bound on each command.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// The Redis key of `key`: `{key_prefix}{key}`.
    pub fn redis_key(&self, key: &str) -> String {
        prefixed(&self.prefix, key)
    }

    /// The value stored under `key`, or `None` when there is none, it does not decode as `T`,
    /// or Redis cannot answer in time.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        if !self.client.is_connected() {
            tracing::debug!(key, "cache bypassed: redis not connected");
            return None;
        }
        let redis_key = self.redis_key(key);
        let client = self.client.with_options(&self.options);
        let get = client.get(redis_key.as_str());
        let stored: Option<String> = match spans::in_span(spans::redis("GET"), get).await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::debug!(key, error = %err, "cache get failed: miss");
                return None;
            }
        };
        let text = stored?;
        match serde_json::from_str(&text) {
            Ok(value) => Some(value),
            Err(err) => {
                tracing::debug!(key, error = %err, "cached value does not decode: miss");
                None
            }
        }
    }

    /// Stores `value` under `key` for `ttl` (at least 1 ms); does nothing when Redis cannot take
    /// it in time.
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T, ttl: Duration) {
        if !self.client.is_connected() {
            tracing::debug!(key, "cache bypassed: redis not connected");
            return;
        }
        let text = match serde_json::to_string(value) {
            Ok(text) => text,
            Err(err) => {
                tracing::debug!(key, error = %err, "value does not encode: not cached");
                return;
            }
        };
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let redis_key = self.redis_key(key);
        let client = self.client.with_options(&self.options);
        let set = client.set(
            redis_key.as_str(),
            text,
            Some(Expiration::PX(millis)),
            None,
            false,
        );
        let result: Result<(), _> = spans::in_span(spans::redis("SET"), set).await;
        if let Err(err) = result {
            tracing::debug!(key, error = %err, "cache set failed");
        }
    }

    /// Removes `key`; does nothing when Redis cannot take it in time.
    pub async fn del(&self, key: &str) {
        if !self.client.is_connected() {
            tracing::debug!(key, "cache bypassed: redis not connected");
            return;
        }
        let redis_key = self.redis_key(key);
        let client = self.client.with_options(&self.options);
        let del = client.del(redis_key.as_str());
        let result: Result<i64, _> = spans::in_span(spans::redis("DEL"), del).await;
        if let Err(err) = result {
            tracing::debug!(key, error = %err, "cache del failed");
        }
    }
}
