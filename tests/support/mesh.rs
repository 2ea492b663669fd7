//! A private mesh for tests that run the real service binaries together: a Consul dev agent, a
//! database and a Redis key prefix of the test's own, the environment every process gets, and
//! the waits for services to pass and for the gateway to route them.

use std::net::SocketAddr;
use std::time::Duration;

use protomesh_data::testing::{redis_url, TestDatabase, TestKeys};

use super::http::http;
use super::{eventually, Consul};

/// Consul, a database and a key prefix of one test; dropped (keys, then database, then agent)
/// after the processes started with [`TestMesh::env`].
pub struct TestMesh {
    pub keys: TestKeys,
    pub database: TestDatabase,
    pub consul: Consul,
}

impl TestMesh {
    /// A mesh on a database created for the test.
    pub async fn start() -> Self {
        let consul = Consul::start().await;
        let database = TestDatabase::create().await.unwrap();
        Self::with(consul, database)
    }

    /// A mesh on a database name that does not exist yet (a fresh machine's first start).
    pub async fn start_without_database() -> Self {
        let consul = Consul::start().await;
        let database = TestDatabase::not_created().await.unwrap();
        Self::with(consul, database)
    }

    fn with(consul: Consul, database: TestDatabase) -> Self {
        Self {
            keys: TestKeys::new(),
            database,
            consul,
        }
    }

    /// The environment of every process of the mesh: the agent, the database, Redis and the key
    /// prefix, JSON logs at `info` (which [`gateway_addr`](super::gateway_addr) reads).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CONSUL_HTTP_ADDR", self.consul.addr()),
            ("DATABASE_URL", self.database.url().to_owned()),
            ("REDIS_URL", redis_url()),
            ("PROTOMESH_KEY_PREFIX", self.keys.prefix().to_owned()),
            ("PROTOMESH_LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
    }
}

/// Waits (up to a minute each) until every one of `services` has a passing instance in Consul.
pub async fn wait_passing(consul: &Consul, services: &[&str]) {
    for service in services {
        consul
            .agent
            .wait_passing(service, Duration::from_secs(60))
            .await
            .unwrap();
    }
}

/// Waits (up to 30 s) until the gateway at `addr` lists a route of every one of `services`
/// (`UsersService`…) in `/routes`.
pub async fn wait_routes(addr: SocketAddr, services: &[&str]) {
    eventually(Duration::from_secs(30), "every route", || async {
        let routes = http("GET", format!("http://{addr}/routes"), vec![], None)
            .await
            .body;
        services.iter().all(|s| routes.contains(s)).then_some(())
    })
    .await;
}
