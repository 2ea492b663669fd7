//! The data layer against the machine's real Postgres and Redis: each test has a database of its
//! own (dropped at the end) and a Redis key prefix of its own (deleted at the end). Outages are
//! made with a TCP proxy the test stops and starts, or with a free port nothing listens on; the
//! machine's servers are never stopped.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use fred::prelude::{Client, ClientLike, StreamsInterface};
use protomesh::testing::{bounded, eventually};
use protomesh_data::outbox::{self, OutboxRelay, RelayOptions};
use protomesh_data::stream::{self, ConsumerOptions, Event, StreamConsumer, APPLIED_EVENTS_DDL};
use protomesh_data::testing::{TestDatabase, TestKeys};
use protomesh_data::{self as data, Cache, DataConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::Code;

/// Bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A port nothing listens on.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A connected Redis client for `config`.
async fn redis_for(config: &DataConfig) -> Client {
    let redis = data::connect_redis(config).unwrap();
    eventually(Duration::from_secs(5), "redis connected", || async {
        redis.is_connected().then_some(())
    })
    .await;
    redis
}

/// A fresh database with the tables of the tests' pretend service, and its settings.
async fn service_db(keys: &TestKeys) -> (TestDatabase, DataConfig, Pool) {
    let db = TestDatabase::create().await.unwrap();
    let config = db
        .config()
        .with_default_schema("svc")
        .with_key_prefix(keys.prefix());
    let pool = data::connect_pool(&config).unwrap();
    data::migrate(
        &pool,
        "svc",
        &[
            (1, outbox::OUTBOX_DDL),
            (2, APPLIED_EVENTS_DDL),
            (
                3,
                "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL UNIQUE)",
            ),
        ],
    )
    .await
    .unwrap();
    (db, config, pool)
}

/// Writes `n` events, each in a transaction of its own, with aggregate ids `first..first+n`.
async fn write_events(pool: &Pool, stream: &str, first: usize, n: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::with_capacity(n);
    for i in first..first + n {
        let mut client = pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let payload = serde_json::json!({ "n": i });
        let id = outbox::insert(&tx, stream, "item.created", &i.to_string(), &payload)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        ids.push(id);
    }
    ids
}

async fn unsent(pool: &Pool) -> i64 {
    outbox::lag(pool).await.unwrap().unsent
}

async fn stream_entries(
    redis: &Client,
    key: &str,
) -> Vec<(String, std::collections::HashMap<String, String>)> {
    redis
        .xrange_values::<String, String, String, _, _, _>(key, "-", "+", None)
        .await
        .unwrap()
}

async fn xlen(redis: &Client, key: &str) -> u64 {
    redis.xlen(key).await.unwrap()
}

// --- Postgres ------------------------------------------------------------------------------

#[tokio::test]
async fn migrations_apply_once_even_with_two_concurrent_runners() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::create().await.unwrap();
        let config = db.config().with_default_schema("svc");
        let steps: &[(i64, &str)] = &[
            (1, "CREATE TABLE counter (n int NOT NULL)"),
            (2, "INSERT INTO counter VALUES (1)"),
            (
                3,
                "UPDATE counter SET n = n + 1; CREATE INDEX counter_n ON counter (n)",
            ),
        ];
        let first = data::connect_pool(&config).unwrap();
        let second = data::connect_pool(&config).unwrap();
        let (a, b) = tokio::join!(
            data::migrate(&first, "svc", steps),
            data::migrate(&second, "svc", steps)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut applied: Vec<i64> = a.iter().chain(b.iter()).copied().collect();
        applied.sort_unstable();
        assert_eq!(applied, vec![1, 2, 3], "each step once: {a:?} and {b:?}");

        let client = first.get().await.unwrap();
        let n: i32 = client
            .query_one("SELECT n FROM svc.counter", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2, "step 2 and 3 ran once each");
        let recorded: i64 = client
            .query_one(
                "SELECT count(*) FROM svc.schema_migrations WHERE service = 'svc'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(recorded, 3);

        // A later start applies nothing; a new step is applied alone.
        assert!(data::migrate(&first, "svc", steps)
            .await
            .unwrap()
            .is_empty());
        let mut more = steps.to_vec();
        more.push((4, "ALTER TABLE counter ADD COLUMN note text"));
        assert_eq!(data::migrate(&second, "svc", &more).await.unwrap(), vec![4]);

        // A failing step is reported with its version and leaves nothing behind.
        more.push((5, "CREATE TABLE broken (x nosuchtype)"));
        let err = data::migrate(&first, "svc", &more).await.unwrap_err();
        assert!(
            matches!(err, data::DataError::Migration { version: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("nosuchtype"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn database_errors_map_to_grpc_codes_naming_the_constraint() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::create().await.unwrap();
        let config = db.config();
        let pool = data::connect_pool(&config).unwrap();
        data::migrate(
            &pool,
            "svc",
            &[(
                1,
                "CREATE TABLE projects (id int PRIMARY KEY, name text NOT NULL,
                     CONSTRAINT projects_name_key UNIQUE (name));
                 CREATE TABLE tasks (id int PRIMARY KEY,
                     project_id int NOT NULL REFERENCES projects (id),
                     urgency int NOT NULL CONSTRAINT tasks_urgency_range CHECK (urgency BETWEEN 1 AND 10))",
            )],
        )
        .await
        .unwrap();
        let client = pool.get().await.unwrap();
        client
            .execute("INSERT INTO projects VALUES (1, 'ship')", &[])
            .await
            .unwrap();

        let err = client
            .execute("INSERT INTO projects VALUES (2, 'ship')", &[])
            .await
            .unwrap_err();
        let status = data::status_from_pg(&err, "project");
        assert_eq!(status.code(), Code::AlreadyExists);
        assert!(status.message().contains("projects_name_key"), "{}", status.message());
        assert!(status.message().contains("name"), "{}", status.message());
        assert!(!status.message().contains("INSERT"), "{}", status.message());

        let err = client
            .execute("INSERT INTO tasks VALUES (1, 99, 5)", &[])
            .await
            .unwrap_err();
        let status = data::status_from_pg(&err, "task");
        assert_eq!(status.code(), Code::NotFound, "{}", status.message());
        assert!(status.message().contains("project_id"), "{}", status.message());

        client
            .execute("INSERT INTO tasks VALUES (1, 1, 5)", &[])
            .await
            .unwrap();
        let err = client
            .execute("DELETE FROM projects WHERE id = 1", &[])
            .await
            .unwrap_err();
        let status = data::status_from_pg(&err, "project");
        assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());

        let err = client
            .execute("INSERT INTO tasks VALUES (2, 1, 11)", &[])
            .await
            .unwrap_err();
        let status = data::status_from_pg(&err, "task");
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = protomesh::status::field_violations(&status);
        assert_eq!(violations.len(), 1);
        assert!(violations[0].description.contains("tasks_urgency_range"));

        let err = client
            .execute("SELECT * FROM no_such_table", &[])
            .await
            .unwrap_err();
        let status = data::status_from_pg(&err, "task");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("no_such_table"), "{}", status.message());

        // Through DataError too.
        let status = data::DataError::from(err).to_status("task");
        assert_eq!(status.code(), Code::Internal);
    })
    .await;
}

#[tokio::test]
async fn database_texts_never_reach_the_caller() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::create().await.unwrap();
        let pool = data::connect_pool(&db.config()).unwrap();
        data::migrate(
            &pool,
            "svc",
            &[(1, "CREATE TABLE notes (body text NOT NULL)")],
        )
        .await
        .unwrap();
        let client = pool.get().await.unwrap();

        // A value Postgres text cannot hold: its message names the encoding and the byte.
        let err = client
            .execute("INSERT INTO notes VALUES ($1)", &[&"a\0b"])
            .await
            .unwrap_err();
        let status = data::status_from_pg(&err, "note");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(!status.message().contains("UTF8"), "{}", status.message());
        assert!(!status.message().contains("0x00"), "{}", status.message());

        // Any other error: whatever the server says stays in the log.
        let err = client
            .batch_execute("DO $$ BEGIN RAISE EXCEPTION 'SECRET-42 in the server text'; END $$")
            .await
            .unwrap_err();
        for status in [
            data::status_from_pg(&err, "note"),
            data::DataError::from(err).to_status("note"),
        ] {
            assert_eq!(status.code(), Code::Internal);
            assert_eq!(status.message(), "note: internal error");
        }
    })
    .await;
}

