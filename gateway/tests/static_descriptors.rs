//! The fallback for services without server reflection: a descriptor-set file given to the
//! gateway routes them; without it, `/routes` says why they are not routed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use protomesh::consul::ServiceRegistration;
use protomesh_gateway::discovery::DiscoveryOptions;
use protomesh_gateway::reflection::{DescriptorSource, ServiceDescriptors};
use support::{echo_descriptor_set, eventually, http, Consul, Echo, TestGateway};

/// A plain tonic server with the echo service and no reflection, registered as `legacy`.
async fn legacy_service(consul: &Consul) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(Echo::new(Arc::default()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    consul
        .client
        .agent_service_register(
            &ServiceRegistration::new(format!("legacy-{port}"), "legacy")
                .with_address("127.0.0.1", port)
                .with_tag("grpc"),
        )
        .await
        .unwrap();
    server
}

#[tokio::test]
async fn a_descriptor_set_file_routes_a_service_without_reflection() {
    let consul = Consul::start().await;
    let server = legacy_service(&consul).await;

    // Without the file: not routed, and the admin /routes says why; the public one only that
    // the service is unavailable, with no error text or address.
    let gateway = TestGateway::start(&consul.client, support::public_options()).await;
    let reason = eventually(
        Duration::from_secs(15),
        "legacy listed as unreachable",
        || async {
            let routes = http("GET", &gateway.admin_url("/routes"), &[], "")
                .await
                .json();
            routes["unreachable"]["legacy"].as_str().map(str::to_owned)
        },
    )
    .await;
    assert!(reason.contains("reflection"), "{reason}");
    let public = http("GET", &gateway.url("/routes"), &[], "").await;
    let json = public.json();
    assert_eq!(json["services"]["legacy"], "unavailable", "{json}");
    assert!(json.get("unreachable").is_none(), "{json}");
    assert!(json.get("errors").is_none(), "{json}");
    assert!(!public.body.contains("reflection"), "{}", public.body);
    assert!(!public.body.contains("127.0.0.1"), "{}", public.body);
    let answer = http("GET", &gateway.url("/v1/items/abc"), &[], "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    // With it: routed.
    let file = std::env::temp_dir().join(format!("gwtest-{}.binpb", std::process::id()));
    std::fs::write(&file, echo_descriptor_set()).unwrap();
    let descriptors = ServiceDescriptors::from_file(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(descriptors.source, DescriptorSource::File(file.clone()));
    assert!(descriptors
        .services
        .contains(&support::ECHO_SERVICE.to_owned()));
    let gateway = TestGateway::start_with(
        &consul.client,
        support::public_options(),
        DiscoveryOptions {
            static_descriptors: BTreeMap::from([("legacy".to_owned(), Arc::new(descriptors))]),
            ..DiscoveryOptions::default()
        },
    )
    .await;
    let answer = eventually(Duration::from_secs(15), "the legacy route", || async {
        let answer = http("GET", &gateway.url("/v1/items/abc"), &[], "").await;
        (answer.status == StatusCode::OK).then_some(answer)
    })
    .await;
    assert_eq!(answer.json(), serde_json::json!({"id": "abc"}));
    server.abort();
}

#[test]
fn a_bad_descriptor_set_file_is_an_error_naming_it() {
    let missing = std::path::Path::new("/nonexistent/protomesh.binpb");
    let err = ServiceDescriptors::from_file(missing).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/protomesh.binpb"),
        "{err}"
    );
    let garbage = std::env::temp_dir().join(format!("garbage-{}.binpb", std::process::id()));
    std::fs::write(&garbage, b"\xff\xff\xff").unwrap();
    let err = ServiceDescriptors::from_file(&garbage).unwrap_err();
    std::fs::remove_file(&garbage).unwrap();
    assert!(err.to_string().contains("garbage-"), "{err}");
}
