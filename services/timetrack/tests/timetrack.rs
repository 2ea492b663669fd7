//! The timetrack service against the machine's real Postgres and Redis and a private Consul dev
//! agent: each test has a database of its own (schemas `timetrack` and `tasks`), a Redis key
//! prefix of its own, and the handler served in-process on a free loopback port (not
//! registered), called with the generated client. Tasks are confirmed by a real tasks service
//! (`protomesh_tasks::TasksHandler` on the same test database), served in-process and registered
//! in the agent, so the check goes through Consul discovery and the mesh client as in
//! production; one test leaves it unregistered.
//!
//! Calls are signed in with the test issuer's tokens ([`SignedIn`]): the harness's own client as
//! an admin (so tests of the figures read every user's), and each user acting for themselves
//! through the `start_timer`, `stop_timer` and `entries_of` helpers.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use protomesh::auth::testing::SignedIn;
use protomesh::client::Mesh;
use protomesh::consul::{DevAgent, DevAgentOptions};
use protomesh::server::testing::{quick_config, InProcessServer};
use protomesh::server::MeshServer;
use protomesh::status::testing::{assert_invalid, violation_fields};
use protomesh::testing::{bounded, eventually};
use protomesh_data::deadpool_postgres::Pool;
use protomesh_data::fred::prelude::{Client, StreamsInterface};
use protomesh_data::outbox::RelayHandle;
use protomesh_data::testing::{
    closed_port, unreachable_database, ServiceData, TestDatabase, TestKeys,
};
use protomesh_data::{self as data, Cache};
use protomesh_tasks::proto::protomesh::tasks::v1::{
    tasks_service_client::TasksServiceClient, tasks_service_server::TasksService,
    AddProjectMemberRequest, CompleteTaskRequest, CreateProjectRequest, CreateTaskRequest,
    GetTaskRequest, Project, Task,
};
use protomesh_tasks::TasksHandler;
use protomesh_timetrack::proto::protomesh::timetrack::v1::{
    timetrack_service_client::TimetrackServiceClient, GetTotalsRequest, GetTotalsResponse,
    ListEntriesRequest, StartTimerRequest, StartTimerResponse, StopTimerRequest, TimeEntry, Total,
};
use protomesh_timetrack::{TimetrackHandler, TimetrackServiceServer, EVENT_STREAM, MIGRATIONS};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;
use uuid::Uuid;

/// Bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// A timestamp as (seconds, nanos), which compare in time order.
fn stamp(ts: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let ts = ts.unwrap();
    (ts.seconds, ts.nanos)
}

fn at(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339(rfc3339).unwrap()
}

fn timestamp(rfc3339: &str) -> Option<prost_types::Timestamp> {
    Some(at(rfc3339).into())
}

/// Totals as (id, whole seconds), asserting there is no fraction of a second.
fn seconds(totals: &[Total]) -> Vec<(String, i64)> {
    totals
        .iter()
        .map(|total| {
            let duration = total.duration.unwrap();
            assert_eq!(duration.nanos, 0, "{total:?}");
            (total.id.clone(), duration.seconds)
        })
        .collect()
}

/// `message` as a request that gives up after 3 s.
fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(3));
    request
}

/// `message` as a call of the tasks handler by [`ADMIN`]: the identity metadata the server
/// runtime sets on a verified call (the fixture calls the handler without a server).
fn by_admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    protomesh::auth::testing::verified_as(&mut request, ADMIN, &["admin"]);
    request
}

/// The users who start timers for themselves on the fixture's tasks: members of its project.
const MEMBERS: [&str; 4] = ["ada", "alice", "bob", "eve"];

/// A timetrack client whose calls carry a test token.
type SignedClient = TimetrackServiceClient<InterceptedService<Channel, SignedIn>>;

/// The admin of the tests: may act for every user.
const ADMIN: &str = "root";

/// Signs calls in as `user` with the role `user`.
fn as_user(user: &str) -> SignedIn {
    SignedIn::as_user(user, &["user"])
}

/// Signs calls in as [`ADMIN`], with the role `admin`.
fn as_admin() -> SignedIn {
    SignedIn::as_user(ADMIN, &["admin"])
}

/// A channel to the server at `addr`.
async fn channel_to(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Asserts that `result` is NOT_FOUND naming `field`.
#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{}",
        status.message()
    );
}

/// The tasks service of a test: served in-process and registered in the test's agent.
struct TasksFixture {
    handler: TasksHandler,
    project: Project,
    served: InProcessServer,
}

/// Everything one test needs. Field order is drop order: the servers and the relay go before
/// the database is dropped, the agent last but one.
struct Harness {
    channel: Channel,
    _served: InProcessServer,
    tasks: Option<TasksFixture>,
    relay: RelayHandle,
    mesh: Mesh,
    pool: Pool,
    redis: Client,
    keys: TestKeys,
    _agent: DevAgent,
    _db: TestDatabase,
}

impl Harness {
    /// With a tasks service registered in Consul (and passing its health check).
    async fn start() -> Self {
        Self::start_with(true).await
    }

