//! The `priority` binary: parses the common serve options, then serves the priority service with
//! the mesh runtime until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use protomesh::config::ServeConfig;
use protomesh::server::MeshServer;
use protomesh_priority::{PriorityHandler, PriorityServiceServer};

/// Scores tasks by urgency × impact over gRPC, registered in Consul.
#[derive(Debug, Parser)]
#[command(name = "priority", version)]
struct Cli {
    #[command(flatten)]
    serve: ServeConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match protomesh::telemetry::init(cli.serve.log_format, "priority") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("priority: {err}");
            return ExitCode::FAILURE;
        }
    };
    let served = MeshServer::new("priority", cli.serve)
        .version(env!("CARGO_PKG_VERSION"))
        .descriptor_set(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
        .add_service(PriorityServiceServer::new(PriorityHandler))
        .serve()
        .await;
    let code = protomesh::telemetry::exit_code(served);
    // Export the last spans before the process ends.
    telemetry.shutdown();
    code
}
