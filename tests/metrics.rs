//! `/metrics` of every binary end to end: a private Consul agent, priority, tasks (on a database
//! and key prefix of the test's own) and analytics with `--admin 127.0.0.1:0`, and the gateway with
//! `--admin`. The services' admin ports are learnt from their Consul meta `metrics_port`. Calls go
//! through the gateway and through the mesh — some fail on purpose — and then each `/metrics` is
//! scraped: the expected families and label values are there with the right counts, and
//! `promtool check metrics` accepts every scrape without a single lint problem.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use protomesh::client::Mesh;
use protomesh_data::testing::{TestDatabase, TestKeys};
use protomesh_mesh::ServiceProcess;
use protomesh_priority::proto::protomesh::priority::v1::priority_service_client::PriorityServiceClient;
use protomesh_priority::proto::protomesh::priority::v1::ScoreRequest;
use protomesh_tasks::proto::protomesh::tasks::v1::tasks_service_client::TasksServiceClient;
use protomesh_tasks::proto::protomesh::tasks::v1::{
    CreateProjectRequest, CreateTaskRequest, GetTaskRequest, Project, Task,
};
use support::{binary, eventually, free_port, tempdir, test_secret_file, tool, unique, Consul};

/// Starts the binary `name` with `args` and `envs` (plus the Consul address and JSON logs).
fn spawn(name: &str, consul: &Consul, args: &[&str], envs: &[(&str, &str)]) -> ServiceProcess {
    let mut all_envs = vec![
        ("CONSUL_HTTP_ADDR".to_owned(), consul.addr()),
        // Callers are verified with the test issuer's secret (no users service here).
        ("PROTOMESH_JWT_SECRET_FILE".to_owned(), test_secret_file()),
        ("PROTOMESH_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    all_envs.extend(envs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    ServiceProcess::spawn(
        unique(name),
        &binary(name),
        &args,
        &all_envs,
        tempdir().join(format!("{name}.log")),
    )
    .unwrap()
}

/// One HTTP request; the status, `Content-Type` and body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{method} {addr}{path}: no answer within 10s"))
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// `/metrics` of the admin listener at `addr` in the Prometheus text format, checked by
/// `promtool check metrics` (which must find nothing to complain about).
async fn scrape(addr: &str) -> String {
    let (status, content_type, text) = http(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "{addr}/metrics: {text}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    promtool_check(&text);
    text
}

fn promtool_check(text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n--- scrape:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample written exactly `series` (name and labels) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

/// The sum of the samples of family `name` whose labels contain every one of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The admin address of the passing instance of `service`, from its Consul meta `metrics_port`.
async fn admin_addr(consul: &Consul, service: &str) -> String {
    eventually(
        Duration::from_secs(60),
        &format!("a passing {service} instance with metrics_port"),
        || async {
            let instances = consul.instances(service, true).await;
            let instance = instances.first()?;
            let port = instance.service.meta.get("metrics_port")?;
            Some(format!("{}:{port}", instance.service.address))
        },
    )
    .await
}

fn score(urgency: i32) -> ScoreRequest {
    ScoreRequest {
        title: "t".into(),
        urgency,
        impact: 8,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_serves_metrics_that_promtool_accepts() {
    for name in ["priority", "tasks", "analytics", "gateway"] {
        binary(name);
    }
    let consul = Consul::start().await;
    let database = TestDatabase::create().await.unwrap();
    let keys = TestKeys::new();
    let data_envs = [
        ("DATABASE_URL", database.url()),
        ("PROTOMESH_KEY_PREFIX", keys.prefix()),
    ];
    let admin = ["--admin", "127.0.0.1:0"];
    let _priority = spawn("priority", &consul, &admin, &[]);
    let _tasks = spawn("tasks", &consul, &admin, &data_envs);
    let _analytics = spawn("analytics", &consul, &admin, &data_envs);
    let gateway = format!("127.0.0.1:{}", free_port());
    let gateway_admin = format!("127.0.0.1:{}", free_port());
    let _gateway = spawn(
        "gateway",
        &consul,
        &["--listen", &gateway, "--admin", &gateway_admin],
        &[],
    );

    let priority_admin = admin_addr(&consul, "priority").await;
    let tasks_admin = admin_addr(&consul, "tasks").await;
    let analytics_admin = admin_addr(&consul, "analytics").await;
    eventually(
        Duration::from_secs(60),
        "the gateway routing priority and tasks",
        || async {
            let (status, _, body) = http(&gateway, "GET", "/routes", &[], "").await;
            (status == 200
                && body.contains(r#""service":"priority""#)
                && body.contains(r#""service":"tasks""#))
            .then_some(())
        },
    )
    .await;

    // Through the gateway: 3 good scores, 1 invalid, a tasks call without credentials (refused
    // at the edge), a path nothing routes.
    let score_body = support::http::SCORE_JSON;
    for _ in 0..3 {
        let (status, _, body) = http(&gateway, "POST", "/v1/priority:score", &[], score_body).await;
        assert_eq!(status, 200, "{body}");
    }
    let bad = r#"{"title":"t","urgency":11,"impact":8}"#;
    let (status, _, body) = http(&gateway, "POST", "/v1/priority:score", &[], bad).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = http(&gateway, "POST", "/v1/projects", &[], r#"{"name":"x"}"#).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = http(&gateway, "GET", "/no/such/route", &[], "").await;
    assert_eq!(status, 404);

    // Through the mesh: 2 good scores and 1 invalid to priority; a project, two tasks (which tasks
    // scores by calling priority) and a task that does not exist to tasks.
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let mut priority = PriorityServiceClient::new(mesh.channel("priority"));
    for _ in 0..2 {
        priority.score(score(9)).await.unwrap();
    }
    let invalid = priority.score(score(0)).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let mut tasks = TasksServiceClient::with_interceptor(
        mesh.channel("tasks"),
        protomesh::auth::testing::SignedIn::as_user("metrics", &["user"]),
    );
    let project = tasks
        .create_project(CreateProjectRequest {
            project: Some(Project {
                name: unique("metrics"),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    for title in ["measure", "measure again"] {
        tasks
            .create_task(CreateTaskRequest {
                project_id: project.id.clone(),
                task: Some(Task {
                    title: title.into(),
                    urgency: 9,
                    impact: 8,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let missing = tasks
        .get_task(GetTaskRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // priority: every Score counted by code (3 + 2 direct + 2 from tasks OK, 2 invalid).
    let score_labels = r#"service="protomesh.priority.v1.PriorityService",method="Score""#;
    let text = eventually(Duration::from_secs(10), "priority's counts", || async {
        let text = scrape(&priority_admin).await;
        (value(
            &text,
            &format!(r#"grpc_server_requests_total{{{score_labels},code="OK"}}"#),
        ) == Some(7.0))
        .then_some(text)
    })
    .await;
    assert_eq!(
        value(
            &text,
            &format!(r#"grpc_server_requests_total{{{score_labels},code="INVALID_ARGUMENT"}}"#)
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("grpc_server_request_duration_seconds_count{{{score_labels}}}")
        ),
        Some(9.0),
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "grpc_server_request_duration_seconds_bucket",
            &[r#"le="+Inf""#, score_labels]
        ),
        9.0
    );
    assert_eq!(
        value(&text, &format!("grpc_server_in_flight{{{score_labels}}}")),
        Some(0.0)
    );
    // Consul's checks are calls too; the process basics are there.
    assert!(
        sum(
            &text,
            "grpc_server_requests_total",
            &[
                r#"service="grpc.health.v1.Health""#,
                r#"method="Check""#,
                r#"code="OK""#
            ]
        ) >= 1.0,
        "{text}"
    );
    assert!(value(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(value(&text, "process_open_fds").unwrap() >= 3.0);
    assert!(value(&text, "process_cpu_seconds_total").is_some());
    assert!(
        !text.contains("mesh_client_"),
        "priority calls no one: {text}"
    );

    // tasks: its own calls, its mesh client's view of priority, its outbox.
    let text = eventually(Duration::from_secs(15), "tasks' outbox drained", || async {
        let text = scrape(&tasks_admin).await;
        (value(&text, "outbox_unsent_events") == Some(0.0)).then_some(text)
    })
    .await;
    let task_calls = |method: &str, code: &str| {
        value(
            &text,
            &format!(
                r#"grpc_server_requests_total{{service="protomesh.tasks.v1.TasksService",method="{method}",code="{code}"}}"#
            ),
        )
    };
    assert_eq!(task_calls("CreateProject", "OK"), Some(1.0), "{text}");
    assert_eq!(task_calls("CreateTask", "OK"), Some(2.0), "{text}");
    assert_eq!(task_calls("GetTask", "NOT_FOUND"), Some(1.0), "{text}");
    assert_eq!(value(&text, "outbox_oldest_unsent_age_seconds"), Some(0.0));
    let priority_endpoint = consul.instances("priority", true).await[0]
        .service
        .address
        .clone();
    assert_eq!(
        value(&text, r#"mesh_client_breaker_state{service="priority"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"mesh_client_discovery_stale{service="priority"}"#),
        Some(0.0)
    );
    assert!(value(
        &text,
        r#"mesh_client_breaker_opened_total{service="priority"}"#
    )
    .is_some());
    let endpoint_calls = sum(
        &text,
        "mesh_client_endpoint_requests_total",
        &[
            r#"service="priority""#,
            &format!(r#"endpoint="{priority_endpoint}:"#),
        ],
    );
    // Two calls, both counted: the balancer applies discovery updates one at a time, so the
    // first call's catch-up and the update task cannot replace each other's endpoint.
    assert_eq!(endpoint_calls, 2.0, "tasks scored two tasks: {text}");
    for family in [
        "mesh_client_endpoint_failures_total",
        "mesh_client_endpoint_in_flight",
        "mesh_client_endpoint_ewma_seconds",
        "mesh_client_endpoint_ejected",
        "mesh_client_endpoint_connections",
        "mesh_client_discovery_age_seconds",
    ] {
        assert!(
            text.contains(&format!("\n{family}{{service=\"priority\"")),
            "{family} in {text}"
        );
    }

    // analytics: the consumer group caught up with both streams (the task events arrived).
    let text = eventually(Duration::from_secs(20), "analytics caught up", || async {
        let text = scrape(&analytics_admin).await;
        let lag = |stream: &str| {
            value(
                &text,
                &format!(r#"stream_consumer_lag_events{{stream="{stream}",group="analytics"}}"#),
            )
        };
        (lag("tasks") == Some(0.0) && lag("timetrack") == Some(0.0)).then_some(text)
    })
    .await;
    assert_eq!(
        value(
            &text,
            r#"stream_consumer_pending_events{stream="tasks",group="analytics"}"#
        ),
        Some(0.0),
        "{text}"
    );

    // The gateway: RED by route template, its mesh client, the rate limiter's classes.
    let text = scrape(&gateway_admin).await;
    let requests = |route: &str, method: &str, code: &str| {
        value(
            &text,
            &format!(
                r#"gateway_http_requests_total{{route="{route}",method="{method}",code="{code}"}}"#
            ),
        )
    };
    assert_eq!(
        requests("/v1/priority:score", "POST", "200"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(requests("/v1/priority:score", "POST", "400"), Some(1.0));
    assert_eq!(requests("/v1/projects", "POST", "401"), Some(1.0), "{text}");
    assert_eq!(requests("unmatched", "GET", "404"), Some(1.0));
    assert!(requests("/routes", "GET", "200").unwrap() >= 1.0);
    assert_eq!(
        value(
            &text,
            r#"gateway_http_request_duration_seconds_count{route="/v1/priority:score",method="POST"}"#
        ),
        Some(4.0)
    );
    assert!(!text.contains("/no/such/route"), "{text}");
    assert!(
        sum(
            &text,
            "mesh_client_endpoint_requests_total",
            &[r#"service="priority""#]
        ) >= 3.0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE gateway_rate_limited_total counter\n")
            && text.contains(r#"gateway_rate_limited_total{class="public"}"#),
        "{text}"
    );

    // The admin listeners' other endpoints, and OpenMetrics for Prometheus servers.
    let (status, _, _) = http(&gateway_admin, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200);
    let (status, _, _) = http(&priority_admin, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    let accept = [(
        "accept",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )];
    let (status, content_type, open) = http(&priority_admin, "GET", "/metrics", &accept, "").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(open.ends_with("# EOF\n"));
    assert!(
        open.contains("# TYPE grpc_server_requests counter\n"),
        "{open}"
    );
    // The public port has no metrics.
    let (status, _, _) = http(&gateway, "GET", "/metrics", &[], "").await;
    assert_ne!(status, 200);
}

#[test]
fn promtool_rejects_what_our_format_conversion_fixes() {
    // The reason for the conversion: OpenMetrics names a counter family without `_total`, which
    // the Prometheus text parser reads as a family without help.
    let metrics = protomesh::metrics::Metrics::new();
    let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
    metrics.register("jobs", "Jobs done", counter.clone());
    counter.inc();
    let open = metrics
        .encode(protomesh::metrics::Format::OpenMetrics)
        .unwrap();
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(open.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{open}");
    promtool_check(
        &metrics
            .encode(protomesh::metrics::Format::PrometheusText)
            .unwrap(),
    );
}
