//! The `priority` binary: parses the common serve options, then serves the priority service with
//! the mesh runtime until SIGTERM/SIGINT.

use std::process::ExitCode;

use protomesh::service::Service;
use protomesh_priority::{proto, PriorityHandler, PriorityServiceServer};

fn main() -> ExitCode {
    Service::new("priority", env!("CARGO_PKG_VERSION"))
        .about("Scores tasks by urgency × impact over gRPC, registered in Consul.")
        .run(|ctx| async move {
            ctx.server()
                .descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .add_service(PriorityServiceServer::new(PriorityHandler))
                .serve()
                .await
        })
}