    /// With no tasks service anywhere.
    async fn without_tasks() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(with_tasks: bool) -> Self {
        let db = TestDatabase::create().await.unwrap();
        let keys = TestKeys::new();
        let data = ServiceData::start(&db, &keys, "timetrack", MIGRATIONS)
            .await
            .unwrap();
        let relay = data.spawn_relay().unwrap();
        let ServiceData { pool, redis, .. } = data;

        let agent = DevAgent::start(DevAgentOptions::discover().unwrap()).unwrap();
        agent.wait_ready(Duration::from_secs(30)).await.unwrap();
        let mesh = Mesh::from_consul(
            agent.client().unwrap(),
            &[protomesh_timetrack::proto::FILE_DESCRIPTOR_SET],
        )
        .unwrap();

        let tasks = if with_tasks {
            Some(Self::start_tasks(&db, &keys, &mesh, &agent).await)
        } else {
            None
        };

        let handler = TimetrackHandler::new(pool.clone(), mesh.clone());
        let mut serve = quick_config(Some(&agent.http_addr()));
        serve.no_register = true;
        let served = InProcessServer::start(
            MeshServer::new("timetrack", serve)
                .descriptor_set(protomesh_timetrack::proto::FILE_DESCRIPTOR_SET)
                .with_mesh(mesh.clone())
                .add_service(TimetrackServiceServer::new(handler)),
        )
        .await
        .unwrap();
        let channel = channel_to(served.addr).await;
        Self {
            channel,
            _served: served,
            tasks,
            relay,
            mesh,
            pool,
            redis,
            keys,
            _agent: agent,
            _db: db,
        }
    }

