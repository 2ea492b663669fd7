//! The event pipeline end to end, across processes: the real `tasks` and `analytics` binaries,
//! registered in a private Consul dev agent, over a database of the test's own on the machine's
//! Postgres and a private `redis-server` on a free port. Redis is stopped while 500 tasks are
//! created (and 100 of them completed): every call succeeds, the events wait in the tasks outbox,
//! and once Redis is back (empty: the private server keeps nothing) the relay publishes them and
//! analytics, whose consumer group is recreated, reaches exactly the figures the test computes
//! from the answers it got — nothing lost, nothing counted twice.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use protomesh::client::Mesh;
use protomesh_analytics::proto::protomesh::analytics::v1::{
    analytics_service_client::AnalyticsServiceClient, GetProjectReportRequest,
    GetUserDashboardRequest, LevelCount, ProjectReport,
};
use protomesh_data::testing::{PrivateRedis, TestDatabase, TestKeys};
use protomesh_mesh::ServiceProcess;
use protomesh_priority::proto::protomesh::priority::v1::Level;
use protomesh_tasks::proto::protomesh::tasks::v1::{
    tasks_service_client::TasksServiceClient, CompleteTaskRequest, CreateProjectRequest,
    CreateTaskRequest, Project, Task,
};
use support::{binary, eventually, tempdir, test_secret_file, unique, Consul};
use tokio::task::JoinSet;

/// Tasks created while Redis is down.
const TASKS: usize = 500;
/// Every this-many-th of them is completed, also while Redis is down.
const COMPLETE_EVERY: usize = 5;
/// Assignees the tasks are spread over.
const USERS: [&str; 5] = ["ada", "bob", "cy", "dee", "eve"];
/// Calls in flight at once.
const CONCURRENCY: usize = 16;