#[tokio::test]
async fn instances_of_a_deployment_share_one_page_token_key() {
    use protomesh_data::page_token::{PageFilter, PageTokenKey, PageTokens, PAGE_TOKEN_KEY_DDL};
    bounded(TEST_TIMEOUT, async {
        let mut keys = Vec::new();
        let mut dbs = Vec::new();
        for _ in 0..2 {
            let db = TestDatabase::create().await.unwrap();
            let pool = data::connect_pool(&db.config().with_default_schema("svc")).unwrap();
            data::migrate(&pool, "svc", &[(1, PAGE_TOKEN_KEY_DDL)])
                .await
                .unwrap();
            // Instances starting together: each offers a key, all read the same one.
            let (a, b, c) = tokio::join!(
                PageTokenKey::stored(&pool),
                PageTokenKey::stored(&pool),
                PageTokenKey::stored(&pool)
            );
            let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
            assert_eq!(a, b);
            assert_eq!(a, c);
            keys.push((a, pool));
            dbs.push(db);
        }
        let filter = PageFilter::new("svc.List");
        let (first_key, first_pool) = &keys[0];
        let sealed = PageTokens::stored(first_pool.clone())
            .seal(&filter, b"cursor")
            .await
            .unwrap();
        let same_deployment = PageTokens::with_key(first_key.clone());
        assert_eq!(
            same_deployment.open(&filter, &sealed).await.unwrap(),
            Ok(b"cursor".to_vec())
        );
        let other_deployment = PageTokens::stored(keys[1].1.clone());
        assert!(other_deployment
            .open(&filter, &sealed)
            .await
            .unwrap()
            .is_err());
    })
    .await;
}

