//! What the mesh client costs per call, next to a plain tonic channel, on the priority service's
//! `Score` call: (a) a plain `tonic::transport::Channel` to one instance, (b) the mesh channel when
//! Consul has that same single instance, (c) the mesh channel over three instances; each at
//! concurrency 1, 64 and 512 (closed loop: N tokio tasks each calling in turn), a warm-up and then
//! a measured window per cell, with fresh clients per cell. Reports req/s, p50/p99/p99.9 latency
//! (HdrHistogram), client CPU per call (this process's utime+stime from `/proc/self/stat`, so it
//! includes the tokio runtime's work), server CPU per call (the priority processes'
//! utime+stime), errors, the b/a and c/a ratios, and how much one slow endpoint among three
//! (behind an in-process TCP latency pipe that delays client→server bytes) raises p99. Each row
//! also shows the CPU the rest of the machine used during its window (`other cores`), since a
//! 2-core machine shared with other work gives noisy figures.
//!
//! `cargo bench --bench mesh_client` (release build of the `priority` binary, real Consul dev agent
//! on free loopback ports, servers as separate processes). Settings from the environment:
//! `BENCH_SECS` (measured window per cell, default 3), `BENCH_WARMUP_SECS` (default 1),
//! `BENCH_CONCURRENCY` (default `1,64,512`), `BENCH_SLOW_MS` (delay of the slow endpoint,
//! default 20), `BENCH_ONLY` (one scenario: `a`, `b`, `c` or `s`, for profiling). Quick smoke run: `BENCH_SECS=0.3 BENCH_WARMUP_SECS=0.2 cargo bench --bench
//! mesh_client`.
//!
//! Targets: b/a throughput ≥ 0.95 and added p99 ≤ 50 µs at concurrency 64; server CPU ≤ 15 µs
//! per `Score`; slow-endpoint p99 ratio ≤ 1.5.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use protomesh::client::Mesh;
use protomesh::consul::{
    CheckRegistration, ConsulClient, DevAgent, DevAgentOptions, QueryOptions, ServiceEntry,
    ServiceRegistration,
};
use protomesh::proto::protomesh::priority::v1::{
    priority_service_client::PriorityServiceClient, ScoreRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;

/// The gRPC service Consul checks on each instance.
const PRIORITY_GRPC: &str = "protomesh.priority.v1.PriorityService";
/// Service name for scenario (b): the first instance only.
const ONE: &str = "bench-priority-one";
/// Service name for scenario (c): all three instances.
const THREE: &str = "bench-priority-three";
/// Service name for the slow-endpoint run: two instances direct, the third behind the delay proxy.
const SLOW: &str = "bench-priority-slow";
/// Microseconds per clock tick of `/proc/<pid>/stat` (100 Hz on Linux).
const TICK_US: f64 = 10_000.0;
/// How long workers get to finish their last call after the window; one still waiting then is
/// aborted and counted as an error (no per-call timer: it would add its own cost to every call).
const STRAGGLER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on calls per worker and cell (the window bounds them long before).
const MAX_CALLS_PER_WORKER: u64 = 100_000_000;
/// Bound on connections the delay proxy accepts.
const MAX_PROXY_CONNECTIONS: usize = 100_000;
/// Bound on one proxied connection's life.
const MAX_PROXY_CONNECTION_LIFE: Duration = Duration::from_secs(3_600);
/// Chunks queued in the delay pipe before its reader waits.
const PIPE_CHUNKS: usize = 4_096;
/// How long instances get to pass their Consul checks.
const PASSING_TIMEOUT: Duration = Duration::from_secs(30);

/// What the run is told by the environment.
#[derive(Debug, Clone)]
struct Settings {
    warmup: Duration,
    window: Duration,
    concurrency: Vec<usize>,
    slow_delay: Duration,
}

impl Settings {
    fn from_env() -> Self {
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
        let slow_ms = std::env::var("BENCH_SLOW_MS")
            .ok()
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .expect("BENCH_SLOW_MS is milliseconds")
            })
            .unwrap_or(20);
        Self {
            warmup: secs("BENCH_WARMUP_SECS", 1.0),
            window: secs("BENCH_SECS", 3.0),
            concurrency,
            slow_delay: Duration::from_millis(slow_ms),
        }
    }

    /// The concurrency the targets and the slow-endpoint run use: 64, or the nearest asked for.
    fn reference_concurrency(&self) -> usize {
        self.concurrency
            .iter()
            .copied()
            .min_by_key(|c| c.abs_diff(64))
            .unwrap_or(64)
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn release_priority() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args([
            "build",
            "--release",
            "-p",
            "protomesh-priority",
            "--bin",
            "priority",
        ])
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "cargo build --release --bin priority failed"
    );
    root().join("target/release/priority")
}

