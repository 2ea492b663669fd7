//! The analytics service against the machine's real Postgres and Redis: each test has a database
//! of its own and a Redis key prefix of its own, feeds events by `XADD`-ing messages in the outbox
//! relay's exact format (fields `event_id`, `type`, `aggregate_id`, `payload`, `created_at`) to
//! `{prefix}tasks` and `{prefix}timetrack`, and reads the figures from the handler (with a fixed
//! "now") or over gRPC. The crash test runs the real `analytics` binary twice.
//!
//! Calls over gRPC are signed in with the test issuer's tokens ([`SignedIn`]; the harness's own
//! client as an admin). Who may see a project is asked of a small in-process tasks service
//! ([`StubTasks`]: a fixed membership table), registered in a private Consul dev agent so that
//! the check goes through discovery and the mesh client as in production; it records the
//! credential each call brought, which shows that the caller's token is forwarded.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protomesh::auth::testing::{token, SignedIn, TEST_SECRET};
use protomesh::client::Mesh;
use protomesh::consul::{ConsulClient, ConsulConfig, DevAgent, DevAgentOptions};
use protomesh::server::testing::{quick_config, InProcessServer};
use protomesh::server::MeshServer;
use protomesh::status::testing::assert_invalid;
use protomesh::testing::{bounded, eventually};
use protomesh_analytics::proto::protomesh::analytics::v1::{
    analytics_service_client::AnalyticsServiceClient, AssigneeTime, GetProjectReportRequest,
    GetUserDashboardRequest, LevelCount, ProjectReport, StatusCount, UserDashboard,
};
use protomesh_analytics::proto::protomesh::priority::v1::Level;
use protomesh_analytics::proto::protomesh::tasks::v1::{
    tasks_service_server::{TasksService, TasksServiceServer},
    AddProjectMemberRequest, CompleteTaskRequest, CreateProjectRequest, CreateTaskRequest,
    DeleteTaskRequest, GetProjectRequest, GetTaskRequest, ListProjectMembersRequest,
    ListProjectMembersResponse, ListProjectsRequest, ListProjectsResponse, ListTasksRequest,
    ListTasksResponse, Project, ProjectMember, RemoveProjectMemberRequest, Task, TaskStatus,
    UpdateTaskRequest,
};
use protomesh_analytics::{
    apply_event, consumer_options, AnalyticsHandler, AnalyticsServiceServer, Applied, MIGRATIONS,
};
use protomesh_data::deadpool_postgres::Pool;
use protomesh_data::fred::prelude::{Client, ClientLike, StreamsInterface};
use protomesh_data::stream::{ConsumerHandle, Event, StreamConsumer};
use protomesh_data::testing::{
    closed_port, unreachable_database, ServiceData, TestDatabase, TestKeys,
};
use protomesh_data::{self as data, DataConfig};
use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

/// Bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The consumer group (the service's name).
const GROUP: &str = "analytics";

// ---------------------------------------------------------------------------------------------
// Time.

fn at(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap(),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap(),
    }
}

fn from_proto(duration: &Option<prost_types::Duration>) -> Duration {
    let duration = duration.unwrap();
    Duration::new(
        u64::try_from(duration.seconds).unwrap(),
        u32::try_from(duration.nanos).unwrap(),
    )
}

/// Start of the UTC day of `now`.
fn day_start(now: SystemTime) -> SystemTime {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs - secs % 86_400)
}

/// Start of the week of `now`: Monday 00:00 UTC (1970-01-01 was a Thursday).
fn week_start(now: SystemTime) -> SystemTime {
    let day = day_start(now);
    let days = day
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let since_monday = (days + 3) % 7;
    day - Duration::from_secs(since_monday * 86_400)
}

/// How much of `[start, stop)` falls within `[from, until)`.
fn overlap(start: SystemTime, stop: SystemTime, from: SystemTime, until: SystemTime) -> Duration {
    let begin = start.max(from);
    let end = stop.min(until);
    end.duration_since(begin).unwrap_or(Duration::ZERO)
}

// ---------------------------------------------------------------------------------------------
// Events in the relay's format.

/// One stream message as the outbox relay publishes it.
#[derive(Debug, Clone)]
struct Message {
    stream: &'static str,
    event_id: Uuid,
    event_type: String,
    aggregate_id: String,
    payload: serde_json::Value,
}

impl Message {
    fn new(
        stream: &'static str,
        event_type: &str,
        aggregate_id: Uuid,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            stream,
            event_id: Uuid::new_v4(),
            event_type: event_type.to_owned(),
            aggregate_id: aggregate_id.to_string(),
            payload,
        }
    }

    /// The same event under a new event id (as if written again), delivered as a distinct event.
    fn fresh_copy(&self) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            ..self.clone()
        }
    }

    /// The fields the relay sends: `event_id`, `type`, `aggregate_id`, `payload` (JSON text),
    /// `created_at` (RFC 3339, UTC, microseconds).
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("event_id", self.event_id.to_string()),
            ("type", self.event_type.clone()),
            ("aggregate_id", self.aggregate_id.clone()),
            ("payload", self.payload.to_string()),
            ("created_at", rfc3339(SystemTime::now())),
        ]
    }
}

