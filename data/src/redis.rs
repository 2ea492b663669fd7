//! The Redis client (fred): one multiplexed connection per client that reconnects by itself.

use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy};
use fred::types::config::UnresponsiveConfig;

use super::{DataConfig, DataError};

/// Bound on each Redis command unless the caller sets a shorter one (the cache uses 200 ms).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis client for `--redis-url` that connects in the background and reconnects by itself
/// (exponential back-off from 100 ms to 2 s, forever), so it is returned at once even while
/// Redis is down. Commands time out after [`DEFAULT_COMMAND_TIMEOUT`] (sooner where the caller
/// says so); a command that timed out before it was written is never sent later.
///
/// Call it inside a Tokio runtime: the connection task is spawned on it. Clones share the
/// connection; [`Client::clone_new`] makes a client with a connection of its own (the
/// stream consumer does, for its blocking reads).
pub fn connect_redis(config: &DataConfig) -> Result<Client, DataError> {
    let client = build_client(&config.redis_url)?;
    client.connect();
    Ok(client)
}

/// The unconnected client of [`connect_redis`].
pub(crate) fn build_client(url: &str) -> Result<Client, DataError> {
    let invalid = |source| DataError::RedisUrl {
        url: url.to_owned(),
        source,
    };
    let mut redis_config = Config::from_url(url).map_err(invalid)?;
    // Retry the first connection too, rather than failing: Redis may start after us.
    redis_config.fail_fast = false;
    let mut builder = Builder::from_config(redis_config);
    builder
        .with_connection_config(|connection| {
            connection.connection_timeout = Duration::from_secs(1);
            connection.internal_command_timeout = Duration::from_secs(1);
            connection.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(10)),
                interval: Duration::from_secs(1),
            };
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = DEFAULT_COMMAND_TIMEOUT;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    builder.build().map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_names_itself() {
        let err = build_client("not a url").expect_err("must fail");
        assert!(err.to_string().contains("not a url"), "{err}");
    }

    #[tokio::test]
    async fn connecting_to_a_dead_port_returns_at_once() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let config = DataConfig::with_database_url(crate::DEFAULT_DATABASE_URL)
            .with_redis_url(format!("redis://127.0.0.1:{port}"));
        let started = std::time::Instant::now();
        let client = connect_redis(&config).expect("client");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!client.is_connected());
    }
}
