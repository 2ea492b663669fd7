//! Across hosts of our own ([`protomesh_hosts::Lab`]: network namespaces on a bridge, traffic only
//! inside them): a real three-server Consul cluster plus a client agent, `priority` on three
//! hosts each registering with its own agent and advertising its host's address, the gateway on
//! the first host. Callers in the test process (the machine, on the bridge) score under load
//! through the gateway's JSON route and through the mesh client while a host fails; every test
//! prints its figures (calls, failures, time to detect, to elect, to recover). Labs run one at a
//! time.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protomesh::client::Mesh;
use protomesh::consul::QueryOptions;
use protomesh_hosts::{HostsError, Lab, LabOptions};
use protomesh_mesh::ServiceProcess;
use support::{binary, eventually, tempdir, tool, unique, ONE_AT_A_TIME};

/// Callers of each kind (HTTP through the gateway, gRPC through the mesh client).
const WORKERS: usize = 8;

/// The gateway's port on its host.
const GATEWAY_PORT: u16 = 8080;

/// The hosts, with priority on `host2`..`host4` and the gateway on `host1`.
struct Cluster {
    priorities: Vec<ServiceProcess>,
    _gateway: ServiceProcess,
    gateway: String,
    lab: Lab,
    /// Last: the next lab waits until this one is gone (fields drop in order).
    _one: tokio::sync::MutexGuard<'static, ()>,
}

