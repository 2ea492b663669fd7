//! What the benches in `benches/` share (each bench has `mod support;` and uses a subset): the
//! release builds of the binaries under test, a Consul dev agent and polling it for passing
//! instances, spawning `priority` processes and killing them on drop, readings from `/proc` (CPU
//! ticks of a process and of the whole machine, `/proc/<pid>/status` fields, the machine
//! description), the load settings read from the environment, the closed-loop load runner with
//! its latency histograms and per-cell figures, the plain tonic channel and the `Score` call the
//! gRPC clients make, and small printing helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hdrhistogram::Histogram;
use protomesh::consul::{ConsulClient, DevAgent, DevAgentOptions, QueryOptions, ServiceEntry};
use protomesh_priority::proto::protomesh::priority::v1::{ScoreRequest, ScoreResponse};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

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

/// Microseconds per clock tick of `/proc/<pid>/stat` and `/proc/stat` (100 Hz on Linux).
pub const TICK_US: f64 = 10_000.0;
/// How long instances get to pass their Consul checks.
pub const PASSING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long workers get to finish their last call after the window; one still waiting then is
/// aborted and counted as an error (no per-call timer: it would add its own cost to every call).
pub const STRAGGLER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on calls per worker and cell (the window bounds them long before).
const MAX_CALLS_PER_WORKER: u64 = 100_000_000;
/// The package and binary of the priority service.
pub const PRIORITY: (&str, &str) = ("protomesh-priority", "priority");
/// The package and binary of the JSON/HTTP gateway.
pub const GATEWAY: (&str, &str) = ("protomesh-gateway", "gateway");

