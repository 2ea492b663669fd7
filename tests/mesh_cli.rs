//! The `mesh` command end to end: `mesh up` starts its own Consul dev agent, the whole default mesh
//! (three priority instances, users, tasks, timetrack, analytics and the hub on a database and key
//! prefix of the test's own) and the gateway, prints what to try (the dashboard's address and the
//! live-update lines too) — the README's lines, which the test runs — and
//! stops everything on Ctrl-C; `mesh status` shows the instances.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protomesh::consul::{ConsulClient, ConsulConfig, QueryOptions};
use protomesh_data::testing::{TestDatabase, TestKeys};
use support::{binary, eventually, free_port, spawn_priority, tempdir, tool, Consul};

/// The live child processes of `parent` (zombies excluded): process ID and command name.
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after its closing paren.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let command = head.split_once('(').map_or("", |(_, c)| c).to_owned();
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent && state != "Z" {
            children.push((pid, command));
        }
    }
    children
}

#[tokio::test]
async fn mesh_status_lists_instances_with_addresses_and_check_states() {
    let consul = Consul::start().await;
    let _priority = spawn_priority(&consul.addr(), &[]);
    eventually(Duration::from_secs(10), "a passing instance", || async {
        (!consul.instances("priority", true).await.is_empty()).then_some(())
    })
    .await;
    let out = Command::new(binary("mesh"))
        .arg("status")
        .env("CONSUL_HTTP_ADDR", consul.addr())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("priority"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("priority-127.0.0.1-"), "{row}");
    assert!(row.contains("passing"), "{row}");
    assert!(
        row.contains("gRPC health of protomesh.priority.v1.PriorityService: passing"),
        "{row}"
    );
}

