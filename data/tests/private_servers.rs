//! The private servers of `protomesh_data::testing` ([`PrivateRedis`], [`PrivatePostgres`]):
//! they start on a free loopback port, clients of the data layer use them, a stop makes
//! connections fail, and starting again on the same port makes them work again (Postgres with
//! its data, Redis empty); dropping a guard removes its server and its directory.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike, KeysInterface, Options};
use protomesh::testing::{bounded, eventually};
use protomesh_data::testing::{with_database_name, PrivatePostgres, PrivateRedis};
use protomesh_data::{self as data, DataConfig};
use tokio::net::TcpStream;
use tonic::Code;

/// Bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether a TCP connection to `127.0.0.1:port` is refused.
async fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

fn redis_config(redis: &PrivateRedis) -> DataConfig {
    DataConfig::with_database_url(data::DEFAULT_DATABASE_URL).with_redis_url(redis.url())
}

/// `GET key` bounded by 500 ms and tried once.
async fn quick_get(client: &Client, key: &str) -> Result<Option<String>, fred::error::Error> {
    client
        .with_options(&Options {
            timeout: Some(Duration::from_millis(500)),
            max_attempts: Some(1),
            fail_fast: true,
            ..Default::default()
        })
        .get(key)
        .await
}

#[tokio::test]
async fn a_private_redis_stops_and_comes_back_empty_on_the_same_port() {
    bounded(TEST_TIMEOUT, async {
        let mut redis = PrivateRedis::start().await.unwrap();
        let port = redis.port();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
        assert!(redis.is_running());
        let client = data::connect_redis(&redis_config(&redis)).unwrap();
        eventually(Duration::from_secs(5), "redis connected", || async {
            client.is_connected().then_some(())
        })
        .await;
        let () = client.set("k", "before", None, None, false).await.unwrap();
        assert_eq!(
            quick_get(&client, "k").await.unwrap().as_deref(),
            Some("before")
        );

        redis.stop().await.unwrap();
        assert!(!redis.is_running());
        assert!(refused(port).await, "a stopped redis refuses connections");
        eventually(Duration::from_secs(5), "the client to notice", || async {
            (!client.is_connected()).then_some(())
        })
        .await;
        assert!(quick_get(&client, "k").await.is_err(), "commands fail");
        // Stopping twice is harmless.
        redis.stop().await.unwrap();

        redis.start_again().await.unwrap();
        assert_eq!(redis.port(), port);
        assert!(redis.is_running());
        // The same client reconnects by itself; the data is gone (nothing kept on disk).
        let value = eventually(Duration::from_secs(10), "the client back", || async {
            quick_get(&client, "k").await.ok()
        })
        .await;
        assert_eq!(value, None);
        let () = client.set("k", "after", None, None, false).await.unwrap();
        assert_eq!(
            quick_get(&client, "k").await.unwrap().as_deref(),
            Some("after")
        );

        redis.restart().await.unwrap();
        assert_eq!(redis.port(), port);
        let value = eventually(Duration::from_secs(10), "the client back again", || async {
            quick_get(&client, "k").await.ok()
        })
        .await;
        assert_eq!(value, None, "a restart loses the data too");

        let dir = redis.dir().to_path_buf();
        assert!(dir.join("redis.log").is_file());
        let _ = client.quit().await;
        drop(redis);
        assert!(refused(port).await, "dropping kills the server");
        assert!(!dir.exists(), "dropping deletes the directory");
    })
    .await;
}

#[tokio::test]
async fn two_private_redis_servers_run_side_by_side() {
    bounded(TEST_TIMEOUT, async {
        let first = PrivateRedis::start().await.unwrap();
        let mut second = PrivateRedis::start().await.unwrap();
        assert_ne!(first.port(), second.port());
        assert_ne!(first.dir(), second.dir());
        second.stop().await.unwrap();
        assert!(!refused(first.port()).await, "the other one still serves");
        assert!(refused(second.port()).await);
    })
    .await;
}

#[tokio::test]
async fn a_private_postgres_keeps_its_data_across_a_stop() {
    bounded(TEST_TIMEOUT, async {
        let mut pg = PrivatePostgres::start().await.unwrap();
        let port = pg.port();
        assert_eq!(
            pg.url(),
            format!("postgresql://postgres@127.0.0.1:{port}/postgres")
        );
        assert!(pg.is_running());
        let mut config = DataConfig::with_database_url(with_database_name(&pg.url(), "outage"));
        config.db_timeout = Duration::from_secs(1);
        assert!(data::ensure_database(&config).await.unwrap(), "created");
        assert!(!data::ensure_database(&config).await.unwrap(), "exists");
        let pool = data::connect_pool(&config).unwrap();
        pool.get()
            .await
            .unwrap()
            .batch_execute(
                "CREATE TABLE kept (id int PRIMARY KEY, name text NOT NULL);
                 INSERT INTO kept VALUES (1, 'before the outage');",
            )
            .await
            .unwrap();

        pg.stop().await.unwrap();
        assert!(!pg.is_running());
        assert!(
            refused(port).await,
            "a stopped postgres refuses connections"
        );
        let started = Instant::now();
        let failed = async {
            let client = pool.get().await?;
            client.query_one("SELECT name FROM kept", &[]).await?;
            Ok::<_, data::DataError>(())
        }
        .await
        .expect_err("the database is down");
        assert_eq!(
            data::status_from_pg(&failed, "kept").code(),
            Code::Unavailable,
            "{failed}"
        );
        assert!(
            started.elapsed() < config.db_timeout + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(data::ensure_database(&config).await.is_err());
        pg.stop().await.unwrap();

        pg.start_again().await.unwrap();
        assert_eq!(pg.port(), port);
        // The same pool connects again by itself, and the row is still there.
        let name: String = eventually(Duration::from_secs(10), "the pool back", || async {
            let client = match pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("DEBUG {e:?} {}", refused(port).await);
                    return None;
                }
            };
            let row = client
                .query_one("SELECT name FROM kept WHERE id = 1", &[])
                .await
                .ok()?;
            Some(row.get(0))
        })
        .await;
        assert_eq!(name, "before the outage");

        pg.restart().await.unwrap();
        let count: i64 = eventually(Duration::from_secs(10), "the pool back again", || async {
            let client = pool.get().await.ok()?;
            let row = client
                .query_one("SELECT count(*) FROM kept", &[])
                .await
                .ok()?;
            Some(row.get(0))
        })
        .await;
        assert_eq!(count, 1);

        let dir = pg.dir().to_path_buf();
        assert!(dir.join("data").join("PG_VERSION").is_file());
        drop(pool);
        drop(pg);
        assert!(refused(port).await, "dropping stops the server");
        assert!(!dir.exists(), "dropping deletes the directory");
    })
    .await;
}