/// The repository root (the root package's manifest directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the release binaries, `(package, binary)` each, in one `cargo build`, and returns their
/// paths in the same order.
pub fn release_binaries<const N: usize>(targets: [(&str, &str); N]) -> [PathBuf; N] {
    let mut args = vec!["build", "--release"];
    for (package, binary) in targets {
        args.extend(["-p", package, "--bin", binary]);
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args(&args)
        .status()
        .expect("cargo runs");
    let bins: Vec<String> = targets.iter().map(|(_, b)| format!("--bin {b}")).collect();
    assert!(
        status.success(),
        "cargo build --release {} failed",
        bins.join(" ")
    );
    targets.map(|(_, binary)| root().join("target/release").join(binary))
}

/// Builds the `priority` release binary and returns its path.
pub fn release_priority() -> PathBuf {
    let [priority] = release_binaries([PRIORITY]);
    priority
}

/// Starts a Consul dev agent on free loopback ports, waits until it is ready, and returns it
/// (stopped when dropped) with a client for it.
pub async fn start_consul() -> (DevAgent, ConsulClient) {
    let binary = DevAgentOptions::find_binary().expect("consul not found: run scripts/setup.sh");
    let agent = DevAgent::start(DevAgentOptions::new(binary)).expect("consul starts");
    agent
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("consul ready");
    let client = agent.client().expect("client");
    (agent, client)
}

/// Polls Consul until `service` has exactly `n` passing instances, and returns them.
pub async fn wait_passing(consul: &ConsulClient, service: &str, n: usize) -> Vec<ServiceEntry> {
    let options = QueryOptions {
        passing: true,
        ..Default::default()
    };
    let deadline = Instant::now() + PASSING_TIMEOUT;
    loop {
        let entries = consul
            .health_service(service, &options)
            .await
            .map(|r| r.value)
            .unwrap_or_default();
        if entries.len() == n {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "{service}: {} passing instances, not {n}, after {PASSING_TIMEOUT:?}",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a `priority` process on a free loopback port, registering itself with the Consul agent
/// at `consul_http_addr`; its output is discarded.
pub fn spawn_priority(binary: &Path, consul_http_addr: &str) -> Child {
    Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("CONSUL_HTTP_ADDR", consul_http_addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("priority starts")
}

/// A file holding the test issuer's HS256 secret: services given it as
/// `PROTOMESH_JWT_SECRET_FILE` accept the test tokens (`protomesh::auth::testing::token`).
pub fn test_secret_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("protomesh-bench-secret-{}", std::process::id()));
    std::fs::write(&path, protomesh::auth::testing::TEST_SECRET).expect("secret file");
    path
}

/// A free loopback port (bound, then released for a server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts a `gateway` process listening on `addr`, routing the services registered with the
/// Consul agent at `consul_http_addr`, its log to `stderr`. Its public rate limit is far above
/// any load a bench offers: one client address sends every call.
pub fn spawn_gateway(
    binary: &Path,
    addr: std::net::SocketAddr,
    consul_http_addr: &str,
    stderr: Stdio,
) -> Child {
    Command::new(binary)
        .args([
            "--listen",
            &addr.to_string(),
            "--log-format",
            "json",
            "--rate-limit",
            "public=1000000/1s",
        ])
        .env("CONSUL_HTTP_ADDR", consul_http_addr)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("gateway starts")
}

/// The spawned processes; killed (and reaped) on drop, panics included.
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// utime + stime, in clock ticks, of `/proc/<who>/stat` (`who` is a pid or `self`).
pub fn cpu_ticks(who: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).expect("process alive");
    let after_name = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// utime + stime, in clock ticks, of process `pid`.
pub fn pid_ticks(pid: u32) -> u64 {
    cpu_ticks(&pid.to_string())
}

/// Busy clock ticks of the whole machine (all CPUs) from `/proc/stat`: user, nice, system, irq,
/// softirq and steal.
pub fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu = stat.lines().next().expect("cpu line");
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0))
        .sum()
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile` in KiB;
/// `Threads`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    status
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// KiB as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The CPU model, core count and kernel release, for the report.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

/// `met` or `MISSED`, for a target.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The closed-loop load settings read from the environment: `BENCH_WARMUP_SECS` (default 1),
/// `BENCH_SECS` (measured window per cell, default 3), `BENCH_CONCURRENCY` (default `1,64,512`).
#[derive(Debug, Clone)]
pub struct Load {
    pub warmup: Duration,
    pub window: Duration,
    pub concurrency: Vec<usize>,
}

impl Load {
    pub fn from_env() -> Self {
        let secs = |name: &str, default: f64| {
            let value = std::env::var(name)
                .ok()
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .unwrap_or_else(|_| panic!("{name}={v} is not a number of seconds"))
                })
                .unwrap_or(default);
            Duration::from_secs_f64(value.clamp(0.05, 600.0))
        };
        let concurrency = std::env::var("BENCH_CONCURRENCY")
            .unwrap_or_else(|_| "1,64,512".to_owned())
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<usize>()
                    .unwrap_or_else(|_| panic!("BENCH_CONCURRENCY: {c} is not a count"))
                    .clamp(1, 10_000)
            })
            .collect();
        Self {
            warmup: secs("BENCH_WARMUP_SECS", 1.0),
            window: secs("BENCH_SECS", 3.0),
            concurrency,
        }
    }

    /// The concurrency the targets use: 64, or the nearest asked for.
    pub fn reference_concurrency(&self) -> usize {
        self.concurrency
            .iter()
            .copied()
            .min_by_key(|c| c.abs_diff(64))
            .unwrap_or(64)
    }
}

/// A whole number from the environment variable `name`, `default` when it is unset; panics with
/// `expected` when it is not a number.
pub fn env_u64(name: &str, default: u64, expected: &str) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().parse::<u64>().expect(expected))
        .unwrap_or(default)
}

/// A latency histogram in nanoseconds, 1 ns to 60 s, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// A client the closed-loop workers call; each worker has its own clone.
pub trait Score: Clone + Send + 'static {
    /// One `Score` call: Ok only for the expected answer, else what went wrong.
    fn score(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// The `Score` request every gRPC call sends.
pub fn score_request() -> ScoreRequest {
    ScoreRequest {
        title: "t".into(),
        urgency: 9,
        impact: 8,
    }
}

/// Ok only for grpc-status OK with the expected score (72).
pub fn score_outcome(
    result: Result<tonic::Response<ScoreResponse>, tonic::Status>,
) -> Result<(), String> {
    match result {
        Ok(response) if response.get_ref().score == 72 => Ok(()),
        Ok(response) => Err(format!("wrong score {}", response.get_ref().score)),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// A plain tonic channel (TCP_NODELAY) to `127.0.0.1:port`, connected.
pub async fn plain_channel(port: u16) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("plain channel connects")
}

/// What the workers of one cell counted inside its measured window.
pub struct Tally {
    /// Latency of each counted successful call, in nanoseconds.
    pub latency: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// How long the window really lasted.
    pub window: Duration,
}

impl Tally {
    /// Successful calls counted.
    pub fn calls(&self) -> u64 {
        self.latency.len()
    }

    pub fn rate(&self) -> f64 {
        self.calls() as f64 / self.window.as_secs_f64()
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1_000.0
    }

    /// CPU microseconds per counted call of `ticks` clock ticks spent over the window.
    pub fn per_call_us(&self, ticks: u64) -> f64 {
        if self.calls() == 0 {
            return f64::NAN;
        }
        ticks as f64 * TICK_US / self.calls() as f64
    }

    /// Cores `ticks` clock ticks kept busy over the window, on average.
    pub fn cores(&self, ticks: u64) -> f64 {
        ticks as f64 * TICK_US / 1e6 / self.window.as_secs_f64()
    }
}

/// Runs `concurrency` closed-loop workers (each with a clone of `client`) for warm-up + window
/// and counts what completes inside the window. `before` runs when the window opens and `after`,
/// given what `before` returned, when it closes (readings over the window); `after`'s result is
/// returned with the tally.
pub async fn closed_loop<C: Score, B, A>(
    client: C,
    concurrency: usize,
    load: &Load,
    before: impl FnOnce() -> B,
    after: impl FnOnce(B) -> A,
) -> (Tally, A) {
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let until = measure_from + load.window;
    let workers: Vec<JoinHandle<Tally>> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut result = Tally {
                    latency: histogram(),
                    errors: 0,
                    first_error: None,
                    window: Duration::ZERO,
                };
                for _ in 0..MAX_CALLS_PER_WORKER {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let outcome = client.score().await;
                    let done = Instant::now();
                    if done < measure_from || done >= until {
                        continue;
                    }
                    match outcome {
                        Ok(()) => {
                            let nanos = u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX);
                            result.latency.saturating_record(nanos.max(1));
                        }
                        Err(err) => {
                            result.errors += 1;
                            result.first_error.get_or_insert(err);
                        }
                    }
                }
                result
            })
        })
        .collect();
    drop(client);

    tokio::time::sleep_until(measure_from).await;
    let readings = before();
    let measured = Instant::now();
    tokio::time::sleep_until(until).await;
    let readings = after(readings);
    let window = measured.elapsed();

    let mut tally = Tally {
        latency: histogram(),
        errors: 0,
        first_error: None,
        window,
    };
    let stragglers_until = Instant::now() + STRAGGLER_TIMEOUT;
    for mut worker in workers {
        match tokio::time::timeout_at(stragglers_until, &mut worker).await {
            Ok(result) => {
                let result = result.expect("worker finished");
                tally
                    .latency
                    .add(&result.latency)
                    .expect("same histogram bounds");
                tally.errors += result.errors;
                if tally.first_error.is_none() {
                    tally.first_error = result.first_error;
                }
            }
            Err(_) => {
                worker.abort();
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| {
                    format!("a call still unanswered {STRAGGLER_TIMEOUT:?} after the window")
                });
            }
        }
    }
    (tally, readings)
}

/// One line per cell with errors: `(scenario, concurrency, tally)` each.
pub fn print_errors<'a>(cells: impl IntoIterator<Item = (&'a str, usize, &'a Tally)>) {
    for (scenario, concurrency, tally) in cells {
        if tally.errors > 0 {
            println!(
                "errors in {scenario} conc {concurrency}: {} (first: {})",
                tally.errors,
                tally.first_error.as_deref().unwrap_or("?")
            );
        }
    }
}