#[tokio::test]
async fn mesh_status_against_no_agent_is_a_clear_error() {
    let port = free_port();
    let out = Command::new(binary("mesh"))
        .arg("status")
        .env("CONSUL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn mesh_up_starts_the_whole_mesh_and_ctrl_c_stops_all() {
    let port = free_port();
    let consul_addr = format!("127.0.0.1:{port}");
    let priority = binary("priority");
    for name in ["users", "tasks", "timetrack", "analytics", "hub", "gateway"] {
        binary(name);
    }
    // A database name the server does not have yet: the services create it (racing) on the
    // first run, as on a fresh machine.
    let database = TestDatabase::not_created().await.unwrap();
    let keys = TestKeys::new();
    let gateway_addr = format!("127.0.0.1:{}", free_port());
    let mut mesh = Command::new(binary("mesh"))
        .args(["up", "--gateway", &gateway_addr, "--log-dir"])
        .arg(tempdir())
        .arg("--bin-dir")
        .arg(priority.parent().unwrap())
        .env("CONSUL_HTTP_ADDR", &consul_addr)
        .env("CONSUL_BIN", tool("consul"))
        .env("DATABASE_URL", database.url())
        .env("PROTOMESH_KEY_PREFIX", keys.prefix())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // kill_on_drop for a std child: make sure a failing assertion still ends it.
    struct Guard(u32);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        }
    }
    let _guard = Guard(mesh.id());

    let stdout = mesh.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
        seen
    });
    let banner = tokio::time::timeout(Duration::from_secs(120), banner)
        .await
        .expect("mesh up reports ready")
        .unwrap();
    assert!(banner.contains("started a Consul dev agent"), "{banner}");
    assert!(banner.contains("grpcurl -plaintext"), "{banner}");

    // The curl line it prints (the README's) answers through the gateway as documented.
    let curl_line = banner
        .lines()
        .find(|l| l.contains("curl") && l.contains("/v1/priority:score"))
        .unwrap_or_else(|| panic!("no gateway curl line: {banner}"))
        .trim()
        .to_owned();
    let curl = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .args(["-c", &curl_line])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        r#"{"title":"ship it","score":72,"level":"LEVEL_HIGH"}"#
    );

    // The tasks lines (project, task, timer, complete, list, report, dashboard) run as one script:
    // each answer is JSON, the task is scored by the priority service (not the fallback), and the
    // report, fed by events through analytics, eventually counts the completed task.
    let script: Vec<String> = banner
        .lines()
        .skip_while(|l| !l.starts_with("  email="))
        .take_while(|l| !l.contains("/routes"))
        .map(|l| l.trim().to_owned())
        .collect();
    assert!(
        script.len() >= 13,
        "users and tasks lines in the banner: {banner}"
    );
    // The test also keeps the token the lines obtained, for its own calls below.
    let run = format!("{}\necho \"TOKEN=$token\"", script.join("\n"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &run])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(r#""title":"ship it""#) && stderr.contains(r#""priorityScore":72"#),
        "the created task, scored 72: {stderr}"
    );
    assert!(!stderr.contains("priorityFallback"), "{stderr}");
    // The PATCH's mask came from the body's keys: urgency 3 × impact 8, re-scored by priority.
    assert!(
        stdout.contains(r#""urgency":3"#) && stdout.contains(r#""priorityScore":24"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""stopped""#) || stdout.contains(r#""stoppedAt""#),
        "{stdout}"
    );
    assert!(stdout.contains("TASK_STATUS_DONE"), "{stdout}");
    // The first JSON the script showed is the project.
    let project = stderr
        .split(r#""id":""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    // A bad task through the gateway: 400, every violated field named, nothing created.
    let token = stdout
        .split("TOKEN=")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no token line: {stdout}\n{stderr}"))
        .to_owned();
    assert!(stdout.contains(r#""displayName":"Ada""#), "GetMe: {stdout}");
    let bad_task = format!(
        r#"curl -s -w ' %{{http_code}}' -H 'authorization: Bearer {token}' -X POST http://{gateway_addr}/v1/projects/{project}/tasks -d '{{"title":"","urgency":11,"impact":8}}'"#
    );
    let bad = tokio::task::spawn_blocking(move || {
        Command::new("sh").args(["-c", &bad_task]).output().unwrap()
    })
    .await
    .unwrap();
    let bad = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert!(bad.ends_with(" 400"), "{bad}");
    assert!(
        bad.contains("task.title") && bad.contains("task.urgency") && !bad.contains("task.impact"),
        "{bad}"
    );
    let report_line = script.iter().find(|l| l.contains("/report")).unwrap();
    let report_script =
        format!("auth='authorization: Bearer {token}'\nproject={project}\n{report_line}");
    let report = eventually(
        Duration::from_secs(20),
        "the report counts the completed task",
        || {
            let report_script = report_script.clone();
            async move {
                let out = tokio::task::spawn_blocking(move || {
                    Command::new("bash")
                        .args(["-c", &report_script])
                        .output()
                        .unwrap()
                })
                .await
                .unwrap();
                let report = String::from_utf8_lossy(&out.stdout).into_owned();
                report.contains(r#""completionRate":1"#).then_some(report)
            }
        },
    )
    .await;
    assert!(
        report.contains(r#""status":"TASK_STATUS_DONE","count":"1""#),
        "{report}"
    );

    // The hub is up, the live-update lines and the dashboard are printed, and the page answers.
    assert!(
        banner.contains("/v1/hub/events?topics=project/$project")
            && banner.contains("protomesh.hub.v1.HubService/Subscribe"),
        "{banner}"
    );
    let dashboard = banner
        .lines()
        .find_map(|l| l.strip_prefix("Dashboard: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no dashboard line: {banner}"))
        .to_owned();
    let page = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "--max-time", "10", &dashboard])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("<title>protomesh"),
        "{page:?}"
    );

    let client = ConsulClient::new(ConsulConfig::new(&consul_addr).unwrap()).unwrap();
    let passing_only = QueryOptions {
        passing: true,
        ..Default::default()
    };
    let hub = client.health_service("hub", &passing_only).await.unwrap();
    assert_eq!(hub.value.len(), 1, "{banner}");
    let passing = client
        .health_service("priority", &passing_only)
        .await
        .unwrap()
        .value;
    assert_eq!(passing.len(), 3, "{banner}");
    let addrs: Vec<String> = passing
        .iter()
        .map(|e| format!("{}:{}", e.service.address, e.service.port))
        .collect();

    // The dev agent dies: `mesh up` reaps it (no zombie left) and starts it again at the same
    // address, where the services register themselves again.
    let agent = children_of(mesh.id())
        .into_iter()
        .find(|(_, command)| command == "consul")
        .unwrap_or_else(|| panic!("no consul child of mesh up"))
        .0;
    kill(Pid::from_raw(agent as i32), Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(10), "the dead agent reaped", || async {
        (!std::path::Path::new(&format!("/proc/{agent}")).exists()).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(60),
        "the agent back with 3 priority instances",
        || async {
            let entries = client
                .health_service(
                    "priority",
                    &QueryOptions {
                        passing: true,
                        ..Default::default()
                    },
                )
                .await
                .ok()?
                .value;
            (entries.len() == 3).then_some(())
        },
    )
    .await;
    assert!(
        children_of(mesh.id())
            .iter()
            .any(|(pid, command)| command == "consul" && *pid != agent),
        "a new agent runs"
    );

    kill(Pid::from_raw(mesh.id() as i32), Signal::SIGINT).unwrap();
    let status = tokio::task::spawn_blocking(move || mesh.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "mesh up exits 0 after Ctrl-C: {status}");
    for addr in addrs {
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "{addr} still accepts connections"
        );
    }
    assert!(
        std::net::TcpStream::connect(&consul_addr).is_err(),
        "the dev agent it started is stopped"
    );
    assert!(
        std::net::TcpStream::connect(&gateway_addr).is_err(),
        "the gateway it started is stopped"
    );
}
