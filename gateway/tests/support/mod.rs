//! Test harness of the gateway: a private Consul dev agent, the test-only echo service
//! (`tests/proto/gwtest/v1/gwtest.proto`, compiled at test time with protox and served by a
//! dynamic handler that records every request it receives), an in-process gateway on a free port,
//! and a small HTTP client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};
use protomesh::client::Mesh;
use protomesh::config::ServeConfig;
use protomesh::consul::{ConsulClient, DevAgent, DevAgentOptions};
use protomesh::server::MeshServer;
use protomesh_gateway::codec::DynamicCodec;
use protomesh_gateway::discovery::{self, DiscoveryOptions};
use protomesh_gateway::listener::{self, ConnectionLimits};
use protomesh_gateway::{Gateway, GatewayOptions};
use tokio::sync::oneshot;

/// Full name of the test service.
pub const ECHO_SERVICE: &str = "protomesh.gwtest.v1.EchoService";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The test proto, compiled (with its imports) into an encoded descriptor set.
pub fn echo_descriptor_set() -> &'static [u8] {
    static SET: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let mut compiler = protox::Compiler::new([
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/proto"),
            repo_root().join("proto"),
        ])
        .unwrap();
        compiler.include_imports(true).include_source_info(true);
        compiler.open_file("gwtest/v1/gwtest.proto").unwrap();
        compiler.encode_file_descriptor_set()
    })
}

/// A private Consul dev agent, killed on drop.
pub struct Consul {
    pub agent: DevAgent,
    pub client: ConsulClient,
}

impl Consul {
    pub async fn start() -> Self {
        let options = DevAgentOptions::discover().expect("consul binary (run scripts/setup.sh)");
        let agent = DevAgent::start(options).unwrap();
        agent.wait_ready(Duration::from_secs(30)).await.unwrap();
        let client = agent.client().unwrap();
        Self { agent, client }
    }

    pub fn addr(&self) -> String {
        self.agent.http_addr()
    }
}

/// One request the echo service received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method name (`Get`, `Create`…).
    pub method: String,
    /// The request message in proto3 JSON with proto field names.
    pub message: serde_json::Value,
    /// `authorization`, `x-request-id`, `traceparent`, `x-custom`, `x-api-key` and identity
    /// (`x-protomesh-*`) metadata, when present.
    pub metadata: Vec<(String, String)>,
}

/// What the echo service received, in order.
pub type Log = Arc<Mutex<Vec<Received>>>;

/// The dynamic handler of `protomesh.gwtest.v1.EchoService`: echoes requests as responses,
/// `Fail` fails with `fail_code`, `Delete` answers Empty, `Slow` waits `count` ms, `Watch`
/// streams `count` copies; every response carries the metadata `x-echo: yes`.
#[derive(Clone)]
pub struct Echo {
    pool: DescriptorPool,
    log: Log,
}

impl Echo {
    /// An echo handler recording into `log`.
    pub fn new(log: Log) -> Self {
        Self {
            pool: DescriptorPool::decode(echo_descriptor_set()).unwrap(),
            log,
        }
    }
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = ECHO_SERVICE;
}

fn json_of(message: &DynamicMessage) -> serde_json::Value {
    message
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new().use_proto_field_name(true),
        )
        .unwrap()
}

#[derive(Clone)]
struct Handler {
    method: MethodDescriptor,
    log: Log,
}

impl Handler {
    fn record(&self, request: &tonic::Request<DynamicMessage>) {
        let metadata = [
            "authorization",
            "x-request-id",
            "traceparent",
            "x-custom",
            "x-api-key",
            protomesh::identity::SUBJECT,
            protomesh::identity::ROLES,
            protomesh::identity::AUTH_METHOD,
            protomesh::identity::CLIENT_IP,
        ]
        .into_iter()
        .filter_map(|key| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(|v| (key.to_owned(), v.to_owned()))
        })
        .collect();
        self.log.lock().unwrap().push(Received {
            method: self.method.name().to_owned(),
            message: json_of(request.get_ref()),
            metadata,
        });
    }

    fn count(message: &DynamicMessage) -> u32 {
        message
            .get_field_by_name("count")
            .and_then(|v| v.as_u32())
            .unwrap_or(0)
    }
}

