//! The tasks service through real outages of its dependencies: a private Postgres cluster that is
//! stopped under it (calls answer `UNAVAILABLE` within the database timeout, then work again
//! without a restart and with the data kept), a private Redis stopped while 500 tasks are created
//! (every write succeeds; the events wait in the outbox and all reach the stream once Redis is
//! back), and the priority service appearing after tasks were scored locally. The handler is
//! served in-process on a free loopback port and called with the generated client; the mesh
//! discovers through a private Consul dev agent.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protomesh::auth::testing::SignedIn;
use protomesh::client::Mesh;
use protomesh::consul::{DevAgent, DevAgentOptions};
use protomesh::server::testing::{quick_config, InProcessServer};
use protomesh::server::MeshServer;
use protomesh::testing::{bounded, eventually};
use protomesh_data::deadpool_postgres::Pool;
use protomesh_data::fred::prelude::{Client, ClientLike, KeysInterface, StreamsInterface};
use protomesh_data::outbox::{self, RelayHandle};
use protomesh_data::testing::{
    redis_url, unique_prefix, with_database_name, PrivatePostgres, PrivateRedis, ServiceData,
    TestDatabase, TestKeys,
};
use protomesh_data::{self as data, Cache, DataConfig};
use protomesh_priority::proto::protomesh::priority::v1::Level;
use protomesh_tasks::proto::protomesh::tasks::v1::{
    tasks_service_client::TasksServiceClient, CreateProjectRequest, CreateTaskRequest,
    GetTaskRequest, Project, Task,
};
use protomesh_tasks::{cache_key, TasksHandler, TasksServiceServer, EVENT_STREAM, MIGRATIONS};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A tasks client signed in as someone (the test issuer's token).
type SignedInClient = TasksServiceClient<InterceptedService<Channel, SignedIn>>;
use tonic::Code;

/// Bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// `--db-timeout` of the Postgres outage test: calls must fail within it (plus a second).
const DB_TIMEOUT: Duration = Duration::from_secs(1);

/// Tasks created while Redis is down.
const TASKS_DURING_REDIS_OUTAGE: usize = 500;

/// How many of them are being created at once.
const CREATE_CONCURRENCY: usize = 16;

/// The tasks service on the databases of `config`: migrated pool, Redis client, outbox relay, a
/// dev agent for the mesh, the handler served (not registered). Field order is drop order: the
/// server and the relay go first; the databases themselves belong to the test and outlive this.
struct TasksStack {
    channel: Channel,
    _served: InProcessServer,
    relay: RelayHandle,
    pool: Pool,
    redis: Client,
    agent: DevAgent,
}

impl TasksStack {
    async fn start(config: &DataConfig) -> Self {
        let data = ServiceData::on(config.clone(), "tasks", MIGRATIONS)
            .await
            .unwrap();
        let relay = data.spawn_relay().unwrap();
        let ServiceData { pool, redis, .. } = data;

        let agent = DevAgent::start(DevAgentOptions::discover().unwrap()).unwrap();
        agent.wait_ready(Duration::from_secs(30)).await.unwrap();
        let mesh = Mesh::from_consul(
            agent.client().unwrap(),
            &[protomesh_tasks::proto::FILE_DESCRIPTOR_SET],
        )
        .unwrap();

        let cache = Cache::new(redis.clone(), config.key_prefix.clone());
        let handler = TasksHandler::new(pool.clone(), cache, mesh.clone());
        let mut serve = quick_config(Some(&agent.http_addr()));
        serve.no_register = true;
        let served = InProcessServer::start(
            MeshServer::new("tasks", serve)
                .descriptor_set(protomesh_tasks::proto::FILE_DESCRIPTOR_SET)
                .with_mesh(mesh)
                .add_service(TasksServiceServer::new(handler)),
        )
        .await
        .unwrap();
        let channel = Channel::from_shared(format!("http://{}", served.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            channel,
            _served: served,
            relay,
            pool,
            redis,
            agent,
        }
    }

    /// A client signed in as the user `alice`.
    fn client(&self) -> SignedInClient {
        self.client_as("alice", &["user"])
    }

    /// A client signed in as `subject` with `roles`.
    fn client_as(&self, subject: &str, roles: &[&str]) -> SignedInClient {
        TasksServiceClient::with_interceptor(
            self.channel.clone(),
            SignedIn::as_user(subject, roles),
        )
    }

    async fn create_project(&self, name: &str) -> Result<Project, tonic::Status> {
        self.client()
            .create_project(CreateProjectRequest {
                project: Some(Project {
                    name: name.into(),
                    ..Default::default()
                }),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn create_task(&self, project: &Project, title: &str) -> Result<Task, tonic::Status> {
        create_task(self.client(), &project.id, title).await
    }

    async fn get_task(&self, id: &str) -> Result<Task, tonic::Status> {
        self.client()
            .get_task(GetTaskRequest { id: id.into() })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Creates a task titled `title` (urgency 9, impact 8: score 72, HIGH) in project `project_id`.
async fn create_task(
    mut client: SignedInClient,
    project_id: &str,
    title: &str,
) -> Result<Task, tonic::Status> {
    client
        .create_task(CreateTaskRequest {
            project_id: project_id.to_owned(),
            task: Some(Task {
                title: title.into(),
                urgency: 9,
                impact: 8,
                ..Default::default()
            }),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Runs `call`, which must fail with `UNAVAILABLE` within [`DB_TIMEOUT`] plus a second (and is
/// cut off there, so a hang fails the test rather than stalling it).
async fn assert_unavailable_in_time<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) {
    let bound = DB_TIMEOUT + Duration::from_secs(1);
    let started = Instant::now();
    let result = tokio::time::timeout(bound, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {bound:?} while the database is down"));
    let elapsed = started.elapsed();
    let status = result.expect_err("the database is down");
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(elapsed < bound, "{what} took {elapsed:?}");
}

#[tokio::test]
async fn a_database_outage_is_unavailable_quickly_and_heals_without_a_restart() {
    bounded(TEST_TIMEOUT, async {
        let mut pg = PrivatePostgres::start().await.unwrap();
        let keys = TestKeys::new();
        let mut config = DataConfig::with_database_url(with_database_name(&pg.url(), "tasks"))
            .with_redis_url(redis_url())
            .with_key_prefix(keys.prefix())
            .with_default_schema("tasks");
        config.db_timeout = DB_TIMEOUT;
        assert!(data::ensure_database(&config).await.unwrap());
        let stack = TasksStack::start(&config).await;
        let project = stack.create_project("outage").await.unwrap();
        let task = stack.create_task(&project, "before").await.unwrap();
        let key = format!("{}{}", keys.prefix(), cache_key(task.id.parse().unwrap()));
        let cached: i64 = stack.redis.exists(key.as_str()).await.unwrap();
        assert_eq!(
            cached, 0,
            "creating does not fill the cache: GetTask must ask Postgres"
        );

        pg.stop().await.unwrap();
        assert_unavailable_in_time("GetTask", stack.get_task(&task.id)).await;
        assert_unavailable_in_time("CreateTask", stack.create_task(&project, "during")).await;
        // Again, now that the pool has no connection left to try.
        assert_unavailable_in_time("GetTask again", stack.get_task(&task.id)).await;

        pg.start_again().await.unwrap();
        let restarted = Instant::now();
        // The same handler and pool: they connect again by themselves.
        let fetched = eventually(Duration::from_secs(15), "GetTask to work again", || async {
            stack.get_task(&task.id).await.ok()
        })
        .await;
        println!(
            "GetTask works {:?} after Postgres returned",
            restarted.elapsed()
        );
        assert_eq!(
            fetched, task,
            "the task created before the outage is still there"
        );
        let after = stack.create_task(&project, "after").await.unwrap();
        assert_eq!(stack.get_task(&after.id).await.unwrap(), after);
    })
    .await;
}

/// Every entry of `stream`: (entry id, fields).
async fn stream_entries(redis: &Client, stream: &str) -> Vec<(String, HashMap<String, String>)> {
    redis
        .xrange_values::<String, String, String, _, _, _>(stream, "-", "+", None)
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn tasks_created_while_redis_is_down_all_reach_the_stream_when_it_returns() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::create().await.unwrap();
        let mut redis_server = PrivateRedis::start().await.unwrap();
        // A private Redis: nothing to clean up, but keys stay apart as in production.
        let prefix = unique_prefix();
        let config = db
            .config()
            .with_redis_url(redis_server.url())
            .with_key_prefix(&prefix)
            .with_default_schema("tasks");
        let stack = TasksStack::start(&config).await;
        eventually(Duration::from_secs(10), "the relay healthy", || async {
            stack.relay.is_healthy().then_some(())
        })
        .await;

        redis_server.stop().await.unwrap();
        eventually(Duration::from_secs(5), "the client to notice", || async {
            (!stack.redis.is_connected()).then_some(())
        })
        .await;
        // Created after the stop: a Redis that comes back empty must get this event too.
        let project = stack.create_project("redis-outage").await.unwrap();
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut creators = Vec::new();
        for _ in 0..CREATE_CONCURRENCY {
            let client = stack.client();
            let project_id = project.id.clone();
            let next = next.clone();
            creators.push(tokio::spawn(async move {
                let mut created = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= TASKS_DURING_REDIS_OUTAGE {
                        return created;
                    }
                    let task = create_task(client.clone(), &project_id, &format!("task {n}"))
                        .await
                        .unwrap_or_else(|status| panic!("task {n} refused: {status:?}"));
                    created.push(task.id);
                }
            }));
        }
        let mut task_ids = HashSet::new();
        for creator in creators {
            task_ids.extend(creator.await.unwrap());
        }
        assert_eq!(task_ids.len(), TASKS_DURING_REDIS_OUTAGE);
        println!(
            "{TASKS_DURING_REDIS_OUTAGE} tasks created with Redis down in {:?}",
            started.elapsed()
        );
        let lag = outbox::lag(&stack.pool).await.unwrap();
        assert!(
            lag.unsent > i64::try_from(TASKS_DURING_REDIS_OUTAGE).unwrap(),
            "the events wait in the outbox: {lag:?}"
        );
        // The flag tells of the relay's last attempt, which may predate the stop by its poll
        // interval and connection grace.
        eventually(Duration::from_secs(10), "the relay unhealthy", || async {
            (!stack.relay.is_healthy()).then_some(())
        })
        .await;

        redis_server.start_again().await.unwrap();
        let restarted = Instant::now();
        let stream = format!("{prefix}{EVENT_STREAM}");
        let entries = eventually(Duration::from_secs(30), "every event on the stream", || {
            let stream = stream.clone();
            let redis = stack.redis.clone();
            async move {
                let entries = stream_entries(&redis, &stream).await;
                (entries.len() > TASKS_DURING_REDIS_OUTAGE).then_some(entries)
            }
        })
        .await;
        let mut event_ids = HashSet::new();
        let mut created_ids = HashSet::new();
        for (_, fields) in &entries {
            event_ids.insert(fields["event_id"].clone());
            match fields["type"].as_str() {
                "task.created" => {
                    created_ids.insert(fields["aggregate_id"].clone());
                }
                "project.created" => assert_eq!(fields["aggregate_id"], project.id),
                other => panic!("unexpected event {other}"),
            }
        }
        println!(
            "{} stream entries {:?} after Redis returned, {} distinct events ({} re-sent)",
            entries.len(),
            restarted.elapsed(),
            event_ids.len(),
            entries.len() - event_ids.len()
        );
        for id in &task_ids {
            assert!(created_ids.contains(id), "task.created of {id} missing");
        }
        assert_eq!(created_ids, task_ids, "no task.created of another task");
        assert_eq!(
            event_ids.len(),
            TASKS_DURING_REDIS_OUTAGE + 1,
            "one event per task, and the project's"
        );
        eventually(Duration::from_secs(10), "the outbox drained", || async {
            let lag = outbox::lag(&stack.pool).await.ok()?;
            (lag.unsent == 0).then_some(())
        })
        .await;
        assert!(stack.relay.is_healthy());
    })
    .await;
}

#[tokio::test]
async fn tasks_get_remote_priorities_once_the_priority_service_appears() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::create().await.unwrap();
        let keys = TestKeys::new();
        let config = db
            .config()
            .with_key_prefix(keys.prefix())
            .with_default_schema("tasks");
        let stack = TasksStack::start(&config).await;
        let project = stack.create_project("priority-returns").await.unwrap();

        // No priority instance is registered: scored locally.
        let local = stack.create_task(&project, "alone").await.unwrap();
        assert!(local.priority_fallback);
        assert_eq!(local.priority_score, 72);
        assert_eq!(local.priority_level(), Level::High);

        let _priority = InProcessServer::start(
            MeshServer::new("priority", quick_config(Some(&stack.agent.http_addr())))
                .descriptor_set(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
                .add_service(protomesh_priority::PriorityServiceServer::new(
                    protomesh_priority::PriorityHandler,
                )),
        )
        .await
        .unwrap();
        let appeared = Instant::now();
        stack
            .agent
            .wait_passing("priority", Duration::from_secs(20))
            .await
            .unwrap();
        // The same handler and mesh: the watch picks the instance up (and the breaker, if the
        // failures opened it, lets calls through again).
        let remote = eventually(Duration::from_secs(30), "a remote score", || async {
            let task = stack.create_task(&project, "together").await.unwrap();
            (!task.priority_fallback).then_some(task)
        })
        .await;
        println!(
            "a remote score {:?} after priority started",
            appeared.elapsed()
        );
        assert_eq!(remote.priority_score, 72);
        assert_eq!(remote.priority_level(), Level::High);
        let stored: bool = stack
            .pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT priority_fallback FROM tasks WHERE id = $1",
                &[&uuid::Uuid::parse_str(&remote.id).unwrap()],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!stored);
    })
    .await;
}
