//! The tasks service against the machine's real Postgres and Redis and a private Consul dev
//! agent: each test has a database of its own, a Redis key prefix of its own, and the handler
//! served in-process on a free loopback port (not registered), called with the generated client.
//! Unless a test starts one, no priority instance is registered, so priorities are the local
//! fallback.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use protomesh::auth::testing::SignedIn;
use protomesh::client::Mesh;
use protomesh::consul::{DevAgent, DevAgentOptions};
use protomesh::server::testing::{quick_config, InProcessServer};
use protomesh::server::MeshServer;
use protomesh::status::testing::{assert_invalid, violation_fields};
use protomesh::testing::{bounded, eventually};
use protomesh_data::deadpool_postgres::Pool;
use protomesh_data::fred::prelude::{Client, KeysInterface, StreamsInterface};
use protomesh_data::outbox::RelayHandle;
use protomesh_data::testing::{
    closed_port, unreachable_database, ServiceData, TestDatabase, TestKeys,
};
use protomesh_data::{self as data, Cache, DataConfig};
use protomesh_priority::proto::protomesh::priority::v1::Level;
use protomesh_tasks::proto::protomesh::tasks::v1::{
    tasks_service_client::TasksServiceClient, tasks_service_server::TasksService,
    AddProjectMemberRequest, CompleteTaskRequest, CreateProjectRequest, CreateTaskRequest,
    DeleteTaskRequest, GetProjectRequest, GetTaskRequest, ListProjectMembersRequest,
    ListProjectsRequest, ListTasksRequest, Project, ProjectRole, RemoveProjectMemberRequest, Task,
    TaskStatus, UpdateTaskRequest,
};
use protomesh_tasks::{cache_key, TasksHandler, TasksServiceServer, EVENT_STREAM, MIGRATIONS};
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A tasks client signed in as someone (the test issuer's token).
type SignedInClient = TasksServiceClient<InterceptedService<Channel, SignedIn>>;
use tonic::Code;

/// Bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// A timestamp as (seconds, nanos), which compare in time order.
fn stamp(ts: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let ts = ts.unwrap();
    (ts.seconds, ts.nanos)
}

/// Everything one test needs. Field order is drop order: the server and relay go before the
/// database is dropped.
struct Harness {
    channel: Channel,
    _served: InProcessServer,
    relay: RelayHandle,
    handler: TasksHandler,
    pool: Pool,
    redis: Client,
    keys: TestKeys,
    agent: DevAgent,
    _db: TestDatabase,
}

impl Harness {
    async fn start() -> Self {
        let db = TestDatabase::create().await.unwrap();
        let keys = TestKeys::new();
        let data = ServiceData::start(&db, &keys, "tasks", MIGRATIONS)
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

        let cache = Cache::new(redis.clone(), keys.prefix());
        let handler = TasksHandler::new(pool.clone(), cache, mesh.clone());
        let mut serve = quick_config(Some(&agent.http_addr()));
        serve.no_register = true;
        let served = InProcessServer::start(
            MeshServer::new("tasks", serve)
                .descriptor_set(protomesh_tasks::proto::FILE_DESCRIPTOR_SET)
                .with_mesh(mesh)
                .add_service(TasksServiceServer::new(handler.clone())),
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
            handler,
            pool,
            redis,
            keys,
            agent,
            _db: db,
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

    async fn project(&self, name: &str) -> Project {
        self.client()
            .create_project(CreateProjectRequest {
                project: Some(Project {
                    name: name.into(),
                    description: format!("about {name}"),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn task(&self, project: &Project, title: &str, urgency: i32, impact: i32) -> Task {
        self.client()
            .create_task(CreateTaskRequest {
                project_id: project.id.clone(),
                task: Some(Task {
                    title: title.into(),
                    urgency,
                    impact,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn get(&self, id: &str) -> Result<Task, tonic::Status> {
        self.client()
            .get_task(GetTaskRequest { id: id.into() })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn update(&self, task: Task, paths: &[&str]) -> Result<Task, tonic::Status> {
        self.client()
            .update_task(UpdateTaskRequest {
                task: Some(task),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn cached(&self, id: &str) -> bool {
        let key = format!("{}task:{id}", self.keys.prefix());
        let n: i64 = self.redis.exists(key.as_str()).await.unwrap();
        n == 1
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
}

#[tokio::test]
async fn crud_round_trip_publishes_events() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = h.project("apollo").await;
        assert_eq!(project.name, "apollo");
        assert!(project.created_at.is_some());
        let fetched = h
            .client()
            .get_project(GetProjectRequest {
                id: project.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched, project);
        let duplicate = h
            .client()
            .create_project(CreateProjectRequest {
                project: Some(Project {
                    name: "apollo".into(),
                    ..Default::default()
                }),
            })
            .await
            .expect_err("name taken");
        assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");

        let created = h
            .client()
            .create_task(CreateTaskRequest {
                project_id: project.id.clone(),
                task: Some(Task {
                    title: "ship it".into(),
                    description: "all of it".into(),
                    urgency: 3,
                    impact: 4,
                    assignee: "ada".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.project_id, project.id);
        assert_eq!(created.title, "ship it");
        assert_eq!(created.assignee, "ada");
        assert_eq!(created.status(), TaskStatus::Open);
        assert_eq!(created.priority_score, 12);
        assert_eq!(created.priority_level(), Level::Low);
        assert_eq!(created.created_at, created.updated_at);
        assert!(created.completed_at.is_none());
        assert_eq!(h.get(&created.id).await.unwrap(), created);

        let updated = h
            .update(
                Task {
                    id: created.id.clone(),
                    title: "ship it now".into(),
                    urgency: 9,
                    impact: 8,
                    // Not in the mask: ignored.
                    assignee: "bob".into(),
                    ..Default::default()
                },
                &["title", "urgency", "impact"],
            )
            .await
            .unwrap();
        assert_eq!(updated.title, "ship it now");
        assert_eq!(updated.assignee, "ada");
        assert_eq!(updated.description, "all of it");
        assert_eq!((updated.urgency, updated.impact), (9, 8));
        assert_eq!(updated.priority_score, 72, "priority computed again");
        assert_eq!(updated.priority_level(), Level::High);
        assert!(stamp(&updated.updated_at) > stamp(&created.updated_at));
        assert_eq!(h.get(&created.id).await.unwrap(), updated);

        let completed = h
            .client()
            .complete_task(CompleteTaskRequest {
                id: created.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(completed.status(), TaskStatus::Done);
        assert!(completed.completed_at.is_some());
        let again = h
            .client()
            .complete_task(CompleteTaskRequest {
                id: created.id.clone(),
            })
            .await
            .expect_err("already done");
        assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

        h.client_as("root", &["admin"])
            .delete_task(DeleteTaskRequest {
                id: created.id.clone(),
            })
            .await
            .unwrap();
        assert_eq!(h.get(&created.id).await.unwrap_err().code(), Code::NotFound);
        let gone = h
            .client_as("root", &["admin"])
            .delete_task(DeleteTaskRequest {
                id: created.id.clone(),
            })
            .await
            .expect_err("deleted already");
        assert_eq!(gone.code(), Code::NotFound);
        let gone = h
            .client()
            .complete_task(CompleteTaskRequest {
                id: created.id.clone(),
            })
            .await
            .expect_err("deleted");
        assert_eq!(gone.code(), Code::NotFound);

        // Every write published its event, in order, with the task's JSON.
        let events = eventually(Duration::from_secs(10), "5 events", || async {
            let events = h.events().await;
            (events.len() >= 5).then_some(events)
        })
        .await;
        let types: Vec<&str> = events.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(
            types,
            vec![
                "project.created",
                "task.created",
                "task.updated",
                "task.completed",
                "task.deleted"
            ]
        );
        assert_eq!(events[0].1, project.id);
        for (_, aggregate, payload) in &events[1..] {
            assert_eq!(aggregate, &created.id);
            assert_eq!(payload["id"], created.id);
            assert_eq!(payload["project_id"], project.id);
            assert_eq!(payload["assignee"], "ada");
        }
        assert_eq!(events[1].2["status"], "TASK_STATUS_OPEN");
        assert_eq!(events[1].2["priority_level"], "LEVEL_LOW");
        assert_eq!(events[1].2["priority_fallback"], true);
        assert_eq!(events[2].2["priority_level"], "LEVEL_HIGH");
        assert_eq!(events[2].2["title"], "ship it now");
        assert_eq!(events[3].2["status"], "TASK_STATUS_DONE");
        assert!(events[3].2["completed_at"].is_string());
        // The relay counts an event once its "sent" mark commits, just after the XADD the
        // stream read above already saw: wait for the count rather than race it.
        eventually(Duration::from_secs(5), "the relay's count", || async {
            (h.relay.published() >= 5).then_some(())
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = h.project("validation").await;
        let mut client = h.client();
        let create = |task: Task| CreateTaskRequest {
            project_id: project.id.clone(),
            task: Some(task),
        };
        let valid = Task {
            title: "ok".into(),
            urgency: 5,
            impact: 5,
            ..Default::default()
        };

        for (task, field) in [
            (
                Task {
                    title: String::new(),
                    ..valid.clone()
                },
                "task.title",
            ),
            (
                Task {
                    title: "   ".into(),
                    ..valid.clone()
                },
                "task.title",
            ),
            (
                Task {
                    title: "x".repeat(201),
                    ..valid.clone()
                },
                "task.title",
            ),
            (
                Task {
                    urgency: 0,
                    ..valid.clone()
                },
                "task.urgency",
            ),
            (
                Task {
                    urgency: 11,
                    ..valid.clone()
                },
                "task.urgency",
            ),
            (
                Task {
                    impact: 11,
                    ..valid.clone()
                },
                "task.impact",
            ),
            (
                Task {
                    impact: -1,
                    ..valid.clone()
                },
                "task.impact",
            ),
            (
                Task {
                    status: 7,
                    ..valid.clone()
                },
                "task.status",
            ),
        ] {
            assert_invalid(client.create_task(create(task)).await, field);
        }
        // Several at once: each named.
        let status = client
            .create_task(create(Task {
                title: String::new(),
                urgency: 0,
                impact: 99,
                ..Default::default()
            }))
            .await
            .expect_err("three violations");
        assert_eq!(
            violation_fields(&status),
            vec!["task.title", "task.urgency", "task.impact"]
        );
        assert_invalid(
            client
                .create_task(CreateTaskRequest {
                    project_id: "not-a-uuid".into(),
                    task: Some(valid.clone()),
                })
                .await,
            "project_id",
        );
        assert_invalid(
            client
                .create_task(CreateTaskRequest {
                    project_id: String::new(),
                    task: Some(valid.clone()),
                })
                .await,
            "project_id",
        );
        assert_invalid(
            client
                .create_task(CreateTaskRequest {
                    project_id: project.id.clone(),
                    task: None,
                })
                .await,
            "task",
        );
        let unknown = client
            .create_task(CreateTaskRequest {
                project_id: uuid::Uuid::new_v4().to_string(),
                task: Some(valid.clone()),
            })
            .await
            .expect_err("unknown project");
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

        assert_invalid(
            client
                .create_project(CreateProjectRequest {
                    project: Some(Project::default()),
                })
                .await,
            "project.name",
        );
        assert_invalid(
            client
                .get_project(GetProjectRequest { id: "x".into() })
                .await,
            "id",
        );
        assert_invalid(
            client.get_task(GetTaskRequest { id: "42".into() }).await,
            "id",
        );
        assert_invalid(
            client
                .complete_task(CompleteTaskRequest { id: String::new() })
                .await,
            "id",
        );
        assert_invalid(
            h.client_as("root", &["admin"])
                .delete_task(DeleteTaskRequest { id: "nope".into() })
                .await,
            "id",
        );

        let task = h.task(&project, "to update", 2, 2).await;
        assert_invalid(
            h.update(
                Task {
                    id: "bad".into(),
                    ..task.clone()
                },
                &["title"],
            )
            .await,
            "task.id",
        );
        assert_invalid(h.update(task.clone(), &[]).await, "update_mask");
        assert_invalid(
            h.update(task.clone(), &["title", "colour"]).await,
            "update_mask",
        );
        assert_invalid(
            h.update(task.clone(), &["priority_score"]).await,
            "update_mask",
        );
        assert_invalid(
            h.update(
                Task {
                    urgency: 12,
                    ..task.clone()
                },
                &["urgency"],
            )
            .await,
            "task.urgency",
        );
        assert_invalid(
            h.update(
                Task {
                    title: String::new(),
                    ..task.clone()
                },
                &["title"],
            )
            .await,
            "task.title",
        );
        assert_invalid(
            h.update(
                Task {
                    status: 0,
                    ..task.clone()
                },
                &["status"],
            )
            .await,
            "task.status",
        );
        let missing = h
            .update(
                Task {
                    id: uuid::Uuid::new_v4().to_string(),
                    ..task.clone()
                },
                &["title"],
            )
            .await
            .expect_err("no such task");
        assert_eq!(missing.code(), Code::NotFound);

        let list = |request: ListTasksRequest| {
            let mut client = h.client();
            async move { client.list_tasks(request).await }
        };
        assert_invalid(
            list(ListTasksRequest {
                page_size: 1001,
                ..Default::default()
            })
            .await,
            "page_size",
        );
        assert_invalid(
            list(ListTasksRequest {
                page_size: -1,
                ..Default::default()
            })
            .await,
            "page_size",
        );
        for token in ["!!!", "AAAA", "c29tZXRoaW5nIGVsc2U"] {
            assert_invalid(
                list(ListTasksRequest {
                    page_token: token.into(),
                    ..Default::default()
                })
                .await,
                "page_token",
            );
        }
        assert_invalid(
            list(ListTasksRequest {
                project_id: "p1".into(),
                ..Default::default()
            })
            .await,
            "project_id",
        );
        assert_invalid(
            list(ListTasksRequest {
                min_level: 9,
                ..Default::default()
            })
            .await,
            "min_level",
        );
        assert_invalid(
            list(ListTasksRequest {
                status: 9,
                ..Default::default()
            })
            .await,
            "status",
        );
        assert_invalid(
            h.client()
                .list_projects(ListProjectsRequest {
                    page_size: 5000,
                    page_token: String::new(),
                })
                .await,
            "page_size",
        );
        assert_invalid(
            h.client()
                .list_projects(ListProjectsRequest {
                    page_size: 0,
                    page_token: "zzz".into(),
                })
                .await,
            "page_token",
        );
        // Nothing was written by the refused calls: the one valid task is all there is.
        let all = list(ListTasksRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.tasks.len(), 1);
    })
    .await;
}

/// Whether a message carries text of Postgres's own (its error messages about encodings,
/// syntax, relations…).
fn has_database_text(message: &str) -> bool {
    [
        "UTF8",
        "0x00",
        "byte sequence",
        "syntax",
        "relation",
        "SQLSTATE",
        "ERROR:",
    ]
    .iter()
    .any(|text| message.contains(text))
}

#[tokio::test]
async fn text_the_database_cannot_hold_is_refused_naming_the_field() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let mut client = h.client();
        let nul = "ship\u{0000}it".to_owned();

        let mut answers = Vec::new();
        for (project, field) in [
            (
                Project {
                    name: nul.clone(),
                    ..Default::default()
                },
                "project.name",
            ),
            (
                Project {
                    name: "fine".into(),
                    description: nul.clone(),
                    ..Default::default()
                },
                "project.description",
            ),
        ] {
            let answer = client
                .create_project(CreateProjectRequest {
                    project: Some(project),
                })
                .await;
            answers.push(answer.as_ref().map(|_| ()).map_err(Clone::clone));
            assert_invalid(answer, field);
        }

        let project = h.project("nul checks").await;
        let valid = Task {
            title: "ok".into(),
            urgency: 5,
            impact: 5,
            ..Default::default()
        };
        for (task, field) in [
            (
                Task {
                    title: nul.clone(),
                    ..valid.clone()
                },
                "task.title",
            ),
            (
                Task {
                    description: nul.clone(),
                    ..valid.clone()
                },
                "task.description",
            ),
            (
                Task {
                    assignee: nul.clone(),
                    ..valid.clone()
                },
                "task.assignee",
            ),
        ] {
            let answer = client
                .create_task(CreateTaskRequest {
                    project_id: project.id.clone(),
                    task: Some(task),
                })
                .await;
            answers.push(answer.as_ref().map(|_| ()).map_err(Clone::clone));
            assert_invalid(answer, field);
        }

        let task = h.task(&project, "to update", 5, 5).await;
        let answer = h
            .update(
                Task {
                    title: nul.clone(),
                    ..task
                },
                &["title"],
            )
            .await;
        answers.push(answer.as_ref().map(|_| ()).map_err(Clone::clone));
        assert_invalid(answer, "task.title");

        let answer = client
            .list_tasks(ListTasksRequest {
                assignee: nul.clone(),
                ..Default::default()
            })
            .await;
        answers.push(answer.as_ref().map(|_| ()).map_err(Clone::clone));
        assert_invalid(answer, "assignee");

        for answer in answers {
            let status = answer.expect_err("refused");
            assert!(!has_database_text(status.message()), "{status:?}");
            for violation in protomesh::status::field_violations(&status) {
                assert!(!has_database_text(&violation.description), "{violation:?}");
            }
        }
    })
    .await;
}

/// `token` with one bit of its byte `index` flipped (the token's own base64url alphabet).
fn flip_byte(token: &str, index: usize) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let mut bytes = URL_SAFE_NO_PAD.decode(token).unwrap();
    bytes[index] ^= 0x01;
    URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn page_tokens_are_signed_and_bound_to_their_filter() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let alpha = h.project("alpha").await;
        let beta = h.project("beta").await;
        h.project("gamma").await;
        for i in 0..3 {
            h.task(&alpha, &format!("a{i}"), 5, 5).await;
            h.task(&beta, &format!("b{i}"), 5, 5).await;
        }
        let mut client = h.client();
        let first = client
            .list_tasks(ListTasksRequest {
                project_id: alpha.id.clone(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let token = first.next_page_token;
        assert!(!token.is_empty());

        // As handed out, with another page size: the next page.
        let next = client
            .list_tasks(ListTasksRequest {
                project_id: alpha.id.clone(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next.tasks.len(), 2);

        let mut refused = Vec::new();
        // Any flipped byte: of the cursor (its time, its id) or of the tag.
        for index in [1, 5, 12, 20, 30] {
            refused.push(
                client
                    .list_tasks(ListTasksRequest {
                        project_id: alpha.id.clone(),
                        page_token: flip_byte(&token, index),
                        ..Default::default()
                    })
                    .await,
            );
        }
        // Another project, another status, another assignee, no filter at all.
        for request in [
            ListTasksRequest {
                project_id: beta.id.clone(),
                ..Default::default()
            },
            ListTasksRequest {
                project_id: alpha.id.clone(),
                status: TaskStatus::Open as i32,
                ..Default::default()
            },
            ListTasksRequest {
                project_id: alpha.id.clone(),
                assignee: "ada".into(),
                ..Default::default()
            },
            ListTasksRequest::default(),
        ] {
            refused.push(
                client
                    .list_tasks(ListTasksRequest {
                        page_token: token.clone(),
                        ..request
                    })
                    .await,
            );
        }
        for answer in refused {
            let status = answer.as_ref().expect_err("refused").clone();
            assert!(!status.message().contains(&token[..16]), "{status:?}");
            assert_invalid(answer, "page_token");
        }

        // A tasks token is no projects token, and the other way round.
        let projects = client
            .list_projects(ListProjectsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_invalid(
            client
                .list_projects(ListProjectsRequest {
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await,
            "page_token",
        );
        assert_invalid(
            client
                .list_tasks(ListTasksRequest {
                    page_token: projects.next_page_token.clone(),
                    ..Default::default()
                })
                .await,
            "page_token",
        );
        assert_invalid(
            client
                .list_projects(ListProjectsRequest {
                    page_token: flip_byte(&projects.next_page_token, 2),
                    ..Default::default()
                })
                .await,
            "page_token",
        );
    })
    .await;
}

#[tokio::test]
async fn pages_cover_every_existing_task_once_under_concurrent_inserts() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = h.project("paging").await;
        let mut existing = Vec::new();
        for i in 0..120 {
            existing.push(
                h.task(&project, &format!("task {i}"), 1 + i % 10, 1)
                    .await
                    .id,
            );
        }
        // Keep inserting while paging.
        let (stop, mut stopped) = oneshot::channel::<()>();
        let writer = {
            let mut client = h.client();
            let project_id = project.id.clone();
            tokio::spawn(async move {
                let mut inserted = 0;
                loop {
                    if stopped.try_recv().is_ok() {
                        return inserted;
                    }
                    client
                        .create_task(CreateTaskRequest {
                            project_id: project_id.clone(),
                            task: Some(Task {
                                title: format!("concurrent {inserted}"),
                                urgency: 5,
                                impact: 5,
                                ..Default::default()
                            }),
                        })
                        .await
                        .unwrap();
                    inserted += 1;
                }
            })
        };
        // Let a few land before the first page.
        eventually(Duration::from_secs(10), "concurrent inserts", || async {
            let page = h
                .client()
                .list_tasks(ListTasksRequest {
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            (page.tasks.len() > 125).then_some(())
        })
        .await;

        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut token = String::new();
        loop {
            let page = h
                .client()
                .list_tasks(ListTasksRequest {
                    project_id: project.id.clone(),
                    page_size: 50,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            sizes.push(page.tasks.len());
            seen.extend(page.tasks);
            // Pause between pages so that inserts happen while paging.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        stop.send(()).unwrap();
        let inserted = writer.await.unwrap();
        assert!(inserted > 5, "inserts ran concurrently ({inserted})");

        let ids: Vec<&str> = seen.iter().map(|t| t.id.as_str()).collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "no task twice");
        for id in &existing {
            assert!(unique.contains(id.as_str()), "task {id} missing");
        }
        // Newest first, strictly.
        for pair in seen.windows(2) {
            let key = |t: &Task| (stamp(&t.created_at), t.id.clone());
            assert!(key(&pair[0]) > key(&pair[1]), "order: {pair:?}");
        }
        assert!(
            sizes[..sizes.len() - 1].iter().all(|&s| s == 50),
            "{sizes:?}"
        );
        // The oldest task closes the last page.
        assert_eq!(seen.last().unwrap().id, existing[0]);
    })
    .await;
}

#[tokio::test]
async fn list_filters_and_project_pages() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let alpha = h.project("alpha").await;
        let beta = h.project("beta").await;
        for name in ["delta", "gamma", "epsilon"] {
            h.project(name).await;
        }
        let low = h.task(&alpha, "low", 1, 1).await; // 1 LOW
        let medium = h.task(&alpha, "medium", 4, 5).await; // 20 MEDIUM
        let high = h.task(&beta, "high", 5, 10).await; // 50 HIGH
        let critical = h.task(&beta, "critical", 9, 9).await; // 81 CRITICAL
        let assigned = h
            .update(
                Task {
                    id: medium.id.clone(),
                    assignee: "ada".into(),
                    ..Default::default()
                },
                &["assignee"],
            )
            .await
            .unwrap();
        assert_eq!(assigned.assignee, "ada");
        h.update(
            Task {
                id: high.id.clone(),
                assignee: "ada".into(),
                status: TaskStatus::InProgress as i32,
                ..Default::default()
            },
            &["assignee", "status"],
        )
        .await
        .unwrap();

        let ids = |request: ListTasksRequest| {
            let mut client = h.client();
            async move {
                client
                    .list_tasks(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .tasks
                    .into_iter()
                    .map(|t| t.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            ids(ListTasksRequest::default()).await,
            vec![
                critical.id.clone(),
                high.id.clone(),
                medium.id.clone(),
                low.id.clone()
            ]
        );
        assert_eq!(
            ids(ListTasksRequest {
                project_id: alpha.id.clone(),
                ..Default::default()
            })
            .await,
            vec![medium.id.clone(), low.id.clone()]
        );
        assert_eq!(
            ids(ListTasksRequest {
                assignee: "ada".into(),
                ..Default::default()
            })
            .await,
            vec![high.id.clone(), medium.id.clone()]
        );
        assert_eq!(
            ids(ListTasksRequest {
                status: TaskStatus::InProgress as i32,
                ..Default::default()
            })
            .await,
            vec![high.id.clone()]
        );
        assert_eq!(
            ids(ListTasksRequest {
                min_level: Level::High as i32,
                ..Default::default()
            })
            .await,
            vec![critical.id.clone(), high.id.clone()]
        );
        assert_eq!(
            ids(ListTasksRequest {
                project_id: beta.id.clone(),
                assignee: "ada".into(),
                min_level: Level::Medium as i32,
                status: TaskStatus::InProgress as i32,
                ..Default::default()
            })
            .await,
            vec![high.id.clone()]
        );
        let unknown = h
            .client()
            .list_tasks(ListTasksRequest {
                project_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            })
            .await
            .expect_err("no such project");
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

        // Status through UpdateTask: done sets completed_at, reopening clears it.
        let done = h
            .update(
                Task {
                    id: low.id.clone(),
                    status: TaskStatus::Done as i32,
                    ..Default::default()
                },
                &["status"],
            )
            .await
            .unwrap();
        assert!(done.completed_at.is_some());
        let reopened = h
            .update(
                Task {
                    id: low.id.clone(),
                    status: TaskStatus::Open as i32,
                    ..Default::default()
                },
                &["status"],
            )
            .await
            .unwrap();
        assert!(reopened.completed_at.is_none());
        assert_eq!(reopened.status(), TaskStatus::Open);

        // Projects by name, two at a time.
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let page = h
                .client()
                .list_projects(ListProjectsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.projects.len() <= 2);
            names.extend(page.projects.into_iter().map(|p| p.name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(names, vec!["alpha", "beta", "delta", "epsilon", "gamma"]);
    })
    .await;
}

#[tokio::test]
async fn priority_unavailable_scores_locally() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = h.project("fallback").await;
        // The mesh's Consul knows no priority instance.
        let task = h.task(&project, "critical", 9, 9).await;
        assert_eq!(task.priority_score, 81);
        assert_eq!(task.priority_level(), Level::Critical);
        assert!(task.priority_fallback);
        let stored: bool = h
            .pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT priority_fallback FROM tasks WHERE id = $1",
                &[&uuid::Uuid::parse_str(&task.id).unwrap()],
            )
            .await
            .unwrap()
            .get(0);
        assert!(stored);
        // Thresholds as the priority service's: 50 is HIGH, 49 MEDIUM, 19 LOW.
        assert_eq!(
            h.task(&project, "h", 5, 10).await.priority_level(),
            Level::High
        );
        assert_eq!(
            h.task(&project, "m", 7, 7).await.priority_level(),
            Level::Medium
        );
        assert_eq!(
            h.task(&project, "l", 2, 5).await.priority_level(),
            Level::Low
        );
        let updated = h
            .update(
                Task {
                    id: task.id.clone(),
                    impact: 2,
                    ..Default::default()
                },
                &["impact"],
            )
            .await
            .unwrap();
        assert_eq!(updated.priority_score, 18);
        assert_eq!(updated.priority_level(), Level::Low);
        assert!(updated.priority_fallback);
    })
    .await;
}

#[tokio::test]
async fn priority_available_scores_remotely() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = h.project("remote").await;
        let _priority = InProcessServer::start(
            MeshServer::new("priority", quick_config(Some(&h.agent.http_addr())))
                .descriptor_set(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
                .add_service(protomesh_priority::PriorityServiceServer::new(
                    protomesh_priority::PriorityHandler,
                )),
        )
        .await
        .unwrap();
        h.agent
            .wait_passing("priority", Duration::from_secs(20))
            .await
            .unwrap();
        let task = eventually(Duration::from_secs(20), "a remote score", || async {
            let task = h.task(&project, "ship", 9, 8).await;
            (!task.priority_fallback).then_some(task)
        })
        .await;
        assert_eq!(task.priority_score, 72);
        assert_eq!(task.priority_level(), Level::High);
    })
    .await;
}

#[tokio::test]
async fn get_task_reads_through_the_cache_and_writes_invalidate_it() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = h.project("cache").await;
        let task = h.task(&project, "cached", 2, 3).await;
        assert!(
            !h.cached(&task.id).await,
            "creating does not fill the cache"
        );
        assert_eq!(h.get(&task.id).await.unwrap(), task);
        assert!(h.cached(&task.id).await, "GetTask filled the cache");
        let key = format!("{}{}", h.keys.prefix(), cache_key(task.id.parse().unwrap()));
        let ttl: i64 = h.redis.pttl(key.as_str()).await.unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "ttl {ttl}");

        // Change the row behind the service's back: a hit still answers the cached copy.
        h.pool
            .get()
            .await
            .unwrap()
            .execute(
                "UPDATE tasks SET title = 'behind the back' WHERE id = $1",
                &[&uuid::Uuid::parse_str(&task.id).unwrap()],
            )
            .await
            .unwrap();
        assert_eq!(h.get(&task.id).await.unwrap().title, "cached");

        // A write through the service drops the entry; the next read sees the database.
        let updated = h
            .update(
                Task {
                    id: task.id.clone(),
                    description: "new".into(),
                    ..Default::default()
                },
                &["description"],
            )
            .await
            .unwrap();
        assert!(
            !h.cached(&task.id).await,
            "UpdateTask invalidated the entry"
        );
        assert_eq!(updated.title, "behind the back");
        assert_eq!(h.get(&task.id).await.unwrap(), updated);
        assert!(h.cached(&task.id).await);

        h.client()
            .complete_task(CompleteTaskRequest {
                id: task.id.clone(),
            })
            .await
            .unwrap();
        assert!(
            !h.cached(&task.id).await,
            "CompleteTask invalidated the entry"
        );
        assert_eq!(h.get(&task.id).await.unwrap().status(), TaskStatus::Done);
        h.client_as("root", &["admin"])
            .delete_task(DeleteTaskRequest {
                id: task.id.clone(),
            })
            .await
            .unwrap();
        assert!(
            !h.cached(&task.id).await,
            "DeleteTask invalidated the entry"
        );
        assert_eq!(h.get(&task.id).await.unwrap_err().code(), Code::NotFound);
    })
    .await;
}

#[tokio::test]
async fn a_database_that_is_down_answers_unavailable() {
    bounded(TEST_TIMEOUT, async {
        let port = closed_port();
        let config = unreachable_database(port);
        let pool = data::connect_pool(&config).unwrap();
        let redis = data::connect_redis(&config).unwrap();
        let consul = protomesh::consul::ConsulClient::new(
            protomesh::consul::ConsulConfig::new(&format!("127.0.0.1:{port}")).unwrap(),
        )
        .unwrap();
        let handler = TasksHandler::new(
            pool,
            Cache::new(redis, ""),
            Mesh::from_consul(consul, &[protomesh_tasks::proto::FILE_DESCRIPTOR_SET]).unwrap(),
        );
        let started = Instant::now();
        let mut request = tonic::Request::new(GetTaskRequest {
            id: uuid::Uuid::new_v4().to_string(),
        });
        protomesh::auth::testing::verified_as(&mut request, "alice", &["user"]);
        let status = handler.get_task(request).await.expect_err("no database");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let mut request = tonic::Request::new(CreateProjectRequest {
            project: Some(Project {
                name: "x".into(),
                ..Default::default()
            }),
        });
        protomesh::auth::testing::verified_as(&mut request, "alice", &["user"]);
        let status = handler
            .create_project(request)
            .await
            .expect_err("no database");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    })
    .await;
}

/// The handler is usable directly too (no server): a sanity check of the harness' handler.
#[tokio::test]
async fn handler_answers_without_a_server() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = h.project("direct").await;
        let mut request = tonic::Request::new(ListTasksRequest {
            project_id: project.id.clone(),
            ..Default::default()
        });
        protomesh::auth::testing::verified_as(&mut request, "alice", &["user"]);
        let listed = h.handler.list_tasks(request).await.unwrap().into_inner();
        assert!(listed.tasks.is_empty());
        assert!(listed.next_page_token.is_empty());
    })
    .await;
}

/// The code of a call's error, or `Ok` when it succeeded.
fn code_of<T>(result: Result<T, tonic::Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// Alice's project and tasks do not exist for Bob, on every call; a member Alice adds reads and
/// updates them and loses access when removed (the cached GetTask included); only the owner
/// manages members; an admin acts for anyone.
#[tokio::test]
async fn only_members_see_and_change_a_project_and_its_tasks() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = h.project("alice-only").await;
        assert_eq!(project.owner_id, "alice");
        let task = h.task(&project, "secret plan", 5, 5).await;
        let mut bob = h.client_as("bob", &["user"]);
        let not_found = |code: Code, what: &str| assert_eq!(code, Code::NotFound, "{what}");

        async fn strangers_calls(
            bob: &mut SignedInClient,
            project: &Project,
            task: &Task,
        ) -> Vec<(Code, &'static str)> {
            vec![
                (
                    code_of(
                        bob.get_project(GetProjectRequest {
                            id: project.id.clone(),
                        })
                        .await,
                    ),
                    "GetProject",
                ),
                (
                    code_of(
                        bob.get_task(GetTaskRequest {
                            id: task.id.clone(),
                        })
                        .await,
                    ),
                    "GetTask",
                ),
                (
                    code_of(
                        bob.update_task(UpdateTaskRequest {
                            task: Some(Task {
                                id: task.id.clone(),
                                title: "mine".into(),
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["title".into()],
                            }),
                        })
                        .await,
                    ),
                    "UpdateTask",
                ),
                (
                    code_of(
                        bob.complete_task(CompleteTaskRequest {
                            id: task.id.clone(),
                        })
                        .await,
                    ),
                    "CompleteTask",
                ),
                (
                    code_of(
                        bob.create_task(CreateTaskRequest {
                            project_id: project.id.clone(),
                            task: Some(Task {
                                title: "planted".into(),
                                urgency: 1,
                                impact: 1,
                                ..Default::default()
                            }),
                        })
                        .await,
                    ),
                    "CreateTask",
                ),
                (
                    code_of(
                        bob.list_tasks(ListTasksRequest {
                            project_id: project.id.clone(),
                            ..Default::default()
                        })
                        .await,
                    ),
                    "ListTasks in the project",
                ),
                (
                    code_of(
                        bob.list_project_members(ListProjectMembersRequest {
                            project_id: project.id.clone(),
                        })
                        .await,
                    ),
                    "ListProjectMembers",
                ),
                (
                    code_of(
                        bob.add_project_member(AddProjectMemberRequest {
                            project_id: project.id.clone(),
                            user_id: "bob".into(),
                        })
                        .await,
                    ),
                    "AddProjectMember",
                ),
            ]
        }

        // Bob first reads nothing (GetTask's cache is warm from Alice's read).
        assert_eq!(h.get(&task.id).await.unwrap().title, "secret plan");
        for (code, call) in strangers_calls(&mut bob, &project, &task).await {
            not_found(code, call);
        }
        let bobs_tasks = bob
            .list_tasks(ListTasksRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(bobs_tasks.tasks.is_empty(), "{bobs_tasks:?}");
        let bobs_projects = bob
            .list_projects(ListProjectsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(bobs_projects.projects.is_empty(), "{bobs_projects:?}");
        // Names are unique per owner: Alice's names are not Bob's business (no ALREADY_EXISTS
        // telling him one is taken), while Alice cannot repeat her own.
        let bobs_own = bob
            .create_project(CreateProjectRequest {
                project: Some(Project {
                    name: "alice-only".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(bobs_own.owner_id, "bob");
        let again = h
            .client()
            .create_project(CreateProjectRequest {
                project: Some(Project {
                    name: "alice-only".into(),
                    ..Default::default()
                }),
            })
            .await;
        assert_eq!(code_of(again), Code::AlreadyExists);
        // A page token is its caller's own.
        h.project("alice-second").await;
        let page = h
            .client()
            .list_projects(ListProjectsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!page.next_page_token.is_empty());
        let borrowed = bob
            .list_projects(ListProjectsRequest {
                page_size: 1,
                page_token: page.next_page_token.clone(),
            })
            .await;
        assert_eq!(code_of(borrowed), Code::InvalidArgument);
        assert_eq!(
            h.get(&task.id).await.unwrap().status(),
            TaskStatus::Open,
            "nothing changed"
        );

        // Alice adds Bob: he reads and updates, but does not manage members.
        let added = h
            .client()
            .add_project_member(AddProjectMemberRequest {
                project_id: project.id.clone(),
                user_id: "bob".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(added.role(), ProjectRole::Member);
        let twice = h
            .client()
            .add_project_member(AddProjectMemberRequest {
                project_id: project.id.clone(),
                user_id: "bob".into(),
            })
            .await;
        assert_eq!(code_of(twice), Code::AlreadyExists);
        assert_eq!(
            bob.get_task(GetTaskRequest {
                id: task.id.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .id,
            task.id
        );
        let renamed = bob
            .update_task(UpdateTaskRequest {
                task: Some(Task {
                    id: task.id.clone(),
                    title: "our plan".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["title".into()],
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(renamed.title, "our plan");
        let listed = bob
            .list_tasks(ListTasksRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            listed
                .tasks
                .iter()
                .map(|t| t.id.clone())
                .collect::<Vec<_>>(),
            vec![task.id.clone()]
        );
        let members = bob
            .list_project_members(ListProjectMembersRequest {
                project_id: project.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .members;
        assert_eq!(
            members
                .iter()
                .map(|m| (m.user_id.as_str(), m.role()))
                .collect::<Vec<_>>(),
            vec![("alice", ProjectRole::Owner), ("bob", ProjectRole::Member)]
        );
        let by_member = bob
            .add_project_member(AddProjectMemberRequest {
                project_id: project.id.clone(),
                user_id: "carol".into(),
            })
            .await;
        assert_eq!(code_of(by_member), Code::PermissionDenied);
        let owner_removed = h
            .client()
            .remove_project_member(RemoveProjectMemberRequest {
                project_id: project.id.clone(),
                user_id: "alice".into(),
            })
            .await;
        assert_eq!(code_of(owner_removed), Code::FailedPrecondition);

        // Removed, Bob loses access at once, the warm cache notwithstanding.
        assert_eq!(h.get(&task.id).await.unwrap().title, "our plan");
        h.client()
            .remove_project_member(RemoveProjectMemberRequest {
                project_id: project.id.clone(),
                user_id: "bob".into(),
            })
            .await
            .unwrap();
        for (code, call) in strangers_calls(&mut bob, &project, &task).await {
            not_found(code, call);
        }

        // An admin sees and manages every project.
        let mut admin = h.client_as("root", &["admin"]);
        assert_eq!(
            admin
                .get_task(GetTaskRequest {
                    id: task.id.clone()
                })
                .await
                .unwrap()
                .into_inner()
                .title,
            "our plan"
        );
        let all = admin
            .list_projects(ListProjectsRequest::default())
            .await
            .unwrap()
            .into_inner();
        // Two projects named alike (Alice's and Bob's) page apart by id.
        let names: Vec<String> = all.projects.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, vec!["alice-only", "alice-only", "alice-second"]);
        let mut paged = Vec::new();
        let mut token = String::new();
        loop {
            let page = admin
                .list_projects(ListProjectsRequest {
                    page_size: 1,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            paged.extend(page.projects.into_iter().map(|p| p.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(
            paged,
            all.projects
                .iter()
                .map(|p| p.id.clone())
                .collect::<Vec<_>>()
        );
        admin
            .add_project_member(AddProjectMemberRequest {
                project_id: project.id.clone(),
                user_id: "dave".into(),
            })
            .await
            .unwrap();
        let dave_sees = h
            .client_as("dave", &["user"])
            .get_project(GetProjectRequest {
                id: project.id.clone(),
            })
            .await;
        assert_eq!(code_of(dave_sees), Code::Ok);
    })
    .await;
}

/// On the service's own port: no credential, or identity metadata without one, is
/// UNAUTHENTICATED; a forged token too; a valid token works.
#[tokio::test]
async fn direct_calls_need_a_credential_the_service_verifies() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let project = h.project("direct-auth").await;
        let mut anonymous = TasksServiceClient::new(h.channel.clone());
        let request = || GetProjectRequest {
            id: project.id.clone(),
        };
        assert_eq!(
            code_of(anonymous.get_project(request()).await),
            Code::Unauthenticated
        );
        let mut spoofed = tonic::Request::new(request());
        for (key, value) in [
            (protomesh::identity::SUBJECT, "alice"),
            (protomesh::identity::ROLES, "admin"),
            (protomesh::identity::AUTH_METHOD, "jwt"),
        ] {
            spoofed.metadata_mut().insert(key, value.parse().unwrap());
        }
        assert_eq!(
            code_of(anonymous.get_project(spoofed).await),
            Code::Unauthenticated
        );
        let forged = protomesh::auth::testing::forged_token("alice");
        let mut forger =
            TasksServiceClient::with_interceptor(h.channel.clone(), SignedIn::bearer(&forged));
        assert_eq!(
            code_of(forger.get_project(request()).await),
            Code::Unauthenticated
        );
        assert_eq!(
            h.client()
                .get_project(request())
                .await
                .unwrap()
                .into_inner()
                .id,
            project.id
        );
    })
    .await;
}

/// Projects from before owners existed get one by migration: the reserved `unowned` (never an
/// assignee, free text anyone could have written); assignees that are user ids become members.
#[tokio::test]
async fn the_migration_gives_old_projects_an_owner_and_members() {
    bounded(TEST_TIMEOUT, async {
        let db = TestDatabase::create().await.unwrap();
        let config: DataConfig = db.config().with_default_schema("tasks");
        let pool = data::connect_pool(&config).unwrap();
        // The schema as it was before owners: steps 1 and 2.
        data::migrate(&pool, "tasks", &MIGRATIONS[..2])
            .await
            .unwrap();
        let project = uuid::Uuid::new_v4();
        let user = uuid::Uuid::new_v4().to_string();
        let client = pool.get().await.unwrap();
        client
            .execute(
                "INSERT INTO projects (id, name) VALUES ($1, 'legacy')",
                &[&project],
            )
            .await
            .unwrap();
        for assignee in [user.as_str(), "ada", ""] {
            client
                .execute(
                    "INSERT INTO tasks (id, project_id, title, urgency, impact, assignee,
                        priority_score, priority_level) VALUES ($1, $2, 't', 1, 1, $3, 1, 1)",
                    &[&uuid::Uuid::new_v4(), &project, &assignee],
                )
                .await
                .unwrap();
        }
        drop(client);
        data::migrate(&pool, "tasks", MIGRATIONS).await.unwrap();
        let client = pool.get().await.unwrap();
        let owner: String = client
            .query_one("SELECT owner_id FROM projects WHERE id = $1", &[&project])
            .await
            .unwrap()
            .get(0);
        assert_eq!(owner, "unowned");
        let members: Vec<(String, i16)> = client
            .query(
                "SELECT user_id, role FROM project_members WHERE project_id = $1 ORDER BY role",
                &[&project],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        assert_eq!(members, vec![("unowned".to_owned(), 1), (user, 2)]);
    })
    .await;
}
