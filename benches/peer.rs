//! protomesh next to the Go stack it replaces, side by side in one run, with the same load tools:
//! the priority service's `Score` served by protomesh's `priority` and by the Go peer's grpc-go
//! server (`../shared/peers/go-priority`, grpc-go 1.33), called over gRPC with `h2load`, and the
//! same call as JSON through protomesh's `gateway` and through the Go peer's grpc-gateway 1.6.4,
//! with `wrk`. A third gRPC server, the priority handler on a bare tonic server
//! (`services/priority/examples/bare_priority.rs`: no tracing, metrics, deadline, cuttable
//! connections, health, authentication or rules), shows what the runtime's own layers cost.
//!
//! Cells run in rounds, alternating (protomesh, Go, bare; then the next round in another order),
//! so that the machine's noise falls on every side; the table shows each figure's median over
//! the rounds and the protomesh ÷ Go ratio of every round. CPU per call is utime + stime of the
//! server (or gateway) process over the cell (`/proc/<pid>/stat`) divided by the calls it
//! answered. A gRPC call counts only when its reply carries the data bytes of a good `Score`
//! answer (h2load counts a failed gRPC call as HTTP 200; the bytes tell them apart); a JSON call
//! only when its HTTP status is 2xx (wrk's "Non-2xx" count is reported as errors). Memory: RSS
//! (`VmRSS`) of every process idle (2 s after start, before any call), right after the load, and
//! 10 s after the load stopped.
//!
//! `cargo bench --bench peer`. Needs `h2load` (`nghttp2-client`) and `wrk` on the `PATH`
//! (`scripts/setup.sh` installs both); without one, its cells are skipped and the run says so.
//! The Go peer is found in `$PEER_OUT/bin` (default `target/go-peer/bin`) or built there with the
//! peer's `build.sh` (Debian's Go packages; as root it installs them); when it cannot be found
//! or built, its cells are skipped and the run says why. Settings from the environment:
//! `PEER_ROUNDS` (default 2), `PEER_CALLS` (gRPC calls per cell, default 200000), `PEER_SECS`
//! (wrk's window per cell, default 10), `PEER_CONCURRENCY` (connections, default 50),
//! `PEER_STREAMS` (h2load's streams per connection, default 10). Quick smoke run:
//! `PEER_ROUNDS=1 PEER_CALLS=20000 PEER_SECS=2 cargo bench --bench peer`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

mod support;

use support::{
    env_u64, free_port, machine, mib, pid_ticks, proc_status, release_binaries, root,
    score_request, spawn_gateway, spawn_priority, start_consul, wait_passing, Children, GATEWAY,
    PRIORITY, TICK_US,
};

/// The JSON body of every gateway call (the Go peer's `score.lua` sends the same).
const BODY: &str = r#"{"title":"Fix login bug","urgency":9,"impact":8}"#;
/// The path both gateways bind `Score` to.
const SCORE_PATH: &str = "/v1/priority:score";
/// The gRPC path of `Score`.
const SCORE_GRPC_PATH: &str = "/protomesh.priority.v1.PriorityService/Score";
/// How long a process gets to answer its first call.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time before the idle memory reading.
const SETTLE: Duration = Duration::from_secs(2);
/// How long after the load the last memory reading is taken.
const AFTER_LOAD: Duration = Duration::from_secs(10);
/// Bound on one load tool's run beyond its own window (a hung server must not hang the bench).
const TOOL_SLACK: Duration = Duration::from_secs(120);

/// The run's settings, from the environment.
struct Settings {
    rounds: usize,
    calls: u64,
    secs: u64,
    concurrency: u64,
    streams: u64,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            rounds: env_u64("PEER_ROUNDS", 2, "PEER_ROUNDS is a count").clamp(1, 20) as usize,
            calls: env_u64("PEER_CALLS", 200_000, "PEER_CALLS is a count").clamp(1_000, 5_000_000),
            secs: env_u64("PEER_SECS", 10, "PEER_SECS is seconds").clamp(1, 300),
            concurrency: env_u64("PEER_CONCURRENCY", 50, "PEER_CONCURRENCY is a count")
                .clamp(1, 1_000),
            streams: env_u64("PEER_STREAMS", 10, "PEER_STREAMS is a count").clamp(1, 100),
        }
    }
}

