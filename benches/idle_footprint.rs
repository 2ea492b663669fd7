//! Idle footprint of a registered priority instance: resident memory (VmRSS and its peak, VmHWM),
//! threads, and CPU time spent while idle under Consul's 1 s gRPC health checks. Prints a table.
//!
//! `cargo bench --bench idle_footprint` (release build of the `priority` binary, real Consul dev
//! agent on free loopback ports). Target: under 10 MiB RSS (a grpc-go server idles at ~8.5 MiB).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

mod support;

use support::{
    mib, pid_ticks, proc_status, release_priority, spawn_priority, start_consul, wait_passing,
    Children,
};

/// Idle time measured after the instance passes.
const IDLE: Duration = Duration::from_secs(10);
/// Instances measured (side by side, same run).
const INSTANCES: usize = 3;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks harness=false benches to list; nothing to list
    }
    let binary = release_priority();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (agent, client) = start_consul().await;
        let children = Children(
            (0..INSTANCES)
                .map(|_| spawn_priority(&binary, &agent.http_addr()))
                .collect(),
        );
        wait_passing(&client, "priority", INSTANCES).await;

        let before: Vec<u64> = children.0.iter().map(|c| pid_ticks(c.id())).collect();
        tokio::time::sleep(IDLE).await;
        println!("idle priority instance (release), {INSTANCES} side by side, {IDLE:?} idle under 1 s gRPC health checks");
        println!("{:<10} {:>10} {:>10} {:>8} {:>14} {:>12}", "instance", "RSS MiB", "peak MiB", "threads", "idle CPU ms/s", "vs grpc-go");
        for (n, child) in children.0.iter().enumerate() {
            let pid = child.id();
            let rss = mib(proc_status(pid, "VmRSS"));
            let hwm = mib(proc_status(pid, "VmHWM"));
            let threads = proc_status(pid, "Threads");
            let cpu_ms = (pid_ticks(pid) - before[n]) as f64 * 10.0 / IDLE.as_secs_f64();
            println!("{:<10} {rss:>10.2} {hwm:>10.2} {threads:>8} {cpu_ms:>14.2} {:>11.2}x", n + 1, rss / 8.5);
        }
        println!("target: RSS < 10 MiB; grpc-go reference 8.5 MiB");
        drop(children);
    });
}
