//! The `analytics` binary: parses the common serve and data options, prepares the database
//! (creates it if missing, migrates the `analytics` schema), consumes the `tasks` and `timetrack`
//! streams as a member of the consumer group `analytics`, and serves the analytics service with
//! the mesh runtime (a mesh client found through Consul asks the tasks service who may see a
//! project) until SIGTERM/SIGINT; then, once the server has drained, stops the consumer (after
//! the event in hand).

use std::net::SocketAddr;
use std::process::ExitCode;

use protomesh::service::{Context, Service};
use std::time::Duration;

use clap::Args;
use protomesh::server::shutdown_signal;
use protomesh_analytics::{
    apply_event, consumer_options, AnalyticsHandler, AnalyticsServiceServer, MIGRATIONS, SERVICE,
};
use protomesh_data::lag::LagMetrics;
use protomesh_data::stream::StreamConsumer;
use protomesh_data::{self as data, DataConfig, StartError};

/// Dashboards and project reports over gRPC, built from the task and time events, registered in
/// Consul.
#[derive(Debug, Args)]
struct Flags {
    #[command(flatten)]
    data: DataConfig,

    /// How long a message another consumer of the group read but did not acknowledge must stay
    /// idle before this one claims it (that consumer is taken for dead or failing); pending
    /// messages are looked for that often too (at most every 5 s).
    #[arg(long = "claim-idle", env = "PROTOMESH_ANALYTICS_CLAIM_IDLE", default_value = "30s", value_parser = positive_duration)]
    claim_idle: Duration,
}

/// A duration greater than zero (zero would claim messages other consumers are handling).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be greater than 0".to_owned()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(err.to_string()),
    }
}

fn main() -> ExitCode {
    Service::new(SERVICE, env!("CARGO_PKG_VERSION"))
        .about("Dashboards and project reports over gRPC, built from the task and time events, registered in Consul.")
        .flags::<Flags>()
        .run(run)
}

/// This process's name in the consumer group: `analytics-<host>-<pid>`, the host being the
/// machine's name, or the address served when it has none.
fn consumer_name(served: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| served.to_string());
    format!("{SERVICE}-{host}-{}", std::process::id())
}

async fn run(ctx: Context<Flags>) -> Result<(), StartError> {
    let server = ctx.server();
    // Project reports ask the tasks service who may see a project.
    let mesh = ctx.mesh()?;
    let Flags {
        data: config,
        claim_idle,
    } = ctx.flags;
    let config = config.with_default_schema(SERVICE);

    let pool = data::prepare_database(&config, SERVICE, MIGRATIONS).await?;

    let server = server
        .descriptor_set(protomesh_analytics::proto::FILE_DESCRIPTOR_SET)
        .with_mesh(mesh.clone())
        .add_service(AnalyticsServiceServer::new(AnalyticsHandler::new(
            pool.clone(),
            mesh,
        )))
        .bind()
        .await?;

    let redis = data::connect_redis(&config)?;
    let options = consumer_options(consumer_name(server.local_addr()), claim_idle);
    tracing::info!(consumer = %options.consumer, streams = ?options.streams, ?claim_idle, "consuming events");
    // The consumer reads over a connection of its own, made like this client's; this one reads
    // the groups' lag for `/metrics`.
    let consumer = StreamConsumer::new(&redis, config.key_prefix.clone(), options);
    let watched = consumer.options();
    server.metrics().watch_stream_groups(
        redis,
        &config.key_prefix,
        &watched.group,
        &watched.streams,
    );
    let consuming = consumer.spawn(move |event| {
        let pool = pool.clone();
        async move { apply_event(&pool, &event).await.map(drop) }
    });

    let served = server.run_until(shutdown_signal()).await;
    consuming.stop().await;
    Ok(served?)
}