/// Instances of every service start together against a server without their database: each
/// sees none and creates it. All must succeed (one creates it) and migrate their own schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_create_the_database_once() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::not_created().await.unwrap();
        let starts = (0..12).map(|i| {
            let config = DataConfig::with_database_url(db.url())
                .with_default_schema(format!("svc{}", i % 4));
            async move {
                let created = data::ensure_database(&config).await?;
                let pool = data::connect_pool(&config).unwrap();
                data::migrate(
                    &pool,
                    &format!("svc{}", i % 4),
                    &[(1, "CREATE TABLE t (x int)")],
                )
                .await?;
                Ok::<_, data::DataError>(created)
            }
        });
        let outcomes = futures::future::join_all(starts).await;
        let created = outcomes
            .iter()
            .map(|outcome| *outcome.as_ref().unwrap_or_else(|err| panic!("{err}")))
            .filter(|created| *created)
            .count();
        assert_eq!(created, 1, "{outcomes:?}");
    })
    .await;
}

#[tokio::test]
async fn ensure_database_creates_a_missing_database_once() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::create().await.unwrap();
        assert!(
            !data::ensure_database(&db.config()).await.unwrap(),
            "exists already"
        );
        let name = format!("{}_new", db.name());
        let url = data::testing::with_database_name(db.url(), &name);
        let config = DataConfig::with_database_url(&url).with_default_schema("svc");
        assert!(data::ensure_database(&config).await.unwrap());
        assert!(!data::ensure_database(&config).await.unwrap());
        let pool = data::connect_pool(&config).unwrap();
        data::migrate(&pool, "svc", &[(1, "CREATE TABLE t (x int)")])
            .await
            .unwrap();
        drop(pool);
        let admin_url = data::testing::with_database_name(db.url(), "postgres");
        let (admin, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_closed_port_gives_unavailable_quickly() {
    bounded(TEST_TIMEOUT, async {
        let url = format!("postgresql://postgres@127.0.0.1:{}/protomesh", free_port());
        let config = DataConfig::with_database_url(url);
        let pool = data::connect_pool(&config).expect("a pool even while the database is down");
        let started = Instant::now();
        let err = pool.get().await.unwrap_err();
        let status = data::status_from_pg(&err, "task");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().starts_with("database unavailable: "),
            "{}",
            status.message()
        );
        let err = data::migrate(&pool, "svc", &[(1, "SELECT 1")])
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert_eq!(err.to_status("task").code(), Code::Unavailable);
    })
    .await;
}

