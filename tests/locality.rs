//! Where callers and instances run, against real Consul and real `priority` processes, under
//! load through the gateway's JSON route and through the mesh client:
//! - zones: three zones of two instances each, callers in zone `a` keep their calls in it, spill
//!   to `b` and `c` without a failed call when `a`'s instances are killed, and come back when `a`
//!   has instances again;
//! - datacenters: two Consul datacenters joined over the WAN; when every instance of `dc1` is
//!   gone (one stopped, the last killed), calls go to `dc2` without a failed call; when `dc1` has
//!   instances again, they come back; the gateway routes a service that runs only in the
//!   failover datacenter.
//!
//! Each test prints its figures (calls, failures, shares, times to move).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use protomesh::client::{Balancer, Locality, Mesh};
use protomesh::consul::{DevAgent, DevAgentOptions, QueryOptions};
use protomesh_mesh::ServiceProcess;
use support::http::{http, SCORE_JSON};
use support::{
    binary, eventually, free_port, spawn_priority, tempdir, tool, unique, Consul, ONE_AT_A_TIME,
};

/// Callers of each kind.
const WORKERS: usize = 8;

/// How long each phase runs under load.
const PHASE: Duration = Duration::from_secs(3);

/// Calls each endpoint of the mesh client's balancer got so far, by instance id, with its zone.
fn calls_by_endpoint(balancer: &Balancer) -> BTreeMap<String, (Option<String>, u64)> {
    balancer
        .snapshot()
        .into_iter()
        .map(|e| (e.id, (e.zone, e.requests)))
        .collect()
}

/// Calls each endpoint got so far, by instance id, with its datacenter (`local` or a failover
/// one).
fn calls_by_datacenter(balancer: &Balancer) -> BTreeMap<String, (Option<String>, u64)> {
    balancer
        .snapshot()
        .into_iter()
        .map(|e| {
            let dc = e.datacenter.unwrap_or_else(|| "local".to_owned());
            (e.id, (Some(dc), e.requests))
        })
        .collect()
}

/// Calls per zone (or datacenter) between two readings of [`calls_by_endpoint`] (or
/// [`calls_by_datacenter`]): an endpoint that left counts nothing; one that came counts from 0.
fn calls_by_zone(
    before: &BTreeMap<String, (Option<String>, u64)>,
    after: &BTreeMap<String, (Option<String>, u64)>,
) -> BTreeMap<String, u64> {
    let mut zones = BTreeMap::new();
    for (id, (zone, calls)) in after {
        let earlier = before.get(id).map_or(0, |(_, calls)| *calls);
        *zones.entry(zone.clone().unwrap_or_default()).or_insert(0) +=
            calls.saturating_sub(earlier);
    }
    zones
}

fn share(zones: &BTreeMap<String, u64>, zone: &str) -> f64 {
    let all: u64 = zones.values().sum();
    zones.get(zone).copied().unwrap_or(0) as f64 / all.max(1) as f64
}

/// Calls that failed on each of the mesh client's endpoints in `zone` so far, by instance id.
fn failures_in_zone(balancer: &Balancer, zone: &str) -> BTreeMap<String, u64> {
    balancer
        .snapshot()
        .into_iter()
        .filter(|e| e.zone.as_deref() == Some(zone))
        .map(|e| (e.id, e.failures))
        .collect()
}

/// Failures between two readings of [`failures_in_zone`] (an endpoint that left counts none).
fn failed_since(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    after
        .iter()
        .map(|(id, failures)| failures.saturating_sub(before.get(id).copied().unwrap_or(0)))
        .sum()
}

/// The gateway's calls that left its zone with no endpoint there left to try, so far.
fn spilled_unavailable(series: &BTreeMap<String, f64>) -> f64 {
    series
        .get("mesh_client_zone_spills_total{service=\"priority\",reason=\"unavailable\"}")
        .copied()
        .unwrap_or(0.0)
}