/// An executable on the `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// The Go peer's two binaries, found or built; or why there are none.
fn go_peer() -> Result<(PathBuf, PathBuf), String> {
    let out = std::env::var_os("PEER_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/go-peer"));
    let binaries = (out.join("bin/server"), out.join("bin/gateway"));
    if binaries.0.is_file() && binaries.1.is_file() {
        eprintln!("peer bench: Go peer found in {}", out.display());
        return Ok(binaries);
    }
    let source = std::env::var_os("PEER_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/peers/go-priority"));
    let script = source.join("build.sh");
    if !script.is_file() {
        return Err(format!(
            "no Go peer in {} and no {}",
            out.display(),
            script.display()
        ));
    }
    eprintln!(
        "peer bench: building the Go peer into {} ({})",
        out.display(),
        script.display()
    );
    let mut build = Command::new("bash");
    build.arg(&script).env("PEER_OUT", &out);
    if on_path("go").is_some() {
        // Debian's Go packages are there: only generate and build.
        build.env("SKIP_APT", "1");
    }
    match build.status() {
        Ok(status) if status.success() && binaries.0.is_file() && binaries.1.is_file() => {
            Ok(binaries)
        }
        Ok(status) => Err(format!("{} ended with {status}", script.display())),
        Err(err) => Err(format!("cannot run {}: {err}", script.display())),
    }
}

/// Builds the bare tonic server (an example of the priority crate) and returns its path.
fn bare_priority() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "protomesh-priority",
            "--example",
            "bare_priority",
        ])
        .current_dir(root())
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "cargo build --example bare_priority failed"
    );
    root().join("target/release/examples/bare_priority")
}

/// Starts `binary` with `args`, its output discarded.
fn spawn(binary: &Path, args: &[&str]) -> Child {
    Command::new(binary)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("{} starts: {err}", binary.display()))
}

