//! The mesh client against real Consul and real priority processes: calls by service name spread
//! over instances, survive an instance killed with SIGKILL, and fail fast for unknown services.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protomesh::client::Mesh;
use protomesh_priority::proto::protomesh::priority::v1::priority_service_client::PriorityServiceClient;
use support::{eventually, score_request, spawn_priority, Consul, Load};

async fn mesh_with_instances(consul: &Consul, n: usize) -> Mesh {
    eventually(Duration::from_secs(15), "passing instances", || async {
        (consul.instances("priority", true).await.len() == n).then_some(())
    })
    .await;
    Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap()
}

#[tokio::test]
async fn calls_spread_over_three_instances() {
    let consul = Consul::start().await;
    let _instances: Vec<_> = (0..3)
        .map(|_| spawn_priority(&consul.addr(), &[]))
        .collect();
    let mesh = mesh_with_instances(&consul, 3).await;
    let channel = mesh.channel("priority");

    let total = 3_000;
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = PriorityServiceClient::new(channel.clone());
            let next = next.clone();
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let response = client.score(score_request()).await.unwrap().into_inner();
                    assert_eq!(response.score, 72);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }

    let balancer = mesh.balancers().into_iter().next().unwrap();
    let per_endpoint: Vec<u64> = balancer.snapshot().iter().map(|e| e.requests).collect();
    assert_eq!(per_endpoint.len(), 3);
    // Every call reached an endpoint; a few more attempts may have been sent when one was slow
    // past its attempt timeout on this busy machine (a retry, by design).
    let sent = per_endpoint.iter().sum::<u64>();
    assert!(sent >= total as u64, "{per_endpoint:?}");
    for requests in per_endpoint.iter().copied() {
        let share = requests as f64 / sent as f64;
        assert!((0.20..=0.47).contains(&share), "shares {per_endpoint:?}");
    }
}

#[tokio::test]
async fn an_unknown_service_is_unavailable_naming_it_within_the_deadline() {
    let consul = Consul::start().await;
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    let mut client = PriorityServiceClient::new(mesh.channel("no-such-service"));
    let mut call = tonic::Request::new(score_request());
    call.set_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let status = client.score(call).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no-such-service"), "{status:?}");
}

#[tokio::test]
async fn killing_one_of_three_instances_under_load_fails_no_call() {
    let consul = Consul::start().await;
    // Consul checks every 5 s: the mesh client must notice the dead instance itself.
    let mut instances: Vec<_> = (0..3)
        .map(|_| spawn_priority(&consul.addr(), &["--check-interval", "5s"]))
        .collect();
    let mesh = mesh_with_instances(&consul, 3).await;
    let channel = mesh.channel("priority");

    let load = Load::start(&channel, 8);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = &mut instances[0];
    // Its instance ID, from its log ("registered in Consul").
    let dead_id = support::log_lines(victim)
        .iter()
        .find_map(|line| line["service_id"].as_str().map(str::to_owned))
        .expect("the victim registered");
    victim.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    victim.wait().await.unwrap();
    // The client notices (ejection) long before Consul does; then the load goes on a while.
    let balancer = mesh.balancers().into_iter().next().unwrap();
    let dead = || balancer.snapshot().into_iter().find(|e| e.id == dead_id);
    let after_first_failures = eventually(
        Duration::from_secs(3),
        "the dead endpoint ejected",
        || async {
            match dead() {
                Some(endpoint) => endpoint.ejected_for.map(|_| Some(endpoint.requests)),
                // Consul noticed first (it checks every 5 s): nothing left to compare.
                None => Some(None),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let later = dead().map(|e| e.requests);
    let (calls, failures) = load.finish().await;

    assert!(calls > 1_000, "load was applied");
    assert_eq!(failures, 0, "retries cover the killed instance");
    // Later, Consul may have dropped it (gone from the balancer): it received nothing either.
    assert!(
        later.is_none() || later == after_first_failures,
        "the dead instance receives nothing more: {after_first_failures:?} then {later:?}"
    );
}
