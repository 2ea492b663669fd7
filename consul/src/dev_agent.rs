//! [`DevAgent`]: launches a throw-away `consul agent -dev` bound to loopback on free ports, for
//! `mesh up` and for tests; many can run side by side. A free port can be taken by another
//! process between the moment it is picked and the moment the agent binds it: an agent that
//! exits before it is ready is started again on newly picked ports (a few times at most).

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::client::{ConsulClient, ConsulConfig, QueryOptions};
use crate::error::ConsulError;

/// Time between two readiness polls.
const READY_POLL: Duration = Duration::from_millis(100);

/// Time between two polls for a passing instance ([`DevAgent::wait_passing`]).
const PASSING_POLL: Duration = Duration::from_millis(20);

/// How many times [`DevAgent::wait_ready`] starts an agent that exited before it was ready again
/// on new ports (its ports may have been taken between picking and binding them).
const PORT_RETRIES: u32 = 4;

/// Distinguishes node names of agents started by one process.
static AGENT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How to launch a [`DevAgent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevAgentOptions {
    /// The `consul` binary.
    pub binary: PathBuf,
    /// HTTP API port; `None` picks a free one.
    pub http_port: Option<u16>,
    /// Node name; `None` makes a unique one.
    pub node_name: Option<String>,
    /// File receiving the agent's stdout and stderr (appended to); `None` discards them.
    pub log_file: Option<PathBuf>,
    /// Extra arguments appended after ours (e.g. `-log-level=debug`).
    pub extra_args: Vec<String>,
}

impl DevAgentOptions {
    /// Options to run `binary` with every other setting at its default.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            http_port: None,
            node_name: None,
            log_file: None,
            extra_args: Vec::new(),
        }
    }

    /// Options for the binary [`DevAgentOptions::find_binary`] finds, or
    /// [`ConsulError::BinaryNotFound`] (which tells to run `scripts/setup.sh`).
    pub fn discover() -> Result<Self, ConsulError> {
        Self::find_binary()
            .map(Self::new)
            .ok_or(ConsulError::BinaryNotFound)
    }

    /// Looks for a `consul` binary: the `CONSUL_BIN` environment variable (used as is when
    /// set, so that a wrong value fails loudly), then `consul` on `PATH`, then
    /// `.tools/bin/consul` in the current directory and each of its ancestors (where
    /// `scripts/setup.sh` installs it).
    pub fn find_binary() -> Option<PathBuf> {
        if let Some(bin) = std::env::var_os("CONSUL_BIN").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(bin));
        }
        if let Some(path) = std::env::var_os("PATH") {
            if let Some(found) = std::env::split_paths(&path)
                .map(|dir| dir.join("consul"))
                .find(|candidate| is_executable(candidate))
            {
                return Some(found);
            }
        }
        let cwd = std::env::current_dir().ok()?;
        cwd.ancestors()
            .map(|dir| dir.join(".tools").join("bin").join("consul"))
            .find(|candidate| is_executable(candidate))
    }

    /// Sets the HTTP API port.
    pub fn with_http_port(mut self, port: u16) -> Self {
        self.http_port = Some(port);
        self
    }

    /// Sets the node name.
    pub fn with_node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = Some(name.into());
        self
    }

    /// Sends the agent's output to `path`.
    pub fn with_log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// Appends an extra command-line argument.
    pub fn with_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

/// True when `path` is a regular file that can be executed.
fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// The TCP (and, for Serf, UDP) ports a dev agent listens on, all on 127.0.0.1. DNS and gRPC
/// are disabled (`-dns-port -1 -grpc-port -1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevAgentPorts {
    /// HTTP API.
    pub http: u16,
    /// Serf LAN gossip (TCP and UDP).
    pub serf_lan: u16,
    /// Serf WAN gossip (TCP and UDP).
    pub serf_wan: u16,
    /// Server RPC.
    pub server: u16,
}

/// A running `consul agent -dev`. Killed when dropped.
#[derive(Debug)]
pub struct DevAgent {
    options: DevAgentOptions,
    node_name: String,
    process: Mutex<Process>,
}

/// The agent's ports and process, replaced together when it is started again on new ports.
#[derive(Debug)]
struct Process {
    ports: DevAgentPorts,
    child: Option<Child>,
}

impl DevAgent {
    /// Starts `consul agent -dev` on 127.0.0.1 with free ports (or `options.http_port`) and a
    /// unique node name. Returns once the process is spawned; call
    /// [`DevAgent::wait_ready`] before using it. Must be called within a tokio runtime.
    pub fn start(options: DevAgentOptions) -> Result<Self, ConsulError> {
        let ports = pick_ports(options.http_port)?;
        let node_name = options.node_name.clone().unwrap_or_else(|| {
            format!(
                "protomesh-dev-{}-{}-{:08x}",
                std::process::id(),
                AGENT_COUNTER.fetch_add(1, Ordering::Relaxed),
                rand::random::<u32>()
            )
        });
        let child = spawn(&options, &ports, &node_name)?;
        tracing::debug!(
            binary = %options.binary.display(),
            http = ports.http,
            node = %node_name,
            "started consul dev agent"
        );
        Ok(Self {
            options,
            node_name,
            process: Mutex::new(Process {
                ports,
                child: Some(child),
            }),
        })
    }

    fn process(&self) -> std::sync::MutexGuard<'_, Process> {
        self.process
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The agent's HTTP address, `127.0.0.1:port` (final once [`DevAgent::wait_ready`] returned).
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports().http)
    }

    /// The ports the agent listens on (final once [`DevAgent::wait_ready`] returned).
    pub fn ports(&self) -> DevAgentPorts {
        self.process().ports
    }

    /// The agent's node name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The options it was started with.
    pub fn options(&self) -> &DevAgentOptions {
        &self.options
    }

    /// The command-line arguments the agent is started with (after the binary).
    pub fn args(&self) -> Vec<String> {
        agent_args(&self.options, &self.ports(), &self.node_name)
    }

    /// A client for this agent (default request timeout).
    pub fn client(&self) -> Result<ConsulClient, ConsulError> {
        ConsulClient::new(ConsulConfig::new(&self.http_addr())?)
    }

    /// Polls `GET /v1/status/leader` until the agent has elected itself leader (its own server
    /// address, so another agent on its port does not count), failing after
    /// `timeout`. An agent that exits before it is ready is started again on newly picked ports
    /// (those not fixed by [`DevAgentOptions::http_port`]), at most a few times; then its exit is
    /// the error.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ConsulError> {
        let started = Instant::now();
        let mut retries = 0;
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            match self.poll_ready(left, timeout).await {
                Err(exited @ ConsulError::AgentExited { .. }) if retries < PORT_RETRIES => {
                    retries += 1;
                    let ports = pick_ports(self.options.http_port)?;
                    tracing::warn!(
                        error = %exited,
                        http = ports.http,
                        "consul dev agent exited before it was ready; starting it on new ports"
                    );
                    let child = spawn(&self.options, &ports, &self.node_name)?;
                    *self.process() = Process {
                        ports,
                        child: Some(child),
                    };
                }
                other => return other,
            }
        }
    }

    /// One readiness wait of at most `left` for the agent as it runs now; `timeout` is the
    /// whole wait, for the error.
    async fn poll_ready(&self, left: Duration, timeout: Duration) -> Result<(), ConsulError> {
        let poll_timeout = timeout.clamp(Duration::from_millis(200), Duration::from_secs(2));
        let client = ConsulClient::new(
            ConsulConfig::new(&self.http_addr())?.with_request_timeout(poll_timeout),
        )?;
        let started = Instant::now();
        loop {
            self.check_running()?;
            // A dev agent elects itself: the leader is its own server address, which tells it
            // from another agent on a port taken from under it (no ACL token needed).
            let ours = format!("127.0.0.1:{}", self.ports().server);
            let last_error = match client.status_leader().await {
                Ok(leader) if leader == ours => return Ok(()),
                Ok(leader) if leader.is_empty() => "no leader elected yet".to_owned(),
                Ok(leader) => format!("another agent (leader {leader}) answers there"),
                Err(err) => err.to_string(),
            };
            // Exited while we polled: say so rather than time out.
            self.check_running()?;
            if started.elapsed() >= left {
                return Err(ConsulError::NotReady {
                    address: self.http_addr(),
                    after: timeout,
                    last_error,
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Polls the agent's catalog until `service` has an instance passing its health checks,
    /// failing with [`ConsulError::NotPassing`] after `timeout`: what a test or the dev mesh does
    /// after starting a service.
    pub async fn wait_passing(&self, service: &str, timeout: Duration) -> Result<(), ConsulError> {
        let client = self.client()?;
        let options = QueryOptions::default().with_passing(true);
        let started = Instant::now();
        loop {
            let last_error = match client.health_service(service, &options).await {
                Ok(passing) if !passing.value.is_empty() => return Ok(()),
                Ok(_) => "no passing instance yet".to_owned(),
                Err(err) => err.to_string(),
            };
            if started.elapsed() >= timeout {
                return Err(ConsulError::NotPassing {
                    service: service.to_owned(),
                    after: timeout,
                    last_error,
                });
            }
            tokio::time::sleep(PASSING_POLL).await;
        }
    }

    /// Kills the agent and waits for it to exit. Does nothing when it is not running.
    pub async fn stop(&mut self) {
        let child = self
            .process
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .child
            .take();
        if let Some(mut child) = child {
            // Errors mean the process is already gone, which is what we want.
            let _ = child.kill().await;
        }
    }

    /// Stops the agent and starts it again on the same ports with the same node name (a dev
    /// agent keeps no state, so it comes back empty), then waits up to `timeout` for it to be
    /// ready (on the same ports: those are its address).
    pub async fn restart(&mut self, timeout: Duration) -> Result<(), ConsulError> {
        self.stop().await;
        let ports = self.ports();
        let child = spawn(&self.options, &ports, &self.node_name)?;
        self.process().child = Some(child);
        self.poll_ready(timeout, timeout).await
    }

    /// `None` while the agent runs; once it has exited, why (the exit is reaped: no zombie is
    /// left behind).
    pub fn exited(&self) -> Option<ConsulError> {
        self.check_running().err()
    }

    /// Fails with [`ConsulError::AgentExited`] when the process is no longer running.
    fn check_running(&self) -> Result<(), ConsulError> {
        let mut guard = self.process();
        let exited = |status: String| ConsulError::AgentExited {
            binary: self.options.binary.clone(),
            status,
            log_file: self.options.log_file.clone(),
        };
        match guard.child.as_mut() {
            None => Err(exited("stopped".to_owned())),
            Some(child) => match child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(exited(status.to_string())),
                Err(err) => Err(exited(format!("cannot query its status: {err}"))),
            },
        }
    }
}

/// The `consul` command line for a dev agent.
fn agent_args(options: &DevAgentOptions, ports: &DevAgentPorts, node_name: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "agent",
        "-dev",
        "-bind",
        "127.0.0.1",
        "-client",
        "127.0.0.1",
        "-http-port",
        &ports.http.to_string(),
        "-dns-port",
        "-1",
        "-grpc-port",
        "-1",
        "-serf-lan-port",
        &ports.serf_lan.to_string(),
        "-serf-wan-port",
        &ports.serf_wan.to_string(),
        "-server-port",
        &ports.server.to_string(),
        "-node",
        node_name,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(options.extra_args.iter().cloned());
    args
}

/// Spawns the agent process with its output going to the log file or nowhere.
fn spawn(
    options: &DevAgentOptions,
    ports: &DevAgentPorts,
    node_name: &str,
) -> Result<Child, ConsulError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ConsulError::Spawn {
            binary: options.binary.clone(),
            source: std::io::Error::other("DevAgent must be started within a tokio runtime"),
        });
    }
    let (stdout, stderr) = match &options.log_file {
        None => (Stdio::null(), Stdio::null()),
        Some(path) => {
            let io_err = |source| ConsulError::Io {
                context: format!("cannot open the dev agent log file {}", path.display()),
                source,
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io_err)?;
            let file2 = file.try_clone().map_err(io_err)?;
            (Stdio::from(file), Stdio::from(file2))
        }
    };
    Command::new(&options.binary)
        .args(agent_args(options, ports, node_name))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ConsulError::Spawn {
            binary: options.binary.clone(),
            source,
        })
}

