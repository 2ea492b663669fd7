//! The `mesh` command: `mesh up` brings a whole dev mesh up (Consul dev agent, services), `mesh
//! status` shows what Consul knows about it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use protomesh::config::LogFormat;
use protomesh::consul::{ConsulClient, ConsulConfig};
use protomesh_mesh::{self as devmesh, ServiceSpec, UpOptions};

/// protomesh: a Rust gRPC service mesh on Consul.
#[derive(Debug, Parser)]
#[command(name = "mesh", version)]
struct Cli {
    /// Consul agent HTTP address.
    #[arg(
        long = "consul-addr",
        env = "CONSUL_HTTP_ADDR",
        default_value = "127.0.0.1:8500",
        global = true
    )]
    consul_addr: String,
    /// Consul ACL token.
    #[arg(
        long = "consul-token",
        env = "CONSUL_HTTP_TOKEN",
        hide_env_values = true,
        global = true
    )]
    consul_token: Option<String>,
    /// Log format of the mesh command itself.
    #[arg(long, env = "PROTOMESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// What `mesh up` starts without `--service`: the whole reference mesh.
const DEFAULT_SERVICES: [&str; 6] = [
    "priority=3",
    "users",
    "tasks",
    "timetrack",
    "analytics",
    "hub",
];

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a Consul dev agent if none answers, start the services, wait until they pass, and
    /// run until Ctrl-C.
    Up {
        /// Services to start, `name=count` (binary name = Consul service name). The data services
        /// (users, tasks, timetrack, analytics, hub) read DATABASE_URL, REDIS_URL and
        /// PROTOMESH_KEY_PREFIX from the environment, which they inherit; accounts registered
        /// with an email in PROTOMESH_USERS_ADMIN_EMAILS (default admin@protomesh.localhost) are
        /// admins, who may open the dashboard.
        #[arg(long = "service", default_values_t = DEFAULT_SERVICES.map(str::to_owned))]
        services: Vec<String>,
        /// Folder of the service binaries (defaults to the folder of this `mesh` binary).
        #[arg(long, env = "PROTOMESH_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// Folder for logs.
        #[arg(long, default_value = "target/mesh-logs")]
        log_dir: PathBuf,
        /// The `consul` binary to start a dev agent with.
        #[arg(long, env = "CONSUL_BIN")]
        consul_bin: Option<PathBuf>,
        /// Address of the transcoding gateway to start (port 0: a free port).
        #[arg(
            long,
            env = "PROTOMESH_GATEWAY_LISTEN",
            default_value = "127.0.0.1:8080"
        )]
        gateway: std::net::SocketAddr,
        /// Do not start the gateway.
        #[arg(long)]
        no_gateway: bool,
        /// How long to wait for every instance to pass.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        ready_timeout: Duration,
        /// Instead: N hosts of their own on this machine (network namespaces on a bridge; needs
        /// root), a Consul cluster across them (servers on the first three), priority on every
        /// host but the first and the gateway on the first (at --gateway's port), as the
        /// multi-host tests run them.
        #[arg(
            long,
            value_name = "N",
            value_parser = clap::value_parser!(u8).range(1..=200),
            conflicts_with_all = ["services", "no_gateway"]
        )]
        hosts: Option<u8>,
    },
    /// List services, instances, addresses and check states from Consul; with `--client`, what
    /// one process's mesh client sees: per service it calls, the endpoints, their Consul
    /// health, ejection, calls in flight, EWMA latency, and the circuit breaker.
    Status {
        /// Admin address (`--admin` of that process) to read the client view from.
        #[arg(long, value_name = "ADMIN_ADDR")]
        client: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match protomesh::telemetry::init(cli.log_format, "mesh") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("mesh: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mesh: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mesh: {err:#}");
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
    match cli.command {
        Command::Status {
            client: Some(admin),
        } => {
            print!("{}", devmesh::client_status(&admin).await?);
        }
        Command::Status { client: None } => {
            let client = ConsulClient::new(consul)?;
            print!("{}", devmesh::status(&client).await?);
        }
        Command::Up {
            bin_dir,
            log_dir,
            consul_bin,
            ready_timeout,
            gateway,
            hosts: Some(hosts),
            ..
        } => {
            anyhow::ensure!(
                gateway.port() != 0,
                "--hosts: give the gateway a port (--gateway 0.0.0.0:8080): it listens on the first host"
            );
            let options = devmesh::HostsUpOptions {
                hosts: usize::from(hosts),
                consul_binary: consul_bin
                    .or_else(protomesh_consul::DevAgentOptions::find_binary)
                    .context("no consul binary: run scripts/setup.sh, or set CONSUL_BIN")?,
                bin_dir: bin_dir_or_own(bin_dir)?,
                log_dir,
                gateway_port: gateway.port(),
                ready_timeout,
                stop_grace: Duration::from_secs(15),
            };
            let mut stdout = std::io::stdout();
            devmesh::up_hosts(options, &mut stdout, protomesh::server::shutdown_signal()).await?;
        }
        Command::Up {
            services,
            bin_dir,
            log_dir,
            consul_bin,
            ready_timeout,
            gateway,
            no_gateway,
            hosts: None,
        } => {
            let services = services
                .iter()
                .map(|s| s.parse::<ServiceSpec>())
                .collect::<Result<Vec<_>, _>>()?;
            let bin_dir = bin_dir_or_own(bin_dir)?;
            let options = UpOptions {
                consul,
                consul_binary: consul_bin,
                bin_dir,
                log_dir,
                services,
                ready_timeout,
                stop_grace: Duration::from_secs(15),
                gateway: (!no_gateway).then_some(gateway),
            };
            let mut stdout = std::io::stdout();
            devmesh::up(options, &mut stdout, protomesh::server::shutdown_signal()).await?;
        }
    }
    Ok(())
}

/// The folder of the service binaries: `bin_dir`, else this `mesh` binary's own.
fn bin_dir_or_own(bin_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match bin_dir {
        Some(dir) => Ok(dir),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("the mesh binary has no parent folder")?
            .to_path_buf()),
    }
}
