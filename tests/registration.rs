//! A priority instance registers itself in a real Consul agent, passes its gRPC check, leaves on
//! SIGTERM, comes back after an agent restart, and explains a bad `CONSUL_HTTP_ADDR`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use protomesh_mesh::ServiceProcess;
use support::{binary, eventually, spawn_priority, tempdir, Consul};

#[tokio::test]
async fn instance_passes_in_consul_with_its_real_port_tags_and_meta() {
    let consul = Consul::start().await;
    let _priority = spawn_priority(&consul.addr(), &[]);

    let entries = eventually(
        Duration::from_secs(10),
        "a passing priority instance",
        || async {
            let entries = consul.instances("priority", true).await;
            (!entries.is_empty()).then_some(entries)
        },
    )
    .await;
    let entry = &entries[0];
    let service = &entry.service;
    assert_ne!(
        service.port, 0,
        "the port really bound is registered, not 0"
    );
    assert_eq!(service.address, "127.0.0.1");
    assert_eq!(service.id, format!("priority-127.0.0.1-{}", service.port));
    assert!(
        service.tags.contains(&"grpc".to_owned()),
        "{:?}",
        service.tags
    );
    assert_eq!(
        service.meta.get("proto_package").map(String::as_str),
        Some("protomesh.priority.v1")
    );
    assert!(service.meta.contains_key("version"));
    let grpc_check = entry
        .checks
        .iter()
        .find(|c| c.type_ == "grpc")
        .expect("a gRPC health check is registered");
    assert_eq!(grpc_check.status.to_string(), "passing");
}

#[tokio::test]
async fn two_instances_on_port_zero_get_distinct_ids() {
    let consul = Consul::start().await;
    let _a = spawn_priority(&consul.addr(), &[]);
    let _b = spawn_priority(&consul.addr(), &[]);
    let entries = eventually(Duration::from_secs(10), "two passing instances", || async {
        let entries = consul.instances("priority", true).await;
        (entries.len() == 2).then_some(entries)
    })
    .await;
    assert_ne!(entries[0].service.id, entries[1].service.id);
    assert_ne!(entries[0].service.port, entries[1].service.port);
}

#[tokio::test]
async fn sigterm_exits_zero_and_the_instance_leaves_consul_within_two_seconds() {
    let consul = Consul::start().await;
    let mut priority = spawn_priority(&consul.addr(), &["--lame-duck", "500ms"]);
    eventually(Duration::from_secs(10), "a passing instance", || async {
        (!consul.instances("priority", true).await.is_empty()).then_some(())
    })
    .await;

    let signalled = Instant::now();
    priority.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    eventually(
        Duration::from_secs(2),
        "the instance to leave Consul",
        || async {
            consul
                .instances("priority", false)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let left_after = signalled.elapsed();

    let status = tokio::time::timeout(Duration::from_secs(15), priority.wait())
        .await
        .expect("exits within the lame-duck and drain bounds")
        .unwrap();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        priority.log_tail(20)
    );
    assert!(
        left_after < Duration::from_secs(2),
        "left after {left_after:?}"
    );
    let log = priority.log_tail(50);
    assert!(log.contains("deregistered from Consul"), "{log}");
}

#[tokio::test]
async fn an_instance_registers_again_after_the_agent_restarts() {
    let mut consul = Consul::start().await;
    let _priority = spawn_priority(&consul.addr(), &[]);
    let before = eventually(Duration::from_secs(10), "a passing instance", || async {
        consul.instances("priority", true).await.into_iter().next()
    })
    .await;

    // A dev agent keeps nothing: after a restart it has forgotten every service.
    consul.agent.restart(Duration::from_secs(30)).await.unwrap();
    let after = eventually(
        Duration::from_secs(15),
        "re-registration after the restart",
        || async { consul.instances("priority", true).await.into_iter().next() },
    )
    .await;
    assert_eq!(after.service.id, before.service.id);
    assert_eq!(after.service.port, before.service.port);
}

/// Starts priority with `CONSUL_HTTP_ADDR=addr`, returns its exit status and output.
async fn run_with_consul_addr(addr: &str) -> (std::process::ExitStatus, String) {
    let mut process = ServiceProcess::spawn(
        "priority-bad-consul",
        &binary("priority"),
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--log-format".into(),
            "text".into(),
        ],
        &[("CONSUL_HTTP_ADDR".into(), addr.into())],
        tempdir().join("priority.log"),
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), process.wait())
        .await
        .expect("a bad Consul address ends the process, it does not hang")
        .unwrap();
    (status, process.log_tail(20))
}

#[tokio::test]
async fn an_unreachable_consul_address_is_a_clear_error_not_a_panic() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, log) = run_with_consul_addr(&format!("127.0.0.1:{port}")).await;
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "names the address: {log}"
    );
    assert!(log.contains("CONSUL_HTTP_ADDR"), "names the setting: {log}");
}

#[tokio::test]
async fn a_malformed_consul_address_is_a_clear_error_not_a_panic() {
    let (status, log) = run_with_consul_addr("http://[not an address").await;
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("CONSUL_HTTP_ADDR"), "names the setting: {log}");
}
