//! The `timetrack` binary: parses the common serve and data options, prepares the database
//! (creates it if missing, migrates the `timetrack` schema), starts the outbox relay, and serves
//! the timetrack service with the mesh runtime until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use protomesh::client::Mesh;
use protomesh::config::ServeConfig;
use protomesh::consul::ConsulClient;
use protomesh::data::outbox::{OutboxRelay, RelayOptions};
use protomesh::data::{self, DataConfig, DataError};
use protomesh::server::MeshServer;
use protomesh_timetrack::{TimetrackHandler, TimetrackServiceServer, MIGRATIONS, SERVICE};

/// Timers of users on tasks over gRPC (Postgres, events through Redis), registered in Consul.
#[derive(Debug, Parser)]
#[command(name = "timetrack", version)]
struct Cli {
    #[command(flatten)]
    serve: ServeConfig,

    #[command(flatten)]
    data: DataConfig,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{0}")]
    Data(#[from] DataError),
    #[error("invalid Consul settings (CONSUL_HTTP_ADDR / --consul-addr, CONSUL_HTTP_TOKEN): {0}")]
    Consul(#[from] protomesh::consul::ConsulError),
    #[error("mesh client: {0}")]
    Descriptors(#[from] protomesh::client::methods::DescriptorError),
    #[error(transparent)]
    Serve(#[from] protomesh::server::ServeError),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match protomesh::telemetry::init(cli.serve.log_format, SERVICE) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{SERVICE}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = protomesh::telemetry::exit_code(run(cli).await);
    // Export the last spans before the process ends.
    telemetry.shutdown();
    code
}

async fn run(cli: Cli) -> Result<(), StartError> {
    let Cli {
        serve,
        data: config,
    } = cli;
    let config = config.with_default_schema(SERVICE);

    data::ensure_database(&config).await?;
    let pool = data::connect_pool(&config)?;
    let applied = data::migrate(&pool, SERVICE, MIGRATIONS).await?;
    tracing::info!(?applied, schema = ?config.db_schema, "database ready");

    let mesh = Mesh::from_consul(ConsulClient::new(serve.consul()?)?)?;

    let redis = data::connect_redis(&config)?;
    let relay = OutboxRelay::spawn(
        pool.clone(),
        redis,
        config.key_prefix.clone(),
        RelayOptions::default().listen(config.pg_config()?),
    );

    let handler = TimetrackHandler::new(pool.clone(), mesh.clone());
    let server = MeshServer::new(SERVICE, serve)
        .version(env!("CARGO_PKG_VERSION"))
        .with_mesh(mesh)
        .add_service(TimetrackServiceServer::new(handler));
    // `/metrics` shows how far the outbox is behind.
    server.metrics().watch_outbox(pool);
    let served = server.serve().await;
    // Events written before the shutdown are in the outbox; publish what the relay has in hand.
    relay.stop().await;
    Ok(served?)
}
