//! Consul ACLs: against a dev agent whose default policy is deny, a service given a token (by
//! `CONSUL_HTTP_TOKEN`) registers, passes and is found by a mesh client discovering with that
//! token (through blocking queries); the token never reaches the service's log. Without a token,
//! the service stops at start-up with exit code 1 and a message naming Consul and its ACLs.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use protomesh::client::Mesh;
use protomesh::consul::{
    ConsulClient, ConsulConfig, DevAgent, DevAgentOptions, HealthWatcher, QueryOptions,
    WatchOptions,
};
use protomesh_mesh::ServiceProcess;
use protomesh_priority::proto::protomesh::priority::v1::priority_service_client::PriorityServiceClient;

use support::{binary, eventually, score_request, tempdir, tool, unique};

/// The ACL master token of the test agent (also its agent token, so it can sync its node).
const MASTER_TOKEN: &str = "protomesh-test-master-token";

/// A private dev agent with ACLs on and everything denied by default.
async fn start_acl_agent() -> DevAgent {
    let config = format!(
        r#"acl {{ enabled = true default_policy = "deny" enable_token_persistence = false tokens {{ master = "{MASTER_TOKEN}" agent = "{MASTER_TOKEN}" }} }}"#
    );
    let agent = DevAgent::start(
        DevAgentOptions::new(tool("consul"))
            .with_log_file(tempdir().join("consul-acl.log"))
            .with_arg("-hcl")
            .with_arg(config),
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(30)).await.unwrap();
    agent
}

/// `PUT path` with a JSON body and the master token on the agent's HTTP API; the JSON answer.
async fn put_with_master_token(
    agent: &DevAgent,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::put(format!("http://{}{path}", agent.http_addr()))
        .header("x-consul-token", MASTER_TOKEN)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = http.request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        status.is_success(),
        "{path}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

/// Creates a token whose policy lets `service` register and lets anyone holding it discover
/// services and nodes; returns its secret.
async fn service_token(agent: &DevAgent, service: &str) -> String {
    let policy = format!("policy-{service}");
    let rules = format!(
        "service \"{service}\" {{ policy = \"write\" }}\n\
         service_prefix \"\" {{ policy = \"read\" }}\n\
         node_prefix \"\" {{ policy = \"read\" }}"
    );
    put_with_master_token(
        agent,
        "/v1/acl/policy",
        serde_json::json!({ "Name": policy, "Rules": rules }),
    )
    .await;
    let token = put_with_master_token(
        agent,
        "/v1/acl/token",
        serde_json::json!({ "Description": "protomesh ACL test", "Policies": [{ "Name": policy }] }),
    )
    .await;
    token["SecretID"].as_str().unwrap().to_owned()
}

/// The priority binary registered with `agent`, with `token` in `CONSUL_HTTP_TOKEN` if any.
fn spawn_priority_with_token(agent: &DevAgent, token: Option<&str>) -> ServiceProcess {
    let mut env = vec![
        ("CONSUL_HTTP_ADDR".to_owned(), agent.http_addr()),
        ("PROTOMESH_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("RUST_LOG".to_owned(), "debug".to_owned()),
    ];
    if let Some(token) = token {
        env.push(("CONSUL_HTTP_TOKEN".to_owned(), token.to_owned()));
    }
    ServiceProcess::spawn(
        unique("priority"),
        &binary("priority"),
        &["--listen".to_owned(), "127.0.0.1:0".to_owned()],
        &env,
        tempdir().join("priority.log"),
    )
    .unwrap()
}

fn client_with_token(agent: &DevAgent, token: &str) -> ConsulClient {
    ConsulClient::new(
        ConsulConfig::new(&agent.http_addr())
            .unwrap()
            .with_token(token),
    )
    .unwrap()
}

#[tokio::test]
async fn a_service_with_a_token_registers_and_is_discovered_with_it() {
    let agent = start_acl_agent().await;
    let token = service_token(&agent, "priority").await;
    let consul = client_with_token(&agent, &token);

    // Watch before the service exists: the instance can only arrive through a blocking query,
    // which must carry the token to see anything under a default-deny policy.
    let watch = HealthWatcher::spawn(
        consul.clone(),
        "priority",
        WatchOptions::default().with_wait(Duration::from_secs(30)),
    );
    let first = watch.initialized(Duration::from_secs(10)).await.unwrap();
    assert!(first.instances.is_empty());

    let priority = spawn_priority_with_token(&agent, Some(&token));
    let mut updates = watch.subscribe();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let state = updates.borrow_and_update().clone();
            if !state.instances.is_empty() {
                return state;
            }
            updates.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no instance seen: {}", priority.log_tail(20)));
    assert_eq!(found.instances.len(), 1);
    assert!(found.last_error.is_none(), "{:?}", found.last_error);

    // A mesh client discovering with the token calls it.
    let mesh = Mesh::from_consul(consul.clone(), support::DESCRIPTORS).unwrap();
    let client = PriorityServiceClient::new(mesh.channel("priority"));
    let scored = eventually(
        Duration::from_secs(15),
        "a Score call through the mesh",
        || {
            let mut client = client.clone();
            async move { client.score(score_request()).await.ok() }
        },
    )
    .await;
    assert_eq!(scored.into_inner().score, 72);

    // Without a token the same query sees nothing: the answers above needed the token.
    let anonymous = ConsulClient::new(ConsulConfig::new(&agent.http_addr()).unwrap()).unwrap();
    let hidden = anonymous
        .health_service("priority", &QueryOptions::default())
        .await
        .unwrap();
    assert!(hidden.value.is_empty(), "{:?}", hidden.value);

    // The token itself is never logged, even at debug level.
    let log = std::fs::read_to_string(priority.log_path()).unwrap();
    assert!(log.contains("registered"), "{log}");
    assert!(!log.contains(&token), "the token leaked into the log");
}

#[tokio::test]
async fn without_a_token_registration_fails_naming_consul_acls() {
    let agent = start_acl_agent().await;
    let mut priority = spawn_priority_with_token(&agent, None);
    let status = tokio::time::timeout(Duration::from_secs(15), priority.wait())
        .await
        .expect("the process stops at start-up")
        .unwrap();
    assert_eq!(status.code(), Some(1), "{}", priority.log_tail(20));
    let log = priority.log_tail(20);
    assert!(log.contains("Consul"), "{log}");
    assert!(log.contains("ACL"), "{log}");
    assert!(log.contains("403"), "{log}");
    assert!(log.contains("CONSUL_HTTP_TOKEN"), "{log}");
}
