//! A fresh machine's first start: every data service, two instances each, started at once
//! against a Postgres server that does not have their database yet (nor their schemas). They race
//! to create it and to migrate; every instance must come up and pass its health check in Consul.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use support::eventually;
use support::http::spawn;
use support::mesh::TestMesh;

/// The services with a database of their own.
const DATA_SERVICES: [&str; 4] = ["users", "tasks", "timetrack", "analytics"];

/// Instances of each started together.
const INSTANCES: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_of_every_service_comes_up_against_a_fresh_database() {
    let mesh = TestMesh::start_without_database().await;
    let consul = &mesh.consul;
    let env = mesh.env();
    let started = Instant::now();
    let mut processes: Vec<_> = (0..INSTANCES)
        .flat_map(|_| DATA_SERVICES.iter().map(|name| spawn(name, &env, &[])))
        .collect();
    for service in DATA_SERVICES {
        eventually(
            Duration::from_secs(90),
            &format!("{INSTANCES} passing instances of {service}"),
            || async {
                let passing = consul.instances(service, true).await.len();
                (passing == INSTANCES).then_some(())
            },
        )
        .await;
    }
    eprintln!(
        "{} instances passing after {:?}",
        processes.len(),
        started.elapsed()
    );
    for process in &mut processes {
        assert!(
            process.try_exit_status().is_none(),
            "{} exited: {}",
            process.name(),
            process.log_tail(5)
        );
    }
}
