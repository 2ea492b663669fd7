//! The `probe` binary: parses the common serve options, then serves the probe service with the
//! mesh runtime until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use protomesh::config::ServeConfig;
use protomesh::server::MeshServer;
use protomesh_probe::{ProbeHandler, ProbeServiceServer};

/// Answers on demand (delay, status) and counts its calls: a diagnostics service for the mesh.
#[derive(Debug, Parser)]
#[command(name = "probe", version)]
struct Cli {
    #[command(flatten)]
    serve: ServeConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match protomesh::telemetry::init(cli.serve.log_format, "probe") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("probe: {err}");
            return ExitCode::FAILURE;
        }
    };
    let served = MeshServer::new("probe", cli.serve)
        .version(env!("CARGO_PKG_VERSION"))
        .descriptor_set(protomesh_probe::proto::FILE_DESCRIPTOR_SET)
        .add_service(ProbeServiceServer::new(ProbeHandler::default()))
        .serve()
        .await;
    let code = protomesh::telemetry::exit_code(served);
    // Export the last spans before the process ends.
    telemetry.shutdown();
    code
}
