//! Native gRPC through the gateway, against a real Consul dev agent and in-process mesh servers
//! found by discovery: unary calls and their errors, a bidirectional stream (interleaved, with
//! metadata, deadline and trailers passed through), unknown services, services without an
//! instance, and the combined server reflection as grpcurl (v1alpha) and a v1 client see it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use prost_types::{
    field_descriptor_proto::{Label, Type},
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    MethodDescriptorProto, ServiceDescriptorProto,
};
use protomesh::client::Mesh;
use protomesh::config::ServeConfig;
use protomesh::consul::{DevAgent, DevAgentOptions};
use protomesh::server::MeshServer;
use protomesh_gateway::codec::DynamicCodec;
use protomesh_gateway::discovery::{self, DiscoveryOptions, GatewayState};
use protomesh_gateway::grpc_proxy::{self, ReflectionCache};
use protomesh_gateway::reflection::{self, DescriptorSource, ReflectionVersion};
use protomesh_priority::proto::protomesh::priority::v1::{
    priority_service_client::PriorityServiceClient,
    priority_service_server::{PriorityService, PriorityServiceServer},
    PrioritizeRequest, PrioritizeResponse, ScoreRequest, ScoreResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const PRIORITY: &str = "protomesh.priority.v1.PriorityService";
const ECHO: &str = "protomesh.test.v1.Echo";

// ---- the services behind the gateway --------------------------------------------------------

/// Score = urgency × impact; urgency 0 is a bad request.
struct Scorer;

#[tonic::async_trait]
impl PriorityService for Scorer {
    async fn score(
        &self,
        request: tonic::Request<ScoreRequest>,
    ) -> Result<tonic::Response<ScoreResponse>, Status> {
        let request = request.into_inner();
        if request.urgency == 0 {
            return Err(Status::invalid_argument("urgency: must be 1..10"));
        }
        Ok(tonic::Response::new(ScoreResponse {
            title: request.title,
            score: request.urgency * request.impact,
            level: 0,
        }))
    }

    async fn prioritize(
        &self,
        _: tonic::Request<PrioritizeRequest>,
    ) -> Result<tonic::Response<PrioritizeResponse>, Status> {
        Err(Status::unimplemented("unused"))
    }
}

/// `protomesh.test.v1.Echo/Chat`, a bidirectional stream of `Note { string text = 1; }`, served
/// by hand: every data frame goes back as it arrives. The answer's headers carry the caller's
/// `x-test` and the `grpc-timeout` that reached the server; the trailers `grpc-status: 0` and
/// `x-trailer: done`.
#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = ECHO;
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-trailer", HeaderValue::from_static("done"));
        // Data frames go back as they arrive; the trailers are added at the end.
        let echoed = body.with_trailers(async move { Some(Ok(trailers)) });
        let mut response = http::Response::new(tonic::body::Body::new(echoed));
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        if let Some(value) = parts.headers.get("x-test") {
            headers.insert("x-test", value.clone());
        }
        if let Some(value) = parts.headers.get("grpc-timeout") {
            headers.insert("x-grpc-timeout-seen", value.clone());
        }
        std::future::ready(Ok(response))
    }
}