fn with_echo_metadata<T>(message: T) -> tonic::Response<T> {
    let mut response = tonic::Response::new(message);
    response
        .metadata_mut()
        .insert("x-echo", tonic::metadata::MetadataValue::from_static("yes"));
    response
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tonic::server::UnaryService<DynamicMessage> for Handler {
    type Response = DynamicMessage;
    type Future = BoxFuture<Result<tonic::Response<DynamicMessage>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        self.record(&request);
        let method = self.method.clone();
        let log = Arc::clone(&self.log);
        Box::pin(async move {
            let message = request.into_inner();
            match method.name() {
                "Fail" => {
                    let code = message
                        .get_field_by_name("fail_code")
                        .and_then(|v| v.as_i32())
                        .unwrap_or(2);
                    Err(if code == 3 {
                        protomesh::status::invalid_argument("title", "must not be empty")
                    } else {
                        tonic::Status::new(tonic::Code::from_i32(code), "failing as asked")
                    })
                }
                "Delete" => Ok(with_echo_metadata(DynamicMessage::new(method.output()))),
                "Slow" => {
                    tokio::time::sleep(Duration::from_millis(u64::from(Self::count(&message))))
                        .await;
                    // Recorded only if the call was not cancelled meanwhile.
                    log.lock().unwrap().push(Received {
                        method: "SlowDone".to_owned(),
                        message: serde_json::Value::Null,
                        metadata: Vec::new(),
                    });
                    Ok(with_echo_metadata(message))
                }
                _ => Ok(with_echo_metadata(message)),
            }
        })
    }
}

impl tonic::server::ServerStreamingService<DynamicMessage> for Handler {
    type Response = DynamicMessage;
    type ResponseStream =
        Pin<Box<dyn futures::Stream<Item = Result<DynamicMessage, tonic::Status>> + Send>>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        self.record(&request);
        Box::pin(async move {
            let message = request.into_inner();
            let count = Self::count(&message).min(1000) as usize;
            let stream: Self::ResponseStream =
                Box::pin(futures::stream::iter(vec![Ok(message); count]));
            Ok(with_echo_metadata(stream))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let name = request.uri().path().rsplit('/').next().unwrap_or_default();
        let method = self
            .pool
            .get_service_by_name(ECHO_SERVICE)
            .and_then(|s| s.methods().find(|m| m.name() == name));
        let log = Arc::clone(&self.log);
        Box::pin(async move {
            let Some(method) = method else {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            };
            let mut grpc = tonic::server::Grpc::new(DynamicCodec::new(method.input()));
            let handler = Handler {
                method: method.clone(),
                log,
            };
            Ok(if method.is_server_streaming() {
                grpc.server_streaming(handler, request).await
            } else {
                grpc.unary(handler, request).await
            })
        })
    }
}

/// A running echo service (registered in Consul as `gwtest`), stopped on drop.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub log: Log,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    pub async fn start(consul_addr: &str) -> Self {
        let pool = DescriptorPool::decode(echo_descriptor_set()).unwrap();
        let log: Log = Arc::default();
        let mut config = ServeConfig::with_listen("127.0.0.1:0".parse().unwrap());
        // The test protos state no policy: the gateway under test decides who may call.
        config.default_auth = protomesh::policy::DefaultAuth::Public;
        config.consul_addr = consul_addr.to_owned();
        config.lame_duck = Duration::from_millis(100);
        let bound = MeshServer::new("gwtest", config)
            .add_service(Echo {
                pool,
                log: Arc::clone(&log),
            })
            .descriptor_set(echo_descriptor_set())
            .bind()
            .await
            .unwrap();
        let addr = bound.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bound
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            log,
            stop: Some(stop),
            task,
        }
    }

    /// Stops gracefully (deregisters) and waits.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// What it received since the last call.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The HS256 secret of [`public_options`] and [`hs256_token`].
pub const TEST_HS256_SECRET: &str = "a test secret of at least thirty-two bytes";

