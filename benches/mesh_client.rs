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
//! default 20), `BENCH_ONLY` (one scenario: `a`, `b`, `c` or `s`, for profiling),
//! `BENCH_H2_KEEPALIVE_MS` (HTTP/2 keep-alive ping interval of the mesh channels, default 0: off). Quick smoke run: `BENCH_SECS=0.3 BENCH_WARMUP_SECS=0.2 cargo bench --bench
//! mesh_client`.
//!
//! Targets: b/a throughput ≥ 0.95 and added p99 ≤ 50 µs at concurrency 64; server CPU ≤ 15 µs
//! per `Score`; slow-endpoint p99 ratio ≤ 1.5.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use protomesh::client::{ChannelOptions, Mesh};
use protomesh::consul::{CheckRegistration, ConsulClient, ServiceRegistration};
use protomesh_priority::proto::protomesh::priority::v1::priority_service_client::PriorityServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;

mod support;

use support::{
    closed_loop, cpu_ticks, env_u64, machine, machine_busy_ticks, pid_ticks, plain_channel,
    print_errors, release_priority, score_outcome, score_request, spawn_priority, start_consul,
    verdict, wait_passing, Children, Load, Tally,
};

/// The gRPC service Consul checks on each instance.
const PRIORITY_GRPC: &str = "protomesh.priority.v1.PriorityService";
/// Service name for scenario (b): the first instance only.
const ONE: &str = "bench-priority-one";
/// Service name for scenario (c): all three instances.
const THREE: &str = "bench-priority-three";
/// Service name for the slow-endpoint run: two instances direct, the third behind the delay proxy.
const SLOW: &str = "bench-priority-slow";
/// Bound on connections the delay proxy accepts.
const MAX_PROXY_CONNECTIONS: usize = 100_000;
/// Bound on one proxied connection's life.
const MAX_PROXY_CONNECTION_LIFE: Duration = Duration::from_secs(3_600);
/// Chunks queued in the delay pipe before its reader waits.
const PIPE_CHUNKS: usize = 4_096;

/// The mesh channels' options: the defaults, with `BENCH_H2_KEEPALIVE_MS` pings if set.
fn channel_options() -> ChannelOptions {
    let keep_alive = env_u64(
        "BENCH_H2_KEEPALIVE_MS",
        0,
        "BENCH_H2_KEEPALIVE_MS is milliseconds",
    );
    ChannelOptions {
        http2_keep_alive: (keep_alive > 0).then(|| Duration::from_millis(keep_alive)),
        ..ChannelOptions::default()
    }
}

/// What the run is told by the environment.
#[derive(Debug, Clone)]
struct Settings {
    load: Load,
    slow_delay: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let load = Load::from_env();
        let slow_ms = env_u64("BENCH_SLOW_MS", 20, "BENCH_SLOW_MS is milliseconds");
        Self {
            load,
            slow_delay: Duration::from_millis(slow_ms),
        }
    }
}

fn servers_ticks(pids: &[u32]) -> u64 {
    pids.iter().map(|&pid| pid_ticks(pid)).sum()
}

/// One priority process: its pid and the port Consul has for it.
#[derive(Debug, Clone, Copy)]
struct Instance {
    pid: u32,
    port: u16,
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
        Self::Plain(PriorityServiceClient::new(plain_channel(port).await))
    }
}

impl support::Score for Client {
    async fn score(&mut self) -> Result<(), String> {
        let request = score_request();
        let result = match self {
            Self::Plain(client) => client.score(request).await,
            Self::Mesh(client) => client.score(request).await,
        };
        score_outcome(result)
    }
}

/// What one cell measured.
struct Cell {
    scenario: &'static str,
    concurrency: usize,
    tally: Tally,
    client_ticks: u64,
    server_ticks: u64,
    machine_ticks: u64,
}

impl Cell {
    /// Cores busy with anything but this process and the priority servers during the window
    /// (other processes on the machine, the Consul agent): a sign of a noisy measurement.
    fn other_cores(&self) -> f64 {
        let other = self
            .machine_ticks
            .saturating_sub(self.client_ticks + self.server_ticks);
        self.tally.cores(other)
    }
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
    let (tally, (client_ticks, server_ticks, machine_ticks)) = closed_loop(
        client,
        concurrency,
        &settings.load,
        || {
            (
                cpu_ticks("self"),
                servers_ticks(server_pids),
                machine_busy_ticks(),
            )
        },
        |(client_before, servers_before, machine_before)| {
            (
                cpu_ticks("self") - client_before,
                servers_ticks(server_pids) - servers_before,
                machine_busy_ticks() - machine_before,
            )
        },
    )
    .await;
    let cell = Cell {
        scenario,
        concurrency,
        tally,
        client_ticks,
        server_ticks,
        machine_ticks,
    };
    eprintln!(
        "mesh_client bench: {scenario} conc {concurrency}: {:.0} req/s, p99 {:.0} µs, {} errors",
        cell.tally.rate(),
        cell.tally.quantile_us(0.99),
        cell.tally.errors
    );
    cell
}