/// Starts a process on the host at `index` of `lab`, registering with that host's agent.
fn spawn_on(lab: &Lab, index: usize, name: &str, args: &[String]) -> ServiceProcess {
    let host = lab.host(index);
    let mut command = host.exec();
    let ip = std::path::PathBuf::from(command.remove(0));
    command.push(binary(name).display().to_string());
    command.extend(args.iter().cloned());
    ServiceProcess::spawn(
        unique(&format!("{name}-{}", host.name)),
        &ip,
        &command,
        &[
            ("CONSUL_HTTP_ADDR".into(), "127.0.0.1:8500".into()),
            ("PROTOMESH_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
        ],
        tempdir().join(format!("{name}-{}.log", host.name)),
    )
    .unwrap()
}

/// Four hosts (three Consul servers, one client agent), priority on hosts 2–4, the gateway on
/// host 1; `None` (the test says SKIPPED) where namespaces cannot be made (not root).
async fn start() -> Option<Cluster> {
    let one = ONE_AT_A_TIME.lock().await;
    let options = LabOptions::new(4, tool("consul"), tempdir().join("lab"));
    let mut lab = match Lab::create(options) {
        Ok(lab) => lab,
        Err(HostsError::NotPermitted(why)) if !nix::unistd::geteuid().is_root() => {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        Err(err) => panic!("{err}"),
    };
    lab.start_consul().unwrap();
    let started = Instant::now();
    lab.wait_cluster(Duration::from_secs(60)).await.unwrap();
    eprintln!("cluster elected a leader in {:?}", started.elapsed());
    let priorities = (1..4)
        .map(|index| {
            let listen = format!("{}:0", lab.host(index).address);
            spawn_on(&lab, index, "priority", &["--listen".into(), listen])
        })
        .collect();
    let gateway = format!("{}:{GATEWAY_PORT}", lab.host(0).address);
    // Limits far above the load: the callers are eight, not a crowd.
    let gateway_args = [
        "--listen",
        &gateway,
        "--rate-limit",
        "public=1000000/1s",
        "--rate-limit",
        "default=1000000/1s",
    ]
    .map(str::to_owned);
    let gateway_process = spawn_on(&lab, 0, "gateway", &gateway_args);
    let consul = lab.consul(0).unwrap();
    eventually(
        Duration::from_secs(30),
        "3 passing priority instances",
        || async {
            let entries = consul
                .health_service("priority", &passing_only())
                .await
                .ok()?;
            (entries.value.len() == 3).then_some(())
        },
    )
    .await;
    Some(Cluster {
        _one: one,
        lab,
        priorities,
        _gateway: gateway_process,
        gateway,
    })
}

/// Both kinds of callers at once, and the mesh client of the gRPC ones.
struct Callers {
    calls: support::http::Callers,
    mesh: Mesh,
}

impl Callers {
    async fn start(cluster: &Cluster) -> Self {
        let mesh = Mesh::from_consul(cluster.lab.consul(0).unwrap(), support::DESCRIPTORS).unwrap();
        let calls =
            support::http::Callers::start(&mesh.channel("priority"), &cluster.gateway, WORKERS);
        // Warm: every caller has answers before anything fails.
        eventually(Duration::from_secs(20), "calls flowing", || async {
            (calls.http.calls.load(Ordering::Relaxed) > 200
                && calls.grpc.calls.load(Ordering::Relaxed) > 200)
                .then_some(())
        })
        .await;
        Self { calls, mesh }
    }

    /// Calls made so far, both kinds.
    fn calls(&self) -> usize {
        self.calls.calls()
    }

    /// Calls the mesh client sent to the instance at `address` (`host:port`) so far.
    fn requests_to(&self, host: &str) -> u64 {
        let prefix = format!("{host}:");
        self.mesh
            .balancers()
            .iter()
            .flat_map(|balancer| balancer.snapshot())
            .filter(|endpoint| endpoint.address.starts_with(&prefix))
            .map(|endpoint| endpoint.requests)
            .sum()
    }

    /// Stops both; asserts no call failed and prints the figures under `label`.
    async fn finish(self, label: &str) {
        self.calls.finish(label).await;
    }
}

/// A health query for passing instances only.
fn passing_only() -> QueryOptions {
    QueryOptions {
        passing: true,
        ..Default::default()
    }
}

/// The priority instances Consul says pass, as the agent of `host1` sees them: (ID, address).
async fn passing_instances(lab: &Lab) -> Vec<(String, String)> {
    let Ok(entries) = lab
        .consul(0)
        .unwrap()
        .health_service("priority", &passing_only())
        .await
    else {
        return Vec::new();
    };
    entries
        .value
        .into_iter()
        .map(|entry| (entry.service.id, entry.service.address))
        .collect()
}

/// The addresses of the priority instances Consul says pass.
async fn passing(lab: &Lab) -> Vec<String> {
    passing_instances(lab)
        .await
        .into_iter()
        .map(|(_, address)| address)
        .collect()
}

#[tokio::test]
async fn a_host_that_dies_without_a_goodbye_fails_no_call() {
    let Some(mut cluster) = start().await else {
        return;
    };
    // Every host's instance registered with its own agent, under its host's address.
    let mut addresses = passing(&cluster.lab).await;
    addresses.sort();
    let mut hosts: Vec<String> = (1..4)
        .map(|index| cluster.lab.host(index).address.to_string())
        .collect();
    hosts.sort();
    assert_eq!(addresses, hosts);

    let callers = Callers::start(&cluster).await;
    let dead = cluster.lab.host(3).address.to_string();
    eventually(Duration::from_secs(10), "calls reaching host4", || async {
        (callers.requests_to(&dead) > 100).then_some(())
    })
    .await;
    // host4 (a client agent's host, with a priority instance) dies: link down, then kill -9.
    cluster.lab.silence(3).unwrap();
    let died = Instant::now();
    let calls_at_death = callers.calls();
    let detected = eventually(
        Duration::from_secs(30),
        "Consul marking the dead host's instance critical",
        || async {
            let passing = passing(&cluster.lab).await;
            (passing.len() == 2 && !passing.contains(&dead)).then(|| died.elapsed())
        },
    )
    .await;
    // Calls go on past the detection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        callers.calls() > calls_at_death + 1000,
        "calls stalled after the death"
    );
    eprintln!("Consul marked host4's instance critical {detected:?} after it died");
    callers.finish("host4 died silently").await;
    cluster.priorities.truncate(2);
}

#[tokio::test]
async fn the_consul_leader_dying_fails_no_call_and_another_is_elected() {
    let Some(mut cluster) = start().await else {
        return;
    };
    let callers = Callers::start(&cluster).await;
    let leader = eventually(Duration::from_secs(10), "a leader", || async {
        cluster.lab.leader(0).await.ok().flatten()
    })
    .await;
    let asking = (0..3).find(|&index| index != leader).unwrap();
    // The leader's agent dies at once (kill -9, no leave); its host's services stay up.
    cluster.lab.stop_agent(leader);
    let died = Instant::now();
    let elected = eventually(Duration::from_secs(30), "a new leader", || async {
        match cluster.lab.leader(asking).await {
            Ok(Some(new)) if new != leader => Some((new, died.elapsed())),
            _ => None,
        }
    })
    .await;
    eprintln!(
        "the leader ({}) died; {} elected {:?} later",
        cluster.lab.host(leader).name,
        cluster.lab.host(elected.0).name,
        elected.1
    );
    // The cluster still answers the live agents' queries.
    let entries = cluster
        .lab
        .consul(asking)
        .unwrap()
        .health_service("priority", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        entries.value.len(),
        3,
        "every instance still in the catalog"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    callers.finish("the Consul leader died").await;
    // Its agent back: it rejoins, and every agent agrees on one leader again.
    cluster.lab.start_agent(leader).unwrap();
    cluster
        .lab
        .wait_cluster(Duration::from_secs(60))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_host_cut_off_for_30_s_fails_no_call_and_comes_back() {
    let Some(cluster) = start().await else {
        return;
    };
    let callers = Callers::start(&cluster).await;
    let cut = cluster.lab.host(3).address.to_string();
    eventually(Duration::from_secs(10), "calls reaching host4", || async {
        (callers.requests_to(&cut) > 100).then_some(())
    })
    .await;
    cluster.lab.partition(3).unwrap();
    let partitioned = Instant::now();
    let detected = eventually(
        Duration::from_secs(30),
        "the cut-off host's instance critical",
        || async {
            let passing = passing(&cluster.lab).await;
            (passing.len() == 2 && !passing.contains(&cut)).then(|| partitioned.elapsed())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(partitioned.elapsed())).await;
    cluster.lab.heal(3).unwrap();
    let healed = Instant::now();
    let before = callers.requests_to(&cut);
    let back = eventually(
        Duration::from_secs(90),
        "the healed host's instance passing again",
        || async {
            passing(&cluster.lab)
                .await
                .contains(&cut)
                .then(|| healed.elapsed())
        },
    )
    .await;
    let served = eventually(
        Duration::from_secs(30),
        "calls reaching the healed host",
        || async { (callers.requests_to(&cut) > before + 100).then(|| healed.elapsed()) },
    )
    .await;
    eprintln!(
        "host4 cut off for 30 s: critical after {detected:?}; healed, passing after {back:?}, \
         serving calls after {served:?}"
    );
    callers.finish("host4 cut off for 30 s").await;
}

#[tokio::test]
async fn a_rolling_restart_of_every_instance_fails_no_call() {
    let Some(mut cluster) = start().await else {
        return;
    };
    let callers = Callers::start(&cluster).await;
    let started = Instant::now();
    for index in 1..4 {
        let host = cluster.lab.host(index).address.to_string();
        let old_id = passing_instances(&cluster.lab)
            .await
            .into_iter()
            .find(|(_, address)| *address == host)
            .unwrap()
            .0;
        let old = &mut cluster.priorities[index - 1];
        old.stop(Duration::from_secs(10)).await.unwrap();
        let listen = format!("{}:0", cluster.lab.host(index).address);
        cluster.priorities[index - 1] = spawn_on(
            &cluster.lab,
            index,
            "priority",
            &["--listen".into(), listen],
        );
        eventually(
            Duration::from_secs(30),
            "the restarted instance passing",
            || async {
                let passing = passing_instances(&cluster.lab).await;
                (passing.len() == 3 && passing.iter().all(|(id, _)| *id != old_id)).then_some(())
            },
        )
        .await;
    }
    eprintln!(
        "every priority instance restarted, one host after another, in {:?}",
        started.elapsed()
    );
    callers.finish("a rolling restart").await;
}

#[tokio::test]
async fn mesh_up_hosts_brings_the_topology_up_and_ctrl_c_deletes_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    binary("priority");
    binary("gateway");
    let mut mesh = Interrupted(
        std::process::Command::new(binary("mesh"))
            .args(["up", "--hosts", "2", "--gateway", "127.0.0.1:8080"])
            .arg("--log-dir")
            .arg(tempdir().join("mesh-up-hosts"))
            .env("CONSUL_BIN", tool("consul"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = tokio::process::ChildStdout::from_std(mesh.0.stdout.take().unwrap()).unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut printed = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("Ctrl-C");
            printed.push(line);
            if done {
                break;
            }
        }
    })
    .await;
    let text = printed.join("\n");
    if text.is_empty() && read.is_ok() && !nix::unistd::geteuid().is_root() {
        let status = mesh.0.wait().unwrap();
        eprintln!("SKIPPED: mesh up --hosts exited with {status} (needs root)");
        return;
    }
    assert!(read.is_ok(), "mesh up --hosts printed only:\n{text}");
    assert!(text.contains("2 hosts up, datacenter dc1"), "{text}");
    let namespaces: Vec<String> = printed
        .iter()
        .filter(|line| line.starts_with("  host"))
        .filter_map(|line| line.split("netns ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert_eq!(namespaces.len(), 2, "{text}");
    // The printed curl line works as printed (through the gateway on host1 to priority on host2).
    let curl = printed
        .iter()
        .find_map(|line| line.strip_prefix("Try: "))
        .unwrap_or_else(|| panic!("{text}"));
    let url = curl
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap();
    let answer = support::http::http(
        "POST",
        url.to_owned(),
        vec![],
        Some(support::http::SCORE_JSON.to_owned()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains(r#""score":72"#), "{}", answer.body);

    let status = mesh.interrupt();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for namespace in &namespaces {
        assert!(
            !listed.contains(namespace.as_str()),
            "{namespace} left behind"
        );
    }
}

/// A `mesh` process that gets Ctrl-C (SIGINT) when dropped, so that it deletes its hosts even
/// when the test fails halfway (SIGKILL would leave them behind).
struct Interrupted(std::process::Child);

impl Interrupted {
    /// Sends SIGINT and waits (60 s at most) for the exit.
    fn interrupt(&mut self) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        for _ in 0..600 {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        self.0.wait().ok()
    }
}

impl Drop for Interrupted {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.interrupt();
        }
    }
}
