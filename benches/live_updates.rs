//! Live updates at scale: N concurrent WebSocket subscribers (default 10,000) to one project's
//! topic, through one `gateway` and one `hub` instance (release binaries, with `tasks` and
//! `priority`, registered in a Consul dev agent on free loopback ports, over a throw-away database
//! and a key prefix of their own). Once every subscriber's socket is open, the benchmark updates
//! the project's task through the JSON route, round after round, and records when each
//! subscriber receives each update. It reports:
//! - the gateway's and the hub's resident memory (VmRSS) idle, with every subscriber connected,
//!   and their peak (VmHWM);
//! - the time from an update's request to its receipt by the subscribers: p50, p99 and the last
//!   of all N, over every round;
//! - the CPU the gateway and the hub used per delivered event.
//!
//! The subscribers run in this process on the same 2 cores, so their reading is part of every
//! figure (as a browser's would be on its own machine, but here all N share two cores).
//!
//! `cargo bench --bench live_updates`. Settings: `BENCH_SUBSCRIBERS` (default 10000),
//! `BENCH_ROUNDS` (updates, default 10), `BENCH_CONNECT_CONCURRENCY` (handshakes in flight,
//! default 256), `BENCH_GATEWAY_WRAPPER` (a command the gateway runs under, such as
//! `valgrind --tool=massif --massif-out-file=/tmp/gateway.massif`; the gateway then gets SIGTERM
//! at the end so the tool writes its report). Quick run: `BENCH_SUBSCRIBERS=500 BENCH_ROUNDS=3 cargo bench --bench live_updates`.
//!
//! Goals (issue 15): gateway ≤ 150 MiB, hub ≤ 100 MiB, p99 ≤ 100 ms.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use protomesh::auth::testing::token;
use protomesh_data::testing::{redis_url, TestDatabase, TestKeys};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

mod support;

use support::{
    env_u64, free_port, histogram, machine, mib, pid_ticks, proc_status, release_binaries,
    start_consul, test_secret_file, verdict, wait_passing, Children, GATEWAY, PRIORITY,
};

const TASKS: (&str, &str) = ("protomesh-tasks", "tasks");
const HUB: (&str, &str) = ("protomesh-hub", "hub");
/// Longest wait for every subscriber to receive one update.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// Each subscriber's read buffer.
const CLIENT_READ_BUFFER: usize = 4096;
/// Longest wait for every subscriber to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);

/// Starts `binary` with `args` and the mesh's environment.
fn spawn(binary: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> Child {
    Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("process starts")
}

/// One JSON request with curl; the answer's body.
fn curl(method: &str, url: &str, token: &str, body: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-X", method, url])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["-d", body])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_id(answer: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    json["id"].as_str().unwrap().to_owned()
}

/// Raises this process's open-file limit to its hard limit (N sockets).
fn raise_fd_limit() -> u64 {
    let limit = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = limit
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024);
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={hard}:{hard}"),
        ])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "prlimit failed");
    hard
}