/// The gateway's `mesh_client_*` series for priority: `name{labels}` → value.
async fn gateway_series(admin: &str) -> BTreeMap<String, f64> {
    let text = http("GET", format!("http://{admin}/metrics"), vec![], None)
        .await
        .body;
    text.lines()
        .filter(|line| line.starts_with("mesh_client_") && line.contains("service=\"priority\""))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The gateway's same-zone share of calls to priority since `before` (its zone counters).
fn gateway_share(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> f64 {
    let delta = |locality: &str| {
        let key =
            format!("mesh_client_zone_calls_total{{service=\"priority\",locality=\"{locality}\"}}");
        after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
    };
    let (same, other) = (delta("same-zone"), delta("other-zone"));
    same / (same + other).max(1.0)
}

/// A gateway on free ports with `args`, rate limits far above the load; (process, address,
/// admin address) once it routes priority.
async fn gateway(consul_addr: &str, args: &[&str]) -> (ServiceProcess, String, String) {
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut all = vec![
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--rate-limit",
        "public=1000000/1s",
        "--rate-limit",
        "default=1000000/1s",
    ];
    all.extend(args);
    let process = ServiceProcess::spawn(
        unique("gateway"),
        &binary("gateway"),
        &all.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
        &[
            ("CONSUL_HTTP_ADDR".into(), consul_addr.into()),
            ("PROTOMESH_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
        ],
        tempdir().join("gateway.log"),
    )
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "the gateway routing priority",
        || async {
            tokio::net::TcpStream::connect(&listen).await.ok()?;
            let routes = http("GET", format!("http://{listen}/routes"), vec![], None).await;
            (routes.status == 200 && routes.body.contains("PriorityService")).then_some(())
        },
    )
    .await;
    (process, listen, admin)
}

/// Both kinds of callers, and the mesh client's balancer.
struct Callers {
    calls: support::http::Callers,
    balancer: Balancer,
}

impl Callers {
    async fn start(mesh: &Mesh, gateway: &str) -> Self {
        let calls = support::http::Callers::start(&mesh.channel("priority"), gateway, WORKERS);
        let balancer = eventually(Duration::from_secs(10), "the balancer", || async {
            mesh.balancers().into_iter().next()
        })
        .await;
        Self { calls, balancer }
    }

    /// Phases of load until one in which zone a failed no call, three at most (a phase in which
    /// an instance of this shared machine stalled past the attempt timeouts was not normal load:
    /// the calls rightly left the zone); asserts that at least 95% of that phase's calls
    /// through the mesh client and through the gateway stayed in zone a, and returns the
    /// readings at its end.
    async fn stay_in_zone_a(
        &self,
        label: &str,
        admin: &str,
        mesh: &Mesh,
    ) -> (
        BTreeMap<String, (Option<String>, u64)>,
        BTreeMap<String, f64>,
    ) {
        for phase in 1..=3 {
            let (start, gateway_start) = (
                calls_by_endpoint(&self.balancer),
                gateway_series(admin).await,
            );
            let failed_before = failures_in_zone(&self.balancer, "a");
            tokio::time::sleep(PHASE).await;
            let (end, gateway_end) = (
                calls_by_endpoint(&self.balancer),
                gateway_series(admin).await,
            );
            let failed = failed_since(&failed_before, &failures_in_zone(&self.balancer, "a"));
            let gateway_spilled =
                spilled_unavailable(&gateway_end) - spilled_unavailable(&gateway_start);
            let by_zone = calls_by_zone(&start, &end);
            let gateway_in_a = gateway_share(&gateway_start, &gateway_end);
            eprintln!(
                "{label}, phase {phase}: mesh client calls by zone {by_zone:?} ({:.1}% in a, \
                 {failed} failed in a); gateway {:.1}% in a ({gateway_spilled} calls left a \
                 with no endpoint there to try)",
                share(&by_zone, "a") * 100.0,
                gateway_in_a * 100.0
            );
            if (failed == 0 && gateway_spilled == 0.0) || phase == 3 {
                assert!(
                    share(&by_zone, "a") >= 0.95,
                    "{label}: mesh client: {by_zone:?}\n{}",
                    mesh.status()
                );
                assert!(gateway_in_a >= 0.95, "{label}: gateway: {gateway_end:?}");
                return (end, gateway_end);
            }
        }
        unreachable!("the third phase returns")
    }

    /// Stops them; asserts that load was applied and no call failed, and prints the calls.
    async fn finish(self, label: &str) {
        assert!(self.calls.calls() > 200, "load was applied");
        self.calls.finish(label).await;
    }
}

/// Waits until Consul (`consul`, in `datacenter` when given) has `n` passing priority instances.
async fn passing(consul: &protomesh::consul::ConsulClient, datacenter: Option<&str>, n: usize) {
    let options = QueryOptions {
        passing: true,
        datacenter: datacenter.map(str::to_owned),
        ..QueryOptions::default()
    };
    eventually(
        Duration::from_secs(30),
        &format!("{n} passing priority instances"),
        || async {
            let entries = consul.health_service("priority", &options).await.ok()?;
            (entries.value.len() == n).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_in_zone_a_stay_in_it_spill_to_b_and_c_when_it_dies_and_come_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let consul = Consul::start().await;
    let mut zones: BTreeMap<&str, Vec<ServiceProcess>> = BTreeMap::new();
    for zone in ["a", "b", "c"] {
        for _ in 0..2 {
            let instance = spawn_priority(&consul.addr(), &["--zone", zone]);
            zones.entry(zone).or_default().push(instance);
        }
    }
    passing(&consul.client, None, 6).await;
    let (_gateway, gateway_addr, admin) = gateway(&consul.addr(), &["--zone", "a"]).await;
    let locality = Locality {
        zone: Some("a".into()),
        failover_datacenters: Vec::new(),
    };
    let mesh = Mesh::located(consul.client.clone(), support::DESCRIPTORS, &locality).unwrap();
    let callers = Callers::start(&mesh, &gateway_addr).await;

    // Normal load: the calls stay in zone a.
    let (normal, gateway_normal) = callers.stay_in_zone_a("normal load", &admin, &mesh).await;

    // Zone a's instances are killed: the calls go to b and c, none fails.
    let killed: Vec<String> = failures_in_zone(&callers.balancer, "a")
        .into_keys()
        .collect();
    let killed_at = Instant::now();
    for mut instance in zones.remove("a").unwrap() {
        instance.signal(Signal::SIGKILL).unwrap();
        instance.wait().await.unwrap();
    }
    tokio::time::sleep(PHASE).await;
    let (dead, gateway_dead) = (
        calls_by_endpoint(&callers.balancer),
        gateway_series(&admin).await,
    );
    let by_zone = calls_by_zone(&normal, &dead);
    let zone_status = mesh.status().0[0].zone.clone().unwrap();
    eprintln!(
        "zone a killed: mesh client calls by zone {by_zone:?} in {:?}; spilled {} times with no \
         zone-a endpoint left; gateway {:.1}% in a",
        killed_at.elapsed(),
        zone_status.spilled_unavailable,
        gateway_share(&gateway_normal, &gateway_dead) * 100.0
    );
    assert!(
        by_zone.get("b").copied().unwrap_or(0) > 100
            && by_zone.get("c").copied().unwrap_or(0) > 100,
        "b and c take the calls: {by_zone:?}"
    );
    assert!(zone_status.spilled_unavailable > 0);
    assert!(
        gateway_share(&gateway_normal, &gateway_dead) < 0.10,
        "the gateway's calls left a too: {gateway_dead:?}"
    );

    // Zone a has instances again: the calls come back.
    let restarted: Vec<ServiceProcess> = (0..2)
        .map(|_| spawn_priority(&consul.addr(), &["--zone", "a"]))
        .collect();
    passing(&consul.client, None, 6).await;
    let passing_at = Instant::now();
    eventually(Duration::from_secs(10), "calls back in zone a", || async {
        let now = calls_by_endpoint(&callers.balancer);
        let back = now
            .iter()
            .filter(|(id, (zone, calls))| {
                zone.as_deref() == Some("a") && *calls > 0 && !killed.contains(id)
            })
            .count()
            == 2;
        back.then_some(())
    })
    .await;
    let back_after = passing_at.elapsed();
    eprintln!("zone a back: both instances called {back_after:?} after passing");
    callers.stay_in_zone_a("zone a back", &admin, &mesh).await;
    callers.finish("zones").await;
    drop(restarted);
}

/// A dev agent of datacenter `dc` on free ports.
async fn datacenter(dc: &str) -> Consul {
    let agent = DevAgent::start(
        DevAgentOptions::new(tool("consul"))
            .with_log_file(tempdir().join(format!("consul-{dc}.log")))
            .with_arg("-datacenter")
            .with_arg(dc),
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = agent.client().unwrap();
    Consul { agent, client }
}

/// Dev agents of `dc1` and `dc2`, joined over the WAN as an operator would.
async fn joined_datacenters() -> (Consul, Consul) {
    let (dc1, dc2) = (datacenter("dc1").await, datacenter("dc2").await);
    let joined = std::process::Command::new(tool("consul"))
        .args([
            "join",
            "-wan",
            &format!("-http-addr={}", dc2.addr()),
            &format!("127.0.0.1:{}", dc1.agent.ports().serf_wan),
        ])
        .output()
        .unwrap();
    assert!(joined.status.success(), "{joined:?}");
    (dc1, dc2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_routes_and_calls_a_service_that_runs_only_in_a_failover_datacenter() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (dc1, dc2) = joined_datacenters().await;
    let _away = spawn_priority(&dc2.addr(), &[]);
    passing(&dc1.client, Some("dc2"), 1).await;
    // dc1's catalog has no priority: the gateway learns the route from dc2's (it waits for it).
    let (_gateway, gateway_addr, _admin) =
        gateway(&dc1.addr(), &["--failover-datacenters", "dc2"]).await;
    let answer = http(
        "POST",
        format!("http://{gateway_addr}/v1/priority:score"),
        vec!["content-type: application/json".into()],
        Some(SCORE_JSON.into()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("score"), "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_over_to_dc2_while_dc1_has_no_instance_and_come_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (dc1, dc2) = joined_datacenters().await;
    let home: Vec<ServiceProcess> = (0..2).map(|_| spawn_priority(&dc1.addr(), &[])).collect();
    let _away: Vec<ServiceProcess> = (0..2).map(|_| spawn_priority(&dc2.addr(), &[])).collect();
    passing(&dc1.client, None, 2).await;
    // dc1's agent answers for dc2 over the WAN.
    passing(&dc1.client, Some("dc2"), 2).await;
    let (_gateway, gateway_addr, admin) =
        gateway(&dc1.addr(), &["--failover-datacenters", "dc2"]).await;
    let locality = Locality {
        zone: None,
        failover_datacenters: vec!["dc2".into()],
    };
    let mesh = Mesh::located(dc1.client.clone(), support::DESCRIPTORS, &locality).unwrap();
    let callers = Callers::start(&mesh, &gateway_addr).await;
    let failed_over = "mesh_client_failed_over{service=\"priority\"}";

    // dc1 serves; dc2's instances are known, and not called.
    let start = calls_by_datacenter(&callers.balancer);
    tokio::time::sleep(PHASE).await;
    let at_home = calls_by_zone(&start, &calls_by_datacenter(&callers.balancer));
    eprintln!("dc1 serving: calls by datacenter {at_home:?}");
    // A call whose two attempts in dc1 were abandoned (a stall of this busy machine) may go on
    // to dc2: that is the design; the share stays tiny.
    assert!(share(&at_home, "local") >= 0.99, "{at_home:?}");
    assert_eq!(callers.balancer.failed_over_to(), None);

    // dc1's instances go: one stopped, the last one killed (its calls in flight fail, and
    // Consul only notices a second or two later): calls go to dc2 and none fails.
    let mut home = home.into_iter();
    home.next()
        .unwrap()
        .stop(Duration::from_secs(15))
        .await
        .unwrap();
    let mut last = home.next().unwrap();
    let killed_at = Instant::now();
    last.signal(Signal::SIGKILL).unwrap();
    last.wait().await.unwrap();
    let moved = eventually(
        Duration::from_secs(10),
        "the mesh client in dc2",
        || async {
            (callers.balancer.failed_over_to().as_deref() == Some("dc2"))
                .then(|| killed_at.elapsed())
        },
    )
    .await;
    let gone = eventually(Duration::from_secs(15), "dc1 empty in Consul", || async {
        let entries = dc1
            .client
            .health_service(
                "priority",
                &QueryOptions {
                    passing: true,
                    ..QueryOptions::default()
                },
            )
            .await
            .ok()?;
        entries.value.is_empty().then(|| killed_at.elapsed())
    })
    .await;
    eventually(Duration::from_secs(10), "the gateway in dc2", || async {
        (gateway_series(&admin).await.get(failed_over) == Some(&1.0)).then_some(())
    })
    .await;
    let away_start = calls_by_datacenter(&callers.balancer);
    tokio::time::sleep(PHASE).await;
    let away = calls_by_zone(&away_start, &calls_by_datacenter(&callers.balancer));
    eprintln!(
        "dc1's last instance killed: the mesh client failed over {moved:?} later (Consul had \
         no passing dc1 instance {gone:?} later); then calls by datacenter {away:?}"
    );
    assert!(away["dc2"] > 100, "calls went to dc2: {away:?}");
    assert!(share(&away, "dc2") >= 0.99, "{away:?}");
    assert!(mesh
        .status()
        .to_string()
        .contains("FAILED OVER to datacenter dc2"));

    // dc1 has instances again: calls come back.
    let _back: Vec<ServiceProcess> = (0..2).map(|_| spawn_priority(&dc1.addr(), &[])).collect();
    passing(&dc1.client, None, 2).await;
    let passing_at = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the mesh client back in dc1",
        || async { callers.balancer.failed_over_to().is_none().then_some(()) },
    )
    .await;
    let back_in = passing_at.elapsed();
    eventually(
        Duration::from_secs(10),
        "the gateway back in dc1",
        || async {
            let series = gateway_series(&admin).await;
            (series.get(failed_over) == Some(&0.0)).then_some(())
        },
    )
    .await;
    let home_start = calls_by_datacenter(&callers.balancer);
    tokio::time::sleep(PHASE).await;
    let back = calls_by_zone(&home_start, &calls_by_datacenter(&callers.balancer));
    eprintln!("dc1 back: the mesh client called it {back_in:?} after it passed; then calls by datacenter {back:?}");
    assert!(back["local"] > 100, "{back:?}");
    assert!(share(&back, "local") >= 0.99, "{back:?}");
    callers.finish("datacenters").await;
}
