//! Idle footprint of a registered priority instance: resident memory (VmRSS and its peak, VmHWM),
//! threads, and CPU time spent while idle under Consul's 1 s gRPC health checks. Prints a table.
//!
//! `cargo bench --bench idle_footprint` (release build of the `priority` binary, real Consul dev
//! agent on free loopback ports). Target: under 10 MiB RSS (a grpc-go server idles at ~8.5 MiB).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use protomesh::consul::{DevAgent, DevAgentOptions, QueryOptions};

/// Idle time measured after the instance passes.
const IDLE: Duration = Duration::from_secs(10);
/// Instances measured (side by side, same run).
const INSTANCES: usize = 3;

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

/// A field of /proc/<pid>/status in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("field present")
}

/// utime + stime of a process, in clock ticks (100 Hz on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process alive");
    let after_name = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks harness=false benches to list; nothing to list
    }
    let binary = release_priority();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let consul = DevAgentOptions::find_binary().expect("consul not found: run scripts/setup.sh");
        let agent = DevAgent::start(DevAgentOptions::new(consul)).expect("consul starts");
        agent.wait_ready(Duration::from_secs(30)).await.expect("consul ready");
        let client = agent.client().expect("client");

        let mut children: Vec<_> = (0..INSTANCES)
            .map(|_| {
                Command::new(&binary)
                    .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
                    .env("CONSUL_HTTP_ADDR", agent.http_addr())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("priority starts")
            })
            .collect();

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let passing = client
                .health_service("priority", &QueryOptions { passing: true, ..Default::default() })
                .await
                .map(|r| r.value.len())
                .unwrap_or(0);
            if passing == INSTANCES {
                break;
            }
            assert!(Instant::now() < deadline, "instances did not pass in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let before: Vec<u64> = children.iter().map(|c| cpu_ticks(c.id())).collect();
        tokio::time::sleep(IDLE).await;
        println!("idle priority instance (release), {INSTANCES} side by side, {IDLE:?} idle under 1 s gRPC health checks");
        println!("{:<10} {:>10} {:>10} {:>8} {:>14} {:>12}", "instance", "RSS MiB", "peak MiB", "threads", "idle CPU ms/s", "vs grpc-go");
        for (n, child) in children.iter().enumerate() {
            let pid = child.id();
            let rss = proc_kib(pid, "VmRSS:") as f64 / 1024.0;
            let hwm = proc_kib(pid, "VmHWM:") as f64 / 1024.0;
            let threads = proc_kib(pid, "Threads:");
            let cpu_ms = (cpu_ticks(pid) - before[n]) as f64 * 10.0 / IDLE.as_secs_f64();
            println!("{:<10} {rss:>10.2} {hwm:>10.2} {threads:>8} {cpu_ms:>14.2} {:>11.2}x", n + 1, rss / 8.5);
        }
        println!("target: RSS < 10 MiB; grpc-go reference 8.5 MiB");
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
    });
}
