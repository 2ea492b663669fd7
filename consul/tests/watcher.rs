//! Integration tests of the discovery watcher: against real `consul agent -dev` processes (one
//! per test, on free loopback ports) and against a scripted fake agent for Consul's index
//! and retry rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protomesh_consul::{
    CheckRegistration, CheckStatus, ConsulClient, DevAgentOptions, HealthWatcher, InstanceChange,
    InstanceChanges, QueryOptions, ServiceRegistration, WatchError, WatchOptions,
};
use support::{client_at, closed_port, eventually, init_logs, start_agent, unique, Events, READY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tracing::Level;

/// Bound for anything the watcher should notice "within a few seconds".
const SOON: Duration = Duration::from_secs(15);

/// One log per test: `target/tmp/consul-watcher-<test>.log`.
fn options(test: &str) -> DevAgentOptions {
    support::options("consul-watcher", test)
}

/// An instance with a TTL check `<id>-ttl` registered as passing.
fn ttl_instance(id: &str, name: &str, port: u16) -> ServiceRegistration {
    ServiceRegistration::new(id, name)
        .with_address("127.0.0.1", port)
        .with_tag("v1")
        .with_check(
            CheckRegistration::ttl("ttl", Duration::from_secs(300))
                .with_id(format!("{id}-ttl"))
                .with_status(CheckStatus::Passing),
        )
}

/// Registers passing instances `(id, port)` of `name` and waits until all of them pass.
async fn register_passing(client: &ConsulClient, name: &str, instances: &[(&str, u16)]) {
    for &(id, port) in instances {
        client
            .agent_service_register(&ttl_instance(id, name, port))
            .await
            .unwrap();
    }
    let what = format!("{} passing instances of {name}", instances.len());
    eventually(&what, SOON, || async {
        (passing_ids(client, name).await.len() == instances.len()).then_some(())
    })
    .await;
}

/// Ids of the passing instances of `name`, straight from the health endpoint.
async fn passing_ids(client: &ConsulClient, name: &str) -> BTreeSet<String> {
    client
        .health_service(name, &QueryOptions::default().with_passing(true))
        .await
        .unwrap()
        .value
        .into_iter()
        .map(|e| e.service.id)
        .collect()
}

fn ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    ids.into_iter().map(str::to_owned).collect()
}

/// The next change, failing after `SOON`.
async fn next_change(changes: &mut InstanceChanges, what: &str) -> InstanceChange {
    tokio::time::timeout(SOON, changes.next())
        .await
        .unwrap_or_else(|_| panic!("no change within {SOON:?} while waiting for {what}"))
        .expect("the change stream never ends while the watcher runs")
}

/// Asserts that the stream yields nothing for `quiet`.
async fn assert_no_change(changes: &mut InstanceChanges, quiet: Duration) {
    if let Ok(change) = tokio::time::timeout(quiet, changes.next()).await {
        panic!("unexpected change {change:?}");
    }
}

