//! Real grpcurl against a registered priority instance: reflection (grpcurl 1.8 speaks v1alpha),
//! describe, invoke, health, and a bad request naming its field.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{eventually, grpcurl, spawn_priority, Consul};

/// Starts Consul and one priority instance; returns them with the address Consul advertises.
async fn registered_priority() -> (Consul, protomesh_mesh::ServiceProcess, String) {
    let consul = Consul::start().await;
    let priority = spawn_priority(&consul.addr(), &[]);
    let entry = eventually(
        Duration::from_secs(10),
        "a passing priority instance",
        || async { consul.instances("priority", true).await.into_iter().next() },
    )
    .await;
    let addr = format!("{}:{}", entry.service.address, entry.service.port);
    (consul, priority, addr)
}

fn stdout_of(args: &[&str]) -> String {
    let out = grpcurl(args);
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_describes_and_invokes_score() {
    let (_consul, _priority, addr) = registered_priority().await;

    let list = stdout_of(&["-plaintext", &addr, "list"]);
    let services: Vec<&str> = list.lines().collect();
    assert!(
        services.contains(&"protomesh.priority.v1.PriorityService"),
        "{list}"
    );
    assert!(services.contains(&"grpc.health.v1.Health"), "{list}");
    assert!(
        !services.iter().any(|s| s.starts_with("google.")),
        "only served services: {list}"
    );

    let methods = stdout_of(&[
        "-plaintext",
        &addr,
        "list",
        "protomesh.priority.v1.PriorityService",
    ]);
    assert!(
        methods.contains("protomesh.priority.v1.PriorityService.Score"),
        "{methods}"
    );
    assert!(
        methods.contains("protomesh.priority.v1.PriorityService.Prioritize"),
        "{methods}"
    );

    let described = stdout_of(&[
        "-plaintext",
        &addr,
        "describe",
        "protomesh.priority.v1.PriorityService",
    ]);
    assert!(
        described.contains("rpc Score ( .protomesh.priority.v1.ScoreRequest )"),
        "{described}"
    );
    assert!(
        described.contains("/v1/priority:score"),
        "keeps google.api.http: {described}"
    );

    let message = stdout_of(&[
        "-plaintext",
        &addr,
        "describe",
        "protomesh.priority.v1.ScoreRequest",
    ]);
    // The declared request rules travel with the descriptors.
    assert!(
        message.contains("int32 urgency = 2 [(.buf.validate.field) = { int32:<lte:10 gte:1> }];"),
        "{message}"
    );

    let scored = stdout_of(&[
        "-plaintext",
        "-d",
        r#"{"title":"ship","urgency":9,"impact":8}"#,
        &addr,
        "protomesh.priority.v1.PriorityService/Score",
    ]);
    let json: serde_json::Value = serde_json::from_str(&scored).unwrap();
    assert_eq!(json["score"], 72, "{scored}");
    assert_eq!(json["level"], "LEVEL_HIGH", "{scored}");
    assert_eq!(json["title"], "ship", "{scored}");
}

#[tokio::test]
async fn grpcurl_gets_invalid_argument_naming_urgency() {
    let (_consul, _priority, addr) = registered_priority().await;
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"urgency":11,"impact":8}"#,
        &addr,
        "protomesh.priority.v1.PriorityService/Score",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Code: InvalidArgument"), "{stderr}");
    assert!(stderr.contains("urgency"), "{stderr}");
}

#[tokio::test]
async fn grpcurl_prioritize_orders_a_batch() {
    let (_consul, _priority, addr) = registered_priority().await;
    let out = stdout_of(&[
        "-plaintext",
        "-d",
        r#"{"tasks":[{"id":"low","urgency":1,"impact":2},{"id":"top","urgency":10,"impact":10},{"id":"mid","urgency":5,"impact":5}]}"#,
        &addr,
        "protomesh.priority.v1.PriorityService/Prioritize",
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["top", "mid", "low"], "{out}");
    assert_eq!(json["tasks"][0]["level"], "LEVEL_CRITICAL");
    assert!(
        json["tasks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("= 100"),
        "{out}"
    );
}

#[tokio::test]
async fn grpcurl_health_reports_overall_and_per_service_status() {
    let (_consul, _priority, addr) = registered_priority().await;
    let overall = stdout_of(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(overall.contains("SERVING"), "{overall}");
    let per_service = stdout_of(&[
        "-plaintext",
        "-d",
        r#"{"service":"protomesh.priority.v1.PriorityService"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(per_service.contains("\"SERVING\""), "{per_service}");
    let unknown = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"no.such.Service"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("NotFound"));
}
