//! Integration tests of the client, the registrar and the dev-agent launcher against real
//! `consul agent -dev` processes (one per test, on free loopback ports).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use protomesh_consul::request::{ApiRequest, TOKEN_HEADER};
use protomesh_consul::{
    CheckRegistration, CheckStatus, ConsulClient, ConsulConfig, ConsulError, DevAgent,
    DevAgentOptions, QueryOptions, QueryResponse, Registrar, Registration, ServiceEntry,
    ServiceRegistration,
};
use support::{client_at, closed_port, eventually, start_agent, unique, Events, READY};
use tracing::Level;

/// One log per test: `target/tmp/consul-<test>.log`.
fn options(test: &str) -> DevAgentOptions {
    support::options("consul", test)
}

/// Instances of `name` currently in the health endpoint.
async fn instances(client: &ConsulClient, name: &str, opts: &QueryOptions) -> Vec<String> {
    let resp = client.health_service(name, opts).await.unwrap();
    let mut ids: Vec<String> = resp.value.into_iter().map(|e| e.service.id).collect();
    ids.sort();
    ids
}

fn passing_ttl_instance(id: &str, name: &str, port: u16) -> ServiceRegistration {
    ServiceRegistration::new(id, name)
        .with_address("127.0.0.1", port)
        .with_check(
            CheckRegistration::ttl("ttl", Duration::from_secs(300))
                .with_status(CheckStatus::Passing),
        )
}

/// Waits (up to 10 s) until the health endpoint lists `count` instances of `name`, and returns
/// that answer.
async fn until_instances(
    client: &ConsulClient,
    name: &str,
    count: usize,
) -> QueryResponse<Vec<ServiceEntry>> {
    eventually(
        &format!("{count} instance(s) of {name} in the health endpoint"),
        Duration::from_secs(10),
        || async {
            let resp = client
                .health_service(name, &QueryOptions::default())
                .await
                .unwrap();
            (resp.value.len() == count).then_some(resp)
        },
    )
    .await
}

/// Registers a passing TTL instance through a [`Registrar`] that resyncs every `resync`.
async fn register_via_registrar(
    client: &ConsulClient,
    id: &str,
    name: &str,
    port: u16,
    resync: Duration,
) -> Registration {
    Registrar::new(client.clone(), passing_ttl_instance(id, name, port))
        .with_resync_interval(resync)
        .register()
        .await
        .unwrap()
}