/// One HTTP/1.1 request on a fresh connection; the status code, if an answer came.
async fn http_status(addr: SocketAddr, request: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Waits until the gateway at `addr` answers `Score` with 200.
async fn wait_gateway(name: &str, addr: SocketAddr) {
    let request = format!(
        "POST {SCORE_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if http_status(addr, &request).await == Some(200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not answer {SCORE_PATH} with 200 within {READY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until something accepts connections at `addr`.
async fn wait_listening(name: &str, addr: SocketAddr) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} did not listen on {addr} within {READY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one load tool run gave.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    /// Calls answered well.
    ok: u64,
    /// Calls that failed (bad gRPC answer, non-2xx, socket errors).
    errors: u64,
    /// Calls per second over the run.
    rate: f64,
    /// 99th percentile latency, milliseconds.
    p99_ms: f64,
    /// CPU per good call of the first and second process measured, µs.
    cpu_us: [f64; 2],
}

/// The numbers after `key` on the line of `output` that starts with `line`, in order.
fn numbers_after(output: &str, line: &str, key: &str) -> Vec<f64> {
    output
        .lines()
        .find(|l| l.trim_start().starts_with(line))
        .and_then(|l| l.split_once(key).map(|(_, rest)| rest))
        .map(|rest| {
            rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter(|t| !t.is_empty())
                .filter_map(|t| t.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `command` (a load tool), bounded by `limit`; its standard output.
fn run_tool(mut command: Command, limit: Duration) -> String {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("load tool starts");
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait().expect("load tool status") {
            Some(_) => break,
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the load tool ran past {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let output = child.wait_with_output().expect("load tool output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The gRPC load: h2load with the `Score` frame, against one server.
struct GrpcLoad {
    h2load: PathBuf,
    frame: PathBuf,
    calls: u64,
    concurrency: u64,
    streams: u64,
    scratch: PathBuf,
}

impl GrpcLoad {
    fn command(
        &self,
        port: u16,
        calls: u64,
        concurrency: u64,
        streams: u64,
        log: Option<&Path>,
    ) -> Command {
        let mut command = Command::new(&self.h2load);
        command.args([
            format!("-n{calls}"),
            format!("-c{concurrency}"),
            format!("-m{streams}"),
            "-d".to_owned(),
            self.frame.display().to_string(),
            "-H".to_owned(),
            "content-type: application/grpc".to_owned(),
            "-H".to_owned(),
            "te: trailers".to_owned(),
        ]);
        if let Some(log) = log {
            command.arg(format!("--log-file={}", log.display()));
        }
        command.arg(format!("http://127.0.0.1:{port}{SCORE_GRPC_PATH}"));
        command
    }

    /// Data bytes of one good answer (a failed call, trailers only, carries none).
    fn answer_bytes(&self, port: u16) -> u64 {
        let output = run_tool(self.command(port, 1, 1, 1, None), TOOL_SLACK);
        let bytes = traffic_data(&output);
        assert!(
            bytes > 5,
            "one Score call to port {port} carried no answer:\n{output}"
        );
        bytes
    }

    /// One measured cell against the server on `port`, whose CPU is read from `pid`.
    fn cell(&self, name: &str, port: u16, pid: u32, answer: u64) -> Cell {
        let log = self.scratch.join(format!("h2load-{name}.tsv"));
        let _ = std::fs::remove_file(&log); // h2load appends
        let before = pid_ticks(pid);
        let output = run_tool(
            self.command(port, self.calls, self.concurrency, self.streams, Some(&log)),
            TOOL_SLACK,
        );
        let ticks = pid_ticks(pid) - before;
        let requests = numbers_after(&output, "requests:", ":");
        let succeeded = requests.get(3).copied().unwrap_or(0.0) as u64;
        // Every good answer carries `answer` data bytes; a failed one none.
        let ok = (traffic_data(&output) / answer).min(succeeded);
        let rate = numbers_after(&output, "finished in", ",")
            .first()
            .copied()
            .unwrap_or(0.0);
        Cell {
            ok,
            errors: self.calls - ok,
            rate,
            p99_ms: h2load_p99_ms(&log),
            cpu_us: [ticks as f64 * TICK_US / ok.max(1) as f64, 0.0],
        }
    }
}

/// The `data` bytes of h2load's `traffic:` line.
fn traffic_data(output: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with("traffic:"))
        .unwrap_or_default();
    // traffic: 4.58MB (4800000) total, 1.00MB (1049000) headers (space savings 95.2%), 2.29MB (2400000) data
    let mut last = 0;
    for part in line.split(',') {
        if part.trim_end().ends_with("data") {
            last = part
                .split(['(', ')'])
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    last
}

/// The 99th percentile of an h2load log file (third column: microseconds), in ms.
fn h2load_p99_ms(log: &Path) -> f64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut micros: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    if micros.is_empty() {
        return f64::NAN;
    }
    micros.sort_unstable();
    micros[(micros.len() * 99 / 100).min(micros.len() - 1)] as f64 / 1000.0
}

/// The JSON load: wrk posting the `Score` body, against one gateway.
struct JsonLoad {
    wrk: PathBuf,
    script: PathBuf,
    secs: u64,
    concurrency: u64,
}

impl JsonLoad {
    /// One measured cell against the gateway at `addr`; CPU read from the gateway's and the
    /// service's pids.
    fn cell(&self, addr: SocketAddr, pids: [u32; 2]) -> Cell {
        let before = pids.map(pid_ticks);
        let mut command = Command::new(&self.wrk);
        command.args([
            "-t1".to_owned(),
            format!("-c{}", self.concurrency),
            format!("-d{}s", self.secs),
            "--latency".to_owned(),
            "-s".to_owned(),
            self.script.display().to_string(),
            format!("http://{addr}{SCORE_PATH}"),
        ]);
        let output = run_tool(command, Duration::from_secs(self.secs) + TOOL_SLACK);
        let after = pids.map(pid_ticks);
        let requests = output
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let non_2xx = numbers_after(&output, "Non-2xx or 3xx responses:", ":")
            .first()
            .copied()
            .unwrap_or(0.0) as u64;
        let socket_errors: u64 = numbers_after(&output, "Socket errors:", ":")
            .iter()
            .map(|n| *n as u64)
            .sum();
        let ok = requests.saturating_sub(non_2xx);
        let rate = numbers_after(&output, "Requests/sec:", ":")
            .first()
            .copied()
            .unwrap_or(0.0);
        Cell {
            ok,
            errors: non_2xx + socket_errors,
            rate,
            p99_ms: wrk_p99_ms(&output),
            cpu_us: [0, 1].map(|i| (after[i] - before[i]) as f64 * TICK_US / ok.max(1) as f64),
        }
    }
}

/// The 99% line of wrk's latency distribution, in ms.
fn wrk_p99_ms(output: &str) -> f64 {
    let Some(line) = output.lines().find(|l| l.trim_start().starts_with("99%")) else {
        return f64::NAN;
    };
    let value = line.split_whitespace().nth(1).unwrap_or_default();
    let (number, unit) = value.split_at(
        value
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(value.len()),
    );
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => f64::NAN,
    }
}

/// The median of `values` (NaN when empty).
fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// `a–b×` (or `a×`) of the per-round ratios `ours[i] / theirs[i]`.
fn ratios(ours: &[f64], theirs: &[f64]) -> String {
    let mut values: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| a / b)
        .filter(|r| r.is_finite())
        .collect();
    if values.is_empty() {
        return "—".to_owned();
    }
    values.sort_by(f64::total_cmp);
    let (low, high) = (values[0], values[values.len() - 1]);
    if (high - low).abs() < 0.005 {
        format!("{low:.2}×")
    } else {
        format!("{low:.2}–{high:.2}×")
    }
}

/// A figure for the table, or a dash.
fn figure(value: f64, decimals: usize) -> String {
    if value.is_nan() {
        "—".to_owned()
    } else {
        format!("{value:.decimals$}")
    }
}

/// The processes whose memory the table shows.
#[derive(Clone, Copy)]
struct Pids {
    service: u32,
    gateway: u32,
    bare: u32,
    go_server: Option<u32>,
    go_gateway: Option<u32>,
}

/// RSS of every process, MiB: service, gateway, bare, Go server, Go gateway.
fn rss(pids: Pids) -> [f64; 5] {
    let read = |pid: Option<u32>| pid.map_or(f64::NAN, |pid| mib(proc_status(pid, "VmRSS")));
    [
        read(Some(pids.service)),
        read(Some(pids.gateway)),
        read(Some(pids.bare)),
        read(pids.go_server),
        read(pids.go_gateway),
    ]
}

/// The figures of one side of the table, over the rounds.
#[derive(Default)]
struct Side {
    grpc: Vec<Cell>,
    json: Vec<Cell>,
}

impl Side {
    fn grpc(&self, f: impl Fn(&Cell) -> f64) -> Vec<f64> {
        self.grpc.iter().map(f).collect()
    }
    fn json(&self, f: impl Fn(&Cell) -> f64) -> Vec<f64> {
        self.json.iter().map(f).collect()
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks harness=false benches to list; nothing to list
    }
    let settings = Settings::from_env();
    let h2load = on_path("h2load");
    let wrk = on_path("wrk");
    if h2load.is_none() {
        eprintln!(
            "peer bench: no h2load on the PATH (Debian's nghttp2-client): gRPC cells skipped"
        );
    }
    if wrk.is_none() {
        eprintln!("peer bench: no wrk on the PATH (Debian's wrk): JSON cells skipped");
    }
    let peer = go_peer();
    if let Err(why) = &peer {
        eprintln!("peer bench: Go peer cells skipped: {why}");
    }
    let [priority, gateway] = release_binaries([PRIORITY, GATEWAY]);
    let bare = bare_priority();

    let scratch = std::env::temp_dir().join(format!("protomesh-peer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch folder");
    let frame = scratch.join("score.grpc");
    let request = score_request();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(request.encoded_len() as u32).to_be_bytes());
    framed.extend_from_slice(&request.encode_to_vec());
    std::fs::write(&frame, framed).expect("gRPC frame file");
    let script = scratch.join("score.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )
    .expect("wrk script");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (agent, consul) = start_consul().await;
        let mut children = Children::default();
        let service = spawn_priority(&priority, &agent.http_addr());
        let service_pid = service.id();
        children.0.push(service);
        let entries = wait_passing(&consul, "priority", 1).await;
        let service_port = entries[0].service.port;

        let gateway_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let gateway_child =
            spawn_gateway(&gateway, gateway_addr, &agent.http_addr(), Stdio::null());
        let gateway_pid = gateway_child.id();
        children.0.push(gateway_child);

        let bare_port = free_port();
        let bare_child = spawn(&bare, &[&format!("127.0.0.1:{bare_port}")]);
        let bare_pid = bare_child.id();
        children.0.push(bare_child);

        let mut go = None;
        if let Ok((server, go_gateway)) = &peer {
            let grpc_port = free_port();
            let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let server_child = spawn(server, &["-addr", &format!("127.0.0.1:{grpc_port}")]);
            let server_pid = server_child.id();
            children.0.push(server_child);
            let gateway_child = spawn(
                go_gateway,
                &["-addr", &http_addr.to_string(), "-grpc", &format!("127.0.0.1:{grpc_port}")],
            );
            let go_gateway_pid = gateway_child.id();
            children.0.push(gateway_child);
            go = Some((grpc_port, server_pid, http_addr, go_gateway_pid));
        }

        wait_gateway("the protomesh gateway", gateway_addr).await;
        wait_listening("the bare tonic server", ([127, 0, 0, 1], bare_port).into()).await;
        if let Some((grpc_port, _, http_addr, _)) = go {
            wait_listening("the Go server", ([127, 0, 0, 1], grpc_port).into()).await;
            wait_gateway("the Go gateway", http_addr).await;
        }
        tokio::time::sleep(SETTLE).await;
        let pids = Pids {
            service: service_pid,
            gateway: gateway_pid,
            bare: bare_pid,
            go_server: go.map(|g| g.1),
            go_gateway: go.map(|g| g.3),
        };
        let idle = rss(pids);
        eprintln!("peer bench: everything answers; {} rounds", settings.rounds);

        let grpc = h2load.map(|h2load| GrpcLoad {
            h2load,
            frame: frame.clone(),
            calls: settings.calls,
            concurrency: settings.concurrency,
            streams: settings.streams,
            scratch: scratch.clone(),
        });
        let json = wrk.map(|wrk| JsonLoad {
            wrk,
            script: script.clone(),
            secs: settings.secs,
            concurrency: settings.concurrency,
        });

        let (mut ours, mut theirs, mut bare_side) = (Side::default(), Side::default(), Side::default());
        for round in 0..settings.rounds {
            // A B C, then B C A, …: every side runs first, second and last in turn.
            let order: Vec<usize> = (0..3).map(|i| (i + round) % 3).collect();
            if let Some(load) = &grpc {
                let answer = [
                    load.answer_bytes(service_port),
                    go.map_or(0, |g| load.answer_bytes(g.0)),
                    load.answer_bytes(bare_port),
                ];
                for &side in &order {
                    match side {
                        0 => ours.grpc.push(load.cell("protomesh", service_port, service_pid, answer[0])),
                        1 => {
                            if let Some((port, pid, ..)) = go {
                                theirs.grpc.push(load.cell("go", port, pid, answer[1]));
                            }
                        }
                        _ => bare_side.grpc.push(load.cell("bare", bare_port, bare_pid, answer[2])),
                    }
                }
            }
            if let Some(load) = &json {
                for &side in order.iter().filter(|s| **s < 2) {
                    match side {
                        0 => ours.json.push(load.cell(gateway_addr, [gateway_pid, service_pid])),
                        _ => {
                            if let Some((_, pid, addr, gateway)) = go {
                                theirs.json.push(load.cell(addr, [gateway, pid]));
                            }
                        }
                    }
                }
            }
            eprintln!("peer bench: round {} of {} done", round + 1, settings.rounds);
        }
        let loaded = rss(pids);
        tokio::time::sleep(AFTER_LOAD).await;
        let rested = rss(pids);

        println!();
        println!(
            "priority Score: protomesh vs the Go peer (grpc-go 1.33 + grpc-gateway 1.6.4), {} rounds alternating; {}",
            settings.rounds,
            machine()
        );
        println!(
            "gRPC: h2load -n {} -c {} -m {}; JSON: wrk -t1 -c {} -d {}s. Figures: median over rounds; ratio: protomesh ÷ Go per round.",
            settings.calls, settings.concurrency, settings.streams, settings.concurrency, settings.secs
        );
        println!();
        println!("| priority `Score` | protomesh | Go peer | ratio | bare tonic |");
        println!("|---|---|---|---|---|");
        let row = |label: &str, a: &[f64], b: &[f64], c: Option<&[f64]>, decimals: usize| {
            println!(
                "| {label} | {} | {} | {} | {} |",
                figure(median(a), decimals),
                figure(median(b), decimals),
                ratios(a, b),
                c.map_or("".to_owned(), |c| figure(median(c), decimals)),
            );
        };
        row("gRPC req/s", &ours.grpc(|c| c.rate), &theirs.grpc(|c| c.rate), Some(&bare_side.grpc(|c| c.rate)), 0);
        row("gRPC p99 ms", &ours.grpc(|c| c.p99_ms), &theirs.grpc(|c| c.p99_ms), Some(&bare_side.grpc(|c| c.p99_ms)), 2);
        row("server CPU µs per gRPC call", &ours.grpc(|c| c.cpu_us[0]), &theirs.grpc(|c| c.cpu_us[0]), Some(&bare_side.grpc(|c| c.cpu_us[0])), 1);
        row("JSON req/s through the gateway", &ours.json(|c| c.rate), &theirs.json(|c| c.rate), None, 0);
        row("JSON p99 ms", &ours.json(|c| c.p99_ms), &theirs.json(|c| c.p99_ms), None, 2);
        row("gateway CPU µs per JSON call", &ours.json(|c| c.cpu_us[0]), &theirs.json(|c| c.cpu_us[0]), None, 1);
        row("service CPU µs per call behind the gateway", &ours.json(|c| c.cpu_us[1]), &theirs.json(|c| c.cpu_us[1]), None, 1);
        let memory = |label: &str, readings: [f64; 5]| {
            println!(
                "| {label}: service / gateway MiB | {} / {} | {} / {} | {} / {} | {} |",
                figure(readings[0], 1),
                figure(readings[1], 1),
                figure(readings[3], 1),
                figure(readings[4], 1),
                ratios(&[readings[0]], &[readings[3]]),
                ratios(&[readings[1]], &[readings[4]]),
                figure(readings[2], 1),
            );
        };
        memory("idle RSS", idle);
        memory("RSS after load", loaded);
        memory(&format!("RSS {}s after load", AFTER_LOAD.as_secs()), rested);
        let overhead = ratios(&ours.grpc(|c| c.cpu_us[0]), &bare_side.grpc(|c| c.cpu_us[0]));
        println!();
        println!("runtime layers over bare tonic, server CPU per gRPC call: {overhead} (goal ≤ 1.10×)");
        let errors: Vec<String> = [
            ("protomesh gRPC", &ours.grpc),
            ("Go gRPC", &theirs.grpc),
            ("bare gRPC", &bare_side.grpc),
            ("protomesh JSON", &ours.json),
            ("Go JSON", &theirs.json),
        ]
        .iter()
        .filter_map(|(name, cells)| {
            let failed: u64 = cells.iter().map(|c| c.errors).sum();
            let answered: u64 = cells.iter().map(|c| c.ok).sum();
            (failed > 0).then(|| format!("{name}: {failed} of {}", failed + answered))
        })
        .collect();
        if errors.is_empty() {
            println!("failed calls: none");
        } else {
            println!("failed calls: {}", errors.join(", "));
        }
        drop(children);
        drop(agent);
    });
    let _ = std::fs::remove_dir_all(&scratch);
}