/// Starts `name` (a data service) on a free port, registered in `consul`, on `database`, `redis`
/// and `prefix`.
fn spawn_data_service(
    name: &str,
    consul: &str,
    database: &str,
    redis: &str,
    prefix: &str,
) -> ServiceProcess {
    let log = tempdir().join(format!("{name}.log"));
    eprintln!("{name} log: {}", log.display());
    ServiceProcess::spawn(
        unique(name),
        &binary(name),
        &["--listen".to_owned(), "127.0.0.1:0".to_owned()],
        &[
            ("CONSUL_HTTP_ADDR".into(), consul.into()),
            ("DATABASE_URL".into(), database.into()),
            ("REDIS_URL".into(), redis.into()),
            ("PROTOMESH_KEY_PREFIX".into(), prefix.into()),
            ("PROTOMESH_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
            // A restarted consumer would claim the dead one's messages after this long.
            ("PROTOMESH_ANALYTICS_CLAIM_IDLE".into(), "2s".into()),
            // Callers are verified with the test issuer's secret (no users service here).
            ("PROTOMESH_JWT_SECRET_FILE".into(), test_secret_file()),
        ],
        log,
    )
    .unwrap()
}

/// Counts per level as the analytics answer lists them (levels with a count, in level order).
fn level_counts(counts: &BTreeMap<i32, i64>) -> Vec<LevelCount> {
    counts
        .iter()
        .filter(|(_, &count)| count > 0)
        .map(|(&level, &count)| LevelCount { level, count })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_while_500_tasks_are_created_then_analytics_counts_exactly() {
    let consul = Consul::start().await;
    let database = TestDatabase::create().await.unwrap();
    let keys = TestKeys::new();
    let mut redis = PrivateRedis::start().await.unwrap();
    let _tasks = spawn_data_service(
        "tasks",
        &consul.addr(),
        database.url(),
        &redis.url(),
        keys.prefix(),
    );
    let _analytics = spawn_data_service(
        "analytics",
        &consul.addr(),
        database.url(),
        &redis.url(),
        keys.prefix(),
    );
    for service in ["tasks", "analytics"] {
        eventually(Duration::from_secs(60), "passing instance", || async {
            (!consul.instances(service, true).await.is_empty()).then_some(())
        })
        .await;
    }
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    // An admin: it reads every user's dashboard.
    let admin = protomesh::auth::testing::SignedIn::as_user("root", &["admin"]);
    let tasks = TasksServiceClient::with_interceptor(mesh.channel("tasks"), admin.clone());
    let analytics = AnalyticsServiceClient::with_interceptor(mesh.channel("analytics"), admin);

    let project: Project = tasks
        .clone()
        .create_project(CreateProjectRequest {
            project: Some(Project {
                name: unique("pipeline"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    // Analytics knows the project before Redis goes away (a Redis restarted empty loses what it
    // held, applied or not; what the outbox still holds is what must survive).
    let report_of = |project_id: String| {
        let analytics = analytics.clone();
        async move {
            analytics
                .clone()
                .get_project_report(GetProjectReportRequest { project_id })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    eventually(
        Duration::from_secs(20),
        "analytics sees the project",
        || {
            let report = report_of(project.id.clone());
            async move { report.await.ok() }
        },
    )
    .await;

    redis.stop().await.unwrap();

    // 500 tasks, 16 calls in flight; every 5th completed right after it was created.
    let mut calls = JoinSet::new();
    let mut created: Vec<Task> = Vec::with_capacity(TASKS);
    for n in 0..TASKS {
        if calls.len() >= CONCURRENCY {
            created.push(calls.join_next().await.unwrap().unwrap());
        }
        let mut tasks = tasks.clone();
        let project_id = project.id.clone();
        calls.spawn(async move {
            let task = tasks
                .create_task(CreateTaskRequest {
                    project_id,
                    task: Some(Task {
                        title: format!("task {n}"),
                        urgency: (n % 10) as i32 + 1,
                        impact: (n * 7 % 10) as i32 + 1,
                        assignee: USERS[n % USERS.len()].to_owned(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap_or_else(|status| panic!("create {n} with Redis down: {status:?}"))
                .into_inner();
            if n % COMPLETE_EVERY == 0 {
                tasks
                    .complete_task(CompleteTaskRequest {
                        id: task.id.clone(),
                    })
                    .await
                    .unwrap_or_else(|status| panic!("complete {n} with Redis down: {status:?}"))
                    .into_inner()
            } else {
                task
            }
        });
    }
    while let Some(task) = calls.join_next().await {
        created.push(task.unwrap());
    }
    assert_eq!(created.len(), TASKS, "every call succeeded with Redis down");

    // What analytics must reach, from the answers.
    let done = i32::from(protomesh_tasks::proto::protomesh::tasks::v1::TaskStatus::Done);
    let mut by_level: BTreeMap<i32, i64> = BTreeMap::new();
    let mut open_by_user: BTreeMap<&str, BTreeMap<i32, i64>> = BTreeMap::new();
    let mut done_by_user: BTreeMap<&str, BTreeMap<i32, i64>> = BTreeMap::new();
    let mut completed: i64 = 0;
    for task in &created {
        *by_level.entry(task.priority_level).or_default() += 1;
        let user = USERS.iter().find(|u| **u == task.assignee).unwrap();
        let per_user = if task.status == done {
            completed += 1;
            &mut done_by_user
        } else {
            &mut open_by_user
        };
        *per_user
            .entry(user)
            .or_default()
            .entry(task.priority_level)
            .or_default() += 1;
    }
    assert_eq!(completed, (TASKS / COMPLETE_EVERY) as i64);
    assert!(by_level.len() > 1, "several levels: {by_level:?}");
    assert!(by_level.keys().all(|l| *l != i32::from(Level::Unspecified)));

    redis.start_again().await.unwrap();

    let report: ProjectReport = eventually(
        Duration::from_secs(60),
        "analytics counts every task",
        || {
            let report = report_of(project.id.clone());
            async move {
                let report = report.await.ok()?;
                let total: i64 = report.by_status.iter().map(|s| s.count).sum();
                (total >= TASKS as i64
                    && report
                        .by_status
                        .iter()
                        .any(|s| s.status == "TASK_STATUS_DONE" && s.count >= completed))
                .then_some(report)
            }
        },
    )
    .await;
    // Give a double count the time to show before the exact comparison.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = report_of(project.id.clone()).await.unwrap_or(report);
    let statuses: BTreeMap<String, i64> = report
        .by_status
        .iter()
        .map(|s| (s.status.clone(), s.count))
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([
            ("TASK_STATUS_DONE".to_owned(), completed),
            ("TASK_STATUS_OPEN".to_owned(), (TASKS as i64) - completed),
        ])
    );
    assert_eq!(report.by_level, level_counts(&by_level));
    assert!((report.completion_rate - 1.0 / COMPLETE_EVERY as f64).abs() < 1e-9);

    for user in USERS {
        let dashboard = analytics
            .clone()
            .get_user_dashboard(GetUserDashboardRequest {
                user_id: user.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        let none = BTreeMap::new();
        assert_eq!(
            dashboard.open_by_level,
            level_counts(open_by_user.get(user).unwrap_or(&none)),
            "{user} open"
        );
        assert_eq!(
            dashboard.completed_by_level,
            level_counts(done_by_user.get(user).unwrap_or(&none)),
            "{user} completed"
        );
    }
}
