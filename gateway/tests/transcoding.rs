//! The gateway end to end: HTTP requests through a running gateway to the test-only echo service
//! (real Consul, discovery over reflection), asserting the exact gRPC request the service received
//! and the exact JSON (or error) that came back, for every routing and mapping rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::StatusCode;
use protomesh_gateway::GatewayOptions;
use serde_json::json;
use support::{http, wait_for_route, Consul, EchoServer, TestGateway};

/// One table row: a request, what the service must receive, what must come back.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: &'static str,
    /// `(gRPC method, request message in proto-name JSON)`, or `None` when the call must not
    /// reach the service.
    received: Option<(&'static str, serde_json::Value)>,
    status: StatusCode,
    /// The exact JSON answer (for errors: checked by `error_check` instead when given).
    answer: serde_json::Value,
}

fn ok(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: &'static str,
    grpc: &'static str,
    received: serde_json::Value,
    answer: serde_json::Value,
) -> Case {
    Case {
        name,
        method,
        path,
        body,
        received: Some((grpc, received)),
        status: StatusCode::OK,
        answer,
    }
}

fn success_cases() -> Vec<Case> {
    vec![
        ok(
            "path variable",
            "GET",
            "/v1/items/abc",
            "",
            "Get",
            json!({"id": "abc"}),
            json!({"id": "abc"}),
        ),
        ok(
            "additional binding with two variables",
            "GET",
            "/v1/shelves/s1/items/i9",
            "",
            "Get",
            json!({"id": "i9", "shelf": "s1"}),
            json!({"id": "i9", "shelf": "s1"}),
        ),
        ok(
            "multi-segment variable keeps %2F",
            "GET",
            "/v1/libraries/l1/books/b%2F2",
            "",
            "GetByName",
            json!({"name": "libraries/l1/books/b%2F2"}),
            json!({"name": "libraries/l1/books/b%2F2"}),
        ),
        ok(
            "single-segment variable decodes everything",
            "GET",
            "/v1/items/a%2Fb%20c",
            "",
            "Get",
            json!({"id": "a/b c"}),
            json!({"id": "a/b c"}),
        ),
        ok(
            "double wildcard",
            "GET",
            "/v1/search/a/b/c%20d",
            "",
            "Search",
            json!({"path": "a/b/c d"}),
            json!({"path": "a/b/c d"}),
        ),
        ok(
            "query parameters of every kind",
            "GET",
            "/v1/items/q?big=9007199254740993&ubig=18446744073709551615&flag=true&ratio=0.5\
             &blob=AQID&color=COLOR_BLUE&tags=a&tags=b&colors=2&colors=COLOR_RED\
             &detail.label=x&detail.child.level=3&when=2024-01-02T03:04:05Z&ttl=1.5s&maybe=7\
             &displayName=Zed",
            "",
            "Get",
            json!({
                "id": "q", "big": "9007199254740993", "ubig": "18446744073709551615",
                "flag": true, "ratio": 0.5, "blob": "AQID", "color": "COLOR_BLUE",
                "tags": ["a", "b"], "colors": ["COLOR_BLUE", "COLOR_RED"],
                "detail": {"label": "x", "child": {"level": 3}},
                "when": "2024-01-02T03:04:05Z", "ttl": "1.500s", "maybe": 7,
                "display_name": "Zed"
            }),
            json!({
                "id": "q", "big": "9007199254740993", "ubig": "18446744073709551615",
                "flag": true, "ratio": 0.5, "blob": "AQID", "color": "COLOR_BLUE",
                "tags": ["a", "b"], "colors": ["COLOR_BLUE", "COLOR_RED"],
                "detail": {"label": "x", "child": {"level": 3}},
                "when": "2024-01-02T03:04:05Z", "ttl": "1.500s", "maybe": 7,
                "displayName": "Zed"
            }),
        ),
        ok(
            "whole body, both field names in",
            "POST",
            "/v1/items",
            r#"{"id":"n1","displayName":"New","labels":{"k":"v"},"extra":{"a":[1,"x"]},"fail_code":0}"#,
            "Create",
            json!({"id": "n1", "display_name": "New", "labels": {"k": "v"}, "extra": {"a": [1.0, "x"]}}),
            json!({"id": "n1", "displayName": "New", "labels": {"k": "v"}, "extra": {"a": [1.0, "x"]}}),
        ),
        ok(
            "nested path variable and a field body",
            "PUT",
            "/v1/items/i1/detail/lbl",
            r#"{"a":true}"#,
            "Attach",
            json!({"id": "i1", "detail": {"label": "lbl"}, "extra": {"a": true}}),
            json!({"id": "i1", "detail": {"label": "lbl"}, "extra": {"a": true}}),
        ),
        ok(
            "PATCH fills the update mask from the body keys",
            "PATCH",
            "/v1/items/i2",
            r#"{"displayName":"x","detail":{"level":2}}"#,
            "Update",
            json!({"item": {"id": "i2", "display_name": "x", "detail": {"level": 2}},
                   "update_mask": "detail.level,displayName"}),
            json!({"item": {"id": "i2", "displayName": "x", "detail": {"level": 2}},
                   "updateMask": "detail.level,displayName"}),
        ),
        ok(
            "DELETE answers Empty",
            "DELETE",
            "/v1/items/i3",
            "",
            "Delete",
            json!({"id": "i3"}),
            json!({}),
        ),
        ok(
            "custom HTTP method",
            "LIST",
            "/v1/items?shelf=s2",
            "",
            "List",
            json!({"shelf": "s2"}),
            json!({"shelf": "s2"}),
        ),
        ok(
            "custom verb",
            "POST",
            "/v1/items/i4:complete",
            r#"{"flag":true}"#,
            "Complete",
            json!({"id": "i4", "flag": true}),
            json!({"id": "i4", "flag": true}),
        ),
        ok(
            "response_body",
            "POST",
            "/v1/items/i5/labels",
            r#"{"labels":{"a":"1"}}"#,
            "Labels",
            json!({"id": "i5", "labels": {"a": "1"}}),
            json!({"a": "1"}),
        ),
    ]
}

