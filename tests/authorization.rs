//! Who may touch what, end to end across real processes: `users`, `tasks`, `timetrack`,
//! `analytics`, `priority` and the `gateway`, registered in a private Consul dev agent, on a
//! database and key prefix of the test's own; every token is a real one from the users service.
//!
//! Alice owns a project with a task and time on it. Bob, signed in with his own valid token, is
//! refused every read and write of Alice's project, tasks, timer, entries, dashboard and report —
//! through the gateway (404) and directly on each service's port (`NOT_FOUND`) — while Alice's own
//! calls succeed. A member Alice adds reads and updates her tasks and loses access when removed;
//! an admin acts for Alice. Directly on every service's port: no credential, or hand-set
//! `x-protomesh-*` metadata alone, is `UNAUTHENTICATED`.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use protomesh_analytics::proto::protomesh::analytics::v1::{
    analytics_service_client::AnalyticsServiceClient, GetProjectReportRequest,
    GetUserDashboardRequest,
};
use protomesh_tasks::proto::protomesh::tasks::v1::{
    tasks_service_client::TasksServiceClient, GetProjectRequest, GetTaskRequest,
};
use protomesh_timetrack::proto::protomesh::timetrack::v1::{
    timetrack_service_client::TimetrackServiceClient, ListEntriesRequest, StartTimerRequest,
};
use protomesh_users::proto::protomesh::users::v1::{
    users_service_client::UsersServiceClient, GetMeRequest,
};
use support::http::{bearer, field, http, spawn, Answer};
use support::mesh::{wait_passing, wait_routes, TestMesh};
use support::{eventually, gateway_addr, unique, Consul};
use tonic::transport::Channel;
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";

