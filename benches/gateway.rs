//! What the JSON/HTTP gateway costs per call, next to calling the service directly, on the
//! priority service's `Score`: (d) a plain tonic `PriorityServiceClient` over a
//! `tonic::transport::Channel` to the one priority instance, and (g) the same call through the
//! `gateway` process, `POST /v1/priority:score` with `{"title":"t","urgency":9,"impact":8}` over
//! HTTP/1.1 keep-alive connections (hyper-util's legacy client, pooled, idle pool ≥ concurrency);
//! each at concurrency 1, 64 and 512 (closed loop: N tokio tasks each calling in turn), a warm-up
//! and then a measured window per cell, with fresh clients per cell. Both hit the same single
//! priority instance. A call counts only when it returns score 72 (gRPC OK, or HTTP 200 with
//! `"score":72` in the JSON body). Reports req/s, p50/p99/p99.9 latency (HdrHistogram), errors,
//! CPU per call of this process (the load generator), of the gateway and of the priority server
//! (utime+stime from `/proc/<pid>/stat`), the gateway's RSS (`VmRSS`) at the end of each gateway
//! cell, and the g/d throughput ratio and added p99 (g − d) per concurrency.
//!
//! It also measures the gateway's memory: idle (routes loaded, 2 s later, before any traffic),
//! after the load cells, and while holding 10,000 idle keep-alive HTTP/1.1 connections (each has
//! sent one complete `Score` request and read the whole answer, then stays open; RSS read 2 s
//! after the last one opened). Those connections need file descriptors in this process and in the
//! gateway, which inherits this process's `RLIMIT_NOFILE`: the soft limit is read from
//! `/proc/self/limits` (it cannot be raised from here without `nix`'s `resource` feature), and
//! when it is below connections + 100 the run opens `limit − 100` connections and says so.
//!
//! `cargo bench --bench gateway` (release build of the `priority` and `gateway` binaries, real
//! Consul dev agent on free loopback ports, servers as separate processes; all traffic on
//! 127.0.0.1). Settings from the environment: `BENCH_SECS` (measured window per cell, default 3),
//! `BENCH_WARMUP_SECS` (default 1), `BENCH_CONCURRENCY` (default `1,64,512`),
//! `BENCH_CONNECTIONS` (idle keep-alive connections for the memory figure, default 10000; 0 skips
//! it), `BENCH_ONLY` (one scenario: `d` or `g`, for profiling). Quick smoke run:
//! `BENCH_SECS=0.3 BENCH_WARMUP_SECS=0.2 BENCH_CONNECTIONS=500 cargo bench --bench gateway`.
//!
//! Targets: g/d throughput ≥ 0.7; added p99 ≤ 1 ms at concurrency 64; gateway RSS ≤ 10 MiB idle
//! and ≤ 120 MiB holding 10,000 idle keep-alive connections (Go grpc-gateway idles at ~9 MiB).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use protomesh_priority::proto::protomesh::priority::v1::priority_service_client::PriorityServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::Channel;

mod support;

use support::{
    closed_loop, cpu_ticks, env_u64, free_port, machine, machine_busy_ticks, mib, pid_ticks,
    plain_channel, print_errors, proc_status, release_binaries, score_outcome, score_request,
    spawn_gateway, spawn_priority, start_consul, verdict, wait_passing, Children, Load, Tally,
    GATEWAY, PRIORITY,
};

/// The JSON body of every gateway call.
const BODY: &str = r#"{"title":"t","urgency":9,"impact":8}"#;
/// The path the priority service's `Score` is bound to (`google.api.http`).
const SCORE_PATH: &str = "/v1/priority:score";
/// The gRPC method `/routes` must list before the run starts.
const SCORE_METHOD: &str = "protomesh.priority.v1.PriorityService.Score";
/// How long the gateway gets to list the priority routes.
const ROUTES_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time before each memory reading.
const SETTLE: Duration = Duration::from_secs(2);
/// File descriptors left to everything else when the connection count is cut to the limit.
const FD_RESERVE: u64 = 100;
/// Idle connections opened at once (the gateway's accept backlog is 1024).
const OPEN_IN_FLIGHT: usize = 256;
/// Bound on opening one idle connection (connect, request, whole answer).
const OPEN_ONE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on opening all of them.
const OPEN_ALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer read on an idle connection.
const MAX_ANSWER: usize = 64 * 1024;

