//! Helpers shared by the integration tests: find or build the binaries, start a private Consul dev
//! agent on free ports, start service processes (killed on drop), run grpcurl, and poll for a
//! condition with a deadline instead of sleeping; [`mesh`]: a private mesh of real services.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

/// The descriptor sets of the workspace's services (each service crate owns its protos'), for
/// mesh clients that call them.
pub const DESCRIPTORS: &[&[u8]] = &[
    protomesh_priority::proto::FILE_DESCRIPTOR_SET,
    protomesh_probe::proto::FILE_DESCRIPTOR_SET,
    protomesh_tasks::proto::FILE_DESCRIPTOR_SET,
    protomesh_timetrack::proto::FILE_DESCRIPTOR_SET,
    protomesh_analytics::proto::FILE_DESCRIPTOR_SET,
    protomesh_users::proto::FILE_DESCRIPTOR_SET,
];

pub mod http;
pub mod mesh;
pub mod webdriver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protomesh::client::MeshChannel;
use protomesh::consul::{ConsulClient, DevAgent, DevAgentOptions, QueryOptions, ServiceEntry};
use protomesh_mesh::ServiceProcess;
use protomesh_priority::proto::protomesh::priority::v1::{
    priority_service_client::PriorityServiceClient, ScoreRequest,
};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>` of this test binary (`target/debug/deps/<test>` → `target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

static BUILD: Mutex<()> = Mutex::new(());

/// Heavy failure tests of one test binary, one at a time: each runs Consul, several instances
/// and a crowd of callers, and the failures they test are timed; two at once on the machine's
/// two shared cores would measure the machine (calls slow enough to be abandoned), not the mesh.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Path of a workspace binary, built first if it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.is_file() {
        let profile = target_dir()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // Service crates are named `protomesh-<binary>` (see README, "Adding a service").
        let package = format!("protomesh-{name}");
        cmd.current_dir(repo_root())
            .args(["build", "-p", &package, "--bin", name]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// A tool from `.tools/bin` (installed by scripts/setup.sh), or from PATH.
pub fn tool(name: &str) -> PathBuf {
    let local = repo_root().join(".tools/bin").join(name);
    if local.exists() {
        return local;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} not found: run scripts/setup.sh"))
}

/// A private Consul dev agent on free loopback ports, killed on drop.
pub struct Consul {
    pub agent: DevAgent,
    pub client: ConsulClient,
}

impl Consul {
    pub async fn start() -> Self {
        let log = tempdir().join("consul.log");
        let agent = DevAgent::start(DevAgentOptions {
            binary: tool("consul"),
            http_port: None,
            node_name: None,
            log_file: Some(log),
            extra_args: Vec::new(),
        })
        .unwrap();
        agent.wait_ready(Duration::from_secs(30)).await.unwrap();
        let client = agent.client().unwrap();
        Self { agent, client }
    }

    pub fn addr(&self) -> String {
        self.agent.http_addr()
    }

    /// Instances of `service` Consul reports (all, or passing only).
    pub async fn instances(&self, service: &str, passing: bool) -> Vec<ServiceEntry> {
        let opts = QueryOptions {
            passing,
            ..Default::default()
        };
        match self.client.health_service(service, &opts).await {
            Ok(response) => response.value,
            Err(_) => Vec::new(),
        }
    }
}

/// A unique name for a service in one test (Consul is private per test, but names in logs help).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port free a moment ago (for a process that must be told its port up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh folder under the system temp dir.
pub fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("protomesh-test"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file holding the test issuer's HS256 secret ([`protomesh::auth::testing::TEST_SECRET`]):
/// processes given it as `PROTOMESH_JWT_SECRET_FILE` accept the test tokens
/// ([`protomesh::auth::testing::token`]) and need no users service.
pub fn test_secret_file() -> String {
    let path = tempdir().join("jwt-secret");
    std::fs::write(&path, protomesh::auth::testing::TEST_SECRET).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Starts the `priority` binary registered with `consul_addr`, listening on a port it picks.
pub fn spawn_priority(consul_addr: &str, extra_args: &[&str]) -> ServiceProcess {
    spawn_service("priority", consul_addr, extra_args)
}

/// Starts the service binary `name` registered with `consul_addr`, listening on a port it picks.
pub fn spawn_service(name: &str, consul_addr: &str, extra_args: &[&str]) -> ServiceProcess {
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    args.extend(extra_args.iter().map(|s| (*s).to_owned()));
    ServiceProcess::spawn(
        unique(name),
        &binary(name),
        &args,
        &[
            ("CONSUL_HTTP_ADDR".into(), consul_addr.into()),
            ("PROTOMESH_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
        ],
        tempdir().join(format!("{name}.log")),
    )
    .unwrap()
}

/// Polls for a condition with a deadline (shared with every crate's tests).
pub use protomesh::testing::eventually;

/// A gRPC request carrying `authorization: Bearer token`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Runs grpcurl with `args` (plaintext is up to the caller).
pub fn grpcurl(args: &[&str]) -> Output {
    Command::new(tool("grpcurl")).args(args).output().unwrap()
}

/// The Score request the load and the tests send (score 72).
pub fn score_request() -> ScoreRequest {
    ScoreRequest {
        title: "t".into(),
        urgency: 9,
        impact: 8,
    }
}

/// Keeps `workers` callers calling until stopped; counts calls and failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
    pub failures: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` callers scoring through `channel`.
    pub fn start(channel: &MeshChannel, workers: usize) -> Self {
        Self::run(workers, || {
            let client = PriorityServiceClient::new(channel.clone());
            move || {
                let mut client = client.clone();
                async move {
                    client
                        .score(score_request())
                        .await
                        .map(drop)
                        .map_err(|status| format!("{status:?}"))
                }
            }
        })
    }

    /// `workers` callers, each made by `new_caller`, calling one call after another (an `Err`
    /// is a failed call, printed).
    pub fn run<C, F>(workers: usize, new_caller: impl Fn() -> C) -> Self
    where
        C: FnMut() -> F + Send + 'static,
        F: std::future::Future<Output = Result<(), String>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|_| {
                let mut call = new_caller();
                let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
                tokio::spawn(async move {
                    // Bounded in count as well as by the stop flag.
                    for _ in 0..2_000_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        calls.fetch_add(1, Ordering::Relaxed);
                        if let Err(failure) = call().await {
                            eprintln!("call failed: {failure}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            calls,
            failures,
            workers,
        }
    }

    /// Stops the callers; returns (calls, failures).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        (
            self.calls.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

/// The JSON log lines of `process` so far.
pub fn log_lines(process: &ServiceProcess) -> Vec<serde_json::Value> {
    std::fs::read_to_string(process.log_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The gateway's address, from its "listening" log line.
pub async fn gateway_addr(gateway: &ServiceProcess) -> SocketAddr {
    eventually(Duration::from_secs(30), "the gateway listening", || async {
        log_lines(gateway).iter().find_map(|line| {
            (line["message"] == "gateway listening (HTTP/1.1 and h2c)")
                .then(|| line["addr"].as_str()?.parse().ok())?
        })
    })
    .await
}
