//! The `probe` binary: parses the common serve options, then serves the probe service with the
//! mesh runtime until SIGTERM/SIGINT.

use std::process::ExitCode;

use protomesh::service::Service;
use protomesh_probe::{proto, ProbeHandler, ProbeServiceServer};

fn main() -> ExitCode {
    Service::new("probe", env!("CARGO_PKG_VERSION"))
        .about("Answers on demand (delay, status) and counts its calls: a diagnostics service for the mesh.")
        .run(|ctx| async move {
            ctx.server()
                .descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .add_service(ProbeServiceServer::new(ProbeHandler::default()))
                .serve()
                .await
        })
}