/// What the run is told by the environment.
#[derive(Debug, Clone)]
struct Settings {
    load: Load,
    connections: u64,
}

impl Settings {
    fn from_env() -> Self {
        let load = Load::from_env();
        let connections =
            env_u64("BENCH_CONNECTIONS", 10_000, "BENCH_CONNECTIONS is a count").min(50_000);
        Self { load, connections }
    }
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The soft and hard `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (`None` for
/// unlimited).
fn nofile_limits() -> (Option<u64>, Option<u64>) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse::<u64>().ok());
    let soft = values.next().flatten();
    let hard = values.next().flatten();
    (soft, hard)
}

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client keeping up to `idle` connections per host for reuse.
fn http_client(idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// The last lines of the gateway's log, for a failure message.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Polls `GET /routes` until it lists the priority `Score` route.
async fn wait_routes(gateway: &mut Child, addr: SocketAddr, log: &Path) {
    let client = http_client(1);
    let uri: http::Uri = format!("http://{addr}/routes").parse().expect("uri");
    let deadline = Instant::now() + ROUTES_TIMEOUT;
    loop {
        if let Ok(Some(status)) = gateway.try_wait() {
            panic!("the gateway exited ({status}); log:\n{}", log_tail(log));
        }
        let request = http::Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .expect("request");
        let last = match client.request(request).await {
            Ok(response) => {
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let routes: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let listed = routes["routes"].as_array().is_some_and(|routes| {
                    routes.iter().any(|r| {
                        r["grpc_method"] == SCORE_METHOD
                            && r["path"].as_str().is_some_and(|p| p.contains("priority"))
                    })
                });
                if status == http::StatusCode::OK && listed {
                    return;
                }
                format!("{status}: {}", String::from_utf8_lossy(&body))
            }
            Err(err) => format!("{err:?}"),
        };
        assert!(
            Instant::now() < deadline,
            "the gateway did not list {SCORE_METHOD} within {ROUTES_TIMEOUT:?}; last /routes: {last}; log:\n{}",
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a JSON answer says `"score": 72` (the bytes the gateway writes, else parsed).
fn has_score_72(body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"score\":72";
    let exact = body
        .windows(NEEDLE.len())
        .position(|w| w == NEEDLE)
        .is_some_and(|at| !body.get(at + NEEDLE.len()).is_some_and(u8::is_ascii_digit));
    exact
        || serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("score")?.as_i64())
            == Some(72)
}

/// The client under test.
// Cloned once per worker, never moved per call: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Client {
    Direct(PriorityServiceClient<Channel>),
    Gateway { client: HttpClient, uri: http::Uri },
}

impl Client {
    async fn direct(port: u16) -> Self {
        Self::Direct(PriorityServiceClient::new(plain_channel(port).await))
    }

    fn gateway(addr: SocketAddr, concurrency: usize) -> Self {
        Self::Gateway {
            client: http_client(concurrency),
            uri: format!("http://{addr}{SCORE_PATH}").parse().expect("uri"),
        }
    }
}

impl support::Score for Client {
    /// Ok only for the expected score: gRPC OK, or HTTP 200 with `"score":72`.
    async fn score(&mut self) -> Result<(), String> {
        match self {
            Self::Direct(client) => score_outcome(client.score(score_request()).await),
            Self::Gateway { client, uri } => {
                let request = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                    .expect("request");
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("reading the body: {e}"))?
                    .to_bytes();
                if status == http::StatusCode::OK && has_score_72(&body) {
                    Ok(())
                } else {
                    Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                }
            }
        }
    }
}

/// The processes whose CPU and memory a cell reads.
#[derive(Debug, Clone, Copy)]
struct Pids {
    gateway: u32,
    server: u32,
}

/// What one cell measured.
struct Cell {
    scenario: &'static str,
    concurrency: usize,
    tally: Tally,
    bench_ticks: u64,
    gateway_ticks: u64,
    server_ticks: u64,
    machine_ticks: u64,
    /// The gateway's VmRSS (KiB) at the end of the window, for gateway cells.
    gateway_rss_kib: Option<u64>,
}

impl Cell {
    /// Cores busy with anything but this process, the gateway and the priority server during the
    /// window (other processes on the machine, the Consul agent): a sign of a noisy measurement.
    fn other_cores(&self) -> f64 {
        let other = self
            .machine_ticks
            .saturating_sub(self.bench_ticks + self.gateway_ticks + self.server_ticks);
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
    pids: Pids,
) -> Cell {
    let through_gateway = matches!(client, Client::Gateway { .. });
    let (tally, (bench_ticks, gateway_ticks, server_ticks, machine_ticks, gateway_rss_kib)) =
        closed_loop(
            client,
            concurrency,
            &settings.load,
            || {
                (
                    cpu_ticks("self"),
                    pid_ticks(pids.gateway),
                    pid_ticks(pids.server),
                    machine_busy_ticks(),
                )
            },
            |(bench_before, gateway_before, server_before, machine_before)| {
                (
                    cpu_ticks("self") - bench_before,
                    pid_ticks(pids.gateway) - gateway_before,
                    pid_ticks(pids.server) - server_before,
                    machine_busy_ticks() - machine_before,
                    through_gateway.then(|| proc_status(pids.gateway, "VmRSS")),
                )
            },
        )
        .await;
    let cell = Cell {
        scenario,
        concurrency,
        tally,
        bench_ticks,
        gateway_ticks,
        server_ticks,
        machine_ticks,
        gateway_rss_kib,
    };
    eprintln!(
        "gateway bench: {scenario} conc {concurrency}: {:.0} req/s, p99 {:.0} µs, {} errors",
        cell.tally.rate(),
        cell.tally.quantile_us(0.99),
        cell.tally.errors
    );
    cell
}

/// One raw keep-alive `Score` request, as a client would send it.
fn raw_request() -> Vec<u8> {
    format!(
        "POST {SCORE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// Opens one connection to the gateway, sends one complete keep-alive request, reads the whole
/// answer (status line, headers, `Content-Length` body) and returns the still-open connection.
async fn open_idle_connection(addr: SocketAddr, request: &[u8]) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::with_capacity(512);
    while answer.len() <= MAX_ANSWER {
        let n = stream
            .read_buf(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed by the gateway after {} bytes: {}",
                answer.len(),
                String::from_utf8_lossy(&answer)
            ));
        }
        let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&answer[..head_end]).into_owned();
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
        let body_start = head_end + 4;
        if answer.len() < body_start + length {
            continue;
        }
        let status_ok = head.starts_with("HTTP/1.1 200");
        let body = &answer[body_start..body_start + length];
        if !status_ok || !has_score_72(body) {
            return Err(format!("{head:?} {}", String::from_utf8_lossy(body)));
        }
        return Ok(stream);
    }
    Err(format!("answer over {MAX_ANSWER} bytes"))
}

/// What holding many idle keep-alive connections did to the gateway.
struct Connections {
    wanted: u64,
    attempted: u64,
    opened: usize,
    failed: usize,
    first_failure: Option<String>,
    open_time: Duration,
    limit_note: Option<String>,
    rss_before_kib: u64,
    rss_holding_kib: u64,
    hwm_holding_kib: u64,
    threads_holding: u64,
    fds_holding: usize,
    still_open: usize,
    rss_after_close_kib: u64,
    fds_after_close: usize,
}

/// How many connections the file-descriptor limit allows, and a note when it cuts the count.
fn connections_allowed(wanted: u64) -> (u64, Option<String>) {
    let (soft, hard) = nofile_limits();
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    match soft {
        Some(soft) if soft < wanted + FD_RESERVE => {
            let allowed = soft.saturating_sub(FD_RESERVE);
            (
                allowed,
                Some(format!(
                    "RLIMIT_NOFILE soft limit is {soft} (hard {}), inherited by the gateway: measured with {allowed} connections, not {wanted} (raise it with `ulimit -n {}` before `cargo bench`)",
                    show(hard),
                    wanted + FD_RESERVE
                )),
            )
        }
        _ => (wanted, None),
    }
}

async fn hold_connections(addr: SocketAddr, gateway_pid: u32, wanted: u64) -> Connections {
    let (attempted, limit_note) = connections_allowed(wanted);
    if let Some(note) = &limit_note {
        eprintln!("gateway bench: {note}");
    }
    let rss_before_kib = proc_status(gateway_pid, "VmRSS");
    let request = raw_request();
    let started = Instant::now();
    let deadline = started + OPEN_ALL_TIMEOUT;
    let mut opening = futures::stream::iter(0..attempted)
        .map(|_| {
            let request = &request;
            async move {
                tokio::time::timeout(OPEN_ONE_TIMEOUT, open_idle_connection(addr, request))
                    .await
                    .unwrap_or_else(|_| Err(format!("not answered within {OPEN_ONE_TIMEOUT:?}")))
            }
        })
        .buffer_unordered(OPEN_IN_FLIGHT);
    let mut streams = Vec::with_capacity(usize::try_from(attempted).unwrap_or(0));
    let (mut failed, mut first_failure) = (0, None);
    loop {
        match tokio::time::timeout_at(deadline, opening.next()).await {
            Ok(Some(Ok(stream))) => streams.push(stream),
            Ok(Some(Err(err))) => {
                failed += 1;
                first_failure.get_or_insert(err);
            }
            Ok(None) => break,
            Err(_) => {
                first_failure
                    .get_or_insert_with(|| format!("opening stopped after {OPEN_ALL_TIMEOUT:?}"));
                break;
            }
        }
    }
    drop(opening);
    let open_time = started.elapsed();
    eprintln!(
        "gateway bench: {} idle keep-alive connections open ({failed} failed) in {open_time:.1?}; waiting {SETTLE:?}",
        streams.len()
    );
    tokio::time::sleep(SETTLE).await;
    let rss_holding_kib = proc_status(gateway_pid, "VmRSS");
    let hwm_holding_kib = proc_status(gateway_pid, "VmHWM");
    let threads_holding = proc_status(gateway_pid, "Threads");
    let fds_holding = open_fds(gateway_pid);
    // An idle connection the gateway has not closed reads nothing yet (WouldBlock).
    let mut probe = [0u8; 1];
    let still_open = streams
        .iter()
        .filter(|s| {
            matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    let opened = streams.len();
    drop(streams);
    tokio::time::sleep(SETTLE).await;
    let rss_after_close_kib = proc_status(gateway_pid, "VmRSS");
    let fds_after_close = open_fds(gateway_pid);
    Connections {
        wanted,
        attempted,
        opened,
        failed,
        first_failure,
        open_time,
        limit_note,
        rss_before_kib,
        rss_holding_kib,
        hwm_holding_kib,
        threads_holding,
        fds_holding,
        still_open,
        rss_after_close_kib,
        fds_after_close,
    }
}

/// The gateway's memory over the run.
struct Memory {
    idle_kib: u64,
    /// `RssAnon` and `RssFile` (mapped binary and libraries) of the idle figure.
    idle_anon_kib: u64,
    idle_file_kib: u64,
    idle_threads: u64,
    after_load_kib: Option<u64>,
    after_load_hwm_kib: Option<u64>,
    connections: Option<Connections>,
}

fn print_report(settings: &Settings, cells: &[Cell], memory: &Memory) {
    let reference = settings.load.reference_concurrency();
    println!();
    println!("gateway (JSON/HTTP/1.1) vs direct gRPC: priority Score, release build");
    println!("machine: {}", machine());
    println!(
        "settings: warm-up {:?} + window {:?} per cell, closed-loop workers, fresh clients per cell; \
         one priority process and one gateway process (tokio default runtimes); \
         load generator: this process (tokio multi-thread, {} workers)",
        settings.load.warmup,
        settings.load.window,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("scenarios: d = tonic PriorityServiceClient over a plain Channel to the instance;");
    println!("           g = POST {SCORE_PATH} {BODY} through the gateway, HTTP/1.1 keep-alive (hyper-util legacy client, idle pool = concurrency)");
    println!("µs/call: CPU (utime+stime) per counted call of the bench process (load generator), the gateway, the priority server;");
    println!("gw RSS: the gateway's VmRSS at the end of the window; other cores: CPU busy with anything else (Consul, other processes): above ~0.1 the cell is noisy");
    println!();
    println!(
        "{:<10} {:>5} {:>9} {:>8} {:>8} {:>9} {:>7} {:>10} {:>9} {:>10} {:>10} {:>6}",
        "scenario",
        "conc",
        "req/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "errors",
        "bench µs",
        "gw µs",
        "server µs",
        "gw RSS MiB",
        "other"
    );
    for cell in cells {
        println!(
            "{:<10} {:>5} {:>9.0} {:>8.0} {:>8.0} {:>9.0} {:>7} {:>10.1} {:>9.1} {:>10.1} {:>10} {:>6.2}",
            cell.scenario,
            cell.concurrency,
            cell.tally.rate(),
            cell.tally.quantile_us(0.5),
            cell.tally.quantile_us(0.99),
            cell.tally.quantile_us(0.999),
            cell.tally.errors,
            cell.tally.per_call_us(cell.bench_ticks),
            cell.tally.per_call_us(cell.gateway_ticks),
            cell.tally.per_call_us(cell.server_ticks),
            cell.gateway_rss_kib
                .map_or_else(|| "-".to_owned(), |kib| format!("{:.2}", mib(kib))),
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
    for &concurrency in &settings.load.concurrency {
        let (Some(d), Some(g)) = (find("d", concurrency), find("g", concurrency)) else {
            continue;
        };
        let ratio = g.tally.rate() / d.tally.rate();
        let added = g.tally.quantile_us(0.99) - d.tally.quantile_us(0.99);
        let latency_target = if concurrency == reference {
            format!("; added p99 ≤ 1000 µs: {}", verdict(added <= 1_000.0))
        } else {
            String::new()
        };
        println!(
            "g/d conc {concurrency:>3}: throughput {ratio:.3}x, added p99 {added:+.0} µs   target throughput ≥ 0.7x: {}{latency_target}",
            verdict(ratio >= 0.7)
        );
    }
    println!();
    println!("gateway memory (VmRSS; peak = VmHWM):");
    println!(
        "  idle, routes loaded, {SETTLE:?} later, no traffic yet: {:.2} MiB (anon {:.2}, file-backed {:.2}), {} threads   target ≤ 10 MiB: {} (Go grpc-gateway ~9 MiB)",
        mib(memory.idle_kib),
        mib(memory.idle_anon_kib),
        mib(memory.idle_file_kib),
        memory.idle_threads,
        verdict(memory.idle_kib <= 10 * 1024)
    );
    if let (Some(rss), Some(hwm)) = (memory.after_load_kib, memory.after_load_hwm_kib) {
        println!(
            "  after the load cells, idle {SETTLE:?}: {:.2} MiB (peak so far {:.2} MiB)",
            mib(rss),
            mib(hwm)
        );
    }
    if let Some(c) = &memory.connections {
        let per_connection = if c.opened > 0 {
            c.rss_holding_kib.saturating_sub(c.rss_before_kib) as f64 / c.opened as f64
        } else {
            f64::NAN
        };
        let target = if c.opened as u64 >= 10_000 {
            format!(
                "target ≤ 120 MiB: {}",
                verdict(c.rss_holding_kib <= 120 * 1024)
            )
        } else {
            format!(
                "target ≤ 120 MiB at 10,000: not measured at 10,000 (at this rate 10,000 would be ~{:.0} MiB)",
                mib(c.rss_before_kib) + per_connection * 10_000.0 / 1024.0
            )
        };
        println!(
            "  holding {} idle keep-alive HTTP/1.1 connections ({} asked, {} attempted, {} failed, opened in {:.1?}), {SETTLE:?} later: {:.2} MiB (from {:.2} MiB: +{:.1} KiB per connection; peak {:.2} MiB), {} threads, {} gateway fds, {} still open   {target}",
            c.opened,
            c.wanted,
            c.attempted,
            c.failed,
            c.open_time,
            mib(c.rss_holding_kib),
            mib(c.rss_before_kib),
            per_connection,
            mib(c.hwm_holding_kib),
            c.threads_holding,
            c.fds_holding,
            c.still_open,
        );
        println!(
            "  after closing them, {SETTLE:?} later: {:.2} MiB, {} gateway fds",
            mib(c.rss_after_close_kib),
            c.fds_after_close
        );
        if let Some(note) = &c.limit_note {
            println!("  note: {note}");
        }
        if let Some(failure) = &c.first_failure {
            println!("  first connection failure: {failure}");
        }
    }
}

async fn run(priority: PathBuf, gateway: PathBuf, settings: Settings) {
    let (agent, consul) = start_consul().await;

    let mut children = Children::default();
    let child = spawn_priority(&priority, &agent.http_addr());
    let server_pid = child.id();
    children.0.push(child);
    let entries = wait_passing(&consul, "priority", 1).await;
    let server_port = entries[0].service.port;

    let gateway_addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let log_path = std::env::temp_dir().join(format!(
        "protomesh-gateway-bench-{}.log",
        std::process::id()
    ));
    let log = std::fs::File::create(&log_path).expect("gateway log file");
    let gateway_child = spawn_gateway(&gateway, gateway_addr, &agent.http_addr(), Stdio::from(log));
    let gateway_pid = gateway_child.id();
    children.0.push(gateway_child);
    let gateway_child = children.0.last_mut().expect("just pushed");
    wait_routes(gateway_child, gateway_addr, &log_path).await;
    tokio::time::sleep(SETTLE).await;
    let idle_kib = proc_status(gateway_pid, "VmRSS");
    let idle_anon_kib = proc_status(gateway_pid, "RssAnon");
    let idle_file_kib = proc_status(gateway_pid, "RssFile");
    let idle_threads = proc_status(gateway_pid, "Threads");
    eprintln!(
        "gateway bench: priority passing on port {server_port}, gateway on {gateway_addr} (idle {:.2} MiB); measuring",
        mib(idle_kib)
    );

    let pids = Pids {
        gateway: gateway_pid,
        server: server_pid,
    };
    let mut cells = Vec::new();
    // `BENCH_ONLY=d` (or g) runs one scenario alone, for profiling.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |scenario: &str| only.as_deref().is_none_or(|o| scenario.starts_with(o));
    for &concurrency in &settings.load.concurrency {
        if wanted("d") {
            let direct = Client::direct(server_port).await;
            cells.push(run_cell("d direct", direct, concurrency, &settings, pids).await);
        }
        if wanted("g") {
            let through = Client::gateway(gateway_addr, concurrency);
            cells.push(run_cell("g gateway", through, concurrency, &settings, pids).await);
        }
    }

    let (after_load_kib, after_load_hwm_kib) = if cells.is_empty() {
        (None, None)
    } else {
        tokio::time::sleep(SETTLE).await;
        (
            Some(proc_status(gateway_pid, "VmRSS")),
            Some(proc_status(gateway_pid, "VmHWM")),
        )
    };
    let connections = if settings.connections > 0 {
        Some(hold_connections(gateway_addr, gateway_pid, settings.connections).await)
    } else {
        None
    };
    let memory = Memory {
        idle_kib,
        idle_anon_kib,
        idle_file_kib,
        idle_threads,
        after_load_kib,
        after_load_hwm_kib,
        connections,
    };
    print_report(&settings, &cells, &memory);
    drop(children);
    let _ = std::fs::remove_file(&log_path);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks harness=false benches to list; nothing to list
    }
    let settings = Settings::from_env();
    let [priority, gateway] = release_binaries([PRIORITY, GATEWAY]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(priority, gateway, settings));
}