/// `XADD`s raw fields to `{prefix}{stream}`.
async fn xadd(redis: &Client, prefix: &str, stream: &str, fields: Vec<(&'static str, String)>) {
    let _: String = redis
        .xadd(format!("{prefix}{stream}"), false, None::<()>, "*", fields)
        .await
        .unwrap();
}

async fn send(redis: &Client, prefix: &str, messages: &[Message]) {
    for message in messages {
        xadd(redis, prefix, message.stream, message.fields()).await;
    }
}

/// An event of a type analytics does not use on `stream`: once it is applied, everything sent
/// to that stream before it was handled (messages of one stream are handled in order).
fn marker(stream: &'static str) -> Message {
    Message::new(stream, "test.marker", Uuid::new_v4(), json!({}))
}

fn project_created(id: Uuid, name: &str) -> Message {
    Message::new(
        "tasks",
        "project.created",
        id,
        json!({"id": id, "name": name, "description": "", "created_at": "2024-05-01T09:00:00.000000Z"}),
    )
}

/// A task as the tasks service's events carry it.
#[derive(Debug, Clone)]
struct TaskState {
    id: Uuid,
    project_id: Uuid,
    assignee: String,
    status: TaskStatus,
    level: Level,
    updated_at: SystemTime,
}

impl TaskState {
    fn new(project_id: Uuid, assignee: &str, level: Level, updated_at: SystemTime) -> Self {
        Self {
            id: Uuid::new_v4(),
            project_id,
            assignee: assignee.to_owned(),
            status: TaskStatus::Open,
            level,
            updated_at,
        }
    }

    /// The task changed at `updated_at`.
    fn changed(&self, updated_at: SystemTime, change: impl FnOnce(&mut Self)) -> Self {
        let mut next = self.clone();
        next.updated_at = updated_at;
        change(&mut next);
        next
    }

    fn event(&self, event_type: &str) -> Message {
        let done = self.status == TaskStatus::Done;
        Message::new(
            "tasks",
            event_type,
            self.id,
            json!({
                "id": self.id,
                "project_id": self.project_id,
                "title": "work",
                "description": "",
                "urgency": 5,
                "impact": 5,
                "assignee": self.assignee,
                "status": self.status.as_str_name(),
                "created_at": "2024-05-01T09:00:00.000000Z",
                "updated_at": rfc3339(self.updated_at),
                "completed_at": if done { json!(rfc3339(self.updated_at)) } else { json!(null) },
                "priority_score": 25,
                "priority_level": self.level.as_str_name(),
                "priority_fallback": false,
            }),
        )
    }
}

/// A time entry as the timetrack service's events carry it.
#[derive(Debug, Clone)]
struct EntryState {
    id: Uuid,
    user_id: String,
    task_id: Uuid,
    started_at: SystemTime,
    stopped_at: Option<SystemTime>,
}

impl EntryState {
    fn new(
        user_id: &str,
        task_id: Uuid,
        started_at: SystemTime,
        stopped_at: Option<SystemTime>,
    ) -> Self {
        Self {
            id: Uuid::new_v4(),
            user_id: user_id.to_owned(),
            task_id,
            started_at,
            stopped_at,
        }
    }

    fn started(&self) -> Message {
        self.event("time.started", None)
    }

    fn stopped(&self) -> Message {
        self.event("time.stopped", self.stopped_at)
    }

    fn event(&self, event_type: &str, stopped_at: Option<SystemTime>) -> Message {
        Message::new(
            "timetrack",
            event_type,
            self.id,
            json!({
                "id": self.id,
                "user_id": self.user_id,
                "task_id": self.task_id,
                "started_at": rfc3339(self.started_at),
                "stopped_at": stopped_at.map(rfc3339),
                "note": "",
            }),
        )
    }

    /// Its time up to `now` (a running entry counts up to `now`).
    fn stop_or(&self, now: SystemTime) -> SystemTime {
        self.stopped_at.unwrap_or(now)
    }
}

// ---------------------------------------------------------------------------------------------
// The expected figures, computed from the final states of tasks and entries.

/// The final read model the events describe, and the figures it gives.
#[derive(Debug, Default)]
struct Model {
    /// Tasks by id, with whether they were deleted.
    tasks: BTreeMap<Uuid, (TaskState, bool)>,
    entries: Vec<EntryState>,
}

fn level_counts(counts: BTreeMap<i32, i64>) -> Vec<LevelCount> {
    counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(level, count)| LevelCount { level, count })
        .collect()
}

impl Model {
    fn live_tasks(&self) -> impl Iterator<Item = &TaskState> {
        self.tasks
            .values()
            .filter(|(_, deleted)| !deleted)
            .map(|(task, _)| task)
    }

    fn dashboard(&self, user_id: &str, now: SystemTime) -> UserDashboard {
        let mut open = BTreeMap::new();
        let mut completed = BTreeMap::new();
        for task in self.live_tasks().filter(|t| t.assignee == user_id) {
            let counts = if task.status == TaskStatus::Done {
                &mut completed
            } else {
                &mut open
            };
            *counts.entry(task.level as i32).or_insert(0) += 1;
        }
        let (day, week) = (day_start(now), week_start(now));
        let mut today = Duration::ZERO;
        let mut this_week = Duration::ZERO;
        for entry in self.entries.iter().filter(|e| e.user_id == user_id) {
            let stop = entry.stop_or(now);
            today += overlap(
                entry.started_at,
                stop,
                day,
                day + Duration::from_secs(86_400),
            );
            this_week += overlap(
                entry.started_at,
                stop,
                week,
                week + Duration::from_secs(7 * 86_400),
            );
        }
        UserDashboard {
            user_id: user_id.to_owned(),
            open_by_level: level_counts(open),
            completed_by_level: level_counts(completed),
            tracked_today: Some(proto_duration(today)),
            tracked_this_week: Some(proto_duration(this_week)),
        }
    }