/// Asserts that instance `id` stays gone from the agent for a second (nothing re-registers it
/// after `what`).
async fn assert_stays_deregistered(client: &ConsulClient, id: &str, what: &str) {
    let observe = Instant::now();
    while observe.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            client.agent_service(id).await.unwrap(),
            None,
            "re-registered after {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_consul_binary_is_found() {
    let binary = DevAgentOptions::find_binary()
        .expect("no consul binary found: run scripts/setup.sh (installs .tools/bin/consul)");
    assert!(binary.exists(), "{}", binary.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_self_and_leader() {
    let agent = start_agent(options("self")).await;
    let client = agent.client().unwrap();
    assert_eq!(client.address(), format!("http://{}", agent.http_addr()));

    let me = client.agent_self().await.unwrap();
    assert_eq!(me.datacenter, "dc1");
    assert_eq!(me.node_name, agent.node_name());
    assert!(me.version.starts_with("1."), "{}", me.version);
    assert!(me.server);

    let leader = client.status_leader().await.unwrap();
    assert_eq!(leader, format!("127.0.0.1:{}", agent.ports().server));

    // The agent has no ACLs, so a token is accepted (and ignored).
    let with_token = ConsulClient::new(
        ConsulConfig::new(&agent.http_addr())
            .unwrap()
            .with_token("anything"),
    )
    .unwrap();
    assert_eq!(
        with_token.agent_self().await.unwrap().node_name,
        agent.node_name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_side_by_side() {
    let (a, b) = tokio::join!(
        start_agent(options("side-a")),
        start_agent(options("side-b"))
    );
    assert_ne!(a.http_addr(), b.http_addr());
    assert_ne!(a.node_name(), b.node_name());
    let (ma, mb) = tokio::join!(
        async { a.client().unwrap().agent_self().await.unwrap() },
        async { b.client().unwrap().agent_self().await.unwrap() }
    );
    assert_eq!(ma.node_name, a.node_name());
    assert_eq!(mb.node_name, b.node_name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_query_and_deregister() {
    let agent = start_agent(options("register")).await;
    let client = agent.client().unwrap();
    let name = unique("svc-register");
    let critical_id = format!("{name}-critical");
    let healthy_id = format!("{name}-healthy");
    let port = closed_port();

    // A gRPC check pointing at a closed port plus a TTL check: critical.
    let critical = ServiceRegistration::new(&critical_id, &name)
        .with_address("127.0.0.1", port)
        .with_tag("v1")
        .with_meta("version", "0.1.0")
        .with_check(
            CheckRegistration::grpc(
                "gRPC health",
                format!("127.0.0.1:{port}/test.Svc"),
                Duration::from_secs(1),
            )
            .with_id(format!("{critical_id}-grpc"))
            .with_timeout(Duration::from_millis(500))
            .with_deregister_critical_service_after(Duration::from_secs(60)),
        )
        .with_check(CheckRegistration::ttl("ttl", Duration::from_secs(300)));
    client.agent_service_register(&critical).await.unwrap();

    let svc = client
        .agent_service(&critical_id)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(svc.id, critical_id);
    assert_eq!(svc.service, name);
    assert_eq!(svc.tags, ["v1"]);
    assert_eq!(svc.address, "127.0.0.1");
    assert_eq!(svc.port, port);
    assert_eq!(svc.meta.get("version").map(String::as_str), Some("0.1.0"));

    let entries = until_instances(&client, &name, 1).await;
    assert!(entries.index > 0);
    assert!(entries.known_leader);
    let entry = &entries.value[0];
    assert_eq!(entry.service.id, critical_id);
    assert_eq!(entry.address(), "127.0.0.1");
    assert_eq!(entry.node.node, agent.node_name());
    assert_ne!(entry.aggregated_status(), CheckStatus::Passing);
    // The node's serfHealth check (type "") may lag right after the agent starts; ours may not.
    let mut kinds: Vec<&str> = entry
        .checks
        .iter()
        .map(|c| c.type_.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["grpc", "ttl"], "our two checks");
    let grpc = entry.checks.iter().find(|c| c.type_ == "grpc").unwrap();
    assert_eq!(grpc.check_id, format!("{critical_id}-grpc"));
    assert_eq!(grpc.status, CheckStatus::Critical);
    assert_eq!(grpc.service_id, critical_id);

    // `passing` filters it out; a passing instance is kept.
    assert!(
        instances(&client, &name, &QueryOptions::default().with_passing(true))
            .await
            .is_empty()
    );
    client
        .agent_service_register(&passing_ttl_instance(&healthy_id, &name, port))
        .await
        .unwrap();
    until_instances(&client, &name, 2).await;
    assert_eq!(
        instances(&client, &name, &QueryOptions::default().with_passing(true)).await,
        [healthy_id.as_str()]
    );
    // `tag` filters on tags.
    assert_eq!(
        instances(&client, &name, &QueryOptions::default().with_tag("v1")).await,
        [critical_id.as_str()]
    );
    assert!(
        instances(&client, &name, &QueryOptions::default().with_tag("nope"))
            .await
            .is_empty()
    );

    // The catalog lists the service with its tags.
    let services = client
        .catalog_services(&QueryOptions::default())
        .await
        .unwrap();
    assert!(services.index > 0);
    assert_eq!(
        services.value.get(&name).map(Vec::as_slice),
        Some(&["v1".to_owned()][..])
    );
    assert!(services.value.contains_key("consul"));

    // Deregister: gone from the agent and, shortly after, from the health endpoint.
    client.agent_service_deregister(&critical_id).await.unwrap();
    client.agent_service_deregister(&healthy_id).await.unwrap();
    assert_eq!(client.agent_service(&critical_id).await.unwrap(), None);
    until_instances(&client, &name, 0).await;
    let services = client
        .catalog_services(&QueryOptions::default())
        .await
        .unwrap();
    assert!(!services.value.contains_key(&name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_returns_when_an_instance_registers() {
    let agent = start_agent(options("blocking-change")).await;
    let client = agent.client().unwrap();
    let name = unique("svc-block");
    client
        .agent_service_register(&passing_ttl_instance(&format!("{name}-1"), &name, 1111))
        .await
        .unwrap();
    let first = until_instances(&client, &name, 1).await;

    let watcher = {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut index = first.index;
            // Block until the second instance shows up (ignoring unrelated index bumps).
            loop {
                let opts = QueryOptions::default().blocking(index, Duration::from_secs(60));
                let resp = client.health_service(&name, &opts).await.unwrap();
                if resp.value.len() == 2 {
                    return (resp, started.elapsed());
                }
                index = resp.index;
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no change seen"
                );
            }
        })
    };
    client
        .agent_service_register(&passing_ttl_instance(&format!("{name}-2"), &name, 2222))
        .await
        .unwrap();
    let (resp, elapsed) = tokio::time::timeout(Duration::from_secs(45), watcher)
        .await
        .expect("the blocking query should return soon after the change")
        .unwrap();
    assert!(resp.index > first.index, "{} > {}", resp.index, first.index);
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_waits_when_nothing_changes() {
    let agent = start_agent(options("blocking-wait")).await;
    let client = agent.client().unwrap();
    let name = unique("svc-wait");
    client
        .agent_service_register(&passing_ttl_instance(&format!("{name}-1"), &name, 1111))
        .await
        .unwrap();
    let mut index = until_instances(&client, &name, 1).await.index;

    let wait = Duration::from_secs(2);
    for _ in 0..5 {
        let started = Instant::now();
        let resp = client
            .health_service(&name, &QueryOptions::default().blocking(index, wait))
            .await
            .unwrap();
        let elapsed = started.elapsed();
        if resp.index != index {
            // Some unrelated write (e.g. anti-entropy) moved the index: block again from it.
            index = resp.index;
            continue;
        }
        assert!(
            elapsed >= Duration::from_millis(1500),
            "returned too early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(15),
            "returned too late: {elapsed:?}"
        );
        assert_eq!(resp.value.len(), 1);
        return;
    }
    panic!("the index kept moving; could not observe an idle blocking query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrar_reregisters_after_agent_restart() {
    let mut agent = start_agent(options("restart")).await;
    let client = agent.client().unwrap();
    let name = unique("svc-restart");
    let id = format!("{name}-1");
    let registration =
        register_via_registrar(&client, &id, &name, 3333, Duration::from_millis(200)).await;
    assert_eq!(registration.service_id(), id);
    assert!(client.agent_service(&id).await.unwrap().is_some());

    agent
        .restart(READY)
        .await
        .expect("agent restarts on the same ports");
    assert_eq!(
        client.agent_self().await.unwrap().node_name,
        agent.node_name(),
        "the old client reaches the restarted agent"
    );

    let restarted = Instant::now();
    eventually(
        "re-registration after the restart",
        Duration::from_secs(10),
        || async { client.agent_service(&id).await.ok().flatten() },
    )
    .await;
    assert!(restarted.elapsed() < Duration::from_secs(10));
    eventually(
        "the instance back in the health endpoint",
        Duration::from_secs(10),
        || async {
            (instances(&client, &name, &QueryOptions::default()).await == [id.as_str()])
                .then_some(())
        },
    )
    .await;

    // Deregistering stops the task first: the instance stays gone.
    registration.deregister().await.unwrap();
    assert_eq!(client.agent_service(&id).await.unwrap(), None);
    assert_stays_deregistered(&client, &id, "deregister").await;
}

// Single-threaded runtime: the registrar's task runs on this thread, so the thread-local
// subscriber below sees its events.
#[tokio::test(flavor = "current_thread")]
async fn registrar_warns_once_per_outage_and_recovers() {
    let (events, _guard) = Events::capture("protomesh_consul::registrar");

    let mut agent = DevAgent::start(options("outage")).unwrap();
    agent.wait_ready(READY).await.unwrap();
    let client = agent.client().unwrap();
    let name = unique("svc-outage");
    let id = format!("{name}-1");
    let registration =
        register_via_registrar(&client, &id, &name, 5555, Duration::from_millis(100)).await;

    agent.stop().await;
    eventually(
        "a warning about the unreachable agent",
        Duration::from_secs(10),
        || async { (events.at(Level::WARN) > 0).then_some(()) },
    )
    .await;
    // Ten more resync rounds against the dead agent: still a single warning.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        events.at(Level::WARN),
        1,
        "warned more than once per outage"
    );

    agent.restart(READY).await.unwrap();
    eventually(
        "re-registration after the outage",
        Duration::from_secs(10),
        || async { client.agent_service(&id).await.ok().flatten() },
    )
    .await;
    // The registrar logs right after the agent accepted the registration: wait for the line.
    eventually(
        "the re-registration log line",
        Duration::from_secs(5),
        || async { (events.starting_with("re-registered") >= 1).then_some(()) },
    )
    .await;
    assert_eq!(events.at(Level::WARN), 1);
    registration.deregister().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_registration_stops_the_background_task() {
    let agent = start_agent(options("drop")).await;
    let client = agent.client().unwrap();
    let name = unique("svc-drop");
    let id = format!("{name}-1");
    let registration =
        register_via_registrar(&client, &id, &name, 4444, Duration::from_millis(100)).await;
    drop(registration);
    client.agent_service_deregister(&id).await.unwrap();
    assert_stays_deregistered(&client, &id, "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_errors_are_reported() {
    let agent = start_agent(options("errors")).await;
    let client = agent.client().unwrap();

    // Unknown instance: None, not an error.
    assert_eq!(client.agent_service("no-such-service").await.unwrap(), None);

    // An invalid check: Consul answers 400 with its reason.
    let mut bad_check = CheckRegistration::grpc("bad", "127.0.0.1:1", Duration::from_secs(1));
    bad_check.interval = None;
    let bad = ServiceRegistration::new(unique("bad"), "bad").with_check(bad_check);
    let err = client.agent_service_register(&bad).await.unwrap_err();
    match &err {
        ConsulError::Status {
            endpoint,
            status,
            body,
        } => {
            assert_eq!(*status, 400, "{err}");
            assert_eq!(endpoint, "PUT /v1/agent/service/register");
            assert!(!body.is_empty());
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    assert!(!err.is_unreachable());

    // An unknown datacenter: the query's dc overrides the configuration's.
    let err = client
        .health_service("x", &QueryOptions::default().with_datacenter("nowhere"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(500), "{err}");
    assert!(err.to_string().contains("No path to datacenter"), "{err}");
}

#[tokio::test]
async fn closed_port_gives_a_connect_error_naming_the_address() {
    let port = closed_port();
    let client = client_at(&format!("127.0.0.1:{port}"));
    let err = client.agent_self().await.unwrap_err();
    assert!(matches!(err, ConsulError::Connect { .. }), "{err:?}");
    assert!(err.is_unreachable());
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("CONSUL_HTTP_ADDR"), "{msg}");

    // The registrar's first registration reports it as is.
    let err = Registrar::new(client, ServiceRegistration::new("a", "a"))
        .register()
        .await
        .unwrap_err();
    assert!(matches!(err, ConsulError::Connect { .. }), "{err:?}");
}

#[test]
fn token_header_is_sent() {
    let config = ConsulConfig::new("127.0.0.1:8500")
        .unwrap()
        .with_token("s3cr3t");
    let reg = ServiceRegistration::new("a", "a");
    for req in [
        ApiRequest::agent_service_register(&reg).unwrap(),
        ApiRequest::health_service("a", &QueryOptions::default()),
    ] {
        let http = req.to_http(&config).unwrap();
        assert_eq!(http.headers()[TOKEN_HEADER], "s3cr3t");
    }
}

#[tokio::test]
async fn dev_agent_reports_an_early_exit() {
    // An option consul rejects makes it exit at once; wait_ready must say so, not time out.
    let agent = DevAgent::start(options("bad-flag").with_arg("-no-such-flag")).unwrap();
    let err = agent.wait_ready(READY).await.unwrap_err();
    assert!(matches!(err, ConsulError::AgentExited { .. }), "{err:?}");
}
