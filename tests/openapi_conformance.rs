//! The OpenAPI document is what the mesh enforces: [schemathesis] (PyPI, installed into
//! `.tools` by `scripts/setup.sh`) generates requests from the running mesh's `/openapi.json` —
//! schema-valid ones, which must be accepted, and schema-violating ones, which must be refused —
//! and checks every answer against the document, with a valid bearer token, against `users`,
//! `tasks`, `timetrack`, `analytics`, `priority` and the `gateway` on a database and key prefix
//! of the test's own.
//!
//! Every check runs but one, replaced: schemathesis's `positive_data_acceptance` gives way to
//! `positive_data_acceptance_but_state` (`tests/schemathesis/hooks.py`), the same check less the
//! refusals no document can predict, recognised by the answer's gRPC code and field — the state
//! of the data (`FAILED_PRECONDITION`: a timer not running, a task already done, a project's
//! owner), a page token the server did not sign, a period whose end is not after its start (a
//! rule between two fields, which OpenAPI 3.0 cannot state).
//!
//! Bounded: at most [`MAX_EXAMPLES`] cases per operation and phase, one worker, and the whole run
//! killed after [`RUN_TIMEOUT`] (it takes about two minutes on two cores).
//!
//! [schemathesis]: https://schemathesis.readthedocs.io
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use support::http::{field, http, spawn};
use support::mesh::{wait_passing, wait_routes, TestMesh};
use support::{gateway_addr, repo_root, tempdir, tool, unique};

/// Cases per operation and phase.
const MAX_EXAMPLES: &str = "40";
/// The generation is seeded, so a failure reproduces.
const SEED: &str = "20261206";
/// The whole schemathesis run, at most.
const RUN_TIMEOUT: Duration = Duration::from_secs(420);
const PASSWORD: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_mesh_as_its_openapi_document_says() {
    let schemathesis = tool("schemathesis");
    let mesh = TestMesh::start().await;
    let env = mesh.env();
    let _users = spawn("users", &env, &[]);
    let _tasks = spawn("tasks", &env, &[]);
    let _timetrack = spawn("timetrack", &env, &[]);
    let _analytics = spawn("analytics", &env, &[]);
    let _priority = spawn("priority", &env, &[]);
    wait_passing(
        &mesh.consul,
        &["users", "tasks", "timetrack", "analytics", "priority"],
    )
    .await;
    // Thousands of requests from one address: rate limits that never refuse them (the limits
    // have tests of their own).
    let gateway = spawn(
        "gateway",
        &env,
        &[
            "--rate-limit",
            "default=1000000/1m",
            "--rate-limit",
            "public=1000000/1m",
            "--rate-limit",
            "auth=1000000/1m",
            "--rate-limit",
            "invalid-credentials=1000000/1m",
        ],
    );
    let addr: SocketAddr = gateway_addr(&gateway).await;
    let url = |path: &str| format!("http://{addr}{path}");
    wait_routes(
        addr,
        &[
            "UsersService",
            "TasksService",
            "TimetrackService",
            "AnalyticsService",
            "PriorityService",
        ],
    )
    .await;

    // A user of its own, signed in.
    let email = format!("{}@example.com", unique("schemathesis"));
    let body =
        format!(r#"{{"email":"{email}","displayName":"Schemathesis","password":"{PASSWORD}"}}"#);
    let registered = http("POST", url("/v1/users:register"), vec![], Some(body)).await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    let body = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
    let tokens = http("POST", url("/v1/auth:login"), vec![], Some(body)).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    let token = field(&tokens, "accessToken");

    let work = tempdir();
    let run = tokio::process::Command::new(schemathesis)
        .current_dir(&work)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", repo_root().join("tests/schemathesis"))
        .env("NO_COLOR", "1")
        .args(["run", &url("/openapi.json")])
        .args(["--checks", "all"])
        // Replaced by the hook's positive_data_acceptance_but_state (module docs).
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        // One worker: CPython 3.11's parser is not safe with hypothesis's threads ("AST
        // constructor recursion depth mismatch").
        .args(["--workers", "1", "--request-timeout", "10", "--no-shrink"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(RUN_TIMEOUT, run.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {RUN_TIMEOUT:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found the mesh other than its document says ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The summary, for the log.
    let summary = stdout
        .find("SUMMARY")
        .map_or(&stdout[..], |at| &stdout[at..]);
    eprintln!("{summary}");
    // It really ran.
    assert!(stdout.contains("Tested: "), "{stdout}");
    assert!(!stdout.contains("Tested: 0"), "{stdout}");
    let _ = std::fs::remove_dir_all(&work);
}
