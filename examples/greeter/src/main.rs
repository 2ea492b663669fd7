//! The `greeter` binary: a protomesh service written outside protomesh's workspace. Its protos
//! are compiled by `build.rs`; the runtime serves them with health, reflection, Consul
//! registration, request rules and graceful shutdown.

use std::process::ExitCode;

use protomesh::service::Service;
use tonic::{Request, Response, Status};

/// The code `build.rs` generated, and the protos' descriptor set.
#[allow(missing_docs, clippy::all)]
mod proto {
    ::protomesh::include_protos!();
}

use proto::acme::greeter::v1::greeter_service_server::{GreeterService, GreeterServiceServer};
use proto::acme::greeter::v1::{SayHelloRequest, SayHelloResponse};

/// Says hello.
struct Greeter;

#[tonic::async_trait]
impl GreeterService for Greeter {
    async fn say_hello(
        &self,
        request: Request<SayHelloRequest>,
    ) -> Result<Response<SayHelloResponse>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(SayHelloResponse {
            message: format!("Hello, {name}!"),
        }))
    }
}

fn main() -> ExitCode {
    Service::new("greeter", env!("CARGO_PKG_VERSION"))
        .about("Greets over gRPC and, through the gateway, over HTTP/JSON")
        .run(|ctx| async move {
            ctx.server()
                .descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .add_service(GreeterServiceServer::new(Greeter))
                .serve()
                .await
        })
}