/// A TCP proxy to `target` on a fixed local port, which the test takes down (closing every
/// connection) and brings back.
struct Proxy {
    port: u16,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let mut proxy = Proxy {
            port: free_port(),
            target,
            task: None,
            connections: Arc::default(),
        };
        proxy.up().await;
        proxy
    }

    async fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let target = self.target;
        let connections = self.connections.clone();
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(relay);
            }
        }));
    }

    fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test]
async fn the_pool_recovers_by_itself_when_the_database_returns() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::create().await.unwrap();
        let mut proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
        let url = format!(
            "postgresql://postgres@127.0.0.1:{}/{}",
            proxy.port,
            db.name()
        );
        let pool = data::connect_pool(&DataConfig::with_database_url(url)).unwrap();
        let query = |pool: Pool| async move {
            let client = pool
                .get()
                .await
                .map_err(|e| data::status_from_pg(&e, "item"))?;
            client
                .query_one("SELECT 1", &[])
                .await
                .map_err(|e| data::status_from_pg(&e, "item"))?;
            Ok::<_, tonic::Status>(())
        };
        query(pool.clone()).await.unwrap();

        proxy.down();
        let status = eventually(Duration::from_secs(5), "a failing query", || {
            let pool = pool.clone();
            async move { query(pool).await.err() }
        })
        .await;
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());

        proxy.up().await;
        eventually(Duration::from_secs(5), "queries working again", || {
            let pool = pool.clone();
            async move { query(pool).await.ok() }
        })
        .await;
    })
    .await;
}

// --- Outbox relay --------------------------------------------------------------------------

#[tokio::test]
async fn the_relay_publishes_every_event_once_in_order_and_marks_it_sent() {
    bounded(TEST_TIMEOUT, async {
        let keys = TestKeys::new();
        let (_db, config, pool) = service_db(&keys).await;
        let redis = redis_for(&config).await;
        let options = RelayOptions::default().listen(config.pg_config().unwrap());
        // Two relays on one outbox (two instances of a service) must not send anything twice.
        let first = OutboxRelay::spawn(pool.clone(), redis.clone(), keys.prefix(), options.clone());
        let second = OutboxRelay::spawn(pool.clone(), redis.clone(), keys.prefix(), options);

        let written = write_events(&pool, "item", 0, 100).await;
        let key = format!("{}item", keys.prefix());
        eventually(Duration::from_secs(10), "100 events published", || async {
            (unsent(&pool).await == 0).then_some(())
        })
        .await;
        // Give a duplicate, if any, the time to show.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let entries = stream_entries(&redis, &key).await;
        assert_eq!(entries.len(), 100);
        let event_ids: Vec<uuid::Uuid> = entries
            .iter()
            .map(|(_, fields)| fields["event_id"].parse().unwrap())
            .collect();
        assert_eq!(event_ids, written, "published in write order");
        assert_eq!(event_ids.iter().collect::<HashSet<_>>().len(), 100);
        for (i, (_, fields)) in entries.iter().enumerate() {
            assert_eq!(fields["aggregate_id"], i.to_string());
            assert_eq!(fields["type"], "item.created");
            let payload: serde_json::Value = serde_json::from_str(&fields["payload"]).unwrap();
            assert_eq!(payload["n"], i);
            assert!(
                humantime::parse_rfc3339(&fields["created_at"]).is_ok(),
                "{fields:?}"
            );
        }
        assert_eq!(first.published() + second.published(), 100);
        let lag = first.lag().await.unwrap();
        assert_eq!(lag.unsent, 0);
        assert_eq!(lag.oldest_unsent_age, None);
        let client = pool.get().await.unwrap();
        let sent: i64 = client
            .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sent, 100);
        // Sent events are purged once old enough, unsent ones never.
        first.stop().await;
        second.stop().await;
        write_events(&pool, "later", 0, 1).await;
        assert_eq!(
            outbox::purge_sent(&pool, Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            outbox::purge_sent(&pool, Duration::ZERO).await.unwrap(),
            100
        );
        assert_eq!(unsent(&pool).await, 1);
    })
    .await;
}

