//! The `tasks` binary: parses the common serve and data options, prepares the database (creates
//! it if missing, migrates the `tasks` schema), starts the outbox relay, and serves the tasks
//! service with the mesh runtime until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use protomesh::client::Mesh;
use protomesh::config::ServeConfig;
use protomesh::consul::ConsulClient;
use protomesh::data::outbox::{OutboxRelay, RelayOptions};
use protomesh::data::{self, Cache, DataConfig, DataError};
use protomesh::server::MeshServer;
use protomesh_tasks::{TasksHandler, TasksServiceServer, MIGRATIONS, SERVICE};

/// Projects and tasks over gRPC (Postgres, Redis cache and events), registered in Consul.
#[derive(Debug, Parser)]
#[command(name = "tasks", version)]
struct Cli {
    #[command(flatten)]
    serve: ServeConfig,

    #[command(flatten)]
    data: DataConfig,

    /// How long a task read by GetTask stays in the Redis cache (0s: no read cache).
    #[arg(long = "cache-ttl", env = "PROTOMESH_TASKS_CACHE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    cache_ttl: Duration,
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
        cache_ttl,
    } = cli;
    let config = config.with_default_schema(SERVICE);

    data::ensure_database(&config).await?;
    let pool = data::connect_pool(&config)?;
    let applied = data::migrate(&pool, SERVICE, MIGRATIONS).await?;
    tracing::info!(?applied, schema = ?config.db_schema, "database ready");

    let mesh = Mesh::from_consul(ConsulClient::new(serve.consul()?)?)?;

    let redis = data::connect_redis(&config)?;
    let cache = Cache::new(redis.clone(), config.key_prefix.clone());
    let relay = OutboxRelay::spawn(
        pool.clone(),
        redis,
        config.key_prefix.clone(),
        RelayOptions::default().listen(config.pg_config()?),
    );

    let handler = TasksHandler::new(pool.clone(), cache, mesh.clone()).with_cache_ttl(cache_ttl);
    let server = MeshServer::new(SERVICE, serve)
        .version(env!("CARGO_PKG_VERSION"))
        .with_mesh(mesh)
        .add_service(TasksServiceServer::new(handler));
    // `/metrics` shows how far the outbox is behind.
    server.metrics().watch_outbox(pool);
    let served = server.serve().await;
    // Events written before the shutdown are in the outbox; publish what the relay has in hand.
    relay.stop().await;
    Ok(served?)
}