fn print_report(settings: &Settings, cells: &[Cell], slow_share: Option<f64>) {
    let reference = settings.load.reference_concurrency();
    println!();
    println!("mesh client vs plain tonic channel: priority Score, release build");
    println!("machine: {}", machine());
    println!(
        "settings: warm-up {:?} + window {:?} per cell, closed-loop workers, fresh clients per cell; \
         slow endpoint +{:?} on client→server bytes; servers: 3 priority processes (tokio default runtime), \
         client: this process (tokio multi-thread, {} workers)",
        settings.load.warmup,
        settings.load.window,
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
            cell.tally.rate(),
            cell.tally.quantile_us(0.5),
            cell.tally.quantile_us(0.99),
            cell.tally.quantile_us(0.999),
            cell.tally.per_call_us(cell.client_ticks),
            cell.tally.per_call_us(cell.server_ticks),
            cell.tally.errors,
            cell.other_cores()
        );
    }
    print_errors(cells.iter().map(|c| (c.scenario, c.concurrency, &c.tally)));
    println!();
    let find = |scenario: &str, concurrency: usize| {
        cells
            .iter()
            .find(|c| c.scenario.starts_with(scenario) && c.concurrency == concurrency)
    };
    for (label, scenario) in [("b/a", "b"), ("c/a", "c")] {
        for &concurrency in &settings.load.concurrency {
            let (Some(a), Some(x)) = (find("a", concurrency), find(scenario, concurrency)) else {
                continue;
            };
            let ratio = x.tally.rate() / a.tally.rate();
            let added = x.tally.quantile_us(0.99) - a.tally.quantile_us(0.99);
            let target = if label == "b/a" && concurrency == reference {
                format!(
                    "   target ≥ 0.95 and ≤ 50 µs: {}",
                    verdict(ratio >= 0.95 && added <= 50.0)
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
        let server = a.tally.per_call_us(a.server_ticks);
        println!(
            "server CPU per Score (a, conc {reference}, {} calls): {server:.1} µs   target ≤ 15 µs: {}",
            a.tally.calls(),
            verdict(server <= 15.0)
        );
    }
    if let (Some(c), Some(s)) = (find("c", reference), find("s", reference)) {
        let ratio = s.tally.quantile_us(0.99) / c.tally.quantile_us(0.99);
        println!(
            "slow endpoint among three (conc {reference}): p99 {:.0} µs vs {:.0} µs without = {ratio:.2}x   target ≤ 1.5: {}",
            s.tally.quantile_us(0.99),
            c.tally.quantile_us(0.99),
            verdict(ratio <= 1.5)
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
    let (agent, consul) = start_consul().await;

    // Instances start one at a time, so that each new port in Consul belongs to the new pid.
    let mut children = Children::default();
    let mut instances: Vec<Instance> = Vec::new();
    for n in 1..=3 {
        let child = spawn_priority(&binary, &agent.http_addr());
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
    let reference = settings.load.reference_concurrency();
    let mut cells = Vec::new();
    let mut slow_share = None;
    // `BENCH_ONLY=a` (or b, c, s) runs one scenario alone, for profiling.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |scenario: &str| only.as_deref().is_none_or(|o| scenario.starts_with(o));
    for &concurrency in &settings.load.concurrency {
        if wanted("a") {
            let plain = Client::plain(instances[0].port).await;
            cells.push(run_cell("a plain", plain, concurrency, &settings, &pids).await);
        }

        if wanted("b") {
            let mesh = Mesh::from_consul(consul.clone(), support::DESCRIPTORS).expect("mesh");
            let one = Client::Mesh(PriorityServiceClient::new(
                mesh.channel_with(ONE, channel_options()),
            ));
            cells.push(run_cell("b mesh x1", one, concurrency, &settings, &pids).await);
        }

        if wanted("c") {
            let mesh = Mesh::from_consul(consul.clone(), support::DESCRIPTORS).expect("mesh");
            let three = Client::Mesh(PriorityServiceClient::new(
                mesh.channel_with(THREE, channel_options()),
            ));
            cells.push(run_cell("c mesh x3", three, concurrency, &settings, &pids).await);
        }

        if concurrency == reference && wanted("s") {
            let mesh = Mesh::from_consul(consul.clone(), support::DESCRIPTORS).expect("mesh");
            let slow = Client::Mesh(PriorityServiceClient::new(
                mesh.channel_with(SLOW, channel_options()),
            ));
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
