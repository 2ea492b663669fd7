//! The mesh client's resilience against real Consul and real service processes: deadlines reach
//! the callee and end stalled calls, side-effecting methods are never retried, the circuit breaker
//! opens and falls back, new instances get traffic at once, the cache outlives a Consul outage,
//! busy endpoints get more connections, and `mesh status --client` shows it all.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protomesh::admin::{AdminServer, AdminState};
use protomesh::client::{is_circuit_open, with_fallback, BreakerPolicy, ChannelOptions, Mesh};
use protomesh_priority::proto::protomesh::priority::v1::priority_service_client::PriorityServiceClient;
use protomesh_probe::proto::protomesh::probe::v1::{
    probe_service_client::ProbeServiceClient, EchoRequest, GetStatsRequest,
};
use support::{binary, eventually, spawn_priority, spawn_service, Consul, Load};

fn echo(delay_ms: u32, fail_code: i32) -> EchoRequest {
    EchoRequest {
        message: "hi".into(),
        delay_ms,
        fail_code,
    }
}

/// Waits until Consul has `n` passing instances of `service`; returns their IDs.
async fn passing(consul: &Consul, service: &str, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(15),
        &format!("{n} passing {service}"),
        || async {
            let ids: Vec<String> = consul
                .instances(service, true)
                .await
                .into_iter()
                .map(|e| e.service.id)
                .collect();
            (ids.len() == n).then_some(ids)
        },
    )
    .await
}