/// utime + stime, in clock ticks, of `/proc/<who>/stat` (`who` is a pid or `self`).
fn cpu_ticks(who: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).expect("process alive");
    let after_name = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Busy clock ticks of the whole machine (all CPUs) from `/proc/stat`: user, nice, system, irq,
/// softirq and steal.
fn machine_busy_ticks() -> u64 {
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

fn servers_ticks(pids: &[u32]) -> u64 {
    pids.iter().map(|pid| cpu_ticks(&pid.to_string())).sum()
}

/// The spawned priority processes; killed (and reaped) on drop, panics included.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One priority process: its pid and the port Consul has for it.
#[derive(Debug, Clone, Copy)]
struct Instance {
    pid: u32,
    port: u16,
}

/// Polls Consul until `service` has exactly `n` passing instances, and returns them.
async fn wait_passing(consul: &ConsulClient, service: &str, n: usize) -> Vec<ServiceEntry> {
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

/// Registers `127.0.0.1:port` as an instance of `service`, with the same kind of gRPC check the
/// runtime registers for itself (see `src/server/registration.rs`).
async fn register(consul: &ConsulClient, service: &str, port: u16) {
    let target = format!("127.0.0.1:{port}");
    let check = CheckRegistration::grpc(
        format!("gRPC health of {PRIORITY_GRPC}"),
        format!("{target}/{PRIORITY_GRPC}"),
        Duration::from_secs(1),
    )
    .with_timeout(Duration::from_secs(1))
    .with_deregister_critical_service_after(Duration::from_secs(60));
    let registration = ServiceRegistration::new(format!("{service}-127.0.0.1-{port}"), service)
        .with_address("127.0.0.1", port)
        .with_tag("grpc")
        .with_check(check);
    consul
        .agent_service_register(&registration)
        .await
        .expect("registration accepted");
}

/// A TCP latency pipe: every chunk read from the client is written upstream `delay` after it was
/// read, in order (no throughput limit); the server→client direction is copied as is. Stopped
/// (with its connections) on drop.
struct DelayProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    async fn start(upstream: SocketAddr, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            for _ in 0..MAX_PROXY_CONNECTIONS {
                let Ok((inbound, _)) = listener.accept().await else {
                    break;
                };
                connections.spawn(tokio::time::timeout(
                    MAX_PROXY_CONNECTION_LIFE,
                    proxy_connection(inbound, upstream, delay),
                ));
                while connections.try_join_next().is_some() {}
            }
            while connections.join_next().await.is_some() {}
        });
        Self { addr, task }
    }
}

