//! Server reflection v1 (what current grpcurl and tools ask) next to v1alpha (grpcurl 1.8): both list
//! the served services and return descriptors that keep the `google.api.http` option.
#![allow(clippy::unwrap_used)]

use prost::Message;
use protomesh::config::ServeConfig;
use protomesh::server::MeshServer;
use tokio::sync::oneshot;
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

#[tokio::test]
async fn reflection_v1_lists_services_and_serves_descriptors_with_http_options() {
    let mut config = ServeConfig::with_listen("127.0.0.1:0".parse().unwrap());
    config.no_register = true;
    config.lame_duck = std::time::Duration::ZERO;
    let bound = MeshServer::new("priority", config)
.descriptor_set(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
        .add_service(
            protomesh_priority::proto::protomesh::priority::v1::priority_service_server::PriorityServiceServer::new(
                Unused,
            ),
        )
        .bind()
        .await
        .unwrap();
    let addr = format!("http://{}", bound.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(bound.run_until(async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let requests = tokio_stream::iter(vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "protomesh.priority.v1.PriorityService".into(),
            )),
        },
    ]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();

    let listed = responses
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap();
    let MessageResponse::ListServicesResponse(list) = listed else {
        panic!("{listed:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"protomesh.priority.v1.PriorityService"),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let file = responses
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap();
    let MessageResponse::FileDescriptorResponse(files) = file else {
        panic!("{file:?}")
    };
    let raw = files
        .file_descriptor_proto
        .iter()
        .find(|raw| {
            prost_types::FileDescriptorProto::decode(raw.as_slice())
                .unwrap()
                .name()
                == "protomesh/priority/v1/priority.proto"
        })
        .expect("the priority file is served");
    // google.api.http (field 72295728) survives: its path is in the raw method options.
    assert!(
        raw.windows(b"/v1/priority:score".len())
            .any(|w| w == b"/v1/priority:score"),
        "the http option is kept in the served descriptor"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_huge_symbol_name_is_not_echoed_whole() {
    let mut config = ServeConfig::with_listen("127.0.0.1:0".parse().unwrap());
    config.no_register = true;
    config.lame_duck = std::time::Duration::ZERO;
    let bound = MeshServer::new("priority", config)
.descriptor_set(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
        .add_service(
            protomesh_priority::proto::protomesh::priority::v1::priority_service_server::PriorityServiceServer::new(
                Unused,
            ),
        )
        .bind()
        .await
        .unwrap();
    let addr = format!("http://{}", bound.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(bound.run_until(async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    for size in [16 * 1024, 1024 * 1024] {
        let symbol = format!("no.such.{}", "S".repeat(size));
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
        assert_eq!(status.code(), tonic::Code::NotFound, "{}", status.code());
        assert!(
            status.message().len() < 2048,
            "{size}: a message of {} bytes",
            status.message().len()
        );
        // Cut, not dropped: the caller still learns which symbol.
        assert!(
            status.message().starts_with("symbol 'no.such.SSS"),
            "{:?}",
            status.message().chars().take(64).collect::<String>()
        );
    }

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

struct Unused;

#[tonic::async_trait]
impl protomesh_priority::proto::protomesh::priority::v1::priority_service_server::PriorityService
    for Unused
{
    async fn score(
        &self,
        _: tonic::Request<protomesh_priority::proto::protomesh::priority::v1::ScoreRequest>,
    ) -> Result<
        tonic::Response<protomesh_priority::proto::protomesh::priority::v1::ScoreResponse>,
        tonic::Status,
    > {
        Err(tonic::Status::unimplemented("unused"))
    }
    async fn prioritize(
        &self,
        _: tonic::Request<protomesh_priority::proto::protomesh::priority::v1::PrioritizeRequest>,
    ) -> Result<
        tonic::Response<protomesh_priority::proto::protomesh::priority::v1::PrioritizeResponse>,
        tonic::Status,
    > {
        Err(tonic::Status::unimplemented("unused"))
    }
}
