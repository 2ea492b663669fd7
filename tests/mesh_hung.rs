//! Hung instances are handled like dead ones, against real Consul and real priority processes:
//! an instance that accepts connections and never answers, and one whose host goes silent without
//! a reset (a network namespace whose link is set down), fail no idempotent call (each stalled
//! attempt is abandoned at its attempt timeout and sent to another instance) and are ejected.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use protomesh::client::{Balancer, EndpointSnapshot, Mesh};
use protomesh::consul::{DevAgent, DevAgentOptions, ServiceRegistration};
use protomesh_mesh::ServiceProcess;
use support::{
    binary, eventually, spawn_priority, tempdir, tool, unique, Consul, Load, ONE_AT_A_TIME,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Callers scoring at once.
const WORKERS: usize = 8;

/// Waits until Consul has `n` passing instances of `priority`.
async fn passing(consul: &Consul, n: usize) {
    eventually(Duration::from_secs(20), &format!("{n} passing"), || async {
        (consul.instances("priority", true).await.len() == n).then_some(())
    })
    .await;
}

/// The endpoint of `balancer` matching `which`, now.
fn endpoint(
    balancer: &Balancer,
    which: impl Fn(&EndpointSnapshot) -> bool,
) -> Option<EndpointSnapshot> {
    balancer.snapshot().into_iter().find(|e| which(e))
}

/// A listener that accepts every connection and holds it open, silent, until dropped.
struct Hung {
    port: u16,
    _task: JoinSet<()>,
}

impl Hung {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut task = JoinSet::new();
        task.spawn(async move {
            let mut held = Vec::new();
            // Bounded: the client opens a handful of connections (more after each ejection).
            for _ in 0..10_000 {
                match listener.accept().await {
                    Ok((socket, _)) => held.push(socket),
                    Err(_) => break,
                }
            }
        });
        Self { port, _task: task }
    }
}

#[tokio::test]
async fn an_instance_that_accepts_and_never_answers_fails_no_call_and_is_ejected() {
    let _one = ONE_AT_A_TIME.lock().await;
    let consul = Consul::start().await;
    let _instances: Vec<_> = (0..2)
        .map(|_| spawn_priority(&consul.addr(), &[]))
        .collect();
    passing(&consul, 2).await;
    let hung = Hung::start().await;
    let hung_id = unique("priority-hung");
    // No health check: Consul reports it passing, so only the client can find it out.
    let registration = ServiceRegistration::new(&hung_id, "priority")
        .with_address("127.0.0.1", hung.port)
        .with_tag("grpc");
    consul
        .client
        .agent_service_register(&registration)
        .await
        .unwrap();
    passing(&consul, 3).await;

    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let load = Load::start(&mesh.channel("priority"), WORKERS);
    let started = Instant::now();
    let balancer = eventually(Duration::from_secs(5), "the balancer", || async {
        mesh.balancers().into_iter().next()
    })
    .await;
    let is_hung = |e: &EndpointSnapshot| e.id == hung_id;
    let ejected = eventually(
        Duration::from_secs(10),
        "the hung instance ejected",
        || async { endpoint(&balancer, is_hung).filter(|e| e.ejected_for.is_some()) },
    )
    .await;
    let ejected_after = started.elapsed();
    // Keep calling through its first ejection and back (5 s), when it is tried and ejected again.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (calls, failures) = load.finish().await;
    let last = endpoint(&balancer, is_hung).unwrap();
    println!(
        "hung instance: ejected {ejected_after:?} after the load started ({} of its calls failed \
         by then); {calls} calls, {failures} failed; it got {} calls, {} abandoned, ejected again: {:?}",
        ejected.failures, last.requests, last.failures, last.ejected_for
    );
    assert!(calls > 1_000, "load was applied: {calls}");
    assert_eq!(failures, 0, "every Score call succeeded");
    assert!(ejected.failures >= 3, "{ejected:?}");
    assert!(
        last.requests < calls as u64 / 20,
        "the hung instance got {} of {calls} calls",
        last.requests
    );
}

/// A network namespace joined to the host by a veth pair on a private /30, deleted on drop.
struct NetNs {
    name: String,
    host_veth: String,
    ns_veth: String,
    host_ip: String,
    ns_ip: String,
}

