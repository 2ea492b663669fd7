//! Routes follow services as they come and go: a service started after the gateway is routed
//! within seconds of passing in Consul; killed, its routes answer 503; deregistered, 404.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use protomesh::consul::QueryOptions;
use support::{eventually, http, spawn_service, Consul, TestGateway};

const ECHO: &str = "/v1/probe:echo";
const BODY: &str = r#"{"message":"hi"}"#;

#[tokio::test]
async fn routes_appear_with_a_service_then_503_when_it_dies_then_404_when_it_leaves() {
    let consul = Consul::start().await;
    let gateway = TestGateway::start(&consul.client, support::public_options()).await;
    let answer = http("POST", &gateway.url(ECHO), &[], BODY).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "no probe yet");

    let mut probe = spawn_service("probe", &consul.addr());
    let id = eventually(Duration::from_secs(20), "probe passing", || async {
        let opts = QueryOptions::default().with_passing(true);
        consul
            .client
            .health_service("probe", &opts)
            .await
            .ok()
            .and_then(|r| r.value.first().map(|e| e.service.id.clone()))
    })
    .await;
    let passing_at = Instant::now();
    eventually(Duration::from_secs(10), "the probe's route", || async {
        let answer = http("POST", &gateway.url(ECHO), &[], BODY).await;
        (answer.status == StatusCode::OK).then_some(())
    })
    .await;
    let routed_after = passing_at.elapsed();
    assert!(
        routed_after < Duration::from_secs(5),
        "routed {routed_after:?} after passing"
    );
    let answer = http("POST", &gateway.url(ECHO), &[], BODY).await;
    assert_eq!(answer.json()["message"], "hi");

    // Killed without deregistering: still in the catalog, no healthy instance → 503.
    probe.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    probe.wait().await.unwrap();
    let answer = eventually(
        Duration::from_secs(10),
        "503 from a dead service",
        || async {
            let answer = http("POST", &gateway.url(ECHO), &[], BODY).await;
            (answer.status == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
        },
    )
    .await;
    assert_eq!(answer.json()["code"], 14, "{}", answer.body);

    // Deregistered: the route goes away → 404.
    consul.client.agent_service_deregister(&id).await.unwrap();
    eventually(Duration::from_secs(10), "404 once deregistered", || async {
        let answer = http("POST", &gateway.url(ECHO), &[], BODY).await;
        (answer.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}