    fn report(&self, project_id: Uuid, now: SystemTime) -> ProjectReport {
        let mut by_status: BTreeMap<i32, i64> = BTreeMap::new();
        let mut by_level = BTreeMap::new();
        for task in self.live_tasks().filter(|t| t.project_id == project_id) {
            *by_status.entry(task.status as i32).or_insert(0) += 1;
            *by_level.entry(task.level as i32).or_insert(0) += 1;
        }
        let all: i64 = by_status.values().sum();
        let done = by_status
            .get(&(TaskStatus::Done as i32))
            .copied()
            .unwrap_or(0);
        let mut per_user: HashMap<&str, Duration> = HashMap::new();
        for entry in &self.entries {
            // Entries on a deleted task of the project count too.
            let Some((task, _)) = self.tasks.get(&entry.task_id) else {
                continue;
            };
            if task.project_id == project_id {
                *per_user.entry(&entry.user_id).or_default() += entry
                    .stop_or(now)
                    .duration_since(entry.started_at)
                    .unwrap_or_default();
            }
        }
        let mut per_user: Vec<(&str, Duration)> = per_user.into_iter().collect();
        per_user.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        ProjectReport {
            project_id: project_id.to_string(),
            by_status: by_status
                .into_iter()
                .map(|(status, count)| StatusCount {
                    status: TaskStatus::try_from(status)
                        .unwrap()
                        .as_str_name()
                        .to_owned(),
                    count,
                })
                .collect(),
            by_level: level_counts(by_level),
            tracked_total: Some(proto_duration(per_user.iter().map(|(_, d)| *d).sum())),
            tracked_by_assignee: per_user
                .into_iter()
                .map(|(assignee, tracked)| AssigneeTime {
                    assignee: assignee.to_owned(),
                    tracked: Some(proto_duration(tracked)),
                })
                .collect(),
            completion_rate: if all == 0 {
                0.0
            } else {
                done as f64 / all as f64
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scripted scenario.

/// "Now" of the scripted scenario: a Wednesday, so the week began on Monday 2024-05-06.
const NOW: &str = "2024-05-08T10:00:00Z";

/// A small history: tasks moved between assignees, completed, deleted; entries across midnight
/// and across the start of the week, one still running; some events delivered out of order.
struct Scenario {
    /// Project with tasks, entries, a deleted task.
    apollo: Uuid,
    /// Another project (bob's task, ada's old entry).
    zeus: Uuid,
    /// A project never announced by project.created: known from its task only.
    unannounced: Uuid,
    messages: Vec<Message>,
    /// An old `task.updated` and a late `time.started`, as distinct events, to be delivered after
    /// everything else: they must change nothing.
    stale: Vec<Message>,
    model: Model,
}

impl Scenario {
    fn new() -> Self {
        let apollo = Uuid::new_v4();
        let zeus = Uuid::new_v4();
        let unannounced = Uuid::new_v4();
        let mut tasks = Vec::new();
        let mut time = Vec::new();
        let mut model = Model::default();

        tasks.push(project_created(apollo, "apollo"));
        tasks.push(project_created(zeus, "zeus"));

        // t1: created for ada, moved to bob, completed by bob.
        let t1 = TaskState::new(apollo, "ada", Level::Low, at("2024-05-06T09:00:00.000001Z"));
        let t1_moved = t1.changed(at("2024-05-06T09:30:00Z"), |t| {
            t.assignee = "bob".into();
            t.status = TaskStatus::InProgress;
        });
        let t1_done = t1_moved.changed(at("2024-05-07T15:00:00Z"), |t| t.status = TaskStatus::Done);
        // t2: ada's, in progress; an older update (to cy) arrives after the newer one.
        let t2 = TaskState::new(apollo, "ada", Level::High, at("2024-05-06T10:00:00Z"));
        let t2_to_cy = t2.changed(at("2024-05-06T12:00:00Z"), |t| t.assignee = "cy".into());
        let t2_back = t2_to_cy.changed(at("2024-05-07T10:00:00Z"), |t| {
            t.assignee = "ada".into();
            t.status = TaskStatus::InProgress;
        });
        // t3: ada's, completed.
        let t3 = TaskState::new(apollo, "ada", Level::Critical, at("2024-05-06T11:00:00Z"));
        let t3_done = t3.changed(at("2024-05-08T09:00:00Z"), |t| t.status = TaskStatus::Done);
        // t4: bob's, deleted; an update newer than its deletion's payload arrives late.
        let t4 = TaskState::new(apollo, "bob", Level::Medium, at("2024-05-06T11:30:00Z"));
        let t4_late = t4.changed(at("2024-05-08T09:30:00Z"), |t| {
            t.status = TaskStatus::InProgress
        });
        // t5: ada's, open.
        let t5 = TaskState::new(apollo, "ada", Level::High, at("2024-05-06T12:30:00Z"));
        // t6: bob's, in zeus.
        let t6 = TaskState::new(zeus, "bob", Level::Low, at("2024-05-06T13:00:00Z"));
        // t7: dan's, in a project whose project.created never came.
        let t7 = TaskState::new(
            unannounced,
            "dan",
            Level::Medium,
            at("2024-05-06T13:30:00Z"),
        );

        tasks.extend([
            t1.event("task.created"),
            t2.event("task.created"),
            t3.event("task.created"),
            t4.event("task.created"),
            t5.event("task.created"),
            t6.event("task.created"),
            t7.event("task.created"),
            t1_moved.event("task.updated"),
            t1_done.event("task.completed"),
            t3_done.event("task.completed"),
            t2_back.event("task.updated"),
            t2_to_cy.event("task.updated"),
            t4.event("task.deleted"),
            t4_late.event("task.updated"),
        ]);
        for (task, deleted) in [
            (&t1_done, false),
            (&t2_back, false),
            (&t3_done, false),
            (&t4_late, true),
            (&t5, false),
            (&t6, false),
            (&t7, false),
        ] {
            model.tasks.insert(task.id, (task.clone(), deleted));
        }

        let entries = [
            // Across midnight Tuesday → Wednesday: 1 h today, 2 h this week.
            EntryState::new(
                "ada",
                t1.id,
                at("2024-05-07T23:00:00Z"),
                Some(at("2024-05-08T01:00:00Z")),
            ),
            // Across the start of the week, Sunday → Monday: 30 min this week.
            EntryState::new(
                "ada",
                t2.id,
                at("2024-05-05T23:30:00Z"),
                Some(at("2024-05-06T00:30:00Z")),
            ),
            // Running since 09:15: 45 min up to now.
            EntryState::new("ada", t3.id, at("2024-05-08T09:15:00Z"), None),
            // Last week, on zeus.
            EntryState::new(
                "ada",
                t6.id,
                at("2024-05-02T10:00:00Z"),
                Some(at("2024-05-02T11:00:00Z")),
            ),
            // Monday.
            EntryState::new(
                "bob",
                t1.id,
                at("2024-05-06T08:00:00Z"),
                Some(at("2024-05-06T09:00:00Z")),
            ),
            // Today, on the task deleted later.
            EntryState::new(
                "bob",
                t4.id,
                at("2024-05-08T08:00:00Z"),
                Some(at("2024-05-08T08:20:00Z")),
            ),
        ];
        for entry in &entries {
            time.push(entry.started());
            if entry.stopped_at.is_some() {
                time.push(entry.stopped());
            }
        }
        // Today, its time.stopped delivered before its time.started.
        let reversed = EntryState::new(
            "bob",
            t2.id,
            at("2024-05-08T07:00:00Z"),
            Some(at("2024-05-08T07:10:00Z")),
        );
        time.push(reversed.stopped());
        time.push(reversed.started());
        model.entries.extend(entries.iter().cloned());
        model.entries.push(reversed.clone());

        // Interleave the two streams (their relative order does not matter).
        let mut messages = Vec::new();
        let mut time = time.into_iter();
        for message in tasks {
            messages.push(message);
            messages.extend(time.next());
        }
        messages.extend(time);

        let stale = vec![
            t1_moved.event("task.updated"),
            t2_to_cy.event("task.updated"),
            t4.event("task.created"),
            reversed.started(),
            entries[0].started(),
        ];
        Self {
            apollo,
            zeus,
            unannounced,
            messages,
            stale,
            model,
        }
    }

    /// Asserts every figure of the scenario as of [`NOW`], against the model and against values
    /// worked out by hand.
    async fn assert_figures(&self, handler: &AnalyticsHandler) {
        let now = at(NOW);
        let model = &self.model;
        for user in ["ada", "bob", "cy", "dan", "nobody"] {
            let dashboard = handler.user_dashboard_at(user, now).await.unwrap();
            assert_eq!(dashboard, model.dashboard(user, now), "dashboard of {user}");
        }
        let ada = handler.user_dashboard_at("ada", now).await.unwrap();
        assert_eq!(
            ada.open_by_level,
            vec![LevelCount {
                level: Level::High as i32,
                count: 2
            }]
        );
        assert_eq!(
            ada.completed_by_level,
            vec![LevelCount {
                level: Level::Critical as i32,
                count: 1
            }]
        );
        assert_eq!(from_proto(&ada.tracked_today), minutes(60 + 45));
        assert_eq!(from_proto(&ada.tracked_this_week), minutes(120 + 30 + 45));
        let bob = handler.user_dashboard_at("bob", now).await.unwrap();
        assert_eq!(
            bob.open_by_level,
            vec![LevelCount {
                level: Level::Low as i32,
                count: 1
            }]
        );
        assert_eq!(
            bob.completed_by_level,
            vec![LevelCount {
                level: Level::Low as i32,
                count: 1
            }]
        );
        assert_eq!(from_proto(&bob.tracked_today), minutes(20 + 10));
        assert_eq!(from_proto(&bob.tracked_this_week), minutes(60 + 20 + 10));
        let nobody = handler.user_dashboard_at("nobody", now).await.unwrap();
        assert!(nobody.open_by_level.is_empty() && nobody.completed_by_level.is_empty());
        assert_eq!(from_proto(&nobody.tracked_this_week), Duration::ZERO);

        for project in [self.apollo, self.zeus, self.unannounced] {
            let report = handler
                .project_report_at(&project.to_string(), now)
                .await
                .unwrap();
            assert_eq!(report, model.report(project, now), "report of {project}");
        }
        let apollo = handler
            .project_report_at(&self.apollo.to_string(), now)
            .await
            .unwrap();
        let statuses: Vec<(&str, i64)> = apollo
            .by_status
            .iter()
            .map(|s| (s.status.as_str(), s.count))
            .collect();
        assert_eq!(
            statuses,
            vec![
                ("TASK_STATUS_OPEN", 1),
                ("TASK_STATUS_IN_PROGRESS", 1),
                ("TASK_STATUS_DONE", 2)
            ]
        );
        assert_eq!(apollo.completion_rate, 0.5);
        assert_eq!(from_proto(&apollo.tracked_total), minutes(225 + 90));
        let per_user: Vec<(&str, Duration)> = apollo
            .tracked_by_assignee
            .iter()
            .map(|a| (a.assignee.as_str(), from_proto(&a.tracked)))
            .collect();
        assert_eq!(per_user, vec![("ada", minutes(225)), ("bob", minutes(90))]);
        let unannounced = handler
            .project_report_at(&self.unannounced.to_string(), now)
            .await
            .unwrap();
        assert_eq!(unannounced.completion_rate, 0.0);
        assert_eq!(from_proto(&unannounced.tracked_total), Duration::ZERO);
    }
}

// ---------------------------------------------------------------------------------------------
// Signed-in clients and the tasks service that decides who sees a project.

/// An analytics client whose calls carry a test token.
type SignedClient = AnalyticsServiceClient<InterceptedService<Channel, SignedIn>>;

/// The admin of the tests: may see everyone's dashboard and every project.
const ADMIN: &str = "root";

/// A project whose `GetProject` never answers (a stuck tasks service).
const STUCK_PROJECT: Uuid = Uuid::from_u128(0x5717_c4ed_0000_4000_8000_0000_0000_0001);

/// Signs calls in as `user` with the role `user`.
fn as_user(user: &str) -> SignedIn {
    SignedIn::as_user(user, &["user"])
}

/// Signs calls in as [`ADMIN`], with the role `admin`.
fn as_admin() -> SignedIn {
    SignedIn::as_user(ADMIN, &["admin"])
}

/// A channel to the server at `addr`.
async fn channel_to(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The tasks service as analytics sees it: `GetProject` answers a project to its members (from a
/// fixed table) and to admins, `NOT_FOUND` to anyone else, and never for [`STUCK_PROJECT`]. It
/// records the `authorization` each `GetProject` arrived with, by project. Served behind the
/// mesh runtime, which verifies the token before this runs.
#[derive(Debug, Clone, Default)]
struct StubTasks {
    members: Arc<Mutex<HashMap<Uuid, HashSet<String>>>>,
    asked: Arc<Mutex<Vec<(Uuid, String)>>>,
}

impl StubTasks {
    /// Makes `users` the members of `project`.
    fn set_members(&self, project: Uuid, users: &[&str]) {
        self.members
            .lock()
            .unwrap()
            .insert(project, users.iter().map(|u| (*u).to_owned()).collect());
    }

    /// The `authorization` values `GetProject` of `project` arrived with.
    fn credentials_for(&self, project: Uuid) -> Vec<String> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id == project)
            .map(|(_, authorization)| authorization.clone())
            .collect()
    }
}

fn stub_only<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the test's tasks service answers GetProject only",
    ))
}

#[tonic::async_trait]
impl TasksService for StubTasks {
    async fn get_project(
        &self,
        request: Request<GetProjectRequest>,
    ) -> Result<Response<Project>, Status> {
        let caller = protomesh::identity::caller(request.metadata())?;
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let id = Uuid::parse_str(&request.get_ref().id)
            .map_err(|_| Status::invalid_argument("id: not a UUID"))?;
        self.asked.lock().unwrap().push((id, authorization));
        if id == STUCK_PROJECT {
            std::future::pending::<()>().await;
        }
        let member = self
            .members
            .lock()
            .unwrap()
            .get(&id)
            .is_some_and(|members| members.contains(&caller.subject));
        if member || caller.is_admin() {
            Ok(Response::new(Project {
                id: id.to_string(),
                name: format!("project {id}"),
                ..Default::default()
            }))
        } else {
            Err(Status::not_found(format!("project {id} not found")))
        }
    }