#[tokio::main]
async fn main() {
    let subscribers = env_u64("BENCH_SUBSCRIBERS", 10_000, "a count") as usize;
    let rounds = env_u64("BENCH_ROUNDS", 10, "a count") as usize;
    let connecting = env_u64("BENCH_CONNECT_CONCURRENCY", 256, "a count") as usize;
    let files = raise_fd_limit();
    assert!(
        files as usize > subscribers + 100,
        "open-file limit {files} is below {subscribers} subscribers"
    );
    let [priority, tasks, hub, gateway] = release_binaries([PRIORITY, TASKS, HUB, GATEWAY]);

    let (_agent, consul) = start_consul().await;
    let database = TestDatabase::create().await.unwrap();
    let keys = TestKeys::new();
    let secret = test_secret_file();
    let env = vec![
        ("CONSUL_HTTP_ADDR", consul.address().to_owned()),
        ("DATABASE_URL", database.url().to_owned()),
        ("REDIS_URL", redis_url()),
        ("PROTOMESH_KEY_PREFIX", keys.prefix().to_owned()),
        ("PROTOMESH_JWT_SECRET_FILE", secret.display().to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let listen = ["--listen", "127.0.0.1:0"];
    let mut children = Children::default();
    children.0.push(spawn(&priority, &listen, &env));
    children.0.push(spawn(&tasks, &listen, &env));
    children.0.push(spawn(&hub, &listen, &env));
    for service in ["priority", "tasks", "hub"] {
        wait_passing(&consul, service, 1).await;
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let max_connections = (subscribers + 1000).to_string();
    let wrapper = std::env::var("BENCH_GATEWAY_WRAPPER").unwrap_or_default();
    let mut gateway_args: Vec<String> = wrapper.split_whitespace().map(str::to_owned).collect();
    let gateway_command = if gateway_args.is_empty() {
        gateway.clone()
    } else {
        gateway_args.push(gateway.display().to_string());
        std::path::PathBuf::from(gateway_args.remove(0))
    };
    let listen_at = addr.to_string();
    let mut args: Vec<&str> = gateway_args.iter().map(String::as_str).collect();
    args.extend([
        "--listen",
        &listen_at,
        "--max-connections",
        &max_connections,
        "--rate-limit",
        "default=1000000/1s",
        "--rate-limit",
        "public=1000000/1s",
    ]);
    children.0.push(spawn(&gateway_command, &args, &env));
    let gateway_pid = children.0[3].id();
    let hub_pid = children.0[2].id();
    let base = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Command::new("curl")
        .args(["-s", &format!("{base}/routes")])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HubService"))
    {
        assert!(
            Instant::now() < deadline,
            "the gateway never routed the hub"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let alice = token("alice", &[]);
    let project = json_id(&curl(
        "POST",
        &format!("{base}/v1/projects"),
        &alice,
        r#"{"name":"live bench"}"#,
    ));
    let task = json_id(&curl(
        "POST",
        &format!("{base}/v1/projects/{project}/tasks"),
        &alice,
        r#"{"title":"round 0","urgency":5,"impact":5}"#,
    ));
    let idle = (
        proc_status(gateway_pid, "VmRSS"),
        proc_status(hub_pid, "VmRSS"),
    );

    // N subscribers, at most `connecting` handshakes at once.
    let (receipts, mut received) = mpsc::unbounded_channel::<(usize, Instant)>();
    let (opened, mut opened_rx) = mpsc::unbounded_channel::<()>();
    let gate = Arc::new(Semaphore::new(connecting));
    let started = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..subscribers {
        let gate = Arc::clone(&gate);
        let receipts = receipts.clone();
        let opened = opened.clone();
        let url = format!("ws://{addr}/v1/hub/events?topics=project/{project}");
        let protocols = format!("protomesh.json, bearer.{alice}");
        readers.spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("sec-websocket-protocol", protocols.parse().unwrap());
            // A browser-sized read buffer: tungstenite zeroes its whole read buffer (128 KiB
            // by default) before every read, which made the subscribers' reading cost more CPU
            // than the gateway's writing on the shared cores.
            let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
            let (mut socket, _) =
                tokio_tungstenite::connect_async_with_config(request, Some(config), false)
                    .await
                    .expect("the WebSocket opens");
            drop(permit);
            let _ = opened.send(());
            while let Some(Ok(frame)) = socket.next().await {
                if let Message::Text(text) = frame {
                    if let Some(at) = text.find("\"round ") {
                        let rest = &text[at + 7..];
                        let digits: String =
                            rest.chars().take_while(char::is_ascii_digit).collect();
                        if let Ok(round) = digits.parse::<usize>() {
                            let _ = receipts.send((round, Instant::now()));
                        }
                    }
                }
            }
        });
    }
    drop(opened);
    for n in 0..subscribers {
        tokio::time::timeout(CONNECT_TIMEOUT, opened_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{n} of {subscribers} connected in {CONNECT_TIMEOUT:?}"))
            .expect("a subscriber failed to connect");
    }
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = (
        proc_status(gateway_pid, "VmRSS"),
        proc_status(hub_pid, "VmRSS"),
    );

    let mut latency = histogram();
    let mut last_of_round = histogram();
    let own_pid = std::process::id();
    let (gateway_ticks, hub_ticks, own_ticks) = (
        pid_ticks(gateway_pid),
        pid_ticks(hub_pid),
        pid_ticks(own_pid),
    );
    for round in 1..=rounds {
        let sent = Instant::now();
        let answer = curl(
            "PATCH",
            &format!("{base}/v1/tasks/{task}"),
            &alice,
            &format!(r#"{{"title":"round {round}"}}"#),
        );
        assert!(answer.contains(&format!("round {round}")), "{answer}");
        let mut got = 0;
        let mut last = Duration::ZERO;
        while got < subscribers {
            let (of_round, at) = tokio::time::timeout(ROUND_TIMEOUT, received.recv())
                .await
                .unwrap_or_else(|_| panic!("round {round}: {got} of {subscribers} received"))
                .unwrap();
            if of_round != round {
                continue;
            }
            let took = at - sent;
            latency.record(took.as_micros() as u64).unwrap();
            last = last.max(took);
            got += 1;
        }
        last_of_round.record(last.as_micros() as u64).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let delivered = (subscribers * rounds) as f64;
    let gateway_cpu = (pid_ticks(gateway_pid) - gateway_ticks) as f64;
    let hub_cpu = (pid_ticks(hub_pid) - hub_ticks) as f64;
    let own_cpu = (pid_ticks(own_pid) - own_ticks) as f64;
    let peak = (
        proc_status(gateway_pid, "VmHWM"),
        proc_status(hub_pid, "VmHWM"),
    );
    readers.abort_all();

    let ms = |us: u64| us as f64 / 1000.0;
    let tick_us = 1_000_000.0 / 100.0;
    println!("## Live updates: {subscribers} WebSocket subscribers, {rounds} updates");
    println!();
    println!("Machine: {}", machine());
    println!(
        "Connecting all: {:.1} s ({connecting} handshakes at once)",
        connect_time.as_secs_f64()
    );
    println!();
    println!("| process | idle RSS | with {subscribers} subscribers | peak (VmHWM) | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| gateway | {:.1} MiB | {:.1} MiB | {:.1} MiB | ≤ 150 MiB: {} |",
        mib(idle.0),
        mib(connected.0),
        mib(peak.0),
        verdict(mib(connected.0) <= 150.0)
    );
    println!(
        "| hub | {:.1} MiB | {:.1} MiB | {:.1} MiB | ≤ 100 MiB: {} |",
        mib(idle.1),
        mib(connected.1),
        mib(peak.1),
        verdict(mib(connected.1) <= 100.0)
    );
    println!();
    println!("| update → receipt | p50 | p99 | last of all {subscribers} (median round) | last (worst round) | goal |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| ms | {:.1} | {:.1} | {:.1} | {:.1} | p99 ≤ 100 ms: {} |",
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99)),
        ms(last_of_round.value_at_quantile(0.5)),
        ms(last_of_round.max()),
        verdict(ms(latency.value_at_quantile(0.99)) <= 100.0)
    );
    println!();
    println!(
        "CPU per delivered event: gateway {:.1} µs, hub {:.1} µs, subscribers (this process) {:.1} µs",
        gateway_cpu * tick_us / delivered,
        hub_cpu * tick_us / delivered,
        own_cpu * tick_us / delivered
    );
    if !wrapper.is_empty() {
        // A profiler around the gateway writes its report when the gateway exits by itself.
        let _ = Command::new("kill")
            .args(["-TERM", &gateway_pid.to_string()])
            .status();
        let _ = children.0[3].wait();
    }
    drop(children);
    let _ = std::fs::remove_file(secret);
}