    /// The tasks service on schema `tasks` of the same database, registered as `tasks` and
    /// passing in Consul, with one project.
    async fn start_tasks(
        db: &TestDatabase,
        keys: &TestKeys,
        mesh: &Mesh,
        agent: &DevAgent,
    ) -> TasksFixture {
        let ServiceData { pool, redis, .. } =
            ServiceData::start(db, keys, "tasks", protomesh_tasks::MIGRATIONS)
                .await
                .unwrap();
        let handler = TasksHandler::new(pool, Cache::new(redis, keys.prefix()), mesh.clone());
        let served = InProcessServer::start(
            MeshServer::new("tasks", quick_config(Some(&agent.http_addr())))
                .descriptor_set(protomesh_tasks::proto::FILE_DESCRIPTOR_SET)
                .add_service(protomesh_tasks::TasksServiceServer::new(handler.clone())),
        )
        .await
        .unwrap();
        agent
            .wait_passing("tasks", Duration::from_secs(20))
            .await
            .unwrap();
        let project = handler
            .create_project(by_admin(CreateProjectRequest {
                project: Some(Project {
                    name: "timetrack tests".into(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner();
        for member in MEMBERS {
            handler
                .add_project_member(by_admin(AddProjectMemberRequest {
                    project_id: project.id.clone(),
                    user_id: member.into(),
                }))
                .await
                .unwrap();
        }
        TasksFixture {
            handler,
            project,
            served,
        }
    }

    /// A client signed in as the admin.
    fn client(&self) -> SignedClient {
        self.client_as(as_admin())
    }

    /// A client whose calls carry `signed_in`'s token.
    fn client_as(&self, signed_in: SignedIn) -> SignedClient {
        TimetrackServiceClient::with_interceptor(self.channel.clone(), signed_in)
    }

    /// A new open task in the tasks service.
    async fn task(&self, title: &str) -> String {
        let tasks = self.tasks.as_ref().unwrap();
        tasks
            .handler
            .create_task(by_admin(CreateTaskRequest {
                project_id: tasks.project.id.clone(),
                task: Some(Task {
                    title: title.into(),
                    urgency: 5,
                    impact: 5,
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner()
            .id
    }

    /// A new task in the tasks service, completed.
    async fn done_task(&self, title: &str) -> String {
        let id = self.task(title).await;
        self.tasks
            .as_ref()
            .unwrap()
            .handler
            .complete_task(by_admin(CompleteTaskRequest { id: id.clone() }))
            .await
            .unwrap();
        id
    }

    /// `user_id`, signed in, starts their own timer on `task_id`.
    async fn start_timer(
        &self,
        user_id: &str,
        task_id: &str,
    ) -> Result<StartTimerResponse, tonic::Status> {
        self.client_as(as_user(user_id))
            .start_timer(StartTimerRequest {
                user_id: user_id.into(),
                task_id: task_id.into(),
                note: format!("{user_id} on {task_id}"),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// `user_id`, signed in, stops their own timer.
    async fn stop_timer(&self, user_id: &str) -> Result<TimeEntry, tonic::Status> {
        self.client_as(as_user(user_id))
            .stop_timer(StopTimerRequest {
                user_id: user_id.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every entry of `user_id` (who asks, signed in), newest first, in pages of 1000.
    async fn entries_of(&self, user_id: &str) -> Vec<TimeEntry> {
        let page = self
            .client_as(as_user(user_id))
            .list_entries(ListEntriesRequest {
                user_id: user_id.into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.next_page_token.is_empty());
        page.entries
    }

    async fn totals(&self, request: GetTotalsRequest) -> GetTotalsResponse {
        self.client()
            .get_totals(request)
            .await
            .unwrap()
            .into_inner()
    }

    /// Writes an entry directly in the table (no event).
    async fn insert_entry(
        &self,
        user_id: &str,
        task_id: Uuid,
        started_at: SystemTime,
        stopped_at: Option<SystemTime>,
    ) -> Uuid {
        let id = Uuid::new_v4();
        self.pool
            .get()
            .await
            .unwrap()
            .execute(
                "INSERT INTO entries (id, user_id, task_id, started_at, stopped_at, note)
                 VALUES ($1, $2, $3, $4, $5, '')",
                &[&id, &user_id, &task_id, &started_at, &stopped_at],
            )
            .await
            .unwrap();
        id
    }

    async fn running_count(&self, user_id: &str) -> i64 {
        self.pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM entries WHERE user_id = $1 AND stopped_at IS NULL",
                &[&user_id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The events on the stream: (type, aggregate id, payload).
    async fn events(&self) -> Vec<(String, String, serde_json::Value)> {
        let key = format!("{}{EVENT_STREAM}", self.keys.prefix());
        let entries: Vec<(String, HashMap<String, String>)> = self
            .redis
            .xrange_values::<String, String, String, _, _, _>(key, "-", "+", None)
            .await
            .unwrap();
        entries
            .into_iter()
            .map(|(_, fields)| {
                (
                    fields["type"].clone(),
                    fields["aggregate_id"].clone(),
                    serde_json::from_str(&fields["payload"]).unwrap(),
                )
            })
            .collect()
    }

    /// The events once there are at least `count` of them.
    async fn wait_events(&self, count: usize) -> Vec<(String, String, serde_json::Value)> {
        eventually(Duration::from_secs(10), "events on the stream", || async {
            let events = self.events().await;
            (events.len() >= count).then_some(events)
        })
        .await
    }
}

#[tokio::test]
async fn timers_start_switch_and_stop_with_events_in_order() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let first_task = h.task("write").await;
        let second_task = h.task("review").await;

        let first = h.start_timer("ada", &first_task).await.unwrap();
        assert!(first.stopped.is_none());
        let first = first.started.unwrap();
        assert_eq!(first.user_id, "ada");
        assert_eq!(first.task_id, first_task);
        assert_eq!(first.note, format!("ada on {first_task}"));
        assert!(first.started_at.is_some());
        assert!(first.stopped_at.is_none());

        // Running: listed without a stop, its duration growing.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let listed = h.entries_of("ada").await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, first.id);
        assert!(listed[0].stopped_at.is_none());
        let so_far = listed[0].duration.unwrap();
        assert!(
            so_far.seconds > 0 || so_far.nanos >= 20_000_000,
            "{so_far:?}"
        );
        assert_eq!(h.running_count("ada").await, 1);

        // Starting another stops the first, where the second starts.
        let second = h.start_timer("ada", &second_task).await.unwrap();
        let stopped = second.stopped.unwrap();
        let second = second.started.unwrap();
        assert_eq!(stopped.id, first.id);
        assert_eq!(stopped.started_at, first.started_at);
        assert_eq!(stopped.stopped_at, second.started_at);
        assert!(stamp(&stopped.stopped_at) >= stamp(&stopped.started_at));
        assert!(stopped.duration.unwrap().nanos > 0 || stopped.duration.unwrap().seconds > 0);
        assert_eq!(second.task_id, second_task);
        assert!(second.stopped_at.is_none());
        assert_eq!(h.running_count("ada").await, 1);

        // Another user's timer is independent.
        let other = h.start_timer("bob", &first_task).await.unwrap();
        assert!(other.stopped.is_none());

        let ended = h.stop_timer("ada").await.unwrap();
        assert_eq!(ended.id, second.id);
        assert!(ended.stopped_at.is_some());
        assert_eq!(h.running_count("ada").await, 0);
        assert_eq!(h.running_count("bob").await, 1);

        let none = h.stop_timer("ada").await.expect_err("nothing runs");
        assert_eq!(none.code(), Code::FailedPrecondition, "{none:?}");
        assert!(none.message().contains("user_id"), "{}", none.message());

        // On the stream, in commit order: the stop of the first before the start of the second.
        let events = h.wait_events(5).await;
        let summary: Vec<(&str, &str)> = events
            .iter()
            .map(|(t, id, _)| (t.as_str(), id.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("time.started", first.id.as_str()),
                ("time.stopped", first.id.as_str()),
                ("time.started", second.id.as_str()),
                ("time.started", other.started.as_ref().unwrap().id.as_str()),
                ("time.stopped", second.id.as_str()),
            ]
        );
        let started = &events[0].2;
        assert_eq!(started["id"], first.id);
        assert_eq!(started["user_id"], "ada");
        assert_eq!(started["task_id"], first_task);
        assert_eq!(started["note"], format!("ada on {first_task}"));
        assert!(started["stopped_at"].is_null());
        assert!(started.get("duration").is_none());
        let started_at = humantime::parse_rfc3339(started["started_at"].as_str().unwrap()).unwrap();
        assert_eq!(Some(started_at.into()), first.started_at);
        let stopped_event = &events[1].2;
        let stopped_at =
            humantime::parse_rfc3339(stopped_event["stopped_at"].as_str().unwrap()).unwrap();
        assert_eq!(Some(stopped_at.into()), stopped.stopped_at);
        assert_eq!(events[2].2["started_at"], stopped_event["stopped_at"]);
        assert!(events[4].2["stopped_at"].is_string());
        eventually(Duration::from_secs(5), "the relay's count", || async {
            (h.relay.published() >= 5).then_some(())
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn tasks_that_are_unknown_or_done_are_refused() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let unknown = h
            .start_timer("ada", &Uuid::new_v4().to_string())
            .await
            .expect_err("unknown task");
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
        assert!(
            unknown.message().contains("task_id"),
            "{}",
            unknown.message()
        );

        let done = h.done_task("finished").await;
        let refused = h.start_timer("ada", &done).await.expect_err("done task");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("task_id"),
            "{}",
            refused.message()
        );
        assert!(refused.message().contains(&done), "{}", refused.message());

        // A refused start leaves the running timer alone.
        let open = h.task("open").await;
        let running = h.start_timer("ada", &open).await.unwrap().started.unwrap();
        h.start_timer("ada", &done).await.expect_err("done task");
        let entries = h.entries_of("ada").await;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, running.id);
        assert!(entries[0].stopped_at.is_none());
    })
    .await;
}

#[tokio::test]
async fn an_unregistered_tasks_service_is_unavailable_and_nothing_is_recorded() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::without_tasks().await;
        let started = Instant::now();
        let mut request = tonic::Request::new(StartTimerRequest {
            user_id: "ada".into(),
            task_id: Uuid::new_v4().to_string(),
            note: String::new(),
        });
        request.set_timeout(Duration::from_secs(5));
        let status = h
            .client()
            .start_timer(request)
            .await
            .expect_err("nobody confirms the task");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("tasks service could not confirm"),
            "{}",
            status.message()
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(h.entries_of("ada").await.is_empty());
        let outbox: i64 = h
            .pool
            .get()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(outbox, 0);
    })
    .await;
}

#[tokio::test]
async fn concurrent_starts_of_one_user_leave_one_running_timer() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let mut tasks = Vec::new();
        for i in 0..4 {
            tasks.push(h.task(&format!("task {i}")).await);
        }
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let mut client = h.client();
                let task_id = tasks[i % tasks.len()].clone();
                tokio::spawn(async move {
                    client
                        .start_timer(StartTimerRequest {
                            user_id: "ada".into(),
                            task_id,
                            note: format!("call {i}"),
                        })
                        .await
                        .map(tonic::Response::into_inner)
                })
            })
            .collect();
        let mut responses = Vec::new();
        for call in calls {
            responses.push(call.await.unwrap().unwrap());
        }
        assert_eq!(h.running_count("ada").await, 1);
        let entries = h.entries_of("ada").await;
        assert_eq!(entries.len(), 20);
        assert_eq!(entries.iter().filter(|e| e.stopped_at.is_none()).count(), 1);
        // One after the other: each start but the first stopped exactly the entry before it.
        assert_eq!(responses.iter().filter(|r| r.stopped.is_none()).count(), 1);
        let stopped: HashSet<String> = responses
            .iter()
            .filter_map(|r| r.stopped.as_ref().map(|e| e.id.clone()))
            .collect();
        assert_eq!(stopped.len(), 19);
        // Entries chain: each stop is the next one's start.
        for pair in entries.windows(2) {
            assert_eq!(pair[1].stopped_at, pair[0].started_at, "{pair:?}");
        }
        let events = h.wait_events(39).await;
        assert_eq!(events.len(), 39);
        assert_eq!(events.iter().filter(|e| e.0 == "time.started").count(), 20);
    })
    .await;
}

#[tokio::test]
async fn entries_page_to_the_end_newest_first_and_filter_by_period() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let task_a = Uuid::new_v4();
        let task_b = Uuid::new_v4();
        let base = at("2024-05-01T00:00:00Z");
        let mut ada = HashSet::new();
        for i in 0..130u64 {
            // Pairs share a start: the id orders them.
            let start = base + Duration::from_secs(60 * (i / 2));
            let task = if i % 3 == 0 { task_b } else { task_a };
            ada.insert(
                h.insert_entry("ada", task, start, Some(start + Duration::from_secs(30)))
                    .await
                    .to_string(),
            );
        }
        h.insert_entry("bob", task_a, base, None).await;

        let mut seen = Vec::new();
        let mut token = String::new();
        for _ in 0..20 {
            let page = h
                .client()
                .list_entries(ListEntriesRequest {
                    user_id: "ada".into(),
                    page_size: 17,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.entries.len() <= 17);
            seen.extend(page.entries);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let ids: Vec<&str> = seen.iter().map(|e| e.id.as_str()).collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "no entry twice");
        assert_eq!(ids.len(), 130, "every entry");

        // Page tokens are signed and bound to the filter they were handed out with.
        let first = h
            .client()
            .list_entries(ListEntriesRequest {
                user_id: "ada".into(),
                page_size: 17,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .next_page_token;
        let flipped = {
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            use base64::Engine as _;
            let mut bytes = URL_SAFE_NO_PAD.decode(&first).unwrap();
            bytes[3] ^= 0x01;
            URL_SAFE_NO_PAD.encode(bytes)
        };
        for request in [
            ListEntriesRequest {
                user_id: "ada".into(),
                page_token: flipped,
                ..Default::default()
            },
            ListEntriesRequest {
                user_id: "bob".into(),
                page_token: first.clone(),
                ..Default::default()
            },
            ListEntriesRequest {
                user_id: "ada".into(),
                task_id: task_a.to_string(),
                page_token: first.clone(),
                ..Default::default()
            },
            ListEntriesRequest {
                user_id: "ada".into(),
                from: timestamp("2024-05-01T00:00:00Z"),
                page_token: first.clone(),
                ..Default::default()
            },
        ] {
            let answer = h.client().list_entries(request).await;
            if let Err(status) = &answer {
                assert!(!status.message().contains(&first), "{status:?}");
            }
            assert_invalid(answer, "page_token");
        }
        assert!(seen.iter().all(|e| ada.contains(&e.id)));
        for pair in seen.windows(2) {
            let key = |e: &TimeEntry| (stamp(&e.started_at), Uuid::parse_str(&e.id).unwrap());
            assert!(key(&pair[0]) > key(&pair[1]), "order: {pair:?}");
        }

        // By task, both users; the running entry of bob included.
        let by_task = h
            .client()
            .list_entries(ListEntriesRequest {
                task_id: task_a.to_string(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert_eq!(by_task.len(), 130 - 44 + 1);
        assert!(by_task.iter().all(|e| e.task_id == task_a.to_string()));
        assert_eq!(by_task.iter().filter(|e| e.user_id == "bob").count(), 1);

        // [00:10:15, 00:12:00): the entry of 00:10:00–00:10:30 overlaps, 00:12:00 starts at the
        // end and is out; minutes 10 and 11 have two entries each.
        let in_period = h
            .client()
            .list_entries(ListEntriesRequest {
                user_id: "ada".into(),
                from: timestamp("2024-05-01T00:10:15Z"),
                to: timestamp("2024-05-01T00:12:00Z"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        let starts: Vec<i64> = in_period
            .iter()
            .map(|e| stamp(&e.started_at).0 - stamp(&Some(base.into())).0)
            .collect();
        assert_eq!(starts, vec![660, 660, 600, 600]);
        // An entry ending exactly at `from` is out: [00:10:30, …) drops minute 10.
        let after_minute_ten = h
            .client()
            .list_entries(ListEntriesRequest {
                user_id: "ada".into(),
                task_id: task_a.to_string(),
                from: timestamp("2024-05-01T00:10:30Z"),
                to: timestamp("2024-05-01T00:12:00Z"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert!(after_minute_ten
            .iter()
            .all(|e| stamp(&e.started_at).0 - stamp(&Some(base.into())).0 == 660));
        assert!(!after_minute_ten.is_empty());
    })
    .await;
}

#[tokio::test]
async fn totals_clip_entries_to_the_period() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let task_a = Uuid::parse_str("aaaaaaaa-0000-4000-8000-000000000000").unwrap();
        let task_b = Uuid::parse_str("bbbbbbbb-0000-4000-8000-000000000000").unwrap();
        let task_c = Uuid::parse_str("cccccccc-0000-4000-8000-000000000000").unwrap();
        let entry = |user: &'static str, task: Uuid, from: &str, to: &str| {
            let (from, to) = (at(from), at(to));
            let h = &h;
            async move { h.insert_entry(user, task, from, Some(to)).await }
        };
        // Period [10:30, 12:00).
        entry(
            "ada",
            task_a,
            "2024-05-01T10:00:00Z",
            "2024-05-01T11:00:00Z",
        )
        .await; // 30 min in
        entry(
            "ada",
            task_b,
            "2024-05-01T11:30:00Z",
            "2024-05-01T13:00:00Z",
        )
        .await; // 30 min in
        entry(
            "bob",
            task_a,
            "2024-05-01T09:00:00Z",
            "2024-05-01T14:00:00Z",
        )
        .await; // 90 min in
        entry(
            "bob",
            task_b,
            "2024-05-01T08:00:00Z",
            "2024-05-01T10:30:00Z",
        )
        .await; // ends at from
        entry(
            "dan",
            task_c,
            "2024-05-01T10:45:00Z",
            "2024-05-01T11:15:00Z",
        )
        .await; // 30 min
        entry(
            "dan",
            task_c,
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:30:00Z",
        )
        .await; // starts at to
        let period = GetTotalsRequest {
            from: timestamp("2024-05-01T10:30:00Z"),
            to: timestamp("2024-05-01T12:00:00Z"),
            ..Default::default()
        };
        let totals = h.totals(period.clone()).await;
        assert_eq!(
            seconds(&totals.per_task),
            vec![
                (task_a.to_string(), 7200),
                (task_b.to_string(), 1800),
                (task_c.to_string(), 1800),
            ]
        );
        assert_eq!(
            seconds(&totals.per_user),
            vec![
                ("bob".to_owned(), 5400),
                ("ada".to_owned(), 3600),
                ("dan".to_owned(), 1800),
            ]
        );

        let ada = h
            .totals(GetTotalsRequest {
                user_id: "ada".into(),
                ..period.clone()
            })
            .await;
        assert_eq!(
            seconds(&ada.per_task),
            vec![(task_a.to_string(), 1800), (task_b.to_string(), 1800)]
        );
        assert_eq!(seconds(&ada.per_user), vec![("ada".to_owned(), 3600)]);

        let on_a = h
            .totals(GetTotalsRequest {
                task_id: task_a.to_string(),
                ..period.clone()
            })
            .await;
        assert_eq!(seconds(&on_a.per_task), vec![(task_a.to_string(), 7200)]);
        assert_eq!(
            seconds(&on_a.per_user),
            vec![("bob".to_owned(), 5400), ("ada".to_owned(), 1800)]
        );

        let nothing = h
            .totals(GetTotalsRequest {
                user_id: "nobody".into(),
                ..period.clone()
            })
            .await;
        assert!(nothing.per_task.is_empty() && nothing.per_user.is_empty());

        // A running timer counts up to now: started ten minutes ago.
        let started = SystemTime::now() - Duration::from_secs(600);
        h.insert_entry("eve", task_a, started, None).await;
        let before = Instant::now();
        let running = h
            .totals(GetTotalsRequest {
                from: Some((started - Duration::from_secs(3600)).into()),
                to: Some((started + Duration::from_secs(7200)).into()),
                user_id: "eve".into(),
                ..Default::default()
            })
            .await;
        let elapsed = before.elapsed();
        let total = running.per_user[0].duration.unwrap();
        let micros = total.seconds * 1_000_000 + i64::from(total.nanos) / 1_000;
        assert!(micros >= 599_000_000, "{total:?}");
        assert!(
            micros <= 600_000_000 + i64::try_from(elapsed.as_micros()).unwrap() + 1_000_000,
            "{total:?}"
        );
        // …and only up to the end of the period when it ends before now.
        let clipped = h
            .totals(GetTotalsRequest {
                from: Some(started.into()),
                to: Some((started + Duration::from_secs(120)).into()),
                user_id: "eve".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(seconds(&clipped.per_user), vec![("eve".to_owned(), 120)]);
    })
    .await;
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let task = h.task("valid").await;
        let start = |user_id: String, task_id: String, note: String| {
            let mut client = h.client();
            async move {
                client
                    .start_timer(StartTimerRequest {
                        user_id,
                        task_id,
                        note,
                    })
                    .await
            }
        };
        assert_invalid(
            start(String::new(), task.clone(), String::new()).await,
            "user_id",
        );
        assert_invalid(
            start("x".repeat(201), task.clone(), String::new()).await,
            "user_id",
        );
        assert_invalid(
            start("ada".into(), "x".into(), String::new()).await,
            "task_id",
        );
        assert_invalid(
            start("ada".into(), String::new(), String::new()).await,
            "task_id",
        );
        assert_invalid(
            start("ada".into(), task.clone(), "n".repeat(1001)).await,
            "note",
        );
        let several = start(String::new(), "nope".into(), "n".repeat(1001))
            .await
            .expect_err("three violations");
        assert_eq!(
            violation_fields(&several),
            vec!["user_id", "task_id", "note"]
        );
        assert_invalid(
            h.client()
                .stop_timer(StopTimerRequest {
                    user_id: String::new(),
                })
                .await,
            "user_id",
        );

        let list = |request: ListEntriesRequest| {
            let mut client = h.client();
            async move { client.list_entries(request).await }
        };
        let ada = || ListEntriesRequest {
            user_id: "ada".into(),
            ..Default::default()
        };
        assert_invalid(list(ListEntriesRequest::default()).await, "user_id");
        assert_invalid(
            list(ListEntriesRequest {
                task_id: "t1".into(),
                ..Default::default()
            })
            .await,
            "task_id",
        );
        assert_invalid(
            list(ListEntriesRequest {
                page_size: 1001,
                ..ada()
            })
            .await,
            "page_size",
        );
        assert_invalid(
            list(ListEntriesRequest {
                page_size: -1,
                ..ada()
            })
            .await,
            "page_size",
        );
        for token in ["!!!", "AAAA", "c29tZXRoaW5nIGVsc2U"] {
            assert_invalid(
                list(ListEntriesRequest {
                    page_token: token.into(),
                    ..ada()
                })
                .await,
                "page_token",
            );
        }
        assert_invalid(
            list(ListEntriesRequest {
                from: timestamp("2024-05-02T00:00:00Z"),
                to: timestamp("2024-05-01T00:00:00Z"),
                ..ada()
            })
            .await,
            "to",
        );
        assert_invalid(
            list(ListEntriesRequest {
                from: timestamp("2024-05-01T00:00:00Z"),
                to: timestamp("2024-05-01T00:00:00Z"),
                ..ada()
            })
            .await,
            "to",
        );
        assert_invalid(
            list(ListEntriesRequest {
                from: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -5,
                }),
                ..ada()
            })
            .await,
            "from",
        );
        // Page size 0 is the default.
        assert!(list(ada()).await.is_ok());

        let totals = |request: GetTotalsRequest| {
            let mut client = h.client();
            async move { client.get_totals(request).await }
        };
        let day = GetTotalsRequest {
            from: timestamp("2024-05-01T00:00:00Z"),
            to: timestamp("2024-05-02T00:00:00Z"),
            ..Default::default()
        };
        assert_invalid(
            totals(GetTotalsRequest {
                from: None,
                ..day.clone()
            })
            .await,
            "from",
        );
        assert_invalid(
            totals(GetTotalsRequest {
                to: None,
                ..day.clone()
            })
            .await,
            "to",
        );
        assert_eq!(
            violation_fields(&totals(GetTotalsRequest::default()).await.unwrap_err()),
            vec!["from", "to"]
        );
        assert_invalid(
            totals(GetTotalsRequest {
                from: day.to,
                to: day.from,
                ..Default::default()
            })
            .await,
            "to",
        );
        assert_invalid(
            totals(GetTotalsRequest {
                to: timestamp("2025-05-02T00:00:01Z"),
                ..day.clone()
            })
            .await,
            "to",
        );
        assert!(totals(GetTotalsRequest {
            to: timestamp("2025-05-02T00:00:00Z"),
            ..day.clone()
        })
        .await
        .is_ok());
        assert_invalid(
            totals(GetTotalsRequest {
                task_id: "x".into(),
                ..day.clone()
            })
            .await,
            "task_id",
        );
        assert_invalid(
            totals(GetTotalsRequest {
                user_id: "u".repeat(201),
                ..day.clone()
            })
            .await,
            "user_id",
        );

        // Nothing was written by the refused calls.
        let written: i64 = h
            .pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT (SELECT count(*) FROM entries) + (SELECT count(*) FROM outbox)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(written, 0);
    })
    .await;
}

#[tokio::test]
async fn the_database_enforces_one_running_timer_per_user() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let task = Uuid::new_v4();
        let now = SystemTime::now();
        h.insert_entry("ada", task, now, None).await;
        let client = h.pool.get().await.unwrap();
        let second = client
            .execute(
                "INSERT INTO entries (id, user_id, task_id, started_at) VALUES ($1, 'ada', $2, $3)",
                &[&Uuid::new_v4(), &task, &now],
            )
            .await
            .expect_err("a second running timer");
        assert_eq!(
            second.code(),
            Some(&protomesh_data::tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        );
        let backwards = client
            .execute(
                "INSERT INTO entries (id, user_id, task_id, started_at, stopped_at)
                 VALUES ($1, 'bob', $2, $3, $4)",
                &[
                    &Uuid::new_v4(),
                    &task,
                    &now,
                    &(now - Duration::from_secs(1)),
                ],
            )
            .await
            .expect_err("stopped before started");
        assert_eq!(
            backwards.code(),
            Some(&protomesh_data::tokio_postgres::error::SqlState::CHECK_VIOLATION)
        );
    })
    .await;
}

#[tokio::test]
async fn a_database_that_is_down_answers_unavailable_within_the_deadline() {
    bounded(TEST_TIMEOUT, async {
        // A live mesh with a registered tasks service, so StartTimer gets past its task check.
        let h = Harness::start().await;
        let task = h.task("confirmed").await;
        let port = closed_port();
        let config = unreachable_database(port);
        let pool = data::connect_pool(&config).unwrap();
        let mut serve = quick_config(Some("127.0.0.1:1"));
        serve.no_register = true;
        let served = InProcessServer::start(
            MeshServer::new("timetrack", serve)
                .descriptor_set(protomesh_timetrack::proto::FILE_DESCRIPTOR_SET)
                .add_service(TimetrackServiceServer::new(TimetrackHandler::new(
                    pool,
                    h.mesh.clone(),
                ))),
        )
        .await
        .unwrap();
        let mut client =
            TimetrackServiceClient::with_interceptor(channel_to(served.addr).await, as_user("ada"));

        let started = Instant::now();
        let status = client
            .start_timer(with_deadline(StartTimerRequest {
                user_id: "ada".into(),
                task_id: task,
                note: String::new(),
            }))
            .await
            .expect_err("no database");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("database"),
            "{}",
            status.message()
        );
        let status = client
            .stop_timer(with_deadline(StopTimerRequest {
                user_id: "ada".into(),
            }))
            .await
            .expect_err("no database");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let status = client
            .list_entries(with_deadline(ListEntriesRequest {
                user_id: "ada".into(),
                ..Default::default()
            }))
            .await
            .expect_err("no database");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let status = client
            .get_totals(with_deadline(GetTotalsRequest {
                from: timestamp("2024-05-01T00:00:00Z"),
                to: timestamp("2024-05-02T00:00:00Z"),
                ..Default::default()
            }))
            .await
            .expect_err("no database");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn users_start_stop_and_read_only_their_own_timers_and_admins_act_for_anyone() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let task = h.task("shared").await;
        let other_task = h.task("other").await;
        let mut alice = h.client_as(as_user("alice"));
        let mut bob = h.client_as(as_user("bob"));
        let mut admin = h.client();
        let start = |user_id: &str, task_id: &str| StartTimerRequest {
            user_id: user_id.into(),
            task_id: task_id.into(),
            note: String::new(),
        };
        let stop = |user_id: &str| StopTimerRequest {
            user_id: user_id.into(),
        };
        let list = |user_id: &str, task_id: &str| ListEntriesRequest {
            user_id: user_id.into(),
            task_id: task_id.into(),
            page_size: 1000,
            ..Default::default()
        };
        let totals = |user_id: &str| GetTotalsRequest {
            from: Some((SystemTime::now() - Duration::from_secs(3600)).into()),
            to: Some((SystemTime::now() + Duration::from_secs(3600)).into()),
            user_id: user_id.into(),
            ..Default::default()
        };

        // "me" is the caller.
        let running = alice
            .start_timer(start("me", &task))
            .await
            .unwrap()
            .into_inner()
            .started
            .unwrap();
        assert_eq!(running.user_id, "alice");

        // Bob cannot touch or see Alice's timer: it does not exist for him.
        assert_not_found(bob.start_timer(start("alice", &task)).await, "user_id");
        assert_not_found(bob.stop_timer(stop("alice")).await, "user_id");
        // A task in a project Carol is not a member of does not exist for her timer either: the
        // tasks service decides, asked with Carol's own credential.
        let mut carol = h.client_as(as_user("carol"));
        assert_not_found(carol.start_timer(start("me", &task)).await, "task_id");
        assert_eq!(h.running_count("alice").await, 1, "still running");
        assert_eq!(h.running_count("bob").await, 0, "nothing started for bob");
        assert_not_found(bob.list_entries(list("alice", "")).await, "user_id");
        assert_not_found(bob.list_entries(list("alice", &task)).await, "user_id");
        assert_not_found(bob.get_totals(totals("alice")).await, "user_id");

        // By task, or with no user: only his own entries and totals.
        let on_task = bob
            .list_entries(list("", &task))
            .await
            .unwrap()
            .into_inner();
        assert!(on_task.entries.is_empty(), "{on_task:?}");
        let mine = bob.get_totals(totals("")).await.unwrap().into_inner();
        assert!(
            mine.per_task.is_empty() && mine.per_user.is_empty(),
            "{mine:?}"
        );
        bob.start_timer(start("bob", &task)).await.unwrap();
        for user_id in ["", "me", "bob"] {
            let entries = bob
                .list_entries(list(user_id, &task))
                .await
                .unwrap()
                .into_inner()
                .entries;
            assert_eq!(entries.len(), 1, "{user_id:?}: {entries:?}");
            assert_eq!(entries[0].user_id, "bob");
            let mine = bob.get_totals(totals(user_id)).await.unwrap().into_inner();
            let users: Vec<&str> = mine.per_user.iter().map(|t| t.id.as_str()).collect();
            assert_eq!(users, ["bob"], "{user_id:?}");
            assert_eq!(mine.per_task.len(), 1);
        }
        let hers = alice.get_totals(totals("me")).await.unwrap().into_inner();
        let users: Vec<&str> = hers.per_user.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(users, ["alice"]);

        // An admin acts for Alice and reads everyone's.
        let switched = admin
            .start_timer(start("alice", &other_task))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(switched.stopped.unwrap().id, running.id);
        assert_eq!(switched.started.unwrap().user_id, "alice");
        let stopped = admin.stop_timer(stop("alice")).await.unwrap().into_inner();
        assert_eq!(stopped.user_id, "alice");
        assert_eq!(h.running_count("alice").await, 0);
        let hers = admin
            .list_entries(list("alice", ""))
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert_eq!(hers.len(), 2);
        assert!(hers.iter().all(|e| e.user_id == "alice"));
        let everyone = admin.get_totals(totals("")).await.unwrap().into_inner();
        let mut users: Vec<&str> = everyone.per_user.iter().map(|t| t.id.as_str()).collect();
        users.sort_unstable();
        assert_eq!(users, ["alice", "bob"]);
        let on_task = admin
            .list_entries(list("", &task))
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert_eq!(on_task.len(), 2, "both users' entries on the task");

        // Alice's own stop: nothing runs any more.
        let none = alice.stop_timer(stop("me")).await.expect_err("stopped");
        assert_eq!(none.code(), Code::FailedPrecondition, "{none:?}");
    })
    .await;
}

#[tokio::test]
async fn the_task_check_carries_the_caller_s_credential() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let task = h.task("checked").await;
        // The tasks service answers no one without a credential…
        let tasks_addr = h.tasks.as_ref().unwrap().served.addr;
        let refused = TasksServiceClient::new(channel_to(tasks_addr).await)
            .get_task(GetTaskRequest { id: task.clone() })
            .await
            .expect_err("no credential");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        // …so a confirmed task means it got the caller's.
        let started = h.start_timer("alice", &task).await.unwrap();
        assert_eq!(started.started.unwrap().task_id, task);
    })
    .await;
}

#[tokio::test]
async fn calls_without_a_verified_credential_are_unauthenticated() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::without_tasks().await;
        let period = GetTotalsRequest {
            from: timestamp("2024-05-01T00:00:00Z"),
            to: timestamp("2024-05-02T00:00:00Z"),
            ..Default::default()
        };
        let stop = || StopTimerRequest {
            user_id: "me".into(),
        };
        let start = || StartTimerRequest {
            user_id: "me".into(),
            task_id: Uuid::new_v4().to_string(),
            note: String::new(),
        };
        let list = || ListEntriesRequest {
            user_id: "me".into(),
            ..Default::default()
        };

        // No credential at all.
        let mut anonymous = TimetrackServiceClient::new(h.channel.clone());
        // Identity metadata set by hand, as if a gateway had verified an admin: the runtime
        // removes it and finds no credential.
        let mut claimed = TimetrackServiceClient::with_interceptor(
            h.channel.clone(),
            |mut request: tonic::Request<()>| {
                let metadata = request.metadata_mut();
                metadata.insert(protomesh::identity::SUBJECT, "alice".parse().unwrap());
                metadata.insert(protomesh::identity::ROLES, "admin".parse().unwrap());
                metadata.insert(protomesh::identity::AUTH_METHOD, "jwt".parse().unwrap());
                Ok(request)
            },
        );
        let mut refusals = vec![
            anonymous.start_timer(start()).await.unwrap_err(),
            anonymous.stop_timer(stop()).await.unwrap_err(),
            anonymous.list_entries(list()).await.unwrap_err(),
            anonymous.get_totals(period.clone()).await.unwrap_err(),
        ];
        refusals.extend([
            claimed.start_timer(start()).await.unwrap_err(),
            claimed.stop_timer(stop()).await.unwrap_err(),
            claimed.list_entries(list()).await.unwrap_err(),
            claimed.get_totals(period.clone()).await.unwrap_err(),
        ]);
        for status in refusals {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        }
        let written: i64 = h
            .pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT (SELECT count(*) FROM entries) + (SELECT count(*) FROM outbox)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(written, 0);
    })
    .await;
}