    async fn create_project(
        &self,
        _: Request<CreateProjectRequest>,
    ) -> Result<Response<Project>, Status> {
        stub_only()
    }

    async fn list_projects(
        &self,
        _: Request<ListProjectsRequest>,
    ) -> Result<Response<ListProjectsResponse>, Status> {
        stub_only()
    }

    async fn create_task(&self, _: Request<CreateTaskRequest>) -> Result<Response<Task>, Status> {
        stub_only()
    }

    async fn get_task(&self, _: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        stub_only()
    }

    async fn update_task(&self, _: Request<UpdateTaskRequest>) -> Result<Response<Task>, Status> {
        stub_only()
    }

    async fn complete_task(
        &self,
        _: Request<CompleteTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        stub_only()
    }

    async fn delete_task(&self, _: Request<DeleteTaskRequest>) -> Result<Response<()>, Status> {
        stub_only()
    }

    async fn list_tasks(
        &self,
        _: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        stub_only()
    }

    async fn add_project_member(
        &self,
        _: Request<AddProjectMemberRequest>,
    ) -> Result<Response<ProjectMember>, Status> {
        stub_only()
    }

    async fn remove_project_member(
        &self,
        _: Request<RemoveProjectMemberRequest>,
    ) -> Result<Response<()>, Status> {
        stub_only()
    }

