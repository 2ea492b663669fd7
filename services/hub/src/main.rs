//! The `hub` binary: parses the common serve options and where Redis is, follows the event
//! streams, and serves the hub service with the mesh runtime (a mesh client found through Consul
//! asks the tasks service who may see a topic) until SIGTERM/SIGINT; then ends every subscription
//! with `UNAVAILABLE` and its cursor, so subscribers resume on another instance.

use std::process::ExitCode;

use clap::Args;
use protomesh::server::shutdown_signal;
use protomesh::service::{Context, Service};
use protomesh_data::{
    self as data, DataConfig, StartError, DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL,
};
use protomesh_hub::fanout::{Hub, HubOptions};
use protomesh_hub::{presence, HubHandler, HubServiceServer, SERVICE};
use tokio::sync::mpsc;

/// Live events, messages and presence over gRPC, registered in Consul.
#[derive(Debug, Args)]
struct Flags {
    /// Redis URL (`redis://host:port[/db]`): the event streams and the hub's own.
    #[arg(long = "redis-url", env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    redis_url: String,

    /// Prefix of every Redis key and stream name (the one the services publishing events use).
    #[arg(long = "key-prefix", env = "PROTOMESH_KEY_PREFIX", default_value = "")]
    key_prefix: String,

    /// Events a subscriber's buffer holds; one that falls further behind is dropped with
    /// RESOURCE_EXHAUSTED and resumes with its cursor.
    #[arg(long = "subscriber-buffer", env = "PROTOMESH_HUB_SUBSCRIBER_BUFFER", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    subscriber_buffer: u32,

    /// How often a subscription checks again that its subscriber may still see its topics (a
    /// member removed from a project stops getting its events within it).
    #[arg(long = "recheck-interval", env = "PROTOMESH_HUB_RECHECK_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    recheck_interval: std::time::Duration,
}

fn main() -> ExitCode {
    Service::new(SERVICE, env!("CARGO_PKG_VERSION"))
        .about("Live events, messages and presence over gRPC, registered in Consul.")
        .flags::<Flags>()
        .run(run)
}

/// This instance's name in presence and stats: `<host>-<pid>`.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

async fn run(ctx: Context<Flags>) -> Result<(), StartError> {
    let server = ctx.server();
    let mesh = ctx.mesh()?;
    let flags = ctx.flags;
    let config = DataConfig::with_database_url(DEFAULT_DATABASE_URL)
        .with_redis_url(flags.redis_url)
        .with_key_prefix(flags.key_prefix);
    let redis = data::connect_redis(&config)?;

    let mut options = HubOptions::new(instance_name());
    options.buffer = flags.subscriber_buffer as usize;
    options.recheck_every = flags
        .recheck_interval
        .max(std::time::Duration::from_secs(1));
    let (changes, changed) = mpsc::channel(presence::CHANGES_BUFFER);
    let hub = Hub::new(redis, config.key_prefix.clone(), options, changes);
    let reader = tokio::spawn(hub.clone().run_reader());
    let presence_task = tokio::spawn(presence::run(hub.clone(), changed));

    let server = server
        .descriptor_set(protomesh_hub::proto::FILE_DESCRIPTOR_SET)
        .with_mesh(mesh.clone())
        .add_service(HubServiceServer::new(HubHandler::new(hub.clone(), mesh)))
        .bind()
        .await?;
    let closing = hub.clone();
    let served = server
        .run_until(async move {
            shutdown_signal().await;
            closing.close();
        })
        .await;
    reader.abort();
    presence_task.abort();
    presence::retire(&hub).await;
    Ok(served?)
}