fn error(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: &'static str,
    received: Option<(&'static str, serde_json::Value)>,
    status: StatusCode,
    answer: serde_json::Value,
) -> Case {
    Case {
        name,
        method,
        path,
        body,
        received,
        status,
        answer,
    }
}

fn error_cases() -> Vec<Case> {
    let fail = |code: i32, status: u16| {
        (
            code,
            StatusCode::from_u16(status).unwrap(),
            json!({"code": code, "message": "failing as asked", "details": []}),
        )
    };
    let mut cases = Vec::new();
    for (code, status, answer) in [
        fail(5, 404),
        fail(6, 409),
        fail(7, 403),
        fail(16, 401),
        fail(8, 429),
        fail(9, 400),
        fail(12, 501),
        fail(14, 503),
        fail(4, 504),
        fail(13, 500),
    ] {
        let body: &'static str = Box::leak(format!(r#"{{"failCode":{code}}}"#).into_boxed_str());
        cases.push(error(
            "status code mapping",
            "POST",
            "/v1/fail",
            body,
            Some(("Fail", json!({"fail_code": code}))),
            status,
            answer,
        ));
    }
    cases.push(error(
        "details are decoded",
        "POST",
        "/v1/fail",
        r#"{"failCode":3}"#,
        Some(("Fail", json!({"fail_code": 3}))),
        StatusCode::BAD_REQUEST,
        json!({"code": 3, "message": "title: must not be empty", "details": [{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "title", "description": "must not be empty"}]
        }]}),
    ));
    cases
}