    async fn list_project_members(
        &self,
        _: Request<ListProjectMembersRequest>,
    ) -> Result<Response<ListProjectMembersResponse>, Status> {
        stub_only()
    }
}

/// A Consul dev agent with [`StubTasks`] registered in it as `tasks` (passing its check), and a
/// mesh client on the agent. Field order is drop order: the stub deregisters before the agent
/// stops.
struct TasksMesh {
    stub: StubTasks,
    mesh: Mesh,
    _served: Option<InProcessServer>,
    agent: DevAgent,
}

impl TasksMesh {
    /// With the stub registered, or with no tasks service anywhere.
    async fn start(with_tasks: bool) -> Self {
        let agent = DevAgent::start(DevAgentOptions::discover().unwrap()).unwrap();
        agent.wait_ready(Duration::from_secs(30)).await.unwrap();
        let mesh = Mesh::from_consul(
            agent.client().unwrap(),
            &[protomesh_analytics::proto::FILE_DESCRIPTOR_SET],
        )
        .unwrap();
        let stub = StubTasks::default();
        let served = if with_tasks {
            let served = InProcessServer::start(
                MeshServer::new("tasks", quick_config(Some(&agent.http_addr())))
                    .descriptor_set(protomesh_analytics::proto::FILE_DESCRIPTOR_SET)
                    .add_service(TasksServiceServer::new(stub.clone())),
            )
            .await
            .unwrap();
            agent
                .wait_passing("tasks", Duration::from_secs(20))
                .await
                .unwrap();
            Some(served)
        } else {
            None
        };
        Self {
            stub,
            mesh,
            _served: served,
            agent,
        }
    }
}

/// A mesh client whose Consul agent nobody answers at (for handlers whose calls never reach
/// the tasks service).
fn unreachable_mesh() -> Mesh {
    Mesh::from_consul(
        ConsulClient::new(ConsulConfig::new("127.0.0.1:1").unwrap()).unwrap(),
        &[protomesh_analytics::proto::FILE_DESCRIPTOR_SET],
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The in-process harness.

/// Everything one test needs: the service in-process (handler served on a free port, stream
/// consumer running) on a database and key prefix of its own, and the tasks service it asks.
/// Field order is drop order: the server and the consumer go before the database is dropped.
struct Harness {
    /// Signed in as the admin.
    client: SignedClient,
    channel: Channel,
    _served: InProcessServer,
    tasks: TasksMesh,
    _consumer: ConsumerHandle,
    handler: AnalyticsHandler,
    pool: Pool,
    redis: Client,
    keys: TestKeys,
    _db: TestDatabase,
}

async fn connected_redis(config: &DataConfig) -> Client {
    let redis = data::connect_redis(config).unwrap();
    eventually(Duration::from_secs(5), "redis connected", || async {
        redis.is_connected().then_some(())
    })
    .await;
    redis
}

impl Harness {
    /// With the stub tasks service registered.
    async fn start() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(with_tasks: bool) -> Self {
        let tasks = TasksMesh::start(with_tasks).await;
        let db = TestDatabase::create().await.unwrap();
        let keys = TestKeys::new();
        let ServiceData { pool, redis, .. } =
            ServiceData::start(&db, &keys, "analytics", MIGRATIONS)
                .await
                .unwrap();

        let consumer = StreamConsumer::new(
            &redis,
            keys.prefix(),
            consumer_options("analytics-test", Duration::from_secs(1)),
        );
        let applying = pool.clone();
        let consumer = consumer.spawn(move |event: Event| {
            let pool = applying.clone();
            async move { apply_event(&pool, &event).await.map(drop) }
        });

        let handler = AnalyticsHandler::new(pool.clone(), tasks.mesh.clone());
        let served = InProcessServer::start(
            MeshServer::new("analytics", quick_config(None))
                .descriptor_set(protomesh_analytics::proto::FILE_DESCRIPTOR_SET)
                .with_mesh(tasks.mesh.clone())
                .add_service(AnalyticsServiceServer::new(handler.clone())),
        )
        .await
        .unwrap();
        let channel = channel_to(served.addr).await;
        Self {
            client: AnalyticsServiceClient::with_interceptor(channel.clone(), as_admin()),
            channel,
            _served: served,
            tasks,
            _consumer: consumer,
            handler,
            pool,
            redis,
            keys,
            _db: db,
        }
    }

    /// A client whose calls carry `signed_in`'s token.
    fn client_as(&self, signed_in: SignedIn) -> SignedClient {
        AnalyticsServiceClient::with_interceptor(self.channel.clone(), signed_in)
    }

    async fn send(&self, messages: &[Message]) {
        send(&self.redis, self.keys.prefix(), messages).await;
    }

    /// Sends a marker to each stream and waits until both are applied: everything sent before
    /// has been handled then.
    async fn drain(&self) {
        let markers = [marker("tasks"), marker("timetrack")];
        self.send(&markers).await;
        for marker in &markers {
            eventually(Duration::from_secs(20), "the marker applied", || async {
                is_applied(&self.pool, marker.event_id).await.then_some(())
            })
            .await;
        }
        for stream in ["tasks", "timetrack"] {
            assert_eq!(
                pending(&self.redis, &format!("{}{stream}", self.keys.prefix())).await,
                0,
                "nothing pending on {stream}"
            );
        }
    }

    async fn applied(&self) -> i64 {
        applied_count(&self.pool).await.unwrap()
    }
}

async fn applied_count(pool: &Pool) -> Option<i64> {
    let client = pool.get().await.ok()?;
    let row = client
        .query_one("SELECT count(*) FROM applied_events", &[])
        .await
        .ok()?;
    Some(row.get(0))
}

async fn is_applied(pool: &Pool, event_id: Uuid) -> bool {
    let client = pool.get().await.unwrap();
    client
        .query_opt(
            "SELECT 1 FROM applied_events WHERE event_id = $1",
            &[&event_id],
        )
        .await
        .unwrap()
        .is_some()
}

/// Messages of the group pending (read, not acknowledged) on the stream `key`.
async fn pending(redis: &Client, key: &str) -> usize {
    let rows: Vec<(String, String, u64, u64)> = redis
        .xpending(key, GROUP, ("-", "+", 100_000))
        .await
        .unwrap();
    rows.len()
}

/// Pending messages per consumer on the stream `key`.
async fn pending_by_consumer(redis: &Client, key: &str) -> HashMap<String, usize> {
    let rows: Vec<(String, String, u64, u64)> = redis
        .xpending(key, GROUP, ("-", "+", 100_000))
        .await
        .unwrap();
    let mut counts = HashMap::new();
    for (_, consumer, _, _) in rows {
        *counts.entry(consumer).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn scripted_events_give_exact_figures() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let scenario = Scenario::new();
        h.send(&scenario.messages).await;
        h.drain().await;
        assert_eq!(h.applied().await, scenario.messages.len() as i64 + 2);
        scenario.assert_figures(&h.handler).await;
    })
    .await;
}

#[tokio::test]
async fn every_event_delivered_twice_gives_the_same_figures() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let scenario = Scenario::new();
        // Each message twice in a row, then the whole history once more after it was applied.
        let doubled: Vec<Message> = scenario
            .messages
            .iter()
            .flat_map(|m| [m.clone(), m.clone()])
            .collect();
        h.send(&doubled).await;
        h.drain().await;
        h.send(&scenario.messages).await;
        h.drain().await;
        // Distinct events only: the scenario's and the four markers.
        assert_eq!(h.applied().await, scenario.messages.len() as i64 + 4);
        scenario.assert_figures(&h.handler).await;
    })
    .await;
}

#[tokio::test]
async fn old_events_delivered_after_newer_ones_change_nothing() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let scenario = Scenario::new();
        h.send(&scenario.messages).await;
        h.drain().await;
        scenario.assert_figures(&h.handler).await;

        // Distinct events (new ids) carrying old states: an older task.updated, a task.created
        // of a deleted task, time.started of stopped entries.
        let stale: Vec<Message> = scenario.stale.iter().map(Message::fresh_copy).collect();
        h.send(&stale).await;
        h.drain().await;
        for message in &stale {
            assert!(is_applied(&h.pool, message.event_id).await, "{message:?}");
        }
        scenario.assert_figures(&h.handler).await;
    })
    .await;
}