/// Picks distinct free loopback ports (holding every listener until all are chosen). Serf
/// ports must also be free for UDP.
fn pick_ports(http: Option<u16>) -> Result<DevAgentPorts, ConsulError> {
    let io_err = |source| ConsulError::Io {
        context: "cannot find a free port on 127.0.0.1 for the dev agent".to_owned(),
        source,
    };
    let mut held: Vec<TcpListener> = Vec::new();
    let mut take = |with_udp: bool| -> Result<u16, ConsulError> {
        for _ in 0..64 {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err)?;
            let port = listener.local_addr().map_err(io_err)?.port();
            if Some(port) == http {
                continue;
            }
            // The UDP probe socket is dropped at once; only its success matters.
            if with_udp && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            held.push(listener);
            return Ok(port);
        }
        Err(io_err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no port free for both TCP and UDP after 64 tries",
        )))
    };
    let http = match http {
        Some(port) => port,
        None => take(false)?,
    };
    let serf_lan = take(true)?;
    let serf_wan = take(true)?;
    let server = take(false)?;
    Ok(DevAgentPorts {
        http,
        serf_lan,
        serf_wan,
        server,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_are_distinct() {
        let ports = pick_ports(None).unwrap();
        let mut all = vec![ports.http, ports.serf_lan, ports.serf_wan, ports.server];
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4, "{ports:?}");
        assert!(all.iter().all(|p| *p != 0));
        let fixed = pick_ports(Some(18500)).unwrap();
        assert_eq!(fixed.http, 18500);
        assert_ne!(fixed.serf_lan, 18500);
    }

    #[test]
    fn args_bind_loopback_and_disable_dns_and_grpc() {
        let ports = DevAgentPorts {
            http: 1,
            serf_lan: 2,
            serf_wan: 3,
            server: 4,
        };
        let options = DevAgentOptions::new("consul").with_arg("-log-level=warn");
        let args = agent_args(&options, &ports, "node-a").join(" ");
        assert_eq!(
            args,
            "agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port 1 -dns-port -1 \
             -grpc-port -1 -serf-lan-port 2 -serf-wan-port 3 -server-port 4 -node node-a \
             -log-level=warn"
        );
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let err = DevAgent::start(DevAgentOptions::new("/nonexistent/consul")).unwrap_err();
        assert!(matches!(err, ConsulError::Spawn { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn missing_binary_is_a_spawn_error_naming_it() {
        let err = DevAgent::start(DevAgentOptions::new("/nonexistent/consul")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/consul"), "{msg}");
        assert!(msg.contains("scripts/setup.sh"), "{msg}");
    }

    /// The race the retry is for: the ports picked for an agent are taken before it binds them
    /// (here by a running agent holding the very same ports). It must come up on new ones.
    #[tokio::test]
    async fn an_agent_whose_ports_were_taken_starts_on_new_ones() {
        let Ok(options) = DevAgentOptions::discover() else {
            eprintln!("skipped: no consul binary (run scripts/setup.sh)");
            return;
        };
        let first = DevAgent::start(options.clone()).unwrap();
        first.wait_ready(Duration::from_secs(30)).await.unwrap();
        // The second agent's first run gets the first agent's HTTP port (where the first agent
        // answers, as a stranger would): it cannot bind it.
        let taken = DevAgentPorts {
            http: first.ports().http,
            ..pick_ports(None).unwrap()
        };

        let second = DevAgent::start(options).unwrap();
        {
            let mut process = second.process();
            let child = spawn(&second.options, &taken, &second.node_name).unwrap();
            *process = Process {
                ports: taken,
                child: Some(child),
            };
        }
        second.wait_ready(Duration::from_secs(30)).await.unwrap();
        assert_ne!(second.ports().http, taken.http);
        let leader = second.client().unwrap().status_leader().await.unwrap();
        assert!(!leader.is_empty());
        // And the first agent is still the one on its own address.
        assert_eq!(first.ports().http, taken.http);
        first.client().unwrap().status_leader().await.unwrap();
    }
}