async fn proxy_connection(inbound: TcpStream, upstream: SocketAddr, delay: Duration) {
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let (queue, mut due) = tokio::sync::mpsc::channel::<(Instant, Bytes)>(PIPE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        // Ends at EOF or on an error; the connection's life bounds it.
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            if queue.send((Instant::now() + delay, chunk)).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if server_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let back = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(reader, writer, back);
}

/// The client under test: the same generated client over either channel.
#[derive(Clone)]
enum Client {
    Plain(PriorityServiceClient<Channel>),
    Mesh(PriorityServiceClient<protomesh::client::MeshChannel>),
}

impl Client {
    async fn plain(port: u16) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("plain channel connects");
        Self::Plain(PriorityServiceClient::new(channel))
    }

    /// Ok only for grpc-status OK with the expected score.
    async fn score(&mut self) -> Result<(), String> {
        let request = ScoreRequest {
            title: "t".into(),
            urgency: 9,
            impact: 8,
        };
        let result = match self {
            Self::Plain(client) => client.score(request).await,
            Self::Mesh(client) => client.score(request).await,
        };
        match result {
            Ok(response) if response.get_ref().score == 72 => Ok(()),
            Ok(response) => Err(format!("wrong score {}", response.get_ref().score)),
            Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// What one worker saw in the measured window.
struct WorkerResult {
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// What one cell measured.
struct Cell {
    scenario: &'static str,
    concurrency: usize,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    window: Duration,
    client_ticks: u64,
    server_ticks: u64,
    machine_ticks: u64,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.window.as_secs_f64()
    }

    fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1_000.0
    }

    fn per_call_us(&self, ticks: u64) -> f64 {
        if self.calls == 0 {
            return f64::NAN;
        }
        ticks as f64 * TICK_US / self.calls as f64
    }

    /// Cores busy with anything but this process and the priority servers during the window
    /// (other processes on the machine, the Consul agent): a sign of a noisy measurement.
    fn other_cores(&self) -> f64 {
        let other = self
            .machine_ticks
            .saturating_sub(self.client_ticks + self.server_ticks);
        other as f64 * TICK_US / 1e6 / self.window.as_secs_f64()
    }
}

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 60 s, 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Runs `concurrency` closed-loop workers for warm-up + window; counts what completes inside the
/// window.
async fn run_cell(
    scenario: &'static str,
    client: Client,
    concurrency: usize,
    settings: &Settings,
    server_pids: &[u32],
) -> Cell {
    let start = Instant::now();
    let measure_from = start + settings.warmup;
    let until = measure_from + settings.window;
    let workers: Vec<JoinHandle<WorkerResult>> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut result = WorkerResult {
                    latency: histogram(),
                    errors: 0,
                    first_error: None,
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
    let client_before = cpu_ticks("self");
    let servers_before = servers_ticks(server_pids);
    let machine_before = machine_busy_ticks();
    let measured = Instant::now();
    tokio::time::sleep_until(until).await;
    let client_ticks = cpu_ticks("self") - client_before;
    let server_ticks = servers_ticks(server_pids) - servers_before;
    let machine_ticks = machine_busy_ticks() - machine_before;
    let window = measured.elapsed();

    let mut latency = histogram();
    let (mut errors, mut first_error) = (0, None);
    let stragglers_until = Instant::now() + STRAGGLER_TIMEOUT;
    for mut worker in workers {
        match tokio::time::timeout_at(stragglers_until, &mut worker).await {
            Ok(result) => {
                let result = result.expect("worker finished");
                latency.add(&result.latency).expect("same histogram bounds");
                errors += result.errors;
                if first_error.is_none() {
                    first_error = result.first_error;
                }
            }
            Err(_) => {
                worker.abort();
                errors += 1;
                first_error.get_or_insert_with(|| {
                    format!("a call still unanswered {STRAGGLER_TIMEOUT:?} after the window")
                });
            }
        }
    }
    let cell = Cell {
        scenario,
        concurrency,
        calls: latency.len(),
        errors,
        first_error,
        latency,
        window,
        client_ticks,
        server_ticks,
        machine_ticks,
    };
    eprintln!(
        "mesh_client bench: {scenario} conc {concurrency}: {:.0} req/s, p99 {:.0} µs, {} errors",
        cell.rate(),
        cell.quantile_us(0.99),
        cell.errors
    );
    cell
}

fn machine() -> String {
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

fn print_report(settings: &Settings, cells: &[Cell], slow_share: Option<f64>) {
    let reference = settings.reference_concurrency();
    println!();
    println!("mesh client vs plain tonic channel: priority Score, release build");
    println!("machine: {}", machine());
    println!(
        "settings: warm-up {:?} + window {:?} per cell, closed-loop workers, fresh clients per cell; \
         slow endpoint +{:?} on client→server bytes; servers: 3 priority processes (tokio default runtime), \
         client: this process (tokio multi-thread, {} workers)",
        settings.warmup,
        settings.window,
        settings.slow_delay,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("scenarios: a = plain tonic Channel to instance 1; b = mesh channel, Consul has instance 1 only;");
    println!("           c = mesh channel over instances 1-3; s = mesh channel over instances 1, 2 and a slow proxy to 3");
    println!("client CPU is this process's (tokio runtime included; row s also carries the in-process delay proxy);");
    println!("other cores: CPU busy with anything else during the window (Consul, other processes): above ~0.1 the cell is noisy");
    println!();
    println!(
        "{:<10} {:>5} {:>10} {:>9} {:>9} {:>10} {:>14} {:>14} {:>7} {:>11}",
        "scenario",
        "conc",
        "req/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "client µs/call",
        "server µs/call",
        "errors",
        "other cores"
    );
    for cell in cells {
        println!(
            "{:<10} {:>5} {:>10.0} {:>9.0} {:>9.0} {:>10.0} {:>14.1} {:>14.1} {:>7} {:>11.2}",
            cell.scenario,
            cell.concurrency,
            cell.rate(),
            cell.quantile_us(0.5),
            cell.quantile_us(0.99),
            cell.quantile_us(0.999),
            cell.per_call_us(cell.client_ticks),
            cell.per_call_us(cell.server_ticks),
            cell.errors,
            cell.other_cores()
        );
    }
    for cell in cells.iter().filter(|c| c.errors > 0) {
        println!(
            "errors in {} conc {}: {} (first: {})",
            cell.scenario,
            cell.concurrency,
            cell.errors,
            cell.first_error.as_deref().unwrap_or("?")
        );
    }
    println!();
    let find = |scenario: &str, concurrency: usize| {
        cells
            .iter()
            .find(|c| c.scenario.starts_with(scenario) && c.concurrency == concurrency)
    };
    for (label, scenario) in [("b/a", "b"), ("c/a", "c")] {
        for &concurrency in &settings.concurrency {
            let (Some(a), Some(x)) = (find("a", concurrency), find(scenario, concurrency)) else {
                continue;
            };
            let ratio = x.rate() / a.rate();
            let added = x.quantile_us(0.99) - a.quantile_us(0.99);
            let target = if label == "b/a" && concurrency == reference {
                format!(
                    "   target ≥ 0.95 and ≤ 50 µs: {}",
                    if ratio >= 0.95 && added <= 50.0 {
                        "met"
                    } else {
                        "MISSED"
                    }
                )
            } else {
                String::new()
            };
            println!(
                "{label} conc {concurrency:>3}: throughput {ratio:.3}x, added p99 {added:+.0} µs{target}"
            );
        }
    }
    if let Some(a) = find("a", reference) {
        let server = a.per_call_us(a.server_ticks);
        println!(
            "server CPU per Score (a, conc {reference}, {} calls): {server:.1} µs   target ≤ 15 µs: {}",
            a.calls,
            if server <= 15.0 { "met" } else { "MISSED" }
        );
    }
    if let (Some(c), Some(s)) = (find("c", reference), find("s", reference)) {
        let ratio = s.quantile_us(0.99) / c.quantile_us(0.99);
        println!(
            "slow endpoint among three (conc {reference}): p99 {:.0} µs vs {:.0} µs without = {ratio:.2}x   target ≤ 1.5: {}",
            s.quantile_us(0.99),
            c.quantile_us(0.99),
            if ratio <= 1.5 { "met" } else { "MISSED" }
        );
        if let Some(share) = slow_share {
            println!(
                "  share of calls the balancer sent to the slow endpoint (warm-up included): {:.2}%",
                share * 100.0
            );
        }
    }
}

async fn run(binary: PathBuf, settings: Settings) {
    let consul_binary =
        DevAgentOptions::find_binary().expect("consul not found: run scripts/setup.sh");
    let agent = DevAgent::start(DevAgentOptions::new(consul_binary)).expect("consul starts");
    agent
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("consul ready");
    let consul = agent.client().expect("client");

    // Instances start one at a time, so that each new port in Consul belongs to the new pid.
    let mut children = Children::default();
    let mut instances: Vec<Instance> = Vec::new();
    for n in 1..=3 {
        let child = Command::new(&binary)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .env("CONSUL_HTTP_ADDR", agent.http_addr())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("priority starts");
        let pid = child.id();
        children.0.push(child);
        let entries = wait_passing(&consul, "priority", n).await;
        let port = entries
            .iter()
            .map(|e| e.service.port)
            .find(|p| instances.iter().all(|i| i.port != *p))
            .expect("a new instance in Consul");
        instances.push(Instance { pid, port });
    }
    let pids: Vec<u32> = instances.iter().map(|i| i.pid).collect();

    // One service name per scenario, so that each mesh channel sees exactly its instances.
    register(&consul, ONE, instances[0].port).await;
    for instance in &instances {
        register(&consul, THREE, instance.port).await;
    }
    let upstream: SocketAddr = format!("127.0.0.1:{}", instances[2].port)
        .parse()
        .expect("address");
    let proxy = DelayProxy::start(upstream, settings.slow_delay).await;
    register(&consul, SLOW, instances[0].port).await;
    register(&consul, SLOW, instances[1].port).await;
    register(&consul, SLOW, proxy.addr.port()).await;
    wait_passing(&consul, ONE, 1).await;
    wait_passing(&consul, THREE, 3).await;
    wait_passing(&consul, SLOW, 3).await;

    eprintln!("mesh_client bench: 3 instances passing under every scenario name; measuring");
    let reference = settings.reference_concurrency();
    let mut cells = Vec::new();
    let mut slow_share = None;
    // `BENCH_ONLY=a` (or b, c, s) runs one scenario alone, for profiling.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |scenario: &str| only.as_deref().is_none_or(|o| scenario.starts_with(o));
    for &concurrency in &settings.concurrency {
        if wanted("a") {
            let plain = Client::plain(instances[0].port).await;
            cells.push(run_cell("a plain", plain, concurrency, &settings, &pids).await);
        }

        if wanted("b") {
            let mesh = Mesh::from_consul(consul.clone()).expect("mesh");
            let one = Client::Mesh(PriorityServiceClient::new(mesh.channel(ONE)));
            cells.push(run_cell("b mesh x1", one, concurrency, &settings, &pids).await);
        }

        if wanted("c") {
            let mesh = Mesh::from_consul(consul.clone()).expect("mesh");
            let three = Client::Mesh(PriorityServiceClient::new(mesh.channel(THREE)));
            cells.push(run_cell("c mesh x3", three, concurrency, &settings, &pids).await);
        }

        if concurrency == reference && wanted("s") {
            let mesh = Mesh::from_consul(consul.clone()).expect("mesh");
            let slow = Client::Mesh(PriorityServiceClient::new(mesh.channel(SLOW)));
            cells.push(run_cell("s 1 slow", slow, concurrency, &settings, &pids).await);
            let slow_port = proxy.addr.port().to_string();
            let snapshot = mesh
                .balancers()
                .into_iter()
                .next()
                .map(|b| b.snapshot())
                .unwrap_or_default();
            let total: u64 = snapshot.iter().map(|e| e.requests).sum();
            let to_slow: u64 = snapshot
                .iter()
                .filter(|e| e.address.ends_with(&format!(":{slow_port}")))
                .map(|e| e.requests)
                .sum();
            if total > 0 {
                slow_share = Some(to_slow as f64 / total as f64);
            }
        }
    }

    print_report(&settings, &cells, slow_share);
    drop(proxy);
    drop(children);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks harness=false benches to list; nothing to list
    }
    let settings = Settings::from_env();
    let binary = release_priority();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(binary, settings));
}