#[tokio::test]
async fn malformed_messages_are_skipped_and_do_not_block_the_stream() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let prefix = h.keys.prefix();
        let project = Uuid::new_v4();

        // A payload that is JSON but not a task, and a task with an unknown status: the handler
        // records them as applied without effect.
        let not_a_task = Message::new("tasks", "task.created", project, json!({"id": "x"}));
        let mut bad_status = TaskState::new(project, "ada", Level::Low, at("2024-05-06T09:00:00Z"))
            .event("task.created");
        bad_status.payload["status"] = json!("TASK_STATUS_SOMEDAY");
        // A payload that is not JSON, and a message without an event id: the consumer
        // acknowledges and skips them before the handler.
        let mut not_json = marker("tasks").fields();
        not_json[3].1 = "{not json".to_owned();
        let no_event_id: Vec<_> = marker("timetrack").fields().into_iter().skip(1).collect();

        h.send(&[not_a_task.clone(), bad_status.clone()]).await;
        xadd(&h.redis, prefix, "tasks", not_json).await;
        xadd(&h.redis, prefix, "timetrack", no_event_id).await;
        let task = TaskState::new(project, "ada", Level::High, at("2024-05-06T10:00:00Z"));
        h.send(&[
            project_created(project, "after"),
            task.event("task.created"),
        ])
        .await;
        h.drain().await;

        assert!(is_applied(&h.pool, not_a_task.event_id).await);
        assert!(is_applied(&h.pool, bad_status.event_id).await);
        // Two malformed, two good, two markers.
        assert_eq!(h.applied().await, 6);
        let report = h
            .handler
            .project_report_at(&project.to_string(), SystemTime::now())
            .await
            .unwrap();
        assert_eq!(
            report.by_level,
            vec![LevelCount {
                level: Level::High as i32,
                count: 1
            }],
            "only the good task counts"
        );

        // Applied directly: malformed once, then a duplicate.
        let event = Event {
            event_id: Uuid::new_v4(),
            event_type: "time.started".into(),
            aggregate_id: "e".into(),
            payload: json!({"id": Uuid::new_v4(), "user_id": "ada"}),
            created_at: None,
            stream: "timetrack".into(),
            message_id: "1-0".into(),
        };
        assert_eq!(
            apply_event(&h.pool, &event).await.unwrap(),
            Applied::Malformed
        );
        assert_eq!(
            apply_event(&h.pool, &event).await.unwrap(),
            Applied::Duplicate
        );
    })
    .await;
}

#[tokio::test]
async fn requests_are_checked_and_answered_over_grpc() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let mut client = h.client.clone();

        for user_id in [String::new(), "x".repeat(201)] {
            assert_invalid(
                client
                    .get_user_dashboard(GetUserDashboardRequest { user_id })
                    .await,
                "user_id",
            );
        }
        for project_id in ["", "nope", "6f1f6c1e8d5a4c559d1e2b9c3f6b8a01"] {
            assert_invalid(
                client
                    .get_project_report(GetProjectReportRequest {
                        project_id: project_id.into(),
                    })
                    .await,
                "project_id",
            );
        }
        let unknown = Uuid::new_v4();
        let status = client
            .get_project_report(GetProjectReportRequest {
                project_id: unknown.to_string(),
            })
            .await
            .expect_err("never seen");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(
            status.message().contains(&unknown.to_string()),
            "{}",
            status.message()
        );

        // An unknown user (of the longest length) has zeros.
        let long_user = "é".repeat(200);
        let empty = client
            .get_user_dashboard(GetUserDashboardRequest {
                user_id: long_user.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(empty.user_id, long_user);
        assert!(empty.open_by_level.is_empty() && empty.completed_by_level.is_empty());
        assert_eq!(from_proto(&empty.tracked_today), Duration::ZERO);
        assert_eq!(from_proto(&empty.tracked_this_week), Duration::ZERO);

        // Entries relative to the real clock, served with the server's own "now".
        let project = Uuid::new_v4();
        let task = TaskState::new(project, "ada", Level::Medium, SystemTime::now());
        let now = SystemTime::now();
        let entries = [
            EntryState::new(
                "ada",
                task.id,
                now - minutes(50 * 60),
                Some(now - minutes(47 * 60)),
            ),
            EntryState::new("ada", task.id, now - minutes(120), Some(now - minutes(60))),
            EntryState::new("ada", task.id, now - minutes(30), None),
        ];
        let mut messages = vec![
            project_created(project, "clock"),
            task.event("task.created"),
        ];
        for entry in &entries {
            messages.push(entry.started());
            if entry.stopped_at.is_some() {
                messages.push(entry.stopped());
            }
        }
        h.send(&messages).await;
        h.drain().await;
        let model = Model {
            tasks: [(task.id, (task.clone(), false))].into_iter().collect(),
            entries: entries.to_vec(),
        };
        // The server's "now" lies between these two; a day boundary in between is retried.
        for _ in 0..3 {
            let before = SystemTime::now();
            let dashboard = client
                .get_user_dashboard(GetUserDashboardRequest {
                    user_id: "ada".into(),
                })
                .await
                .unwrap()
                .into_inner();
            let report = client
                .get_project_report(GetProjectReportRequest {
                    project_id: project.to_string(),
                })
                .await
                .unwrap()
                .into_inner();
            let after = SystemTime::now();
            if day_start(before) != day_start(after) {
                continue;
            }
            let (low, high) = (
                model.dashboard("ada", before),
                model.dashboard("ada", after),
            );
            assert_eq!(dashboard.open_by_level, low.open_by_level);
            for (got, low, high) in [
                (
                    &dashboard.tracked_today,
                    &low.tracked_today,
                    &high.tracked_today,
                ),
                (
                    &dashboard.tracked_this_week,
                    &low.tracked_this_week,
                    &high.tracked_this_week,
                ),
            ] {
                let got = from_proto(got);
                assert!(from_proto(low) <= got && got <= from_proto(high), "{got:?}");
            }
            let (low, high) = (model.report(project, before), model.report(project, after));
            let total = from_proto(&report.tracked_total);
            assert!(
                from_proto(&low.tracked_total) <= total && total <= from_proto(&high.tracked_total),
                "{total:?}"
            );
            assert_eq!(report.by_level, low.by_level);
            assert_eq!(report.tracked_by_assignee.len(), 1);
            return;
        }
        panic!("three calls in a row straddled midnight");
    })
    .await;
}