#[tokio::test]
async fn events_wait_in_the_outbox_while_redis_is_down_and_none_is_lost() {
    bounded(TEST_TIMEOUT, async {
        let keys = TestKeys::new();
        let (_db, config, pool) = service_db(&keys).await;
        let dead = config
            .clone()
            .with_redis_url(format!("redis://127.0.0.1:{}", free_port()));
        let dead_redis = data::connect_redis(&dead).unwrap();
        let options = RelayOptions::default().listen(config.pg_config().unwrap());
        let stuck = OutboxRelay::spawn(pool.clone(), dead_redis, keys.prefix(), options.clone());

        write_events(&pool, "item", 0, 20).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(unsent(&pool).await, 20, "nothing sent while Redis is down");
        assert!(!stuck.is_healthy());
        assert_eq!(stuck.published(), 0);
        let lag = stuck.lag().await.unwrap();
        assert!(lag
            .oldest_unsent_age
            .is_some_and(|age| age >= Duration::from_secs(1)));

        // Writes go on during the outage.
        write_events(&pool, "item", 20, 5).await;
        drop(stuck);

        let redis = redis_for(&config).await;
        let relay = OutboxRelay::spawn(pool.clone(), redis.clone(), keys.prefix(), options);
        eventually(Duration::from_secs(10), "the backlog published", || async {
            (unsent(&pool).await == 0).then_some(())
        })
        .await;
        let entries = stream_entries(&redis, &format!("{}item", keys.prefix())).await;
        let aggregates: Vec<String> = entries
            .iter()
            .map(|(_, fields)| fields["aggregate_id"].clone())
            .collect();
        let expected: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        assert_eq!(aggregates, expected);
        assert!(relay.is_healthy());
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_relay_resumes_by_itself_when_redis_comes_back() {
    bounded(TEST_TIMEOUT, async {
        let keys = TestKeys::new();
        let (_db, config, pool) = service_db(&keys).await;
        let mut proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
        let proxied = config
            .clone()
            .with_redis_url(format!("redis://127.0.0.1:{}", proxy.port));
        let redis = redis_for(&proxied).await;
        let options = RelayOptions::default().listen(config.pg_config().unwrap());
        let relay = OutboxRelay::spawn(pool.clone(), redis.clone(), keys.prefix(), options);

        write_events(&pool, "item", 0, 5).await;
        eventually(Duration::from_secs(5), "first events published", || async {
            (unsent(&pool).await == 0).then_some(())
        })
        .await;

        proxy.down();
        write_events(&pool, "item", 5, 5).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(unsent(&pool).await, 5);

        proxy.up().await;
        eventually(Duration::from_secs(15), "the rest published", || async {
            (unsent(&pool).await == 0).then_some(())
        })
        .await;
        let direct = redis_for(&config).await;
        let entries = stream_entries(&direct, &format!("{}item", keys.prefix())).await;
        let aggregates: Vec<String> = entries
            .iter()
            .map(|(_, fields)| fields["aggregate_id"].clone())
            .collect();
        let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(aggregates, expected);
        relay.stop().await;
    })
    .await;
}

// --- Consumers -----------------------------------------------------------------------------

/// Applies events idempotently: one row per event in `seen`, deduplicated by `mark_applied`.
fn applying_handler(
    pool: Pool,
    calls: Arc<Mutex<Vec<Event>>>,
) -> impl Fn(Event) -> std::pin::Pin<Box<dyn Future<Output = Result<(), data::DataError>> + Send>>
       + Send
       + Sync
       + 'static {
    move |event: Event| {
        let pool = pool.clone();
        let calls = calls.clone();
        Box::pin(async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            if stream::mark_applied(&tx, event.event_id).await? {
                tx.execute(
                    "INSERT INTO seen (event_id, aggregate_id) VALUES ($1, $2)",
                    &[&event.event_id, &event.aggregate_id],
                )
                .await?;
            }
            tx.commit().await?;
            calls.lock().unwrap().push(event);
            Ok(())
        })
    }
}

async fn create_seen_table(pool: &Pool) {
    data::migrate(
        pool,
        "consumer",
        &[(
            1,
            "CREATE TABLE seen (event_id uuid PRIMARY KEY, aggregate_id text NOT NULL)",
        )],
    )
    .await
    .unwrap();
}

async fn pending(redis: &Client, key: &str, group: &str) -> Vec<(String, String, u64, u64)> {
    redis.xpending(key, group, ("-", "+", 100)).await.unwrap()
}

#[tokio::test]
async fn a_consumer_handles_each_event_once_and_acknowledges_it() {
    bounded(TEST_TIMEOUT, async {
        let keys = TestKeys::new();
        let (_db, config, pool) = service_db(&keys).await;
        create_seen_table(&pool).await;
        let redis = redis_for(&config).await;
        let relay = OutboxRelay::spawn(
            pool.clone(),
            redis.clone(),
            keys.prefix(),
            RelayOptions::default().listen(config.pg_config().unwrap()),
        );
        let written = write_events(&pool, "item", 0, 10).await;
        write_events(&pool, "other", 100, 3).await;

        let calls = Arc::new(Mutex::new(Vec::new()));
        let consumer = StreamConsumer::new(
            &redis,
            keys.prefix(),
            ConsumerOptions::new("analytics", "analytics-1", ["item", "other"]),
        );
        let handle = consumer.spawn(applying_handler(pool.clone(), calls.clone()));
        eventually(Duration::from_secs(10), "13 events handled", || async {
            (handle.handled() == 13).then_some(())
        })
        .await;
        let calls_so_far = calls.lock().unwrap().clone();
        assert_eq!(calls_so_far.len(), 13);
        let item_events: Vec<uuid::Uuid> = calls_so_far
            .iter()
            .filter(|e| e.stream == "item")
            .map(|e| e.event_id)
            .collect();
        assert_eq!(item_events, written, "in stream order");
        assert!(calls_so_far
            .iter()
            .all(|e| e.event_type == "item.created" && e.created_at.is_some()));
        assert_eq!(
            calls_so_far.iter().filter(|e| e.stream == "other").count(),
            3
        );
        let item_key = format!("{}item", keys.prefix());
        assert!(pending(&redis, &item_key, "analytics").await.is_empty());

        // After reads that found nothing, new events still arrive promptly.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        write_events(&pool, "item", 10, 2).await;
        let started = Instant::now();
        eventually(Duration::from_secs(10), "2 more events handled", || async {
            (handle.handled() == 15).then_some(())
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        let client = pool.get().await.unwrap();
        let seen: i64 = client
            .query_one("SELECT count(*) FROM seen", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 15);
        handle.stop().await;
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn messages_a_crashed_consumer_never_acknowledged_are_claimed_by_another() {
    bounded(TEST_TIMEOUT, async {
        let keys = TestKeys::new();
        let (_db, config, pool) = service_db(&keys).await;
        create_seen_table(&pool).await;
        let redis = redis_for(&config).await;
        let relay = OutboxRelay::spawn(
            pool.clone(),
            redis.clone(),
            keys.prefix(),
            RelayOptions::default().listen(config.pg_config().unwrap()),
        );
        let written = write_events(&pool, "item", 0, 3).await;
        let key = format!("{}item", keys.prefix());
        eventually(Duration::from_secs(10), "3 events published", || async {
            (xlen(&redis, &key).await == 3).then_some(())
        })
        .await;

        // Consumer A reads the messages and dies before acknowledging them.
        let mut options = ConsumerOptions::new("analytics", "analytics-a", ["item"]);
        options.claim_idle = Duration::from_millis(500);
        let a = StreamConsumer::new(&redis, keys.prefix(), options.clone());
        eventually(Duration::from_secs(5), "consumer A connected", || async {
            a.ensure_groups().await.ok()
        })
        .await;
        let crashed = |_event: Event| async { Err::<(), _>("crashed before committing") };
        assert_eq!(a.poll(&crashed).await.unwrap(), 0);
        let held = pending(&redis, &key, "analytics").await;
        assert_eq!(held.len(), 3);
        assert!(held
            .iter()
            .all(|(_, consumer, _, _)| consumer == "analytics-a"));
        drop(a);

        // Consumer B reads nothing new, then claims them once they are idle long enough.
        options.consumer = "analytics-b".to_owned();
        let b = StreamConsumer::new(&redis, keys.prefix(), options);
        eventually(Duration::from_secs(5), "consumer B connected", || async {
            b.ensure_groups().await.ok()
        })
        .await;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let handler = applying_handler(pool.clone(), calls.clone());
        assert_eq!(
            b.claim(&handler).await.unwrap(),
            0,
            "not idle long enough yet"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(b.claim(&handler).await.unwrap(), 3);
        let handled: Vec<uuid::Uuid> = calls.lock().unwrap().iter().map(|e| e.event_id).collect();
        assert_eq!(handled, written);
        assert!(pending(&redis, &key, "analytics").await.is_empty());
        // Nothing new: a read that waits its whole block and finds nothing is no error.
        let started = Instant::now();
        assert_eq!(b.poll(&handler).await.unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(900));
        assert_eq!(b.retry_own_pending(&handler).await.unwrap(), 0);
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn mark_applied_tells_a_duplicate() {
    bounded(TEST_TIMEOUT, async {
        let keys = TestKeys::new();
        let (_db, _config, pool) = service_db(&keys).await;
        let event_id = uuid::Uuid::new_v4();
        let mut client = pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        assert!(stream::mark_applied(&tx, event_id).await.unwrap());
        assert!(!stream::mark_applied(&tx, event_id).await.unwrap());
        tx.commit().await.unwrap();
        let tx = client.transaction().await.unwrap();
        assert!(!stream::mark_applied(&tx, event_id).await.unwrap());
        assert!(stream::mark_applied(&tx, uuid::Uuid::new_v4())
            .await
            .unwrap());
        tx.rollback().await.unwrap();
    })
    .await;
}

// --- Cache ---------------------------------------------------------------------------------

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Item {
    id: u32,
    name: String,
}

#[tokio::test]
async fn the_cache_stores_reads_expires_and_deletes_json() {
    bounded(TEST_TIMEOUT, async {
        let keys = TestKeys::new();
        let config = DataConfig::with_database_url(data::DEFAULT_DATABASE_URL)
            .with_redis_url(protomesh_data::testing::redis_url())
            .with_key_prefix(keys.prefix());
        let redis = redis_for(&config).await;
        let cache = Cache::new(redis.clone(), keys.prefix());
        let item = Item {
            id: 7,
            name: "ship".into(),
        };
        assert_eq!(cache.get::<Item>("item:7").await, None);
        cache.set("item:7", &item, Duration::from_secs(60)).await;
        assert_eq!(cache.get::<Item>("item:7").await, Some(item));
        let stored: Option<String> =
            fred::prelude::KeysInterface::get(&redis, format!("{}item:7", keys.prefix()))
                .await
                .unwrap();
        assert!(stored.is_some(), "stored under the prefix");
        // A value of another shape is a miss, not an error.
        assert_eq!(cache.get::<Vec<u8>>("item:7").await, None);
        cache.del("item:7").await;
        assert_eq!(cache.get::<Item>("item:7").await, None);

        cache.set("short", &1, Duration::from_millis(100)).await;
        assert_eq!(cache.get::<i32>("short").await, Some(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(cache.get::<i32>("short").await, None);
    })
    .await;
}

#[tokio::test]
async fn a_dead_redis_makes_the_cache_a_quick_miss() {
    bounded(TEST_TIMEOUT, async {
        let config = DataConfig::with_database_url(data::DEFAULT_DATABASE_URL)
            .with_redis_url(format!("redis://127.0.0.1:{}", free_port()));
        let cache = Cache::new(data::connect_redis(&config).unwrap(), "x:");
        let started = Instant::now();
        cache.set("k", &"v", Duration::from_secs(60)).await;
        assert_eq!(cache.get::<String>("k").await, None);
        cache.del("k").await;
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );

        // Still a quick miss a while later, when the client is reconnecting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        assert_eq!(cache.get::<String>("k").await, None);
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}
