//! The registrar's TTL heartbeat against a real `consul agent -dev`: the check turns passing from
//! the probe, follows the probe to critical, and runs out once the registration is dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protomesh_consul::{
    CheckRegistration, CheckStatus, ConsulClient, QueryOptions, Registrar, ServiceRegistration,
    TtlReport,
};
use support::{eventually, start_agent, unique};

/// The status and output of check `check_id` of service `name`, if it is there.
async fn check_state(
    client: &ConsulClient,
    name: &str,
    check_id: &str,
) -> Option<(CheckStatus, String)> {
    let entries = client
        .health_service(name, &QueryOptions::default())
        .await
        .unwrap()
        .value;
    entries
        .iter()
        .flat_map(|entry| entry.checks.iter())
        .find(|check| check.check_id == check_id)
        .map(|check| (check.status, check.output.clone()))
}

#[tokio::test]
async fn the_ttl_check_follows_the_probe_and_expires_when_the_heartbeat_stops() {
    let agent = start_agent(support::options("consul", "ttl-heartbeat")).await;
    let client = agent.client().unwrap();
    let name = unique("ttl");
    let check_id = format!("{name}:ttl");
    let registration = ServiceRegistration::new(name.clone(), name.clone())
        .with_address("127.0.0.1", 9)
        .with_check(CheckRegistration::ttl("heartbeat", Duration::from_secs(2)).with_id(&check_id));

    let healthy = Arc::new(AtomicBool::new(true));
    let probe_state = Arc::clone(&healthy);
    let registered = Registrar::new(client.clone(), registration)
        .with_ttl_heartbeat(&check_id, Duration::from_millis(200), move || {
            let healthy = probe_state.load(Ordering::Relaxed);
            async move {
                if healthy {
                    TtlReport {
                        status: CheckStatus::Passing,
                        output: "serving".to_owned(),
                    }
                } else {
                    TtlReport {
                        status: CheckStatus::Critical,
                        output: "not serving".to_owned(),
                    }
                }
            }
        })
        .register()
        .await
        .unwrap();

    eventually("the TTL check to pass", Duration::from_secs(5), || async {
        check_state(&client, &name, &check_id)
            .await
            .filter(|(status, output)| *status == CheckStatus::Passing && output == "serving")
    })
    .await;

    healthy.store(false, Ordering::Relaxed);
    eventually(
        "the TTL check to follow the probe to critical",
        Duration::from_secs(5),
        || async {
            check_state(&client, &name, &check_id)
                .await
                .filter(|(status, output)| {
                    *status == CheckStatus::Critical && output == "not serving"
                })
        },
    )
    .await;

    healthy.store(true, Ordering::Relaxed);
    eventually(
        "the TTL check to pass again",
        Duration::from_secs(5),
        || async {
            check_state(&client, &name, &check_id)
                .await
                .filter(|(status, _)| *status == CheckStatus::Passing)
        },
    )
    .await;

    // A process that dies stops reporting: the TTL (2 s) runs out and the check turns critical.
    drop(registered);
    eventually(
        "the TTL check to expire after the heartbeat stopped",
        Duration::from_secs(8),
        || async {
            check_state(&client, &name, &check_id)
                .await
                .filter(|(status, _)| *status == CheckStatus::Critical)
        },
    )
    .await;
}

#[tokio::test]
async fn deregistration_stops_the_heartbeat_and_removes_the_instance() {
    let agent = start_agent(support::options("consul", "ttl-deregister")).await;
    let client = agent.client().unwrap();
    let name = unique("ttl-dereg");
    let check_id = format!("{name}:ttl");
    let registration = ServiceRegistration::new(name.clone(), name.clone())
        .with_address("127.0.0.1", 9)
        .with_check(CheckRegistration::ttl("heartbeat", Duration::from_secs(5)).with_id(&check_id));
    let registered = Registrar::new(client.clone(), registration)
        .with_ttl_heartbeat(&check_id, Duration::from_millis(100), || async {
            TtlReport {
                status: CheckStatus::Passing,
                output: String::new(),
            }
        })
        .register()
        .await
        .unwrap();
    eventually("the TTL check to pass", Duration::from_secs(5), || async {
        check_state(&client, &name, &check_id)
            .await
            .filter(|(status, _)| *status == CheckStatus::Passing)
    })
    .await;

    registered.deregister().await.unwrap();
    // The heartbeat does not bring the check back: the instance stays gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(check_state(&client, &name, &check_id).await, None);
}