#[tokio::test]
async fn a_database_that_is_down_answers_unavailable() {
    bounded(TEST_TIMEOUT, async {
        let port = closed_port();
        let config = unreachable_database(port);
        let handler =
            AnalyticsHandler::new(data::connect_pool(&config).unwrap(), unreachable_mesh());
        let started = Instant::now();
        let status = handler
            .user_dashboard_at("ada", SystemTime::now())
            .await
            .expect_err("no database");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let status = handler
            .project_report_at(&Uuid::new_v4().to_string(), SystemTime::now())
            .await
            .expect_err("no database");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Bad requests are refused before the database is asked.
        assert_invalid(
            handler.user_dashboard_at("", SystemTime::now()).await,
            "user_id",
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The crash test: real processes.

/// The test issuer's HS256 secret in a file of its own (for `--jwt-hs256-secret-file`), removed
/// when dropped.
struct SecretFile(std::path::PathBuf);

impl SecretFile {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{name}-{}.secret", Uuid::new_v4()));
        std::fs::write(&path, TEST_SECRET).unwrap();
        Self(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running `analytics` binary, killed (SIGKILL) and reaped when dropped; its standard error
/// (JSON log lines) is collected. It verifies callers with the test issuer's secret and finds
/// the tasks service through the given Consul agent.
struct AnalyticsProcess {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl AnalyticsProcess {
    fn start(db: &TestDatabase, prefix: &str, consul_addr: &str, secret: &SecretFile) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_analytics"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--no-register",
                "--consul-addr",
                consul_addr,
                "--jwt-hs256-secret-file",
                secret.0.to_str().unwrap(),
                "--lame-duck",
                "0s",
                "--drain-timeout",
                "1s",
                "--log-format",
                "json",
                "--claim-idle",
                "1s",
                "--database-url",
                db.url(),
                "--redis-url",
                &protomesh_data::testing::redis_url(),
                "--key-prefix",
                prefix,
            ])
            .env_remove("PROTOMESH_DB_SCHEMA")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let collected = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                collected.lock().unwrap().push(line);
            }
        });
        Self { child, logs }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// The value of `field` in the first log line whose message is `message`.
    fn logged(&self, message: &str, field: &str) -> Option<String> {
        self.logs.lock().unwrap().iter().find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            (value["message"] == message).then(|| value[field].as_str().map(str::to_owned))?
        })
    }

    fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until it serves and consumes; returns its address and consumer name.
    async fn ready(&mut self) -> (SocketAddr, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let (Some(addr), Some(consumer)) = (
                self.logged("serving (not registered in Consul)", "local_addr"),
                self.logged("consuming events", "consumer"),
            ) {
                return (addr.parse().unwrap(), consumer);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("analytics exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "analytics not ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for AnalyticsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// About 3000 events: 300 tasks created, moved to another assignee, a third completed, a tenth
/// deleted; 1100 entries started and stopped.
fn bulk_history(project: Uuid, users: &[&str]) -> (Vec<Message>, Model) {
    let mut messages = vec![project_created(project, "bulk")];
    let mut model = Model::default();
    let base = at("2024-04-01T08:00:00Z");
    let mut tasks = Vec::new();
    for i in 0..300_u64 {
        let level = [Level::Low, Level::Medium, Level::High, Level::Critical][(i % 4) as usize];
        let created = TaskState::new(
            project,
            users[(i % 4) as usize],
            level,
            base + Duration::from_secs(i),
        );
        messages.push(created.event("task.created"));
        let mut last = created.changed(base + Duration::from_secs(1000 + i), |t| {
            t.assignee = users[((i + 1) % 4) as usize].into();
            t.status = TaskStatus::InProgress;
        });
        messages.push(last.event("task.updated"));
        if i % 3 == 0 {
            last = last.changed(base + Duration::from_secs(2000 + i), |t| {
                t.status = TaskStatus::Done
            });
            messages.push(last.event("task.completed"));
        }
        let deleted = i % 10 == 0;
        if deleted {
            messages.push(last.event("task.deleted"));
        }
        tasks.push(last.id);
        model.tasks.insert(last.id, (last, deleted));
    }
    for j in 0..1100_u64 {
        let started = base + minutes(j * 90);
        let entry = EntryState::new(
            users[(j % 4) as usize],
            tasks[(j % 300) as usize],
            started,
            Some(started + minutes(j % 50 + 1)),
        );
        messages.push(entry.started());
        messages.push(entry.stopped());
        model.entries.push(entry);
    }
    (messages, model)
}

#[tokio::test]
async fn a_killed_consumer_s_events_are_claimed_by_the_next_process() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::create().await.unwrap();
        let keys = TestKeys::new();
        let config = db
            .config()
            .with_key_prefix(keys.prefix())
            .with_default_schema("analytics");
        let pool = data::connect_pool(&config).unwrap();
        let redis = connected_redis(&config).await;
        let keys_of = |stream: &str| format!("{}{stream}", keys.prefix());
        let tasks = TasksMesh::start(true).await;
        let consul_addr = tasks.agent.http_addr();
        let secret = SecretFile::new("analytics-crash-test");

        let mut first = AnalyticsProcess::start(&db, keys.prefix(), &consul_addr, &secret);
        let (_, first_consumer) = first.ready().await;

        let project = Uuid::new_v4();
        let users = ["ada", "bob", "cy", "dan"];
        let (messages, model) = bulk_history(project, &users);
        let total = i64::try_from(messages.len()).unwrap();
        assert!(total > 2900, "{total}");
        let sending = {
            let (redis, prefix, messages) =
                (redis.clone(), keys.prefix().to_owned(), messages.clone());
            tokio::spawn(async move { send(&redis, &prefix, &messages).await })
        };

        // Mid-stream: some applied, not all. Freeze it while it holds unacknowledged messages,
        // then kill it.
        eventually(
            Duration::from_secs(30),
            "the first events applied",
            || async { applied_count(&pool).await.filter(|n| *n >= 300).map(drop) },
        )
        .await;
        let mut held = 0;
        for _ in 0..100 {
            first.signal(Signal::SIGSTOP);
            for stream in ["tasks", "timetrack"] {
                held += pending_by_consumer(&redis, &keys_of(stream))
                    .await
                    .get(&first_consumer)
                    .copied()
                    .unwrap_or(0);
            }
            if held > 0 {
                break;
            }
            first.signal(Signal::SIGCONT);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(held > 0, "the first process never held a pending message");
        first.signal(Signal::SIGKILL);
        let _ = first.child.wait();
        let applied_at_kill = applied_count(&pool).await.unwrap();
        assert!(
            applied_at_kill < total,
            "all {total} events were applied before the kill"
        );
        eprintln!(
            "first process killed with {applied_at_kill} of {total} events applied, {held} held"
        );
        sending.await.unwrap();

        let mut second = AnalyticsProcess::start(&db, keys.prefix(), &consul_addr, &secret);
        let (addr, second_consumer) = second.ready().await;
        assert_ne!(first_consumer, second_consumer);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let applied = applied_count(&pool).await.unwrap();
            if applied == total {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{applied} of {total} applied (killed at {applied_at_kill}):\n{}",
                second.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for stream in ["tasks", "timetrack"] {
            eventually(Duration::from_secs(10), "nothing pending", || async {
                (pending(&redis, &keys_of(stream)).await == 0).then_some(())
            })
            .await;
        }
        assert!(
            second
                .log_text()
                .contains("claimed pending messages of the group"),
            "the second process claimed the first one's messages:\n{}",
            second.log_text()
        );

        // Exact figures, over gRPC from the second process, asked by an admin.
        let admin_token = token(ADMIN, &["admin"]);
        let mut client = AnalyticsServiceClient::with_interceptor(
            channel_to(addr).await,
            SignedIn::bearer(&admin_token),
        );
        let report = client
            .get_project_report(GetProjectReportRequest {
                project_id: project.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let now = SystemTime::now();
        assert_eq!(report, model.report(project, now));
        // The binary asked the tasks service with the caller's token.
        assert_eq!(
            tasks.stub.credentials_for(project),
            vec![format!("Bearer {admin_token}")]
        );
        for user in users {
            let dashboard = client
                .get_user_dashboard(GetUserDashboardRequest {
                    user_id: user.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(dashboard, model.dashboard(user, now), "{user}");
        }
        assert_eq!(applied_count(&pool).await.unwrap(), total);

        // A graceful stop: the server drains, then the consumer stops; exit 0.
        second.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = second.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{status}:\n{}", second.log_text());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Who may see what.

/// A project with one open task of `alice` (high) and one of `bob` (low), applied.
/// How much of an entry from 60 to 30 minutes ago lies in the current UTC week (Monday 00:00),
/// as the dashboard counts it: all 30 minutes, unless the week began less than an hour ago.
fn entry_part_in_this_week() -> Duration {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let days = since_epoch / 86_400;
    // 1970-01-01 was a Thursday: Monday is 3 days after it, modulo 7.
    let since_monday = since_epoch - (days - (days + 3) % 7) * 86_400;
    Duration::from_secs(since_monday.saturating_sub(30 * 60).min(30 * 60))
}

async fn two_users_project(h: &Harness) -> Uuid {
    let project = Uuid::new_v4();
    let now = SystemTime::now();
    let alice = TaskState::new(project, "alice", Level::High, now);
    let bob = TaskState::new(project, "bob", Level::Low, now);
    let entry = EntryState::new(
        "alice",
        alice.id,
        now - minutes(60),
        Some(now - minutes(30)),
    );
    h.send(&[
        project_created(project, "shared"),
        alice.event("task.created"),
        bob.event("task.created"),
        entry.started(),
        entry.stopped(),
    ])
    .await;
    h.drain().await;
    project
}

fn level_count(level: Level, count: i64) -> Vec<LevelCount> {
    vec![LevelCount {
        level: level as i32,
        count,
    }]
}

#[tokio::test]
async fn dashboards_answer_their_owner_and_admins_only() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        two_users_project(&h).await;
        let dashboard = |user_id: &str| GetUserDashboardRequest {
            user_id: user_id.into(),
        };
        let mut alice = h.client_as(as_user("alice"));
        let mut bob = h.client_as(as_user("bob"));

        let refused = bob
            .get_user_dashboard(dashboard("alice"))
            .await
            .expect_err("another user's");
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        assert!(
            refused.message().starts_with("user_id: "),
            "{}",
            refused.message()
        );
        for own in ["me", "bob"] {
            let mine = bob
                .get_user_dashboard(dashboard(own))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(mine.user_id, "bob", "{own}");
            assert_eq!(mine.open_by_level, level_count(Level::Low, 1), "{own}");
        }
        let hers = alice
            .get_user_dashboard(dashboard("me"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hers.user_id, "alice");
        assert_eq!(hers.open_by_level, level_count(Level::High, 1));
        // Her entry ran from an hour ago to half an hour ago; a week (UTC, from Monday 00:00)
        // that began less than an hour ago holds only its part of it.
        assert!(from_proto(&hers.tracked_this_week) >= entry_part_in_this_week());

        let mut admin = h.client.clone();
        let read = admin
            .get_user_dashboard(dashboard("alice"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.user_id, "alice");
        assert_eq!(read.open_by_level, hers.open_by_level);
        let own = admin
            .get_user_dashboard(dashboard("me"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(own.user_id, ADMIN);
        assert!(own.open_by_level.is_empty());
    })
    .await;
}

#[tokio::test]
async fn project_reports_answer_members_and_admins_as_the_tasks_service_decides() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let shared = two_users_project(&h).await;
        let other = two_users_project(&h).await;
        h.tasks.stub.set_members(shared, &["alice"]);
        let report = |project: Uuid| GetProjectReportRequest {
            project_id: project.to_string(),
        };
        let alice_token = token("alice", &["user"]);
        let bob_token = token("bob", &["user"]);
        let mut alice = h.client_as(SignedIn::bearer(&alice_token));
        let mut bob = h.client_as(SignedIn::bearer(&bob_token));

        // A member is served, and the tasks service was asked with her own token.
        let served = alice
            .get_project_report(report(shared))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(served.project_id, shared.to_string());
        assert_eq!(served.by_status.len(), 1);
        assert_eq!(served.tracked_by_assignee.len(), 1);
        assert_eq!(
            h.tasks.stub.credentials_for(shared),
            vec![format!("Bearer {alice_token}")]
        );

        // Not a member: the project does not exist for him, although analytics knows it.
        let refused = bob
            .get_project_report(report(shared))
            .await
            .expect_err("not a member");
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        assert_eq!(refused.message(), format!("project {shared} not found"));
        assert_eq!(
            h.tasks.stub.credentials_for(shared),
            vec![
                format!("Bearer {alice_token}"),
                format!("Bearer {bob_token}")
            ]
        );
        let refused = alice
            .get_project_report(report(other))
            .await
            .expect_err("not her project");
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");

        // Admins see every project.
        let mut admin = h.client.clone();
        let read = admin
            .get_project_report(report(other))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.project_id, other.to_string());
        assert_eq!(
            admin
                .get_project_report(report(shared))
                .await
                .unwrap()
                .into_inner(),
            served
        );

        // A tasks service that does not answer: UNAVAILABLE within the check's bound.
        let started = Instant::now();
        let stuck = alice
            .get_project_report(report(STUCK_PROJECT))
            .await
            .expect_err("never confirmed");
        assert_eq!(stuck.code(), Code::Unavailable, "{stuck:?}");
        assert!(
            stuck.message().contains("tasks service could not confirm"),
            "{}",
            stuck.message()
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn a_tasks_service_nobody_runs_makes_reports_unavailable_in_time() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start_with(false).await;
        let project = two_users_project(&h).await;
        let mut admin = h.client.clone();
        let started = Instant::now();
        let status = admin
            .get_project_report(GetProjectReportRequest {
                project_id: project.to_string(),
            })
            .await
            .expect_err("nobody confirms the project");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        // Dashboards do not need the tasks service.
        let dashboard = admin
            .get_user_dashboard(GetUserDashboardRequest {
                user_id: "alice".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dashboard.open_by_level, level_count(Level::High, 1));
    })
    .await;
}

#[tokio::test]
async fn calls_without_a_verified_credential_are_unauthenticated() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = two_users_project(&h).await;
        h.tasks.stub.set_members(project, &["alice"]);
        let dashboard = || GetUserDashboardRequest {
            user_id: "alice".into(),
        };
        let report = || GetProjectReportRequest {
            project_id: project.to_string(),
        };

        // No credential at all.
        let mut anonymous = AnalyticsServiceClient::new(h.channel.clone());
        // Identity metadata set by hand, as if a gateway had verified an admin: the runtime
        // removes it and finds no credential.
        let mut claimed = AnalyticsServiceClient::with_interceptor(
            h.channel.clone(),
            |mut request: Request<()>| {
                let metadata = request.metadata_mut();
                metadata.insert(protomesh::identity::SUBJECT, "alice".parse().unwrap());
                metadata.insert(protomesh::identity::ROLES, "admin".parse().unwrap());
                metadata.insert(protomesh::identity::AUTH_METHOD, "jwt".parse().unwrap());
                Ok(request)
            },
        );
        let refusals = [
            anonymous.get_user_dashboard(dashboard()).await.unwrap_err(),
            anonymous.get_project_report(report()).await.unwrap_err(),
            claimed.get_user_dashboard(dashboard()).await.unwrap_err(),
            claimed.get_project_report(report()).await.unwrap_err(),
        ];
        for status in refusals {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        }
        assert!(
            h.tasks.stub.credentials_for(project).is_empty(),
            "the tasks service was never asked"
        );
    })
    .await;
}