/// Gateway options for the suites whose protos state no policy: every route public (the
/// library's default requires authentication), HS256 tokens of [`hs256_token`] accepted.
pub fn public_options() -> GatewayOptions {
    let mut options = GatewayOptions::default();
    options.edge.access.default_auth = protomesh::policy::Requirement::Public;
    options.edge.auth.hs256_secret = Some(TEST_HS256_SECRET.as_bytes().into());
    options
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Standard claims the gateway accepts by default (issuer and audience `protomesh`, valid
/// for an hour) for `subject` with `roles`.
pub fn claims(subject: &str, roles: &[&str]) -> serde_json::Value {
    let now = now_secs();
    serde_json::json!({
        "sub": subject,
        "roles": roles,
        "iss": "protomesh",
        "aud": "protomesh",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    })
}

/// A valid HS256 token signed with [`TEST_HS256_SECRET`].
pub fn hs256_token(subject: &str, roles: &[&str]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(subject, roles),
        &jsonwebtoken::EncodingKey::from_secret(TEST_HS256_SECRET.as_bytes()),
    )
    .unwrap()
}

/// An in-process gateway on a free port, with its admin `/routes` on another, stopped on drop.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// Where the admin-only endpoints of the gateway answer.
    pub admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    stop_admin: Option<oneshot::Sender<()>>,
}

impl TestGateway {
    pub async fn start(consul: &ConsulClient, options: GatewayOptions) -> Self {
        Self::start_with(consul, options, DiscoveryOptions::default()).await
    }

    pub async fn start_with(
        consul: &ConsulClient,
        options: GatewayOptions,
        discovery_options: DiscoveryOptions,
    ) -> Self {
        Self::start_with_limits(
            consul,
            options,
            discovery_options,
            ConnectionLimits::default(),
        )
        .await
    }

    pub async fn start_with_limits(
        consul: &ConsulClient,
        options: GatewayOptions,
        discovery_options: DiscoveryOptions,
        limits: ConnectionLimits,
    ) -> Self {
        let mesh = Mesh::from_consul(consul.clone(), &[]).unwrap();
        let state = discovery::spawn(
            consul.clone(),
            mesh.clone(),
            DiscoveryOptions {
                wait: Duration::from_secs(5),
                ..discovery_options
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let gateway = Gateway::new(mesh, state, options);
        let app = protomesh_gateway::app(gateway.clone());
        let serve_limits = limits.clone();
        tokio::spawn(async move {
            listener::serve(
                listener,
                app,
                &serve_limits,
                async {
                    let _ = stopped.await;
                },
                Duration::from_secs(5),
            )
            .await
        });
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (stop_admin, admin_stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            listener::serve(
                admin,
                protomesh_gateway::admin_app(gateway),
                &ConnectionLimits::default(),
                async {
                    let _ = admin_stopped.await;
                },
                Duration::from_secs(5),
            )
            .await
        });
        Self {
            addr,
            admin_addr,
            stop: Some(stop),
            stop_admin: Some(stop_admin),
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.stop_admin.take() {
            let _ = stop.send(());
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }
}

/// Sends one HTTP/1.1 request.
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("answer within 20 s")
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body within 20 s")
        .unwrap()
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Polls for a condition with a deadline (shared with every crate's tests).
pub use protomesh::testing::eventually;

/// Waits until the gateway routes `path` (any answer but 404).
pub async fn wait_for_route(gateway: &TestGateway, method: &str, path: &str, timeout: Duration) {
    eventually(timeout, &format!("a route for {method} {path}"), || async {
        let answer = http(method, &gateway.url(path), &[], Bytes::new()).await;
        (answer.status != http::StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}

/// Path of a workspace binary, built first if it is missing.
pub fn binary(name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .to_path_buf();
    let path = target.join(name);
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.is_file() {
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(repo_root())
                .args(["build", "-p", &format!("protomesh-{name}"), "--bin", name])
                .status()
                .unwrap();
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// Starts the service binary `name` registered with `consul_addr` (killed on drop).
pub fn spawn_service(name: &str, consul_addr: &str) -> protomesh_mesh::ServiceProcess {
    let log = std::env::temp_dir().join(format!(
        "protomesh-gateway-test-{}-{name}-{}.log",
        std::process::id(),
        rand_suffix()
    ));
    protomesh_mesh::ServiceProcess::spawn(
        name,
        &binary(name),
        &["--listen".to_owned(), "127.0.0.1:0".to_owned()],
        &[
            ("CONSUL_HTTP_ADDR".to_owned(), consul_addr.to_owned()),
            ("PROTOMESH_LOG_FORMAT".to_owned(), "json".to_owned()),
        ],
        log,
    )
    .unwrap()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