/// Runs `ip` with `args`; the error names the command and what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| format!("ip {}: {err}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates the namespace and the link; `Err` when `ip netns add` itself fails (not root).
    fn create() -> Result<Result<Self, String>, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("pmtest-{pid}-{n}");
        ip(&["netns", "add", &name])?;
        // Link names are at most 15 bytes; the /30 is picked from the pid and the counter.
        let tag = format!("{}{n}", pid % 100_000);
        let base = (n % 64) * 4;
        let subnet = format!("10.213.{}", pid % 256);
        let netns = Self {
            host_veth: format!("pmh{tag}"),
            ns_veth: format!("pmn{tag}"),
            host_ip: format!("{subnet}.{}", base + 1),
            ns_ip: format!("{subnet}.{}", base + 2),
            name,
        };
        Ok(netns.wire().map(|()| netns))
    }

    fn wire(&self) -> Result<(), String> {
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &self.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        ip(&[
            "link",
            "add",
            &self.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &self.ns_veth,
        ])?;
        ip(&["link", "set", &self.ns_veth, "netns", &self.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", self.host_ip),
            "dev",
            &self.host_veth,
        ])?;
        ip(&["link", "set", &self.host_veth, "up"])?;
        in_ns(&[
            "addr",
            "add",
            &format!("{}/30", self.ns_ip),
            "dev",
            &self.ns_veth,
        ])?;
        in_ns(&["link", "set", &self.ns_veth, "up"])?;
        in_ns(&["link", "set", "lo", "up"])
    }

    /// Takes the namespace's side of the link down: the host side loses its carrier and drops
    /// every packet silently (no reset, no ICMP).
    fn silence(&self) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.ns_veth,
            "down",
        ])
        .unwrap();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the host end; the explicit
        // delete covers a namespace whose veth never moved in.
        if let Err(err) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {err}");
        }
        let _ = ip(&["link", "del", &self.host_veth]);
    }
}

#[tokio::test]
async fn a_host_gone_silent_without_reset_fails_no_call_and_is_ejected() {
    let _one = ONE_AT_A_TIME.lock().await;
    let netns = match NetNs::create() {
        Err(err) => {
            eprintln!("SKIPPED: cannot create a network namespace (needs root): {err}");
            return;
        }
        Ok(wired) => wired.unwrap(),
    };
    // The agent also listens on the host's end of the link, for the instance in the namespace.
    let agent = DevAgent::start(DevAgentOptions {
        binary: tool("consul"),
        http_port: None,
        node_name: None,
        log_file: Some(tempdir().join("consul.log")),
        extra_args: vec!["-client".into(), format!("127.0.0.1 {}", netns.host_ip)],
    })
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = agent.client().unwrap();
    let consul = Consul { agent, client };
    let _local: Vec<_> = (0..2)
        .map(|_| spawn_priority(&consul.addr(), &[]))
        .collect();
    let port = consul.agent.ports().http;
    let remote = ServiceProcess::spawn(
        unique("priority-netns"),
        &tool("ip"),
        &[
            "netns".to_owned(),
            "exec".to_owned(),
            netns.name.clone(),
            binary("priority").display().to_string(),
            "--listen".to_owned(),
            format!("{}:0", netns.ns_ip),
        ],
        &[
            (
                "CONSUL_HTTP_ADDR".into(),
                format!("{}:{port}", netns.host_ip),
            ),
            ("PROTOMESH_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
        ],
        tempdir().join("priority-netns.log"),
    )
    .unwrap();
    passing(&consul, 3).await;

    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let load = Load::start(&mesh.channel("priority"), WORKERS);
    let balancer = eventually(Duration::from_secs(5), "the balancer", || async {
        mesh.balancers().into_iter().next()
    })
    .await;
    let ns_prefix = format!("{}:", netns.ns_ip);
    let is_remote = |e: &EndpointSnapshot| e.address.starts_with(&ns_prefix);
    eventually(
        Duration::from_secs(10),
        "calls to the namespace",
        || async { endpoint(&balancer, is_remote).filter(|e| e.requests > 100) },
    )
    .await;

    netns.silence();
    let silent_at = Instant::now();
    let ejected = eventually(
        Duration::from_secs(10),
        "the silent host ejected",
        || async { endpoint(&balancer, is_remote).filter(|e| e.ejected_for.is_some()) },
    )
    .await;
    let ejected_after = silent_at.elapsed();
    // Calls go on while Consul's check notices and the instance leaves the set.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (calls, failures) = load.finish().await;
    println!(
        "silent host: ejected {ejected_after:?} after its link went down ({} of its calls \
         abandoned by then); {calls} calls, {failures} failed; still in the set: {:?}",
        ejected.failures,
        endpoint(&balancer, is_remote).map(|e| (e.requests, e.failures, e.ejected_for))
    );
    drop(remote);
    assert!(calls > 1_000, "load was applied: {calls}");
    assert_eq!(failures, 0, "every Score call succeeded");
    assert!(ejected.failures >= 3, "{ejected:?}");
}