/// A request with `authorization: Bearer token` (none when empty) and `extra` metadata.
fn request<T>(message: T, token: &str, extra: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = if token.is_empty() {
        tonic::Request::new(message)
    } else {
        support::with_token(message, token)
    };
    for (key, value) in extra {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    request
}

/// The gRPC code of a call's outcome (`Ok` on success).
fn code<T>(outcome: Result<T, tonic::Status>) -> Code {
    outcome.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// A plain channel to the first passing instance of `service`.
async fn direct(consul: &Consul, service: &str) -> Channel {
    let entry = consul.instances(service, true).await.remove(0);
    let addr = format!("http://{}:{}", entry.service.address, entry.service.port);
    Channel::from_shared(addr).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_members_and_admins_are_served() {
    let mesh = TestMesh::start().await;
    let consul = &mesh.consul;
    let admin_email = format!("{}@example.com", unique("root"));
    let env = mesh.env();
    let _users = spawn("users", &env, &["--admin-email", &admin_email]);
    let _tasks = spawn("tasks", &env, &[]);
    let _timetrack = spawn("timetrack", &env, &[]);
    let _analytics = spawn("analytics", &env, &[]);
    let _priority = spawn("priority", &env, &[]);
    wait_passing(
        consul,
        &["users", "tasks", "timetrack", "analytics", "priority"],
    )
    .await;
    let gateway = spawn("gateway", &env, &[]);
    let addr: SocketAddr = gateway_addr(&gateway).await;
    let url = |path: &str| format!("http://{addr}{path}");
    wait_routes(
        addr,
        &[
            "UsersService",
            "TasksService",
            "TimetrackService",
            "AnalyticsService",
        ],
    )
    .await;

    // Alice, Bob, Carol and an admin sign up and in.
    let sign_in = |name: &'static str, email: String| {
        let url = url("");
        async move {
            let body =
                format!(r#"{{"email":"{email}","displayName":"{name}","password":"{PASSWORD}"}}"#);
            let registered = http(
                "POST",
                format!("{url}/v1/users:register"),
                vec![],
                Some(body),
            )
            .await;
            assert_eq!(registered.status, 200, "{}", registered.body);
            let body = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
            let tokens = http("POST", format!("{url}/v1/auth:login"), vec![], Some(body)).await;
            assert_eq!(tokens.status, 200, "{}", tokens.body);
            (field(&registered, "id"), field(&tokens, "accessToken"))
        }
    };
    let email = |name: &str| format!("{}@example.com", unique(name));
    let (alice, alice_token) = sign_in("Alice", email("alice")).await;
    let (bob, bob_token) = sign_in("Bob", email("bob")).await;
    let (_carol, carol_token) = sign_in("Carol", email("carol")).await;
    let (_root, admin_token) = sign_in("Root", admin_email.clone()).await;

    let call = |method: &'static str, path: String, token: String, body: Option<&'static str>| {
        let url = url(&path);
        async move { http(method, url, bearer(&token), body.map(str::to_owned)).await }
    };

    // Alice's own project, task and time: all 200.
    let project = http(
        "POST",
        url("/v1/projects"),
        bearer(&alice_token),
        Some(format!(r#"{{"name":"{}"}}"#, unique("alice-project"))),
    )
    .await;
    assert_eq!(project.status, 200, "{}", project.body);
    assert_eq!(field(&project, "ownerId"), alice);
    let project_id = field(&project, "id");
    let task = call(
        "POST",
        format!("/v1/projects/{project_id}/tasks"),
        alice_token.clone(),
        Some(r#"{"title":"alice's plan","urgency":9,"impact":8}"#),
    )
    .await;
    assert_eq!(task.status, 200, "{}", task.body);
    let task_id = field(&task, "id");
    let timer_body: &'static str =
        Box::leak(format!(r#"{{"taskId":"{task_id}"}}"#).into_boxed_str());
    let started = call(
        "POST",
        "/v1/users/me/timer:start".into(),
        alice_token.clone(),
        Some(timer_body),
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.body);
    let stopped = call(
        "POST",
        "/v1/users/me/timer:stop".into(),
        alice_token.clone(),
        Some("{}"),
    )
    .await;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    // Her report once analytics has her events.
    eventually(Duration::from_secs(30), "Alice's report", || {
        let call = call(
            "GET",
            format!("/v1/projects/{project_id}/report"),
            alice_token.clone(),
            None,
        );
        async move { (call.await.status == 200).then_some(()) }
    })
    .await;

    // Everything of Alice's, as someone else: 404 through the gateway.
    let others_view = |token: String| {
        let calls: Vec<(&'static str, String, Option<&'static str>)> = vec![
            ("GET", format!("/v1/projects/{project_id}"), None),
            ("GET", format!("/v1/tasks/{task_id}"), None),
            (
                "PATCH",
                format!("/v1/tasks/{task_id}"),
                Some(r#"{"title":"mine now"}"#),
            ),
            ("POST", format!("/v1/tasks/{task_id}:complete"), Some("{}")),
            (
                "POST",
                format!("/v1/projects/{project_id}/tasks"),
                Some(r#"{"title":"x","urgency":1,"impact":1}"#),
            ),
            ("GET", format!("/v1/tasks?project_id={project_id}"), None),
            ("GET", format!("/v1/projects/{project_id}/members"), None),
            (
                "POST",
                format!("/v1/users/{alice}/timer:start"),
                Some(timer_body),
            ),
            ("POST", format!("/v1/users/{alice}/timer:stop"), Some("{}")),
            (
                "POST",
                "/v1/users/me/timer:start".to_owned(),
                Some(timer_body),
            ),
            ("GET", format!("/v1/entries?user_id={alice}"), None),
            (
                "GET",
                format!(
                    "/v1/totals?user_id={alice}&from=2026-06-01T00:00:00Z&to=2027-06-01T00:00:00Z"
                ),
                None,
            ),
            ("GET", format!("/v1/users/{alice}/dashboard"), None),
            ("GET", format!("/v1/projects/{project_id}/report"), None),
        ];
        let call = &call;
        async move {
            let mut answers: Vec<(String, Answer)> = Vec::new();
            for (method, path, body) in calls {
                answers.push((
                    format!("{method} {path}"),
                    call(method, path, token.clone(), body).await,
                ));
            }
            answers
        }
    };
    for (what, answer) in others_view(bob_token.clone()).await {
        assert_eq!(answer.status, 404, "Bob: {what}: {}", answer.body);
        assert!(
            !answer.body.contains("alice's plan"),
            "{what}: {}",
            answer.body
        );
    }
    let unchanged = call(
        "GET",
        format!("/v1/tasks/{task_id}"),
        alice_token.clone(),
        None,
    )
    .await;
    assert_eq!(unchanged.status, 200, "{}", unchanged.body);
    assert_eq!(field(&unchanged, "title"), "alice's plan");
    let bobs_list = call("GET", "/v1/tasks".into(), bob_token.clone(), None).await;
    assert_eq!(bobs_list.status, 200);
    assert!(!bobs_list.body.contains(&task_id), "{}", bobs_list.body);

    // Directly on the services' ports, Bob's own valid token: NOT_FOUND all the same.
    let mut tasks = TasksServiceClient::new(direct(consul, "tasks").await);
    let mut timetrack = TimetrackServiceClient::new(direct(consul, "timetrack").await);
    let mut analytics = AnalyticsServiceClient::new(direct(consul, "analytics").await);
    let mut users = UsersServiceClient::new(direct(consul, "users").await);
    let get_task = || GetTaskRequest {
        id: task_id.clone(),
    };
    let entries = || ListEntriesRequest {
        user_id: alice.clone(),
        ..Default::default()
    };
    let dashboard = || GetUserDashboardRequest {
        user_id: alice.clone(),
    };
    let report = || GetProjectReportRequest {
        project_id: project_id.clone(),
    };
    assert_eq!(
        code(tasks.get_task(request(get_task(), &bob_token, &[])).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            tasks
                .get_project(request(
                    GetProjectRequest {
                        id: project_id.clone()
                    },
                    &bob_token,
                    &[]
                ))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            timetrack
                .list_entries(request(entries(), &bob_token, &[]))
                .await
        ),
        Code::NotFound
    );
    let start = || StartTimerRequest {
        user_id: alice.clone(),
        task_id: task_id.clone(),
        note: String::new(),
    };
    assert_eq!(
        code(
            timetrack
                .start_timer(request(start(), &bob_token, &[]))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            analytics
                .get_user_dashboard(request(dashboard(), &bob_token, &[]))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            analytics
                .get_project_report(request(report(), &bob_token, &[]))
                .await
        ),
        Code::NotFound
    );

    // No credential, or identity metadata set by hand: UNAUTHENTICATED on every service.
    let spoof: [(&'static str, &str); 3] = [
        ("x-protomesh-subject", &alice),
        ("x-protomesh-roles", "admin"),
        ("x-protomesh-auth", "jwt"),
    ];
    for extra in [&[][..], &spoof[..]] {
        assert_eq!(
            code(tasks.get_task(request(get_task(), "", extra)).await),
            Code::Unauthenticated
        );
        assert_eq!(
            code(timetrack.list_entries(request(entries(), "", extra)).await),
            Code::Unauthenticated
        );
        assert_eq!(
            code(
                analytics
                    .get_user_dashboard(request(dashboard(), "", extra))
                    .await
            ),
            Code::Unauthenticated
        );
        assert_eq!(
            code(users.get_me(request(GetMeRequest {}, "", extra)).await),
            Code::Unauthenticated
        );
    }
    // With the right token, the same direct calls work.
    assert_eq!(
        code(tasks.get_task(request(get_task(), &alice_token, &[])).await),
        Code::Ok
    );
    assert_eq!(
        code(
            timetrack
                .list_entries(request(entries(), &alice_token, &[]))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            analytics
                .get_user_dashboard(request(dashboard(), &alice_token, &[]))
                .await
        ),
        Code::Ok
    );
    let me = users
        .get_me(request(GetMeRequest {}, &bob_token, &spoof))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, bob, "the token's subject, not the claimed one");

    // Alice adds Carol: Carol reads and updates the task, sees the report; removed, she is out.
    let carol_sub = {
        let me = call("GET", "/v1/users/me".into(), carol_token.clone(), None).await;
        field(&me, "id")
    };
    let add_body: &'static str =
        Box::leak(format!(r#"{{"userId":"{carol_sub}"}}"#).into_boxed_str());
    let added = call(
        "POST",
        format!("/v1/projects/{project_id}/members"),
        alice_token.clone(),
        Some(add_body),
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.body);
    let read = call(
        "GET",
        format!("/v1/tasks/{task_id}"),
        carol_token.clone(),
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    let updated = call(
        "PATCH",
        format!("/v1/tasks/{task_id}"),
        carol_token.clone(),
        Some(r#"{"title":"our plan"}"#),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(field(&updated, "title"), "our plan");
    let report_for_carol = call(
        "GET",
        format!("/v1/projects/{project_id}/report"),
        carol_token.clone(),
        None,
    )
    .await;
    assert_eq!(report_for_carol.status, 200, "{}", report_for_carol.body);
    let not_hers = call(
        "GET",
        format!("/v1/users/{alice}/dashboard"),
        carol_token.clone(),
        None,
    )
    .await;
    assert_eq!(
        not_hers.status, 404,
        "membership is not a licence to Alice's own data"
    );
    let removed = call(
        "DELETE",
        format!("/v1/projects/{project_id}/members/{carol_sub}"),
        alice_token.clone(),
        None,
    )
    .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    for (what, answer) in others_view(carol_token.clone()).await {
        assert_eq!(
            answer.status, 404,
            "Carol, removed: {what}: {}",
            answer.body
        );
    }

    // An admin acts for Alice.
    for path in [
        format!("/v1/tasks/{task_id}"),
        format!("/v1/users/{alice}/dashboard"),
        format!("/v1/entries?user_id={alice}"),
        format!("/v1/projects/{project_id}/report"),
    ] {
        let answer = call("GET", path.clone(), admin_token.clone(), None).await;
        assert_eq!(answer.status, 200, "admin: {path}: {}", answer.body);
    }
    let for_alice = call(
        "POST",
        format!("/v1/users/{alice}/timer:start"),
        admin_token.clone(),
        Some(timer_body),
    )
    .await;
    assert_eq!(for_alice.status, 200, "{}", for_alice.body);
    let json: serde_json::Value = serde_json::from_str(&for_alice.body).unwrap();
    assert_eq!(
        json["started"]["userId"],
        alice.as_str(),
        "{}",
        for_alice.body
    );
}
