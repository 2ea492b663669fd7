//! Distributed tracing end to end, across processes: the real `gateway`, `tasks` and `priority`
//! binaries, registered in a private Consul dev agent, export their spans over OTLP/gRPC to a
//! collector this test serves in process (`OTEL_EXPORTER_OTLP_ENDPOINT`). One HTTP call through
//! the gateway, sent with a `traceparent` the test chose, must come back as one trace of that id:
//! the gateway's server and client spans, the tasks server span under the gateway's client span,
//! the tasks → priority client span and the priority server span under it, and the tasks
//! service's Postgres spans under its server span. A second test checks the JSON log lines a
//! service writes during a call: timestamp, level, service, the caller's trace id, the span id
//! and the gateway's request id.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use protomesh_data::testing::{redis_url, TestDatabase, TestKeys};
use protomesh_mesh::ServiceProcess;
use support::{
    binary, eventually, gateway_addr, log_lines, tempdir, test_secret_file, unique, Consul,
};

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct CollectedSpan {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

impl CollectedSpan {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// An OTLP/gRPC trace collector keeping every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text_of(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(i) => i.to_string(),
                any_value::Value::BoolValue(b) => b.to_string(),
                any_value::Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut collected = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| text_of(&r.attributes).remove("service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    collected.push(CollectedSpan {
                        service: service.clone(),
                        name: span.name.clone(),
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: text_of(&span.attributes),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(collected);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves the collector on a free loopback port; returns it and its endpoint URL.
    async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (collector, endpoint)
    }

    fn trace(&self, trace_id: &str) -> Vec<CollectedSpan> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// The environment every process of these tests gets.
fn common_env(consul: &str, otlp: &str) -> Vec<(String, String)> {
    let secret = test_secret_file();
    [
        ("CONSUL_HTTP_ADDR", consul),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        // Export every 100 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("PROTOMESH_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,protomesh::telemetry=debug"),
        // The gateway and the services accept the test issuer's tokens.
        ("PROTOMESH_JWT_SECRET_FILE", secret.as_str()),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// Starts binary `name` on a free port with `env` and `extra_env`.
fn spawn(name: &str, env: &[(String, String)], extra_env: &[(&str, &str)]) -> ServiceProcess {
    let mut envs = env.to_vec();
    envs.extend(
        extra_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let log = tempdir().join(format!("{name}.log"));
    eprintln!("{name} log: {}", log.display());
    ServiceProcess::spawn(
        unique(name),
        &binary(name),
        &["--listen".to_owned(), "127.0.0.1:0".to_owned()],
        &envs,
        log,
    )
    .unwrap()
}

/// One HTTP/1.1 request; returns the status and the body as text.
async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (http::StatusCode, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        // Signed in: the tasks routes need a caller, and this test is about traces.
        .header(
            "authorization",
            format!(
                "Bearer {}",
                protomesh::auth::testing::token("tracer", &["user"])
            ),
        );
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("HTTP answer within 20 s")
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until the gateway routes `grpc_method` (full name).
async fn wait_for_route(gateway: SocketAddr, grpc_method: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("the gateway routing {grpc_method}"),
        || async move {
            let (status, body) = http("GET", &format!("http://{gateway}/routes"), &[], "").await;
            (status.is_success() && body.contains(grpc_method)).then_some(())
        },
    )
    .await;
}

/// Waits until Consul has a passing instance of each of `services`.
async fn wait_passing(consul: &Consul, services: &[&str]) {
    for service in services {
        eventually(
            Duration::from_secs(60),
            &format!("a passing {service} instance"),
            || async { (!consul.instances(service, true).await.is_empty()).then_some(()) },
        )
        .await;
    }
}

/// The one span of `trace` that `matches`, or a panic listing the trace.
fn one<'a>(
    trace: &'a [CollectedSpan],
    what: &str,
    matches: impl Fn(&CollectedSpan) -> bool,
) -> &'a CollectedSpan {
    let found: Vec<&CollectedSpan> = trace.iter().filter(|s| matches(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: {found:#?}\nwhole trace: {trace:#?}"
    );
    found[0]
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_through_the_gateway_is_one_trace_across_three_processes() {
    let (collector, otlp) = Collector::start().await;
    let consul = Consul::start().await;
    let database = TestDatabase::create().await.unwrap();
    let keys = TestKeys::new();
    let env = common_env(&consul.addr(), &otlp);
    let _priority = spawn("priority", &env, &[]);
    let _tasks = spawn(
        "tasks",
        &env,
        &[
            ("DATABASE_URL", database.url()),
            ("REDIS_URL", &redis_url()),
            ("PROTOMESH_KEY_PREFIX", keys.prefix()),
        ],
    );
    let gateway = spawn("gateway", &env, &[]);
    wait_passing(&consul, &["priority", "tasks"]).await;
    let gateway = gateway_addr(&gateway).await;
    wait_for_route(gateway, "protomesh.tasks.v1.TasksService.CreateTask").await;

    let (status, body) = http(
        "POST",
        &format!("http://{gateway}/v1/projects"),
        &[],
        &format!(r#"{{"name":"{}"}}"#, unique("traced")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let project: serde_json::Value = serde_json::from_str(&body).unwrap();
    let project_id = project["id"].as_str().unwrap();

    let caller = traceparent(TRACE_ID, CALLER_SPAN_ID);
    let (status, body) = http(
        "POST",
        &format!("http://{gateway}/v1/projects/{project_id}/tasks"),
        &[("traceparent", &caller), ("x-request-id", "trace-test-1")],
        r#"{"title":"trace me","urgency":9,"impact":8}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let task: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(task["priorityScore"], 72, "{task}");
    assert!(task.get("priorityFallback").is_none(), "{task}");

    // Wait until the five call spans and a Postgres span of the trace have arrived.
    let trace = eventually(Duration::from_secs(30), "the whole trace", || async {
        let trace = collector.trace(TRACE_ID);
        let count = |service: &str, kind: i32| {
            trace
                .iter()
                .filter(|s| s.service == service && s.kind == kind)
                .count()
        };
        let complete = count("gateway", SERVER) >= 1
            && count("gateway", CLIENT) >= 1
            && count("tasks", SERVER) >= 1
            && count("priority", SERVER) >= 1
            && trace
                .iter()
                .filter(|s| s.service == "tasks" && s.kind == CLIENT)
                .any(|s| s.attr("rpc.system") == Some("grpc"))
            && trace
                .iter()
                .any(|s| s.attr("db.system") == Some("postgresql"));
        complete.then_some(trace)
    })
    .await;

    let gateway_server = one(&trace, "gateway server span", |s| {
        s.service == "gateway" && s.kind == SERVER
    });
    assert_eq!(gateway_server.parent_span_id, CALLER_SPAN_ID);
    assert_eq!(gateway_server.attr("http.request.method"), Some("POST"));
    assert_eq!(
        gateway_server.attr("http.route"),
        Some("/v1/projects/{project_id}/tasks")
    );
    assert_eq!(
        gateway_server.attr("http.response.status_code"),
        Some("200")
    );
    assert_eq!(gateway_server.attr("request_id"), Some("trace-test-1"));
    assert_eq!(gateway_server.name, "POST /v1/projects/{project_id}/tasks");

    let gateway_client = one(&trace, "gateway client span", |s| {
        s.service == "gateway" && s.kind == CLIENT
    });
    assert_eq!(gateway_client.parent_span_id, gateway_server.span_id);
    assert_eq!(
        gateway_client.attr("rpc.service"),
        Some("protomesh.tasks.v1.TasksService")
    );
    assert_eq!(gateway_client.attr("rpc.method"), Some("CreateTask"));
    assert_eq!(gateway_client.attr("rpc.grpc.status_code"), Some("0"));
    assert_eq!(gateway_client.attr("peer.service"), Some("tasks"));
    assert_eq!(gateway_client.attr("server.address"), Some("127.0.0.1"));

    let tasks_server = one(&trace, "tasks server span", |s| {
        s.service == "tasks" && s.kind == SERVER
    });
    assert_eq!(tasks_server.parent_span_id, gateway_client.span_id);
    assert_eq!(tasks_server.attr("rpc.system"), Some("grpc"));
    assert_eq!(
        tasks_server.attr("rpc.service"),
        Some("protomesh.tasks.v1.TasksService")
    );
    assert_eq!(tasks_server.attr("rpc.method"), Some("CreateTask"));
    assert_eq!(tasks_server.attr("rpc.grpc.status_code"), Some("0"));
    assert_eq!(tasks_server.attr("request_id"), Some("trace-test-1"));

    let priority_client = one(&trace, "tasks → priority client span", |s| {
        s.service == "tasks" && s.kind == CLIENT && s.attr("rpc.system") == Some("grpc")
    });
    assert_eq!(priority_client.parent_span_id, tasks_server.span_id);
    assert_eq!(
        priority_client.attr("rpc.service"),
        Some("protomesh.priority.v1.PriorityService")
    );
    assert_eq!(priority_client.attr("rpc.method"), Some("Score"));

    let priority_server = one(&trace, "priority server span", |s| {
        s.service == "priority" && s.kind == SERVER
    });
    assert_eq!(priority_server.parent_span_id, priority_client.span_id);
    assert_eq!(priority_server.attr("rpc.method"), Some("Score"));
    assert_eq!(priority_server.attr("rpc.grpc.status_code"), Some("0"));
    // The request id went on from tasks to priority with the call.
    assert_eq!(priority_server.attr("request_id"), Some("trace-test-1"));

    // Postgres: the project check and the insert under the server span, the outbox row inside
    // the insert's transaction.
    let postgres: Vec<&CollectedSpan> = trace
        .iter()
        .filter(|s| s.attr("db.system") == Some("postgresql"))
        .collect();
    assert!(postgres
        .iter()
        .all(|s| s.service == "tasks" && s.kind == CLIENT));
    let insert = one(&trace, "INSERT tasks span", |s| {
        s.attr("db.operation") == Some("INSERT") && s.attr("db.sql.table") == Some("tasks")
    });
    assert_eq!(insert.parent_span_id, tasks_server.span_id);
    assert_eq!(insert.name, "INSERT tasks");
    // The caller's membership of the project, checked before the insert.
    let check = one(&trace, "SELECT project_members span", |s| {
        s.attr("db.operation") == Some("SELECT")
            && s.attr("db.sql.table") == Some("project_members")
    });
    assert_eq!(check.parent_span_id, tasks_server.span_id);
    let outbox = one(&trace, "INSERT outbox span", |s| {
        s.attr("db.sql.table") == Some("outbox")
    });
    assert_eq!(outbox.parent_span_id, insert.span_id);

    // One trace: every span's parent is in it, but the caller's; only the three processes.
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    for span in &trace {
        assert!(
            ids.contains(span.parent_span_id.as_str())
                || (span.span_id == gateway_server.span_id
                    && span.parent_span_id == CALLER_SPAN_ID),
            "dangling parent: {span:#?}"
        );
    }
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["gateway", "priority", "tasks"]),
        "{trace:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_s_log_lines_carry_the_caller_s_trace_and_request_ids() {
    let (collector, otlp) = Collector::start().await;
    let consul = Consul::start().await;
    let env = common_env(&consul.addr(), &otlp);
    let priority = spawn("priority", &env, &[]);
    let gateway = spawn("gateway", &env, &[]);
    wait_passing(&consul, &["priority"]).await;
    let gateway = gateway_addr(&gateway).await;
    wait_for_route(gateway, "protomesh.priority.v1.PriorityService.Score").await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller = traceparent(trace_id, "b7ad6b7169203331");
    let (status, body) = http(
        "POST",
        &format!("http://{gateway}/v1/priority:score"),
        &[("traceparent", &caller), ("x-request-id", "log-test-7")],
        support::http::SCORE_JSON,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let lines = eventually(
        Duration::from_secs(20),
        "priority's log lines of the call",
        || async {
            let lines: Vec<serde_json::Value> = log_lines(&priority)
                .into_iter()
                .filter(|line| line["request_id"] == "log-test-7")
                .collect();
            (!lines.is_empty()).then_some(lines)
        },
    )
    .await;
    let server_span = eventually(
        Duration::from_secs(20),
        "priority's server span",
        || async {
            collector
                .trace(trace_id)
                .into_iter()
                .find(|s| s.service == "priority" && s.kind == SERVER)
        },
    )
    .await;
    for line in &lines {
        let object = line.as_object().unwrap();
        for key in [
            "timestamp",
            "level",
            "service",
            "trace_id",
            "span_id",
            "request_id",
            "message",
        ] {
            assert!(object.contains_key(key), "{key} missing: {line}");
        }
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&line["level"].as_str().unwrap()),
            "{line}"
        );
        assert_eq!(line["service"], "priority", "{line}");
        assert_eq!(line["trace_id"], trace_id, "{line}");
        assert_eq!(line["span_id"], server_span.span_id.as_str(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l["message"] == "gRPC call handled"),
        "{lines:#?}"
    );
}
