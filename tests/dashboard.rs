//! The live mesh dashboard in a real browser: headless Chromium (Debian `chromium` and
//! `chromium-driver`) loads `/ui/` from the `gateway` binary, in front of `tasks`, `priority` and
//! `hub` registered in a private Consul dev agent (database and key prefix of the test's own). The
//! page, signed in with an admin token, lists the services with their Consul health and the
//! routes, and follows a project through the WebSocket bridge; the test changes a task through the
//! JSON route and the page shows the change within 1 s, and the change's route counted in the
//! routes table. The page is kept as `target/test-artefacts/dashboard.png`.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use protomesh::auth::testing::token;
use support::http::{bearer, field, http, spawn};
use support::mesh::{wait_passing, wait_routes, TestMesh};
use support::webdriver::Browser;
use support::{eventually, gateway_addr, repo_root, test_secret_file, unique};

/// How soon the page must show a change made through the JSON route.
const SHOWN_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_mesh_and_a_task_change_live() {
    let mesh = TestMesh::start().await;
    let mut env = mesh.env();
    env.push(("PROTOMESH_JWT_SECRET_FILE", test_secret_file()));
    let _priority = spawn("priority", &env, &[]);
    let _tasks = spawn("tasks", &env, &[]);
    let _hub = spawn("hub", &env, &[]);
    wait_passing(&mesh.consul, &["priority", "tasks", "hub"]).await;
    let gateway = spawn("gateway", &env, &["--admin", "127.0.0.1:0"]);
    let addr = gateway_addr(&gateway).await;
    wait_routes(addr, &["HubService", "TasksService", "PriorityService"]).await;
    let url = |path: &str| format!("http://{addr}{path}");

    // Alice's project and task, made through the JSON routes.
    let alice = token("alice", &[]);
    let project = http(
        "POST",
        url("/v1/projects"),
        bearer(&alice),
        Some(format!(r#"{{"name":"{}"}}"#, unique("live"))),
    )
    .await;
    assert_eq!(project.status, 200, "{}", project.body);
    let project = field(&project, "id");
    let task = http(
        "POST",
        url(&format!("/v1/projects/{project}/tasks")),
        bearer(&alice),
        Some(r#"{"title":"draft the launch","urgency":6,"impact":7}"#.to_owned()),
    )
    .await;
    assert_eq!(task.status, 200, "{}", task.body);
    let task = field(&task, "id");

    // The status API is for admins only.
    let refused = http("GET", url("/ui/api/status"), bearer(&alice), None).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let refused = http("GET", url("/ui/api/status"), vec![], None).await;
    assert_eq!(refused.status, 401, "{}", refused.body);

    // The page, signed in as an admin, following the project.
    let admin = token("root", &["admin"]);
    let browser = Browser::start().await;
    browser
        .goto(&url(&format!("/ui/#token={admin}&project={project}")))
        .await;
    eventually(
        Duration::from_secs(20),
        "the page live, with the services",
        || async {
            let seen = browser
                .run(
                    "return [document.getElementById('feed-status').textContent,
                         document.getElementById('services').innerText];",
                )
                .await;
            let services = seen[1].as_str().unwrap_or_default();
            (seen[0] == "live"
                && ["tasks", "hub", "priority"]
                    .iter()
                    .all(|s| services.contains(s))
                && services.contains("passing"))
            .then_some(())
        },
    )
    .await;
    let routes = browser
        .run("return document.getElementById('routes').innerText;")
        .await;
    assert!(
        routes.as_str().unwrap().contains("/v1/hub/events"),
        "{routes}"
    );

    // A task changed through the JSON route shows on the page within a second.
    let title = unique("renamed");
    let changed = http(
        "PATCH",
        url(&format!("/v1/tasks/{task}")),
        bearer(&alice),
        Some(format!(r#"{{"title":"{title}"}}"#)),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let started = Instant::now();
    let shown = loop {
        let feed = browser
            .run("return document.getElementById('feed').innerText;")
            .await;
        if feed.as_str().unwrap_or_default().contains(&title) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the change never showed: {feed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "the change showed {} ms after the PATCH answered",
        shown.as_millis()
    );
    assert!(shown <= SHOWN_WITHIN, "shown after {shown:?}");
    let feed = browser
        .run("return document.querySelector('#feed li').dataset.type;")
        .await;
    assert_eq!(feed, "task.updated");

    // The PATCH is counted in the routes table (from the gateway's metrics, polled every 2 s).
    eventually(Duration::from_secs(10), "the PATCH counted", || async {
        let total = browser
            .run(
                "const row = [...document.querySelectorAll('#routes tbody tr')]
                     .find(r => r.dataset.route.startsWith('PATCH /v1/tasks/'));
                 return row ? Number(row.cells[4].textContent) : 0;",
            )
            .await;
        (total.as_f64().unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let artefacts = repo_root().join("target/test-artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    std::fs::write(artefacts.join("dashboard.png"), &png).unwrap();
    browser.quit().await;
}
