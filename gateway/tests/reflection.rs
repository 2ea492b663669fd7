//! Fetching descriptors over server reflection from in-process servers: a mesh server (v1), a
//! server with only v1alpha, one without reflection, an unreachable or silent address, and
//! hostile reflection servers (endless imports, errors, garbage, inconsistent files, silence).
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use prost_types::{
    DescriptorProto, FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto,
};
use protomesh::config::ServeConfig;
use protomesh::server::MeshServer;
use protomesh_gateway::reflection::{
    fetch, fetch_with, fetch_with_timeout, DescriptorSource, FetchOptions, ReflectionError,
    ReflectionVersion, ServiceDescriptors,
};
use protomesh_priority::proto::protomesh::priority::v1::{
    priority_service_server::{PriorityService, PriorityServiceServer},
    PrioritizeRequest, PrioritizeResponse, ScoreRequest, ScoreResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::v1::{
    server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse,
    server_reflection_server::{ServerReflection, ServerReflectionServer},
    ErrorResponse, FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest,
    ServerReflectionResponse, ServiceResponse,
};

const PRIORITY: &str = "protomesh.priority.v1.PriorityService";

struct Unused;

#[tonic::async_trait]
impl PriorityService for Unused {
    async fn score(&self, _: Request<ScoreRequest>) -> Result<Response<ScoreResponse>, Status> {
        Err(Status::unimplemented("unused"))
    }

    async fn prioritize(
        &self,
        _: Request<PrioritizeRequest>,
    ) -> Result<Response<PrioritizeResponse>, Status> {
        Err(Status::unimplemented("unused"))
    }
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// A bare tonic server serving `routes` until the sender is dropped or fired.
async fn serve(routes: Routes) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            }),
    );
    (addr, stop)
}

/// The priority service's checks: listed alone, methods present, `google.api.http` readable.
fn assert_priority(descriptors: &ServiceDescriptors) {
    assert_eq!(descriptors.services, vec![PRIORITY.to_owned()]);
    let service = descriptors.pool.get_service_by_name(PRIORITY).unwrap();
    let methods: Vec<_> = service.methods().map(|m| m.name().to_owned()).collect();
    assert_eq!(methods, ["Score", "Prioritize"]);
    assert!(descriptors
        .pool
        .get_file_by_name("google/api/annotations.proto")
        .is_some());

    let score = service.methods().find(|m| m.name() == "Score").unwrap();
    let http = descriptors
        .pool
        .get_extension_by_name("google.api.http")
        .unwrap();
    let options = score.options();
    let rule = options.get_extension(&http);
    let rule = rule.as_message().unwrap();
    assert_eq!(
        rule.get_field_by_name("post").unwrap().as_str(),
        Some("/v1/priority:score")
    );
    assert_eq!(rule.get_field_by_name("body").unwrap().as_str(), Some("*"));
    assert_eq!(
        descriptors
            .service_descriptors()
            .map(|s| s.full_name().to_owned())
            .collect::<Vec<_>>(),
        [PRIORITY]
    );
}