#[tokio::test]
async fn a_50ms_deadline_reaches_the_callee_and_ends_a_stalled_call_in_time() {
    let consul = Consul::start().await;
    let _probe = spawn_service("probe", &consul.addr(), &[]);
    passing(&consul, "probe", 1).await;
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let mut client = ProbeServiceClient::new(mesh.channel("probe"));
    // Warm the path (discovery, connection) so the measured call is the deadline alone.
    client.echo(echo(0, 0)).await.unwrap();

    let mut call = tonic::Request::new(echo(5_000, 0));
    call.set_timeout(Duration::from_millis(50));
    let started = Instant::now();
    let status = client.echo(call).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(elapsed < Duration::from_millis(100), "took {elapsed:?}");

    let stats = client
        .get_stats(GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let seen = stats
        .last_grpc_timeout_us
        .expect("the callee saw a deadline");
    assert!(
        (1..50_000).contains(&seen),
        "callee saw grpc-timeout {seen} µs"
    );
}

#[tokio::test]
async fn a_method_with_side_effects_is_never_retried_and_a_safe_one_is() {
    let consul = Consul::start().await;
    let _probe = spawn_service("probe", &consul.addr(), &[]);
    passing(&consul, "probe", 1).await;
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let mut client = ProbeServiceClient::new(mesh.channel("probe"));

    let status = client.record(echo(0, 14)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let status = client.echo(echo(0, 14)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let stats = client
        .get_stats(GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.calls["Record"], 1, "Record has side effects: one try");
    assert_eq!(
        stats.calls["Echo"], 3,
        "Echo is NO_SIDE_EFFECTS: retried up to 3 attempts"
    );
}

#[tokio::test]
async fn the_circuit_breaker_opens_falls_back_and_closes_after_probes() {
    let consul = Consul::start().await;
    let _probe = spawn_service("probe", &consul.addr(), &[]);
    passing(&consul, "probe", 1).await;
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let options = ChannelOptions {
        breaker: BreakerPolicy {
            consecutive_failures: 3,
            open_for: Duration::from_millis(300),
            probes: 2,
            ..BreakerPolicy::default()
        },
        ..ChannelOptions::default()
    };
    let mut client = ProbeServiceClient::new(mesh.channel_with("probe", options));

    for _ in 0..3 {
        // Record is never retried, so each call is one failure the breaker counts.
        client.record(echo(0, 14)).await.unwrap_err();
    }
    let refused = client.record(echo(0, 0)).await.unwrap_err();
    assert!(is_circuit_open(&refused), "{refused:?}");
    assert!(refused.message().contains("\"probe\""), "{refused:?}");
    let answer = with_fallback(client.echo(echo(0, 0)), |_| Default::default())
        .await
        .unwrap();
    assert_eq!(answer.message, "", "the caller's fallback answered");
    let stats = client.get_stats(GetStatsRequest {}).await;
    assert!(
        stats.is_err(),
        "every method of the service is refused while open"
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..2 {
        client.echo(echo(0, 0)).await.unwrap();
    }
    let breaker = mesh.breaker("probe").unwrap();
    assert_eq!(breaker.state(), protomesh::client::BreakerState::Closed);
    assert_eq!(breaker.times_opened(), 1);
    let stats = client
        .get_stats(GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.calls["Record"], 3, "refused calls never reached it");
}

#[tokio::test]
async fn a_fourth_instance_gets_calls_within_a_second_of_passing() {
    let consul = Consul::start().await;
    let mut instances: Vec<_> = (0..3)
        .map(|_| spawn_priority(&consul.addr(), &[]))
        .collect();
    let before = passing(&consul, "priority", 3).await;
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let load = Load::start(&mesh.channel("priority"), 8);

    instances.push(spawn_priority(&consul.addr(), &[]));
    let fourth = eventually(Duration::from_secs(15), "the 4th passing", || async {
        let ids = consul
            .instances("priority", true)
            .await
            .into_iter()
            .map(|e| e.service.id)
            .collect::<Vec<_>>();
        ids.into_iter().find(|id| !before.contains(id))
    })
    .await;
    let passing_at = Instant::now();
    let balancer = mesh.balancers().into_iter().next().unwrap();
    let served_at = eventually(Duration::from_secs(5), "calls to the 4th", || async {
        balancer
            .snapshot()
            .iter()
            .any(|e| e.id == fourth && e.requests > 0)
            .then(Instant::now)
    })
    .await;
    let (calls, failures) = load.finish().await;
    assert!(calls > 100, "load was applied");
    assert_eq!(failures, 0);
    let delay = served_at - passing_at;
    assert!(
        delay < Duration::from_secs(1),
        "the 4th got its first call {delay:?} after passing"
    );
}

#[tokio::test]
async fn calls_go_on_from_the_cache_while_consul_is_down_and_it_follows_when_consul_returns() {
    let mut consul = Consul::start().await;
    let _instances: Vec<_> = (0..2)
        .map(|_| spawn_priority(&consul.addr(), &[]))
        .collect();
    passing(&consul, "priority", 2).await;
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let load = Load::start(&mesh.channel("priority"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    consul.agent.stop().await;
    let outage = Instant::now();
    let stale = eventually(Duration::from_secs(10), "the cache going stale", || async {
        let status = mesh.status();
        status.0[0].discovery.stale_ms.map(|_| status)
    })
    .await;
    assert_eq!(
        stale.0[0].endpoints.len(),
        2,
        "the last healthy set is kept"
    );
    assert!(stale.to_string().contains("STALE"), "{stale}");
    let calls_at_outage = load.calls.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    let during = load.calls.load(Ordering::Relaxed) - calls_at_outage;
    assert!(during > 1_000, "only {during} calls during the outage");
    assert_eq!(load.failures.load(Ordering::Relaxed), 0);

    consul.agent.restart(Duration::from_secs(30)).await.unwrap();
    // The dev agent forgot everything; the services register again (their registrars check
    // every 2 s), the cache follows.
    eventually(Duration::from_secs(40), "2 passing again", || async {
        (consul.instances("priority", true).await.len() == 2).then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "the cache live again", || async {
        let status = mesh.status();
        let target = &status.0[0];
        (target.discovery.stale_ms.is_none() && target.endpoints.len() == 2).then_some(())
    })
    .await;
    let (calls, failures) = load.finish().await;
    assert!(calls > during);
    assert_eq!(failures, 0);
}

#[tokio::test]
async fn a_busy_endpoint_gets_more_than_one_connection() {
    let consul = Consul::start().await;
    let _instance = spawn_priority(&consul.addr(), &[]);
    passing(&consul, "priority", 1).await;
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let load = Load::start(&mesh.channel("priority"), 512);
    let balancer = mesh.balancers().into_iter().next().unwrap();
    let connections = eventually(Duration::from_secs(10), "a second connection", || async {
        let snapshot = balancer.snapshot();
        snapshot.first().map(|e| e.connections).filter(|c| *c > 1)
    })
    .await;
    let (_, failures) = load.finish().await;
    assert_eq!(failures, 0);
    assert!(connections <= protomesh::client::ConnectionPolicy::default().max_connections);
}

#[tokio::test]
async fn mesh_status_client_shows_endpoints_health_ejection_in_flight_and_latency() {
    let consul = Consul::start().await;
    let _instances: Vec<_> = (0..2)
        .map(|_| spawn_priority(&consul.addr(), &[]))
        .collect();
    let ids = passing(&consul, "priority", 2).await;
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let mut client = PriorityServiceClient::new(mesh.channel("priority"));
    for _ in 0..50 {
        client.score(support::score_request()).await.unwrap();
    }
    let admin = AdminServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin_addr = admin.local_addr().to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(admin.serve(AdminState::new(Some(mesh.clone())), stop.clone()));

    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary("mesh"))
            .args(["status", "--client", &admin_addr])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    stop.cancel();
    serving.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for header in [
        "CONSUL",
        "ROTATION",
        "IN-FLIGHT",
        "EWMA-MS",
        "breaker closed",
    ] {
        assert!(stdout.contains(header), "no {header}: {stdout}");
    }
    for id in &ids {
        let line = stdout
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("no line for {id}: {stdout}"));
        assert!(line.contains("passing") && line.contains(" in "), "{line}");
    }
    let calls: u64 = mesh.status().0[0]
        .endpoints
        .iter()
        .map(|e| e.requests)
        .sum();
    assert_eq!(calls, 50);
}

#[tokio::test]
async fn mesh_status_client_names_an_admin_address_that_does_not_answer() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let output = Command::new(binary("mesh"))
        .args(["status", "--client", &addr])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("--admin"),
        "{stderr}"
    );
}
