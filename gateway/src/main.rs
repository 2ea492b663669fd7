//! The `gateway` binary: JSON/HTTP (HTTP/1.1 and h2c on one port) in front of every gRPC service in
//! Consul, with routes learned at run time from their `google.api.http` options.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use protomesh::client::Mesh;
use protomesh::config::LogFormat;
use protomesh::consul::{ConsulClient, ConsulConfig};
use protomesh_gateway::discovery::{self, DiscoveryOptions};
use protomesh_gateway::reflection::ServiceDescriptors;
use protomesh_gateway::{Gateway, GatewayOptions, JsonOptions, WebSocketOptions};

/// JSON/HTTP to gRPC for every service in the mesh.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Cli {
    /// Address to listen on (HTTP/1.1 and h2c).
    #[arg(
        long,
        env = "PROTOMESH_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: SocketAddr,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`, `/mesh`, and `/routes`
    /// with addresses and upstream errors), kept off the public port; none by default (and then
    /// no metrics are recorded, and only the public `/routes` is served).
    #[arg(long, env = "PROTOMESH_GATEWAY_ADMIN")]
    admin: Option<SocketAddr>,
    /// Consul agent HTTP address.
    #[arg(
        long = "consul-addr",
        env = "CONSUL_HTTP_ADDR",
        default_value = "127.0.0.1:8500"
    )]
    consul_addr: String,
    /// Consul ACL token.
    #[arg(
        long = "consul-token",
        env = "CONSUL_HTTP_TOKEN",
        hide_env_values = true
    )]
    consul_token: Option<String>,
    /// Only services with this Consul tag are routed.
    #[arg(long, env = "PROTOMESH_GATEWAY_TAG", default_value = "grpc")]
    tag: String,
    /// Largest request body, in bytes.
    #[arg(long, env = "PROTOMESH_GATEWAY_BODY_LIMIT", default_value_t = 4 * 1024 * 1024)]
    body_limit: usize,
    /// Deadline of a call when the request sends no `Grpc-Timeout`.
    #[arg(long, env = "PROTOMESH_GATEWAY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    default_timeout: Duration,
    /// How often a WebSocket bridged to a streaming method is pinged.
    #[arg(long = "ws-ping-interval", env = "PROTOMESH_GATEWAY_WS_PING_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    ws_ping_interval: Duration,
    /// A WebSocket the client sent nothing on, not even a pong, for this long is closed (1001).
    #[arg(long = "ws-idle-timeout", env = "PROTOMESH_GATEWAY_WS_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    ws_idle_timeout: Duration,
    /// Deadline of a call bridged from a WebSocket when its method's policy states none.
    #[arg(long = "ws-max-duration", env = "PROTOMESH_GATEWAY_WS_MAX_DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    ws_max_duration: Duration,
    /// Extra request headers passed to services as gRPC metadata (repeat the flag).
    #[arg(
        long = "forward-header",
        env = "PROTOMESH_GATEWAY_FORWARD_HEADERS",
        value_delimiter = ','
    )]
    forward_headers: Vec<String>,
    /// Prefix of response headers carrying the services' response metadata.
    #[arg(
        long,
        env = "PROTOMESH_GATEWAY_METADATA_PREFIX",
        default_value = "grpc-metadata-"
    )]
    metadata_prefix: String,
    /// Answer with proto field names instead of lowerCamelCase.
    #[arg(long)]
    proto_names: bool,
    /// Answer with fields at their default values too.
    #[arg(long)]
    emit_defaults: bool,
    /// Accept (and ignore) unknown JSON fields instead of answering 400.
    #[arg(long)]
    allow_unknown_fields: bool,
    /// Descriptors for a service that serves no reflection: `NAME=FILE`, NAME its Consul service
    /// name, FILE an encoded FileDescriptorSet with imports (`protoc --include_imports
    /// --descriptor_set_out`). Repeat for more services.
    #[arg(
        long = "descriptor-set",
        env = "PROTOMESH_GATEWAY_DESCRIPTOR_SETS",
        value_delimiter = ','
    )]
    descriptor_sets: Vec<String>,
    /// Log format.
    #[arg(long, env = "PROTOMESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    /// Authentication, authorization, rate limits and CORS.
    #[command(flatten)]
    edge: protomesh_gateway::EdgeConfig,
    /// Connection limits: open connections, head, idle and body timeouts, URI length, HTTP/2.
    #[command(flatten)]
    limits: protomesh_gateway::listener::ConnectionLimits,
    /// Mutual TLS to the services (the gateway's own HTTP side stays plain).
    #[command(flatten)]
    tls: protomesh::tls::TlsConfig,
    /// The gateway's zone (its calls prefer instances in it) and the datacenters its calls fail
    /// over to.
    #[command(flatten)]
    locality: protomesh::client::Locality,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match protomesh::telemetry::init(cli.log_format, "gateway") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("gateway: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("gateway: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Freed memory goes back to the system after load (it ends with the runtime).
    runtime.spawn(protomesh::memory::release_freed_memory());
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "gateway stopped");
            eprintln!("gateway: {err:#}");
            ExitCode::FAILURE
        }
    };
    // Export the last spans before the process ends.
    telemetry.shutdown();
    code
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut consul =
        ConsulConfig::new(&cli.consul_addr).context("CONSUL_HTTP_ADDR / --consul-addr")?;
    if let Some(token) = cli.consul_token.filter(|t| !t.is_empty()) {
        consul = consul.with_token(token);
    }
    let consul = ConsulClient::new(consul)?;
    consul.agent_self().await.with_context(|| {
        format!(
            "cannot reach the Consul agent at {} (CONSUL_HTTP_ADDR)",
            cli.consul_addr
        )
    })?;
    let mut static_descriptors = std::collections::BTreeMap::new();
    for spec in cli.descriptor_sets.iter().filter(|s| !s.is_empty()) {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--descriptor-set {spec:?}: expected NAME=FILE"))?;
        let descriptors = ServiceDescriptors::from_file(std::path::Path::new(file))
            .with_context(|| format!("--descriptor-set {spec:?}"))?;
        static_descriptors.insert(name.to_owned(), std::sync::Arc::new(descriptors));
    }
    let mesh = Mesh::located(consul.clone(), &[], &cli.locality)?;
    if let Some(tls) = cli.tls.load()? {
        mesh.use_tls(tls);
    }
    let state = discovery::spawn(
        consul.clone(),
        mesh.clone(),
        DiscoveryOptions {
            tag: cli.tag,
            static_descriptors,
            failover_datacenters: cli.locality.failover_datacenters.clone(),
            ..DiscoveryOptions::default()
        },
    );
    let forward_headers = cli
        .forward_headers
        .iter()
        .filter(|h| !h.is_empty())
        .map(|h| {
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .with_context(|| format!("--forward-header {h:?} is not a header name"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = GatewayOptions {
        body_limit: cli.body_limit,
        body_timeout: cli.limits.body_timeout,
        default_timeout: cli.default_timeout,
        json: JsonOptions {
            use_proto_names: cli.proto_names,
            emit_defaults: cli.emit_defaults,
            allow_unknown_fields: cli.allow_unknown_fields,
        },
        forward_headers,
        metadata_prefix: cli.metadata_prefix.to_ascii_lowercase(),
        edge: cli.edge.options()?,
        websocket: WebSocketOptions {
            ping_interval: cli.ws_ping_interval,
            idle_timeout: cli.ws_idle_timeout,
            max_duration: cli.ws_max_duration,
        },
        ..GatewayOptions::default()
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", cli.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening (HTTP/1.1 and h2c)");
    let gateway = Gateway::new(mesh, state, options).with_consul(consul);
    let (app, _admin) = protomesh_gateway::app_with_admin(cli.admin, gateway)
        .await
        .context("--admin / PROTOMESH_GATEWAY_ADMIN")?;
    protomesh_gateway::listener::serve(
        listener,
        app,
        &cli.limits,
        protomesh::server::shutdown_signal(),
        Duration::from_secs(10),
    )
    .await;
    tracing::info!("gateway stopped");
    Ok(())
}