/// The descriptors of [`Echo`], for its server's reflection (and so for discovery).
fn echo_file_set() -> &'static [u8] {
    let note = ".protomesh.test.v1.Note".to_owned();
    let file = FileDescriptorProto {
        name: Some("protomesh/test/v1/echo.proto".into()),
        package: Some("protomesh.test.v1".into()),
        syntax: Some("proto3".into()),
        message_type: vec![DescriptorProto {
            name: Some("Note".into()),
            field: vec![FieldDescriptorProto {
                name: Some("text".into()),
                json_name: Some("text".into()),
                number: Some(1),
                label: Some(Label::Optional as i32),
                r#type: Some(Type::String as i32),
                ..Default::default()
            }],
            ..Default::default()
        }],
        service: vec![ServiceDescriptorProto {
            name: Some("Echo".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Chat".into()),
                input_type: Some(note.clone()),
                output_type: Some(note),
                client_streaming: Some(true),
                server_streaming: Some(true),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let set = FileDescriptorSet { file: vec![file] };
    Box::leak(set.encode_to_vec().into_boxed_slice())
}

fn note_descriptor() -> MessageDescriptor {
    DescriptorPool::decode(echo_file_set())
        .unwrap()
        .get_message_by_name("protomesh.test.v1.Note")
        .unwrap()
}

fn note(text: &str) -> DynamicMessage {
    let mut message = DynamicMessage::new(note_descriptor());
    message.set_field_by_name("text", Value::String(text.to_owned()));
    message
}

fn text_of(message: &DynamicMessage) -> String {
    message
        .get_field_by_name("text")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

// ---- the fixture: Consul, two mesh servers, discovery, a gateway ----------------------------

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A tool from `.tools/bin` (scripts/setup.sh), or from PATH.
fn tool(name: &str) -> PathBuf {
    let local = repo_root().join(".tools/bin").join(name);
    if local.exists() {
        return local;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} not found: run scripts/setup.sh"))
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The test gateway: native gRPC goes to `grpc_proxy::forward`, anything else is a 404 (the
/// real router transcodes it).
#[derive(Clone)]
struct TestGateway {
    mesh: Mesh,
    state: watch::Receiver<Arc<GatewayState>>,
}

async fn handle(State(gateway): State<TestGateway>, request: Request) -> Response {
    if !grpc_proxy::is_grpc(request.headers()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let state = Arc::clone(&gateway.state.borrow());
    grpc_proxy::forward(&gateway.mesh, &state, request).await
}

struct Fixture {
    _consul: DevAgent,
    mesh: Mesh,
    gateway: SocketAddr,
    priority_service: String,
    echo_service: String,
    _stops: Vec<oneshot::Sender<()>>,
}

impl Fixture {
    async fn start() -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique("grpc-proxy-consul")));
        let agent =
            DevAgent::start(DevAgentOptions::new(tool("consul")).with_log_file(log)).unwrap();
        agent.wait_ready(Duration::from_secs(30)).await.unwrap();
        let consul = agent.client().unwrap();

        let config = || {
            let mut config = ServeConfig::with_listen("127.0.0.1:0".parse().unwrap());
            // The test protos state no policy: the gateway under test decides who may call.
            config.default_auth = protomesh::policy::DefaultAuth::Public;
            config.consul_addr = agent.http_addr();
            config.lame_duck = Duration::ZERO;
            config.drain_timeout = Duration::from_secs(1);
            config
        };
        let priority_service = unique("priority");
        let echo_service = unique("echo");
        let mut stops = Vec::new();
        for server in [
            MeshServer::new(&priority_service, config())
                .descriptor_set(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
                .add_service(PriorityServiceServer::new(Scorer)),
            MeshServer::new(&echo_service, config())
                .add_service(Echo)
                .descriptor_set(echo_file_set()),
        ] {
            let bound = server.bind().await.unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(bound.run_until(async {
                let _ = stopped.await;
            }));
            stops.push(stop);
        }

        let mesh = Mesh::from_consul(consul.clone(), &[]).unwrap();
        let mut state = discovery::spawn(
            consul,
            mesh.clone(),
            DiscoveryOptions {
                wait: Duration::from_secs(2),
                ..DiscoveryOptions::default()
            },
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let current = state.borrow_and_update();
                if current.grpc_services.get(PRIORITY) == Some(&priority_service)
                    && current.grpc_services.get(ECHO) == Some(&echo_service)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "discovery did not find both services: {:?}, unreachable {:?}",
                    current.grpc_services,
                    current.unreachable
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), state.changed()).await;
        }

        let router = axum::Router::new()
            .fallback(handle)
            .with_state(TestGateway {
                mesh: mesh.clone(),
                state,
            });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });

        Self {
            _consul: agent,
            mesh,
            gateway,
            priority_service,
            echo_service,
            _stops: stops,
        }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.gateway))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Runs `grpcurl -plaintext FLAGS GATEWAY REST` (off the runtime's threads, which keep
    /// serving the gateway meanwhile).
    async fn grpcurl(&self, flags: &[&str], rest: &[&str]) -> String {
        let mut args = vec!["-plaintext".to_owned()];
        args.extend(flags.iter().map(|s| (*s).to_owned()));
        args.push(self.gateway.to_string());
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        let out = tokio::process::Command::new(tool("grpcurl"))
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "grpcurl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn score_request(urgency: i32, impact: i32) -> ScoreRequest {
    ScoreRequest {
        title: "ship it".into(),
        urgency,
        impact,
    }
}

// ---- the tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn grpc_proxy_forwards_unary_calls_and_answers_errors_as_grpc_statuses() {
    let fixture = Fixture::start().await;
    let channel = fixture.channel().await;

    // A call through the gateway reaches the service and comes back.
    let mut priority = PriorityServiceClient::new(channel.clone());
    let scored = priority.score(score_request(9, 8)).await.unwrap();
    assert_eq!(scored.get_ref().score, 72);
    assert_eq!(scored.get_ref().title, "ship it");

    // The service's errors come back as they are (here its runtime's: the request breaks the
    // rules `priority.proto` declares, so the handler never runs).
    let status = priority.score(score_request(0, 8)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "urgency: must be between 1 and 10, got 0");

    // A service nobody serves: UNIMPLEMENTED naming it.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(note("hi")),
            "/acme.nope.v1.Nope/Call".parse().unwrap(),
            DynamicCodec::new(note_descriptor()),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("acme.nope.v1.Nope"), "{status:?}");

    // A service the state maps to a Consul service without instances: UNAVAILABLE naming it.
    let mut ghost = GatewayState::default();
    ghost
        .grpc_services
        .insert("acme.ghost.v1.Ghost".to_owned(), "ghost".to_owned());
    ghost.ready = true;
    let request = http::Request::builder()
        .method("POST")
        .uri("/acme.ghost.v1.Ghost/Boo")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "2S")
        .body(axum::body::Body::from(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let response =
        grpc_proxy::forward_with(&fixture.mesh, &ghost, &ReflectionCache::new(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let status = Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("ghost"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_proxy_forwards_bidirectional_streams_with_metadata_deadline_and_trailers() {
    let fixture = Fixture::start().await;
    let mut grpc = tonic::client::Grpc::new(fixture.channel().await);
    grpc.ready().await.unwrap();

    let (send, outgoing) = mpsc::channel::<DynamicMessage>(4);
    let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
    request
        .metadata_mut()
        .insert("x-test", "hello".parse().unwrap());
    request.set_timeout(Duration::from_secs(5));
    send.send(note("one")).await.unwrap();
    let response = grpc
        .streaming(
            request,
            format!("/{ECHO}/Chat").parse().unwrap(),
            DynamicCodec::new(note_descriptor()),
        )
        .await
        .unwrap();

    // Headers: the caller's metadata reached the service, and so did a deadline of at most 5 s.
    assert_eq!(response.metadata().get("x-test").unwrap(), "hello");
    let seen = response
        .metadata()
        .get("x-grpc-timeout-seen")
        .expect("the service received a grpc-timeout")
        .to_str()
        .unwrap();
    let seen = protomesh::client::grpc_timeout::parse(seen).unwrap();
    assert!(
        seen <= Duration::from_secs(5) && seen > Duration::from_secs(3),
        "{seen:?}"
    );

    // Interleaved: each answer arrives before the next message is sent, so neither direction
    // is buffered.
    let mut answers = response.into_inner();
    assert_eq!(text_of(&answers.message().await.unwrap().unwrap()), "one");
    send.send(note("two")).await.unwrap();
    assert_eq!(text_of(&answers.message().await.unwrap().unwrap()), "two");
    send.send(note("three")).await.unwrap();
    assert_eq!(text_of(&answers.message().await.unwrap().unwrap()), "three");
    drop(send);
    assert!(answers.message().await.unwrap().is_none());
    let trailers = answers.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("x-trailer").unwrap(), "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_proxy_serves_one_reflection_for_the_whole_mesh_to_grpcurl_and_v1_clients() {
    let fixture = Fixture::start().await;

    // grpcurl (1.8: reflection v1alpha) lists every service of the mesh, once.
    let listed = fixture.grpcurl(&[], &["list"]).await;
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines.contains(&PRIORITY), "{listed}");
    assert!(lines.contains(&ECHO), "{listed}");
    assert_eq!(
        lines.iter().filter(|l| **l == PRIORITY).count(),
        1,
        "{listed}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("grpc.health.")),
        "{listed}"
    );

    let described = fixture.grpcurl(&[], &["describe", PRIORITY]).await;
    assert!(described.contains("rpc Score"), "{described}");

    // … and calls through it, unary and streaming.
    let scored = fixture
        .grpcurl(
            &["-d", r#"{"urgency":9,"impact":8}"#],
            &["protomesh.priority.v1.PriorityService/Score"],
        )
        .await;
    let scored: serde_json::Value = serde_json::from_str(&scored).unwrap();
    assert_eq!(scored["score"], 72, "{scored}");
    let echoed = fixture
        .grpcurl(
            &["-d", r#"{"text":"a"} {"text":"b"}"#],
            &["protomesh.test.v1.Echo/Chat"],
        )
        .await;
    assert!(
        echoed.contains(r#""text": "a""#) && echoed.contains(r#""text": "b""#),
        "{echoed}"
    );

    // A v1 client (the gateway's own fetcher) gets both services, with `google.api.http` kept.
    let descriptors = reflection::fetch(fixture.channel().await).await.unwrap();
    assert_eq!(
        descriptors.source,
        DescriptorSource::Reflection(ReflectionVersion::V1)
    );
    assert_eq!(
        descriptors.services,
        vec![PRIORITY.to_owned(), ECHO.to_owned()]
    );
    let score = descriptors
        .pool
        .get_service_by_name(PRIORITY)
        .and_then(|s| s.methods().find(|m| m.name() == "Score"))
        .unwrap();
    let http_rule = descriptors
        .pool
        .get_extension_by_name("google.api.http")
        .unwrap();
    assert!(score.options().has_extension(&http_rule));

    // The services really are the fixture's.
    assert_ne!(fixture.priority_service, fixture.echo_service);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_proxy_never_echoes_a_huge_name_whole() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let fixture = Fixture::start().await;

    // The combined reflection: NOT_FOUND naming the symbol, cut.
    let mut client = ServerReflectionClient::new(fixture.channel().await);
    let symbol = format!("no.such.{}", "S".repeat(16 * 1024));
    let requests = tokio_stream::iter(vec![ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol)),
    }]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let status = responses.message().await.expect_err("an unknown symbol");
    assert_eq!(status.code(), Code::NotFound, "{:?}", status.code());
    assert!(
        status.message().len() < 2048,
        "a message of {} bytes",
        status.message().len()
    );
    assert!(
        status.message().starts_with("symbol 'no.such.SSS"),
        "{:?}",
        status.message().chars().take(64).collect::<String>()
    );

    // An unknown service with a long name: UNIMPLEMENTED, the name cut.
    // (A long :path, within the 16 KiB of headers a connection takes.)
    let service = format!("no.such.{}", "S".repeat(4 * 1024));
    let mut grpc = tonic::client::Grpc::new(fixture.channel().await);
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = format!("/{service}/Call").parse().unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(note("x")),
            path,
            DynamicCodec::new(note_descriptor()),
        )
        .await
        .expect_err("an unknown service");
    assert_eq!(status.code(), Code::Unimplemented, "{:?}", status.code());
    assert!(
        status.message().len() < 300,
        "a message of {} bytes",
        status.message().len()
    );
}