/// Short blocking queries and quick retries, so that the tests stay fast.
fn test_watch_options() -> WatchOptions {
    WatchOptions::default()
        .with_wait(Duration::from_secs(3))
        .with_backoff(Duration::from_millis(100), Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_registrations_health_and_deregistrations() {
    // Output-only check updates reach the catalog (and move the index) at once, instead of
    // every 5 minutes: that is what scenario 5 needs to observe.
    let agent = start_agent(
        options("follow")
            .with_arg("-hcl")
            .with_arg("check_update_interval = \"0s\""),
    )
    .await;
    let client = agent.client().unwrap();
    let name = unique("svc-follow");
    let [a1, a2, a3] = [1, 2, 3].map(|n| format!("{name}-{n}"));

    // 1. Two passing instances: the initial set, then two Inserts first in the stream.
    register_passing(&client, &name, &[(&a1, 1001), (&a2, 1002)]).await;

    let handle = HealthWatcher::spawn(client.clone(), &name, test_watch_options());
    assert_eq!(handle.service(), name);
    let state = handle.initialized(SOON).await.unwrap();
    assert!(state.initialized);
    assert!(!state.is_stale());
    assert!(state.index > 0);
    assert!(state.last_success.is_some());
    assert_eq!(
        state.instances.keys().cloned().collect::<BTreeSet<_>>(),
        ids([a1.as_str(), a2.as_str()])
    );
    let first = &state.instances[&a1];
    assert_eq!(first.address, "127.0.0.1");
    assert_eq!(first.port, 1001);
    assert_eq!(first.tags, ["v1"]);
    assert_eq!(first.socket_addr_text(), "127.0.0.1:1001");

    let mut changes = handle.changes();
    let mut inserted = BTreeSet::new();
    for _ in 0..2 {
        match next_change(&mut changes, "the initial Inserts").await {
            InstanceChange::Insert(instance) => {
                assert_eq!(&instance, &state.instances[&instance.id]);
                inserted.insert(instance.id);
            }
            other => panic!("expected an Insert, got {other:?}"),
        }
    }
    assert_eq!(inserted, ids([a1.as_str(), a2.as_str()]));

    // 2. A third passing instance shows up.
    client
        .agent_service_register(&ttl_instance(&a3, &name, 1003))
        .await
        .unwrap();
    match next_change(&mut changes, "the third instance").await {
        InstanceChange::Insert(instance) => {
            assert_eq!(instance.id, a3);
            assert_eq!(instance.port, 1003);
        }
        other => panic!("expected Insert({a3}), got {other:?}"),
    }

    // 3. Critical: removed; passing again: back.
    client
        .agent_check_update(&format!("{a1}-ttl"), CheckStatus::Critical, "down")
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut changes, "a1 going critical").await,
        InstanceChange::Remove(a1.clone())
    );
    assert!(!handle.current().instances.contains_key(&a1));
    client
        .agent_check_update(&format!("{a1}-ttl"), CheckStatus::Passing, "up")
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut changes, "a1 passing again").await,
        InstanceChange::Insert(state.instances[&a1].clone())
    );

    // 4. Deregistration: removed.
    client.agent_service_deregister(&a2).await.unwrap();
    assert_eq!(
        next_change(&mut changes, "a2 deregistered").await,
        InstanceChange::Remove(a2.clone())
    );
    let settled = handle.current();
    assert_eq!(
        settled.instances.keys().cloned().collect::<BTreeSet<_>>(),
        ids([a1.as_str(), a3.as_str()])
    );

    // 5. Output-only updates move the index and wake the watcher, but publish nothing.
    let mut rx = handle.subscribe();
    let before = client
        .health_service(&name, &QueryOptions::default().with_passing(true))
        .await
        .unwrap()
        .index;
    for n in 0..4 {
        client
            .agent_check_update(
                &format!("{a3}-ttl"),
                CheckStatus::Passing,
                &format!("tick {n}"),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = client
        .health_service(&name, &QueryOptions::default().with_passing(true))
        .await
        .unwrap()
        .index;
    assert!(
        after > before,
        "the output updates moved the index: {after} > {before}"
    );
    // The watcher did wake up on those index moves (its index follows, silently)...
    eventually("the watcher to follow the index", SOON, || async {
        (handle.current().index >= after).then_some(())
    })
    .await;
    // ...without publishing a state or yielding a change.
    let published = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
    assert!(
        published.is_err(),
        "a state was published for an unchanged set: {:?}",
        *rx.borrow()
    );
    assert_no_change(&mut changes, Duration::from_millis(200)).await;
    let now = handle.current();
    assert_eq!(now.instances, settled.instances);
    assert!(Arc::ptr_eq(&now.instances, &settled.instances));
    assert!(!now.is_stale());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_instances_while_the_agent_is_down_and_recovers() {
    let mut agent = start_agent(options("outage")).await;
    let client = agent.client().unwrap();
    let name = unique("svc-outage");
    let [b1, b2, b3] = [1, 2, 3].map(|n| format!("{name}-{n}"));
    register_passing(&client, &name, &[(&b1, 2001), (&b2, 2002)]).await;

    let handle = HealthWatcher::spawn(client.clone(), &name, test_watch_options());
    let state = handle.initialized(SOON).await.unwrap();
    assert_eq!(state.instances.len(), 2);
    let mut changes = handle.changes();
    for _ in 0..2 {
        assert!(matches!(
            next_change(&mut changes, "the initial Inserts").await,
            InstanceChange::Insert(_)
        ));
    }
    let mut rx = handle.subscribe();

    // Down: the state goes stale (published once) and keeps the instances.
    agent.stop().await;
    let stale = tokio::time::timeout(SOON, rx.wait_for(|s| s.is_stale()))
        .await
        .expect("the state goes stale when the agent is down")
        .unwrap()
        .clone();
    assert_eq!(stale.instances, state.instances);
    assert!(stale.last_error.is_some());
    assert!(stale.consecutive_errors >= 1);
    assert!(stale.initialized);
    // It keeps retrying, still serving the last instances, without publishing every retry.
    eventually("a few retries", SOON, || async {
        (handle.current().consecutive_errors >= 3).then_some(())
    })
    .await;
    let during = handle.current();
    assert!(during.is_stale());
    assert!(during.staleness().is_some());
    assert_eq!(during.instances, state.instances);
    assert!(
        !rx.has_changed().unwrap(),
        "retries must not publish new states"
    );
    assert_no_change(&mut changes, Duration::from_millis(200)).await;

    // Back (empty: a dev agent forgets everything): recovery, then the instances go away.
    agent.restart(READY).await.unwrap();
    let recovered = tokio::time::timeout(SOON, rx.wait_for(|s| !s.is_stale()))
        .await
        .expect("the watcher recovers after the restart")
        .unwrap()
        .clone();
    assert_eq!(recovered.consecutive_errors, 0);
    assert!(recovered.last_error.is_none());
    assert_eq!(recovered.staleness(), None);
    let mut removed = BTreeSet::new();
    for _ in 0..2 {
        match next_change(&mut changes, "the Removes after the restart").await {
            InstanceChange::Remove(id) => {
                removed.insert(id);
            }
            other => panic!("expected a Remove, got {other:?}"),
        }
    }
    assert_eq!(removed, ids([b1.as_str(), b2.as_str()]));
    assert!(handle.current().instances.is_empty());

    // Instances registered after the restart are seen.
    client
        .agent_service_register(&ttl_instance(&b3, &name, 2003))
        .await
        .unwrap();
    match next_change(&mut changes, "an instance registered after the restart").await {
        InstanceChange::Insert(instance) => assert_eq!(instance.id, b3),
        other => panic!("expected Insert({b3}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialized_fails_in_time_against_a_closed_port() {
    init_logs();
    let port = closed_port();
    let client = client_at(&format!("127.0.0.1:{port}"));
    let handle = HealthWatcher::spawn(client, "svc-nowhere", test_watch_options());
    let started = Instant::now();
    let limit = Duration::from_secs(2);
    let err = tokio::time::timeout(Duration::from_secs(10), handle.initialized(limit))
        .await
        .expect("initialized() must not hang past its timeout")
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= limit - Duration::from_millis(50),
        "gave up early: {elapsed:?}"
    );
    assert!(elapsed < limit + Duration::from_secs(3), "{elapsed:?}");
    match &err {
        WatchError::NotInitialized {
            service,
            after,
            last_error,
        } => {
            assert_eq!(service, "svc-nowhere");
            assert_eq!(*after, limit);
            let last = last_error.as_deref().expect("the connection error is kept");
            assert!(last.contains(&format!("127.0.0.1:{port}")), "{last}");
        }
        other => panic!("expected NotInitialized, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("svc-nowhere"), "{msg}");
    assert!(msg.contains("cannot connect"), "{msg}");
    let state = handle.current();
    assert!(!state.initialized);
    assert!(state.is_stale());
    assert!(state.consecutive_errors >= 1);
    assert!(state.instances.is_empty());
}

/// What the scripted fake agent answers to its n-th request (0-based).
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// 200 with one instance and this `X-Consul-Index`.
    Ok(u64),
    /// 500.
    Fail,
}

/// A fake Consul agent answering `GET /v1/health/service/...` from a script (the last answer
/// repeats), recording each request's query string and arrival time. One request per
/// connection (`Connection: close`).
struct FakeAgent {
    addr: String,
    requests: Arc<Mutex<Vec<(String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    async fn start(script: Vec<Answer>) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let log = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0_u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let query = target.split_once('?').map_or("", |(_, q)| q).to_owned();
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push((query, Instant::now()));
                    log.len() - 1
                };
                let answer = script[n.min(script.len() - 1)];
                let response = match answer {
                    Answer::Ok(index) => {
                        let body = r#"[{"Node":{"Node":"n1","Address":"10.0.0.1"},"Service":{"ID":"a","Service":"svc","Port":80},"Checks":[]}]"#;
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             X-Consul-Index: {index}\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    Answer::Fail => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\
                                     Connection: close\r\n\r\nboom"
                        .to_owned(),
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<(String, Instant)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// Single-threaded runtime: the watcher's task runs on this thread, so the thread-local
// subscriber below sees its events.
#[tokio::test(flavor = "current_thread")]
async fn follows_consul_index_rate_limit_and_retry_rules() {
    let (events, _guard) = Events::capture("protomesh_consul::watcher");

    let fake = FakeAgent::start(vec![
        Answer::Ok(0),  // #0, non-blocking: index 0 counts as 1
        Answer::Ok(0),  // #1 blocks on 1; 0 again: still 1
        Answer::Ok(10), // #2 blocks on 1
        Answer::Ok(5),  // #3 blocks on 10; went backwards: reset
        Answer::Ok(6),  // #4 non-blocking
        Answer::Fail,   // #5 blocks on 6
        Answer::Fail,   // #6 non-blocking (reset on error)
        Answer::Fail,   // #7
        Answer::Fail,   // #8
        Answer::Ok(20), // #9 non-blocking: recovered
        Answer::Ok(20), // #10... blocks on 20, answered at once, forever: rate limited
    ])
    .await;
    let client = client_at(&fake.addr);
    let min_interval = Duration::from_millis(100);
    let min_backoff = Duration::from_millis(150);
    let options = WatchOptions::default()
        .with_wait(Duration::from_secs(2))
        .with_backoff(min_backoff, Duration::from_millis(400))
        .with_min_interval(min_interval);
    let handle = HealthWatcher::spawn(client, "svc", options);
    let mut rx = handle.subscribe();
    let state = handle.initialized(SOON).await.unwrap();
    assert_eq!(state.instances["a"].socket_addr_text(), "10.0.0.1:80");

    eventually("the tight loop", SOON, || async {
        (fake.requests().len() >= 20).then_some(())
    })
    .await;
    let requests = fake.requests();
    let queries: Vec<&str> = requests.iter().map(|(q, _)| q.as_str()).collect();
    assert_eq!(
        &queries[..11],
        [
            "passing",
            "passing&index=1&wait=2s",
            "passing&index=1&wait=2s",
            "passing&index=10&wait=2s",
            "passing",
            "passing&index=6&wait=2s",
            "passing",
            "passing",
            "passing",
            "passing",
            "passing&index=20&wait=2s",
        ]
    );
    assert!(queries[11..]
        .iter()
        .all(|q| *q == "passing&index=20&wait=2s"));
    // Never two queries closer than min_interval; retries after errors wait min_backoff.
    for (n, pair) in requests.windows(2).enumerate() {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= min_interval - Duration::from_millis(20),
            "requests #{n} and #{} only {gap:?} apart",
            n + 1
        );
        if (5..=8).contains(&n) {
            assert!(
                gap >= min_backoff - Duration::from_millis(20),
                "retry #{n}: {gap:?}"
            );
        }
    }

    // Publications: first success, stale, recovered; never for the unchanged set.
    assert!(!handle.current().is_stale());
    assert_eq!(handle.current().index, 20);
    assert!(rx.has_changed().unwrap());
    // One warning for the whole outage, one recovery message.
    assert_eq!(events.at(Level::WARN), 1);
    assert_eq!(events.at(Level::INFO), 1);

    // Dropping the last handle stops the watcher: the channel closes, queries stop.
    rx.mark_unchanged();
    drop(state);
    drop(handle);
    let closed = tokio::time::timeout(SOON, rx.changed()).await;
    assert!(
        matches!(closed, Ok(Err(_))),
        "the channel closes when the watcher stops"
    );
    let count = fake.requests().len();
    tokio::time::sleep(min_interval * 5).await;
    assert!(fake.requests().len() <= count + 1, "still querying");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_keeps_the_watcher_running() {
    let fake = FakeAgent::start(vec![Answer::Ok(3)]).await;
    let client = client_at(&fake.addr);
    let options = WatchOptions::default().with_min_interval(Duration::from_millis(20));
    let handle = HealthWatcher::spawn(client, "svc", options);
    let mut changes = handle.changes();
    let rx = handle.subscribe();
    drop(handle);
    match next_change(&mut changes, "the initial instance").await {
        InstanceChange::Insert(instance) => assert_eq!(instance.id, "a"),
        other => panic!("expected an Insert, got {other:?}"),
    }
    let count = fake.requests().len();
    eventually("more queries while the stream lives", SOON, || async {
        (fake.requests().len() > count + 2).then_some(())
    })
    .await;
    assert!(rx.has_changed().is_ok(), "still running");
    let mut rx = rx;
    // The first answer was published after `subscribe()`; nothing more will be.
    rx.mark_unchanged();
    drop(changes);
    let closed = tokio::time::timeout(SOON, rx.changed()).await;
    assert!(matches!(closed, Ok(Err(_))), "stopped with the last stream");
}