#[tokio::test]
async fn reflection_fetches_a_mesh_server_over_v1_with_http_options() {
    let mut config = ServeConfig::with_listen("127.0.0.1:0".parse().unwrap());
    config.no_register = true;
    config.lame_duck = Duration::ZERO;
    let bound = MeshServer::new("priority", config)
        .descriptor_set(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
        .add_service(PriorityServiceServer::new(Unused))
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(bound.run_until(async {
        let _ = stopped.await;
    }));

    // Spawned: the fetch future is Send, as the gateway's discovery task needs.
    let descriptors = tokio::spawn(fetch(channel(addr))).await.unwrap().unwrap();
    assert_eq!(
        descriptors.source,
        DescriptorSource::Reflection(ReflectionVersion::V1)
    );
    assert_priority(&descriptors);
    assert!(descriptors
        .pool
        .services()
        .all(|s| !s.full_name().starts_with("grpc.")));

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn reflection_falls_back_to_v1alpha() {
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
        .with_service_name(PRIORITY)
        .build_v1alpha()
        .unwrap();
    let (addr, _stop) =
        serve(Routes::new(PriorityServiceServer::new(Unused)).add_service(v1alpha)).await;

    let descriptors = fetch(channel(addr)).await.unwrap();
    assert_eq!(
        descriptors.source,
        DescriptorSource::Reflection(ReflectionVersion::V1Alpha)
    );
    assert_priority(&descriptors);
}

#[tokio::test]
async fn reflection_reports_a_server_without_reflection() {
    let (addr, _stop) = serve(Routes::new(PriorityServiceServer::new(Unused))).await;

    let err = fetch(channel(addr)).await.unwrap_err();
    assert!(
        matches!(err, ReflectionError::Unimplemented { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("does not implement server reflection"),
        "{err}"
    );
}

#[tokio::test]
async fn reflection_reports_an_unreachable_address_quickly() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let started = Instant::now();
    let err = fetch_with_timeout(channel(addr), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ReflectionError::Transport { version: ReflectionVersion::V1, request, .. } if request == "list_services"),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{err}");
}

#[tokio::test]
async fn reflection_gives_up_on_a_silent_server_at_the_timeout() {
    // Accepts connections and never says a byte.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });

    let started = Instant::now();
    let err = fetch_with_timeout(channel(addr), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, ReflectionError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{err}");
}

// ---- hostile reflection servers ----

/// How a [`Hostile`] reflection server misbehaves.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Every file imports one more (`evil0.proto` → `evil1.proto` → …), forever.
    EndlessImports,
    /// The service's file imports `missing.proto`, which the server refuses with NOT_FOUND.
    RefusedImport,
    /// The service's "file" is not a `FileDescriptorProto`.
    Garbage,
    /// `dep.proto` does not define the `dep.Thing` the service's file uses.
    Unresolved,
    /// The answer for the service carries its file and the file it imports (well-behaved).
    Bundled,
    /// Lists services, then never answers again.
    SilentAfterList,
    /// A method option that does not decode as the extension the server declares for it.
    BadOptions,
}

struct Hostile {
    mode: Mode,
    seen: Arc<Mutex<Vec<String>>>,
}

type Answers = Pin<Box<dyn Stream<Item = Result<ServerReflectionResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ServerReflection for Hostile {
    type ServerReflectionInfoStream = Answers;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<ServerReflectionRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let mut requests = request.into_inner();
        let (answers, rx) = mpsc::channel(16);
        let (mode, seen) = (self.mode, self.seen.clone());
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                let Some(request) = request.message_request else {
                    break;
                };
                seen.lock().unwrap().push(format!("{request:?}"));
                let Some(answer) = hostile_answer(mode, request) else {
                    continue;
                };
                let response = ServerReflectionResponse {
                    valid_host: String::new(),
                    original_request: None,
                    message_response: Some(answer),
                };
                if answers.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn hostile_answer(mode: Mode, request: MessageRequest) -> Option<MessageResponse> {
    let files = |files: Vec<Vec<u8>>| {
        Some(MessageResponse::FileDescriptorResponse(
            FileDescriptorResponse {
                file_descriptor_proto: files,
            },
        ))
    };
    match (mode, request) {
        (_, MessageRequest::ListServices(_)) => {
            Some(MessageResponse::ListServicesResponse(ListServiceResponse {
                service: ["evil.v1.Evil", "grpc.reflection.v1.ServerReflection"]
                    .into_iter()
                    .map(|name| ServiceResponse { name: name.into() })
                    .collect(),
            }))
        }
        (Mode::SilentAfterList, _) => None,
        (Mode::BadOptions, MessageRequest::FileContainingSymbol(_)) => {
            files(vec![bad_options_file(), descriptor_proto()])
        }
        (Mode::EndlessImports, MessageRequest::FileContainingSymbol(_)) => {
            files(vec![file("evil0.proto", "evil", &["evil1.proto"])])
        }
        (Mode::EndlessImports, MessageRequest::FileByFilename(name)) => {
            let n: u64 = name
                .trim_start_matches("evil")
                .trim_end_matches(".proto")
                .parse()
                .unwrap();
            let next = format!("evil{}.proto", n + 1);
            files(vec![file(&name, "evil", &[next.as_str()])])
        }
        (Mode::RefusedImport, MessageRequest::FileContainingSymbol(_)) => {
            files(vec![evil_file(&["missing.proto"], ".evil.v1.M")])
        }
        (Mode::RefusedImport, MessageRequest::FileByFilename(name)) => {
            Some(MessageResponse::ErrorResponse(ErrorResponse {
                error_code: tonic::Code::NotFound as i32,
                error_message: format!("no file {name} here"),
            }))
        }
        (Mode::Garbage, MessageRequest::FileContainingSymbol(_)) => files(vec![vec![0xff; 7]]),
        (Mode::Unresolved, MessageRequest::FileContainingSymbol(_)) => {
            files(vec![evil_file(&["dep.proto"], ".dep.Thing")])
        }
        (Mode::Unresolved, MessageRequest::FileByFilename(name)) => {
            files(vec![file(&name, "dep", &[])])
        }
        (Mode::Bundled, MessageRequest::FileContainingSymbol(_)) => files(vec![
            evil_file(&["dep.proto"], ".dep.Thing"),
            dep_file_with_thing(),
        ]),
        (_, other) => Some(MessageResponse::ErrorResponse(ErrorResponse {
            error_code: tonic::Code::InvalidArgument as i32,
            error_message: format!("unexpected {other:?}"),
        })),
    }
}

/// An empty proto3 file.
fn file(name: &str, package: &str, dependencies: &[&str]) -> Vec<u8> {
    FileDescriptorProto {
        name: Some(name.into()),
        package: Some(package.into()),
        dependency: dependencies.iter().map(|d| (*d).to_owned()).collect(),
        syntax: Some("proto3".into()),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `evil.proto`: `message M {}` and `service Evil { rpc Do(<input>) returns (M); }`.
fn evil_file(dependencies: &[&str], input: &str) -> Vec<u8> {
    FileDescriptorProto {
        name: Some("evil.proto".into()),
        package: Some("evil.v1".into()),
        dependency: dependencies.iter().map(|d| (*d).to_owned()).collect(),
        message_type: vec![DescriptorProto {
            name: Some("M".into()),
            ..Default::default()
        }],
        service: vec![ServiceDescriptorProto {
            name: Some("Evil".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Do".into()),
                input_type: Some(input.into()),
                output_type: Some(".evil.v1.M".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `dep.proto`: `message Thing {}`.
fn dep_file_with_thing() -> Vec<u8> {
    FileDescriptorProto {
        name: Some("dep.proto".into()),
        package: Some("dep".into()),
        message_type: vec![DescriptorProto {
            name: Some("Thing".into()),
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `google/protobuf/descriptor.proto`, as the well-known types have it.
fn descriptor_proto() -> Vec<u8> {
    prost_reflect::DescriptorPool::global()
        .get_file_by_name("google/protobuf/descriptor.proto")
        .unwrap()
        .file_descriptor_proto()
        .encode_to_vec()
}

/// The parts of a `FileDescriptorProto` [`bad_options_file`] needs, method options kept raw.
#[derive(Clone, PartialEq, prost::Message)]
struct RawFile {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    message_type: Vec<DescriptorProto>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<RawService>,
    #[prost(message, repeated, tag = "7")]
    extension: Vec<prost_types::FieldDescriptorProto>,
    #[prost(string, optional, tag = "12")]
    syntax: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawService {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    method: Vec<RawMethod>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawMethod {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    input_type: Option<String>,
    #[prost(string, optional, tag = "3")]
    output_type: Option<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    options: Option<Vec<u8>>,
}

/// `evil.proto`: declares `extend google.protobuf.MethodOptions { string evil = 50000; }` and
/// sets it on `Evil.Do` as a varint.
fn bad_options_file() -> Vec<u8> {
    use prost_types::field_descriptor_proto::{Label, Type};
    let mut options = Vec::new();
    prost::encoding::encode_key(50_000, prost::encoding::WireType::Varint, &mut options);
    prost::encoding::encode_varint(1, &mut options);
    RawFile {
        name: Some("evil.proto".into()),
        package: Some("evil.v1".into()),
        dependency: vec!["google/protobuf/descriptor.proto".into()],
        message_type: vec![DescriptorProto {
            name: Some("M".into()),
            ..Default::default()
        }],
        service: vec![RawService {
            name: Some("Evil".into()),
            method: vec![RawMethod {
                name: Some("Do".into()),
                input_type: Some(".evil.v1.M".into()),
                output_type: Some(".evil.v1.M".into()),
                options: Some(options),
            }],
        }],
        extension: vec![prost_types::FieldDescriptorProto {
            name: Some("evil".into()),
            number: Some(50_000),
            label: Some(Label::Optional as i32),
            r#type: Some(Type::String as i32),
            extendee: Some(".google.protobuf.MethodOptions".into()),
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
    }
    .encode_to_vec()
}

/// Serves a [`Hostile`] reflection server; returns its address, what it was asked, and its stop.
async fn hostile(mode: Mode) -> (SocketAddr, Arc<Mutex<Vec<String>>>, oneshot::Sender<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = ServerReflectionServer::new(Hostile {
        mode,
        seen: seen.clone(),
    });
    let (addr, stop) = serve(Routes::new(server)).await;
    (addr, seen, stop)
}

#[tokio::test]
async fn reflection_stops_at_the_file_cap_on_endless_imports() {
    let (addr, seen, _stop) = hostile(Mode::EndlessImports).await;
    let options = FetchOptions {
        max_files: 25,
        ..FetchOptions::default()
    };

    let err = fetch_with(channel(addr), options).await.unwrap_err();
    assert!(
        matches!(&err, ReflectionError::TooManyFiles { limit: 25, request } if request.contains("evil25.proto")),
        "{err:?}"
    );
    // list_services, the service's file, then evil1..evil24: never past the cap.
    assert_eq!(seen.lock().unwrap().len(), 26);
}

#[tokio::test]
async fn reflection_names_the_file_the_server_refused() {
    let (addr, _seen, _stop) = hostile(Mode::RefusedImport).await;

    let err = fetch(channel(addr)).await.unwrap_err();
    match &err {
        ReflectionError::Server {
            version: ReflectionVersion::V1,
            request,
            code: tonic::Code::NotFound,
            message,
        } => {
            assert_eq!(
                request,
                "file_by_filename missing.proto (imported by evil.proto)"
            );
            assert!(message.contains("missing.proto"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("missing.proto"), "{err}");
}

#[tokio::test]
async fn reflection_names_the_request_whose_answer_does_not_decode() {
    let (addr, _seen, _stop) = hostile(Mode::Garbage).await;

    let err = fetch(channel(addr)).await.unwrap_err();
    assert!(
        matches!(&err, ReflectionError::Decode { request, .. } if request == "file_containing_symbol evil.v1.Evil"),
        "{err:?}"
    );
}

#[tokio::test]
async fn reflection_reports_an_inconsistent_pool() {
    let (addr, _seen, _stop) = hostile(Mode::Unresolved).await;

    let err = fetch(channel(addr)).await.unwrap_err();
    assert!(
        matches!(&err, ReflectionError::Pool { file: Some(file), .. } if file == "evil.proto"),
        "{err:?}"
    );
    assert!(err.to_string().contains("dep.Thing"), "{err}");
}

#[tokio::test]
async fn reflection_keeps_every_file_of_an_answer() {
    let (addr, seen, _stop) = hostile(Mode::Bundled).await;

    let descriptors = fetch(channel(addr)).await.unwrap();
    assert_eq!(descriptors.services, ["evil.v1.Evil"]);
    assert!(descriptors.pool.get_message_by_name("dep.Thing").is_some());
    // dep.proto came with the service's file: nothing else was asked for.
    assert_eq!(seen.lock().unwrap().len(), 2, "{:?}", seen.lock().unwrap());
}

#[tokio::test]
async fn reflection_times_out_naming_the_unanswered_request() {
    let (addr, _seen, _stop) = hostile(Mode::SilentAfterList).await;

    let started = Instant::now();
    let err = fetch_with_timeout(channel(addr), Duration::from_millis(300))
        .await
        .unwrap_err();
    match &err {
        ReflectionError::Timeout { waiting_for, .. } => assert_eq!(
            waiting_for,
            "the answer to file_containing_symbol evil.v1.Evil"
        ),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{err}");
}

#[tokio::test]
async fn reflection_rejects_options_that_do_not_decode_naming_the_file() {
    let (addr, _seen, _stop) = hostile(Mode::BadOptions).await;

    // prost-reflect checks option values against the declared extensions when it builds the
    // pool (reading them later would panic otherwise); the error names the file.
    let err = fetch(channel(addr)).await.unwrap_err();
    assert!(
        matches!(&err, ReflectionError::Pool { file: Some(file), .. } if file == "evil.proto"),
        "{err:?}"
    );
}

/// The mesh client's channel is a transport `fetch` takes (compile-time check).
#[allow(dead_code)]
fn mesh_channels_fit(
    channel: protomesh::client::MeshChannel,
) -> impl std::future::Future<Output = Result<ServiceDescriptors, ReflectionError>> + Send {
    fetch(channel)
}