#[tokio::test]
async fn every_rule_transcodes_exactly() {
    let consul = Consul::start().await;
    let echo = EchoServer::start(&consul.addr()).await;
    let gateway = TestGateway::start(&consul.client, support::public_options()).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;
    echo.take();

    let mut failures = Vec::new();
    for case in success_cases().into_iter().chain(error_cases()) {
        let answer = http(case.method, &gateway.url(case.path), &[], case.body).await;
        let received = echo.take();
        let mut problems = Vec::new();
        if answer.status != case.status {
            problems.push(format!("status {} (want {})", answer.status, case.status));
        }
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
        if body != case.answer {
            problems.push(format!("answer {body} (want {})", case.answer));
        }
        match (&case.received, received.as_slice()) {
            (None, []) => {}
            (Some((method, message)), [got])
                if got.method == *method && got.message == *message => {}
            (want, got) => problems.push(format!(
                "service received {:?} (want {want:?})",
                got.iter()
                    .map(|r| (&r.method, &r.message))
                    .collect::<Vec<_>>()
            )),
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} {} → {}",
                case.name,
                case.method,
                case.path,
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn the_gateways_own_errors_name_what_is_wrong() {
    let consul = Consul::start().await;
    let echo = EchoServer::start(&consul.addr()).await;
    let options = GatewayOptions {
        body_limit: 1024,
        ..support::public_options()
    };
    let gateway = TestGateway::start(&consul.client, options).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;
    echo.take();

    /// Name, method, path, body, status, words the message must contain.
    type ErrorCase = (
        &'static str,
        &'static str,
        &'static str,
        String,
        StatusCode,
        &'static [&'static str],
    );
    let cases: Vec<ErrorCase> = vec![
        (
            "malformed JSON",
            "POST",
            "/v1/items",
            r#"{"id": "#.into(),
            StatusCode::BAD_REQUEST,
            &["line 1", "column"],
        ),
        (
            "unknown JSON field",
            "POST",
            "/v1/items",
            r#"{"nope":1}"#.into(),
            StatusCode::BAD_REQUEST,
            &["nope"],
        ),
        (
            "wrong JSON type",
            "POST",
            "/v1/items",
            r#"{"big":"x"}"#.into(),
            StatusCode::BAD_REQUEST,
            &["big"],
        ),
        (
            "a repeated JSON key (never read as its last value)",
            "POST",
            "/v1/items",
            r#"{"id":"a","id":"b"}"#.into(),
            StatusCode::BAD_REQUEST,
            &["repeats the key `id`"],
        ),
        (
            "unknown query parameter",
            "GET",
            "/v1/items/a?nope=1",
            String::new(),
            StatusCode::BAD_REQUEST,
            &["nope"],
        ),
        (
            "bad enum in query",
            "GET",
            "/v1/items/a?color=PURPLE",
            String::new(),
            StatusCode::BAD_REQUEST,
            &["color"],
        ),
        (
            "int64 overflow in query",
            "GET",
            "/v1/items/a?big=99999999999999999999",
            String::new(),
            StatusCode::BAD_REQUEST,
            &["big"],
        ),
        (
            "body where none is expected",
            "DELETE",
            "/v1/items/a",
            r#"{"x":1}"#.into(),
            StatusCode::BAD_REQUEST,
            &["body"],
        ),
        (
            "unknown path",
            "GET",
            "/v1/nothing/here",
            String::new(),
            StatusCode::NOT_FOUND,
            &["/v1/nothing/here"],
        ),
        (
            "wrong method",
            "DELETE",
            "/v1/items",
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            &["DELETE", "POST"],
        ),
        (
            "body over the limit",
            "POST",
            "/v1/items",
            format!(r#"{{"id":"{}"}}"#, "x".repeat(2000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            &["1024"],
        ),
        (
            "invalid Grpc-Timeout",
            "POST",
            "/v1/items",
            "{}".into(),
            StatusCode::BAD_REQUEST,
            &["Grpc-Timeout"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, method, path, body, status, words) in cases {
        let headers: &[(&str, &str)] = if name == "invalid Grpc-Timeout" {
            &[("grpc-timeout", "soon")]
        } else {
            &[]
        };
        let answer = http(method, &gateway.url(path), headers, body).await;
        let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
        let message = json["message"].as_str().unwrap_or_default();
        let missing: Vec<_> = words.iter().filter(|w| !message.contains(**w)).collect();
        if answer.status != status || !missing.is_empty() || json["code"].as_i64().is_none() {
            failures.push(format!(
                "{name}: {} {}: {}",
                answer.status, answer.body, status
            ));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED
            && answer.headers.get("allow").map(|v| v.as_bytes()) != Some(b"POST, LIST")
        {
            failures.push(format!(
                "{name}: Allow header {:?}",
                answer.headers.get("allow")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(echo.take().is_empty(), "no bad request reached the service");

    // A request head over the limit is refused before any routing.
    let big = "x".repeat(protomesh_gateway::listener::MAX_REQUEST_HEAD + 1);
    let answer = http(
        "GET",
        &gateway.url("/v1/items/a"),
        &[("x-big", big.as_str())],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // A field error carries a BadRequest detail naming the field.
    let answer = http("GET", &gateway.url("/v1/items/a?color=PURPLE"), &[], "").await;
    assert_eq!(
        answer.json()["details"][0]["fieldViolations"][0]["field"],
        "color"
    );
}

#[tokio::test]
async fn headers_deadlines_streams_and_metadata() {
    let consul = Consul::start().await;
    let echo = EchoServer::start(&consul.addr()).await;
    let gateway = TestGateway::start(&consul.client, support::public_options()).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;
    echo.take();

    // Authorization, X-Request-Id and traceparent become metadata; the ID comes back.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let bearer = format!("Bearer {}", support::hs256_token("u-1", &[]));
    let answer = http(
        "GET",
        &gateway.url("/v1/items/h"),
        &[
            ("authorization", &bearer),
            ("x-request-id", "req-42"),
            ("traceparent", traceparent),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-request-id"], "req-42");
    assert_eq!(answer.headers["grpc-metadata-x-echo"], "yes");
    let received = echo.take();
    let metadata = &received[0].metadata;
    for (key, value) in [
        ("authorization", bearer.as_str()),
        ("x-request-id", "req-42"),
        ("traceparent", traceparent),
    ] {
        assert!(
            metadata.contains(&(key.to_owned(), value.to_owned())),
            "{key} not passed on: {metadata:?}"
        );
    }

    // Without an ID, one is generated and passed on.
    let answer = http("GET", &gateway.url("/v1/items/h"), &[], "").await;
    let generated = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32, "{generated}");
    assert!(echo.take()[0]
        .metadata
        .contains(&("x-request-id".to_owned(), generated)));

    // Grpc-Timeout sets the deadline: a slow call ends with 504.
    let answer = http(
        "POST",
        &gateway.url("/v1/slow"),
        &[("grpc-timeout", "100m")],
        r#"{"count":3000}"#,
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.body
    );
    assert_eq!(answer.json()["code"], 4);

    // Server streaming: newline-delimited JSON, or SSE when asked.
    let answer = http("GET", &gateway.url("/v1/items/w:watch?count=3"), &[], "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "application/x-ndjson");
    let lines: Vec<serde_json::Value> = answer
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, vec![json!({"id": "w", "count": 3}); 3]);
    let answer = http(
        "GET",
        &gateway.url("/v1/items/w:watch?count=2"),
        &[("accept", "text/event-stream")],
        "",
    )
    .await;
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    assert_eq!(
        answer.body,
        "data: {\"id\":\"w\",\"count\":2}\n\ndata: {\"id\":\"w\",\"count\":2}\n\n"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_call() {
    use tokio::io::AsyncWriteExt;
    let consul = Consul::start().await;
    let echo = EchoServer::start(&consul.addr()).await;
    let gateway = TestGateway::start(&consul.client, support::public_options()).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;
    echo.take();

    // Control: a call left alone finishes.
    let answer = http("POST", &gateway.url("/v1/slow"), &[], r#"{"count":300}"#).await;
    assert_eq!(answer.status, StatusCode::OK);
    let methods: Vec<String> = echo.take().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["Slow", "SlowDone"]);

    // The same call, with the client gone after 100 ms.
    let body = r#"{"count":1500}"#;
    let mut socket = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let request = format!(
        "POST /v1/slow HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let methods: Vec<String> = echo.take().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["Slow"], "the upstream call was cancelled");
}

#[tokio::test]
async fn openapi_and_routes_follow_the_live_table() {
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    let gateway = TestGateway::start(&consul.client, support::public_options()).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;

    let routes = http("GET", &gateway.url("/routes"), &[], "").await.json();
    // Public: the service's coarse state, no addresses, no upstream errors.
    for route in routes["routes"].as_array().unwrap() {
        assert_eq!(route["state"], "available", "{route}");
    }
    assert!(routes.get("unreachable").is_none(), "{routes}");
    assert!(!routes.to_string().contains("127.0.0.1"), "{routes}");
    let admin = http("GET", &gateway.admin_url("/routes"), &[], "")
        .await
        .json();
    assert!(admin["unreachable"].is_object(), "{admin}");
    assert_eq!(
        admin["routes"].as_array().unwrap().len(),
        routes["routes"].as_array().unwrap().len()
    );
    let listed: Vec<(String, String, String)> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["path"].as_str().unwrap().to_owned(),
                r["grpc_method"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (method, path, grpc) in [
        (
            "GET",
            "/v1/items/{id}",
            "protomesh.gwtest.v1.EchoService.Get",
        ),
        (
            "GET",
            "/v1/shelves/{shelf}/items/{id}",
            "protomesh.gwtest.v1.EchoService.Get",
        ),
        (
            "PATCH",
            "/v1/items/{item.id}",
            "protomesh.gwtest.v1.EchoService.Update",
        ),
        (
            "GET",
            "/v1/items/{id}:watch",
            "protomesh.gwtest.v1.EchoService.Watch",
        ),
    ] {
        assert!(
            listed.contains(&(method.to_owned(), path.to_owned(), grpc.to_owned())),
            "{method} {path} not in {listed:?}"
        );
    }
    assert_eq!(admin["conflicts"], json!([]));

    let document = http("GET", &gateway.url("/openapi.json"), &[], "")
        .await
        .json();
    assert_eq!(document["openapi"], "3.0.3");
    assert!(
        document["paths"]["/v1/items/{id}"]["get"].is_object(),
        "{document}"
    );
    assert!(document["paths"]["/v1/items"]["post"]["requestBody"].is_object());
    // Every route of the table is in the document.
    for (method, path, _) in &listed {
        if method == "LIST" {
            // OpenAPI has no slot for custom methods: they are listed apart.
            assert!(
                document["x-custom-methods"].to_string().contains("LIST"),
                "{document}"
            );
            continue;
        }
        // OpenAPI names a variable only, by its last field: `{name=libraries/*/books/*}` →
        // `{name}`, `{detail.label}` → `{label}`.
        let mut rendered = String::new();
        let mut skipping = false;
        for c in path.chars() {
            let in_variable = rendered.rfind('{') > rendered.rfind('}');
            match c {
                '=' if !skipping && in_variable => skipping = true,
                '.' if !skipping && in_variable => {
                    let open = rendered.rfind('{').unwrap_or(0);
                    rendered.truncate(open + 1);
                }
                '}' => {
                    skipping = false;
                    rendered.push(c);
                }
                _ if skipping => {}
                _ => rendered.push(c),
            }
        }
        let operation = &document["paths"][rendered.as_str()][method.to_ascii_lowercase().as_str()];
        assert!(
            operation.is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn grpcurl_lists_and_calls_through_the_same_port() {
    let consul = Consul::start().await;
    let echo = EchoServer::start(&consul.addr()).await;
    let gateway = TestGateway::start(&consul.client, support::public_options()).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;
    echo.take();
    let grpcurl =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/grpcurl");
    let addr = gateway.addr.to_string();
    let run = move |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(grpcurl)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let list = run(vec!["-plaintext".into(), addr.clone(), "list".into()])
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        listed.contains("protomesh.gwtest.v1.EchoService"),
        "{listed}"
    );
    let call = run(vec![
        "-plaintext".into(),
        "-d".into(),
        r#"{"id":"g","tags":["x"]}"#.into(),
        addr,
        "protomesh.gwtest.v1.EchoService/Get".into(),
    ])
    .await
    .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&call.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&call.stderr)));
    assert_eq!(answer, json!({"id": "g", "tags": ["x"]}));
    assert_eq!(echo.take()[0].message, json!({"id": "g", "tags": ["x"]}));
}

#[tokio::test]
async fn curl_over_http2_cleartext_gets_the_same_json() {
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    let gateway = TestGateway::start(&consul.client, support::public_options()).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;
    let url = gateway.url("/v1/items");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "-w", "\n%{http_version}"])
            .args(["-X", "POST", &url, "-d", r#"{"id":"h2","big":"5"}"#])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap();
    assert_eq!(version, "2", "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        json!({"id": "h2", "big": "5"})
    );
}
