//! Discovery among bad neighbours: with several `grpc`-tagged services in Consul that accept TCP
//! connections and never answer, a new real service is still routed within 5 s of passing, a
//! deregistered one loses its routes within 5 s, and a hung one that leaves the catalog stops
//! being listed as unreachable within 5 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use protomesh::consul::{QueryOptions, ServiceRegistration};
use support::{eventually, http, Consul, EchoServer, TestGateway};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Services that accept and hold connections, never sending a byte.
const HUNG: usize = 6;
/// The bound the issue sets for a new service's routes and a departed one's.
const WITHIN: Duration = Duration::from_secs(5);

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
            // Bounded: a test opens a handful of connections.
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

/// The admin `/routes` view: (Consul services with routes, unreachable services).
async fn routed_and_unreachable(gateway: &TestGateway) -> (Vec<String>, Vec<String>) {
    let view = http("GET", &gateway.admin_url("/routes"), &[], "")
        .await
        .json();
    let mut routed: Vec<String> = view["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["service"].as_str().unwrap().to_owned())
        .collect();
    routed.dedup();
    let unreachable = view["unreachable"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    (routed, unreachable)
}

#[tokio::test]
async fn hung_services_never_delay_another_service_s_routes() {
    let consul = Consul::start().await;
    let mut hung = Vec::new();
    for i in 0..HUNG {
        let listener = Hung::start().await;
        let name = format!("hung-{i}");
        let registration = ServiceRegistration::new(format!("{name}-1"), &name)
            .with_address("127.0.0.1", listener.port)
            .with_tag("grpc");
        consul
            .client
            .agent_service_register(&registration)
            .await
            .unwrap();
        hung.push(listener);
    }
    let gateway = TestGateway::start(&consul.client, support::public_options()).await;
    // Every hung service is being fetched (and will time out at 5 s, then back off).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let echo = EchoServer::start(&consul.addr()).await;
    let passing_at = eventually(Duration::from_secs(20), "gwtest passing", || async {
        let opts = QueryOptions::default().with_passing(true);
        let passing = consul.client.health_service("gwtest", &opts).await.ok()?;
        (!passing.value.is_empty()).then(Instant::now)
    })
    .await;
    let routed_at = eventually(WITHIN * 3, "gwtest routed", || async {
        let (routed, _) = routed_and_unreachable(&gateway).await;
        routed.iter().any(|s| s == "gwtest").then(Instant::now)
    })
    .await;
    let routed_after = routed_at.saturating_duration_since(passing_at);
    println!("new service routed {routed_after:?} after passing, with {HUNG} hung services");
    assert!(
        routed_after < WITHIN,
        "routed {routed_after:?} after passing"
    );
    let answer = http("GET", &gateway.url("/v1/items/7"), &[], "").await;
    assert_eq!(answer.status, http::StatusCode::OK, "{}", answer.body);

    // The hung ones are listed as unreachable once their first fetch ran out of time.
    let (_, unreachable) = eventually(WITHIN * 3, "the hung services unreachable", || async {
        let (routed, unreachable) = routed_and_unreachable(&gateway).await;
        (unreachable.len() == HUNG).then_some((routed, unreachable))
    })
    .await;
    assert!(
        unreachable.iter().all(|s| s.starts_with("hung-")),
        "{unreachable:?}"
    );

    // Stopped gracefully (deregistered): its routes go.
    let stopping = Instant::now();
    echo.stop().await;
    let gone_at = eventually(WITHIN * 3, "gwtest's routes gone", || async {
        let (routed, _) = routed_and_unreachable(&gateway).await;
        (!routed.iter().any(|s| s == "gwtest")).then(Instant::now)
    })
    .await;
    let gone_after = gone_at - stopping;
    println!("deregistered service's routes gone {gone_after:?} after it stopped");
    assert!(
        gone_after < WITHIN,
        "routes gone {gone_after:?} after stopping"
    );
    let answer = http("GET", &gateway.url("/v1/items/7"), &[], "").await;
    assert_eq!(
        answer.status,
        http::StatusCode::NOT_FOUND,
        "{}",
        answer.body
    );

    // A hung service that leaves the catalog is no longer listed, though nothing else changed.
    let leaving = Instant::now();
    consul
        .client
        .agent_service_deregister("hung-0-1")
        .await
        .unwrap();
    let unlisted_at = eventually(WITHIN * 3, "hung-0 unlisted", || async {
        let (_, unreachable) = routed_and_unreachable(&gateway).await;
        (!unreachable.iter().any(|s| s == "hung-0")).then(Instant::now)
    })
    .await;
    let unlisted_after = unlisted_at - leaving;
    println!("departed hung service unlisted {unlisted_after:?} after deregistering");
    assert!(
        unlisted_after < WITHIN,
        "unlisted {unlisted_after:?} after leaving"
    );

    // A second real service arriving while the hung ones retry is routed as fast.
    let again = EchoServer::start(&consul.addr()).await;
    let passing_at = eventually(Duration::from_secs(20), "gwtest passing again", || async {
        let opts = QueryOptions::default().with_passing(true);
        let passing = consul.client.health_service("gwtest", &opts).await.ok()?;
        (!passing.value.is_empty()).then(Instant::now)
    })
    .await;
    let routed_at = eventually(WITHIN * 3, "gwtest routed again", || async {
        let (routed, _) = routed_and_unreachable(&gateway).await;
        routed.iter().any(|s| s == "gwtest").then(Instant::now)
    })
    .await;
    let routed_after = routed_at.saturating_duration_since(passing_at);
    println!("returning service routed {routed_after:?} after passing");
    assert!(
        routed_after < WITHIN,
        "routed again {routed_after:?} after passing"
    );
    again.stop().await;
}
