//! `mesh up`: a whole dev mesh from one command. Reuses the Consul agent at the configured address,
//! or starts a dev agent there; starts each service's instances on free loopback ports (each with an
//! admin listener, `/metrics` included, whose port is in its Consul meta `metrics_port`); waits until
//! Consul reports every instance passing; prints what to try; on the shutdown signal stops the
//! services (SIGTERM, bounded wait) and the agent it started.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::future::join_all;
use protomesh_consul::{ConsulClient, ConsulConfig, DevAgent, DevAgentOptions};

use super::{status, DevMeshError, ServiceProcess};

/// A service to start and how many instances of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Binary name, which is also the Consul service name (`priority`).
    pub name: String,
    /// How many instances.
    pub instances: usize,
}

impl FromStr for ServiceSpec {
    type Err = DevMeshError;

    /// `name` (one instance) or `name=count`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| DevMeshError::InvalidSpec {
            spec: spec.to_owned(),
            reason,
        };
        let (name, count) = match spec.split_once('=') {
            Some((name, count)) => (
                name,
                count
                    .parse::<usize>()
                    .map_err(|_| invalid("the count after `=` must be a whole number"))?,
            ),
            None => (spec, 1),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid("the name must be letters, digits, `-` or `_`"));
        }
        if !(1..=64).contains(&count) {
            return Err(invalid("the count must be between 1 and 64"));
        }
        Ok(Self {
            name: name.to_owned(),
            instances: count,
        })
    }
}

/// What `mesh up` starts and where.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The Consul agent to use, or to start a dev agent at.
    pub consul: ConsulConfig,
    /// The `consul` binary for a dev agent (found on PATH or in `.tools/bin` when `None`).
    pub consul_binary: Option<PathBuf>,
    /// Folder holding the service binaries.
    pub bin_dir: PathBuf,
    /// Folder for the processes' logs.
    pub log_dir: PathBuf,
    /// Services to start.
    pub services: Vec<ServiceSpec>,
    /// How long to wait for everything to pass.
    pub ready_timeout: Duration,
    /// How long each service may take to stop after SIGTERM.
    pub stop_grace: Duration,
    /// Where to start the transcoding gateway (`gateway` binary), if at all; port 0 picks a
    /// free port.
    pub gateway: Option<SocketAddr>,
}

/// Brings the mesh up, reports to `out`, and runs until `shutdown` completes.
pub async fn up(
    options: UpOptions,
    out: &mut (dyn Write + Send),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DevMeshError> {
    std::fs::create_dir_all(&options.log_dir).map_err(|source| DevMeshError::Process {
        name: "log folder".into(),
        source,
    })?;
    let client = ConsulClient::new(options.consul.clone())?;
    let mut agent = ensure_agent(&client, &options, out).await?;

    let mut processes = Vec::new();
    let result = async {
        for spec in &options.services {
            for n in 1..=spec.instances {
                let name = format!("{}-{n}", spec.name);
                let process = ServiceProcess::spawn(
                    &name,
                    &options.bin_dir.join(&spec.name),
                    // Metrics on: the admin port is in the instance's Consul meta `metrics_port`.
                    &[
                        "--listen".to_owned(),
                        "127.0.0.1:0".to_owned(),
                        "--admin".to_owned(),
                        "127.0.0.1:0".to_owned(),
                    ],
                    &[
                        ("CONSUL_HTTP_ADDR".to_owned(), client.address().to_owned()),
                        ("PROTOMESH_LOG_FORMAT".to_owned(), "json".to_owned()),
                        (ADMIN_EMAILS_VAR.to_owned(), admin_email()),
                    ],
                    options.log_dir.join(format!("{name}.log")),
                )?;
                processes.push(process);
            }
        }
        wait_until_passing(&client, &options, &mut processes).await?;
        let gateway = match options.gateway {
            Some(addr) => {
                let addr = concrete_addr(addr)?;
                processes.push(ServiceProcess::spawn(
                    "gateway",
                    &options.bin_dir.join("gateway"),
                    // The admin listener on: the dashboard shows the gateway's request counts.
                    &[
                        "--listen".to_owned(),
                        addr.to_string(),
                        "--admin".to_owned(),
                        "127.0.0.1:0".to_owned(),
                    ],
                    &[
                        ("CONSUL_HTTP_ADDR".to_owned(), client.address().to_owned()),
                        ("PROTOMESH_LOG_FORMAT".to_owned(), "json".to_owned()),
                    ],
                    options.log_dir.join("gateway.log"),
                )?);
                wait_for_gateway(addr, &options, &mut processes).await?;
                Some(addr)
            }
            None => None,
        };
        let report = status(&client).await?;
        let _ = write!(out, "{report}");
        let _ = writeln!(out, "{}", try_lines(&client, &report, &options, gateway));
        let _ = out.flush();
        supervise(&mut processes, agent.as_mut(), shutdown).await;
        Ok(())
    }
    .await;

    let _ = writeln!(out, "stopping {} service processes…", processes.len());
    let _ = out.flush();
    join_all(processes.iter_mut().map(|p| p.stop(options.stop_grace))).await;
    if let Some(agent) = agent.as_mut() {
        agent.stop().await;
    }
    let _ = writeln!(out, "stopped");
    result
}

/// Uses the agent at the configured address, or starts a dev agent there.
async fn ensure_agent(
    client: &ConsulClient,
    options: &UpOptions,
    out: &mut (dyn Write + Send),
) -> Result<Option<DevAgent>, DevMeshError> {
    match client.agent_self().await {
        Ok(agent) => {
            let _ = writeln!(
                out,
                "using the Consul agent at {} (node {}, datacenter {}, version {})",
                client.address(),
                agent.node_name,
                agent.datacenter,
                agent.version
            );
            return Ok(None);
        }
        Err(err) if err.is_unreachable() => {}
        Err(err) => return Err(err.into()),
    }
    let address = client.address().to_owned();
    let uri: http::Uri = address.parse().map_err(|_| DevMeshError::NotLoopback {
        address: address.clone(),
    })?;
    let loopback = uri.host().is_some_and(|h| {
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if !loopback {
        return Err(DevMeshError::NotLoopback { address });
    }
    let binary = options
        .consul_binary
        .clone()
        .or_else(DevAgentOptions::find_binary)
        .ok_or_else(|| DevMeshError::NoConsulBinary {
            address: address.clone(),
        })?;
    let agent = DevAgent::start(DevAgentOptions {
        binary,
        http_port: uri.port_u16(),
        node_name: Some("protomesh-dev".to_owned()),
        log_file: Some(options.log_dir.join("consul.log")),
        extra_args: Vec::new(),
    })?;
    agent.wait_ready(Duration::from_secs(30)).await?;
    let _ = writeln!(
        out,
        "started a Consul dev agent at {} (UI: http://{}/ui)",
        agent.http_addr(),
        agent.http_addr()
    );
    Ok(Some(agent))
}

/// Polls Consul until every service has its instances passing; fails fast if a process exits.
async fn wait_until_passing(
    client: &ConsulClient,
    options: &UpOptions,
    processes: &mut [ServiceProcess],
) -> Result<(), DevMeshError> {
    let started = Instant::now();
    loop {
        for process in processes.iter_mut() {
            if let Some(status) = process.try_exit_status() {
                return Err(DevMeshError::EarlyExit {
                    name: process.name().to_owned(),
                    status,
                    log_tail: process.log_tail(20),
                });
            }
        }
        let report = status(client).await?;
        let waiting: Vec<String> = options
            .services
            .iter()
            .filter(|spec| report.passing(&spec.name) < spec.instances)
            .map(|spec| {
                format!(
                    "{} ({}/{})",
                    spec.name,
                    report.passing(&spec.name),
                    spec.instances
                )
            })
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if started.elapsed() > options.ready_timeout {
            return Err(DevMeshError::NotPassing {
                after: options.ready_timeout,
                waiting: waiting.join(", "),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `addr`, with port 0 replaced by a port free now.
fn concrete_addr(addr: SocketAddr) -> Result<SocketAddr, DevMeshError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    std::net::TcpListener::bind(addr)
        .and_then(|listener| listener.local_addr())
        .map_err(|source| DevMeshError::Process {
            name: "gateway".into(),
            source,
        })
}

/// Polls the gateway until it has routes for every started service.
async fn wait_for_gateway(
    addr: SocketAddr,
    options: &UpOptions,
    processes: &mut [ServiceProcess],
) -> Result<(), DevMeshError> {
    let started = Instant::now();
    loop {
        if let Some(gateway) = processes.last_mut() {
            if let Some(status) = gateway.try_exit_status() {
                return Err(DevMeshError::EarlyExit {
                    name: "gateway".to_owned(),
                    status,
                    log_tail: gateway.log_tail(20),
                });
            }
        }
        let routed = match super::status::http_get(&addr.to_string(), "/routes").await {
            Ok((status, body)) if status.is_success() => options
                .services
                .iter()
                .all(|spec| body.contains(&format!("\"service\":\"{}\"", spec.name))),
            _ => false,
        };
        if routed {
            return Ok(());
        }
        if started.elapsed() > options.ready_timeout {
            return Err(DevMeshError::NotPassing {
                after: options.ready_timeout,
                waiting: format!("the gateway at {addr} to route every service"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs until `shutdown`, reporting processes that exit on their own.
async fn supervise(
    processes: &mut [ServiceProcess],
    mut agent: Option<&mut DevAgent>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut reported = vec![false; processes.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {
                for (process, reported) in processes.iter_mut().zip(reported.iter_mut()) {
                    if *reported {
                        continue;
                    }
                    if let Some(status) = process.try_exit_status() {
                        *reported = true;
                        tracing::warn!(process = process.name(), %status, log = %process.log_path().display(), "service process exited");
                    }
                }
                // The dev agent this run started: reaped when it exits (no zombie), and started
                // again on its address; the services register themselves again.
                if let Some(agent) = agent.as_deref_mut() {
                    if let Some(exited) = agent.exited() {
                        tracing::warn!(error = %exited, "the Consul dev agent exited; starting it again");
                        if let Err(err) = agent.restart(Duration::from_secs(30)).await {
                            tracing::warn!(error = %err, "the Consul dev agent did not come back");
                        }
                    }
                }
            }
        }
    }
}

/// The users service's variable of the accounts that get the `admin` role.
const ADMIN_EMAILS_VAR: &str = "PROTOMESH_USERS_ADMIN_EMAILS";

/// The account that signs in to the dashboard as an admin: the first of
/// `PROTOMESH_USERS_ADMIN_EMAILS` when set, else `admin@protomesh.localhost`.
fn admin_email() -> String {
    std::env::var(ADMIN_EMAILS_VAR)
        .ok()
        .and_then(|list| {
            list.split(',')
                .map(str::trim)
                .find(|e| !e.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "admin@protomesh.localhost".to_owned())
}

/// A shell filter printing the `id` of the JSON object on its input.
const JSON_ID: &str = r#"python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'"#;

/// The commands to try once the mesh is up.
fn try_lines(
    client: &ConsulClient,
    report: &super::StatusReport,
    options: &UpOptions,
    gateway: Option<SocketAddr>,
) -> String {
    let mut lines = vec![String::new(), "Try:".to_owned()];
    if let Some(gateway) = gateway {
        let runs = |name: &str| options.services.iter().any(|s| s.name == name);
        if runs("priority") {
            lines.push(format!(
                "  curl -s -X POST http://{gateway}/v1/priority:score -d '{{\"title\":\"ship it\",\"urgency\":9,\"impact\":8}}'"
            ));
        }
        // With the users service up, the protected routes are called with a token from it.
        let auth = if runs("users") {
            lines.push(r#"  email="ada-$(date +%s%N)@example.com""#.to_owned());
            lines.push(format!(
                r#"  curl -s -X POST http://{gateway}/v1/users:register -d '{{"email":"'$email'","displayName":"Ada","password":"correct horse battery"}}'"#
            ));
            lines.push(format!(
                r#"  token=$(curl -s -X POST http://{gateway}/v1/auth:login -d '{{"email":"'$email'","password":"correct horse battery"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')"#
            ));
            lines.push(r#"  auth="authorization: Bearer $token""#.to_owned());
            lines.push(format!(
                r#"  curl -s -H "$auth" http://{gateway}/v1/users/me"#
            ));
            r#" -H "$auth""#
        } else {
            ""
        };
        if runs("tasks") {
            // Each line shows the answer and keeps the id it needs next; a fresh project name
            // each time, so the lines can be run again.
            lines.push(format!(
                r#"  project=$(curl -s{auth} -X POST http://{gateway}/v1/projects -d "{{\"name\":\"launch-$(date +%s%N)\"}}" | tee /dev/stderr | {JSON_ID})"#
            ));
            lines.push(format!(
                r#"  task=$(curl -s{auth} -X POST http://{gateway}/v1/projects/$project/tasks -d '{{"title":"ship it","urgency":9,"impact":8,"assignee":"ada"}}' | tee /dev/stderr | {JSON_ID})"#
            ));
            lines.push(format!(
                r#"  curl -s{auth} -X PATCH http://{gateway}/v1/tasks/$task -d '{{"urgency":3}}'"#
            ));
            if runs("timetrack") {
                lines.push(format!(
                    r#"  curl -s{auth} -X POST http://{gateway}/v1/users/me/timer:start -d '{{"task_id":"'$task'"}}'"#
                ));
                lines.push(format!(
                    "  curl -s{auth} -X POST http://{gateway}/v1/users/me/timer:stop -d '{{}}'"
                ));
            }
            lines.push(format!(
                "  curl -s{auth} -X POST http://{gateway}/v1/tasks/${{task}}:complete -d '{{}}'"
            ));
            lines.push(format!(
                "  curl -s{auth} 'http://{gateway}/v1/tasks?page_size=10&project_id='$project"
            ));
            if runs("analytics") {
                lines.push(format!(
                    "  curl -s{auth} http://{gateway}/v1/projects/$project/report"
                ));
                lines.push(format!(
                    "  curl -s{auth} http://{gateway}/v1/users/me/dashboard"
                ));
            }
        }
        lines.push(format!("  curl -s http://{gateway}/routes"));
        lines.push(format!("  grpcurl -plaintext {gateway} list"));
        if runs("hub") && runs("tasks") {
            // Streams: after the lines above (each runs until Ctrl-C).
            lines.push(String::new());
            lines.push("Live updates (in another terminal, with $auth and $project set as above; change a task to see it):".to_owned());
            lines.push(format!(
                r#"  curl -sN{auth} -H 'accept: text/event-stream' "http://{gateway}/v1/hub/events?topics=project/$project""#
            ));
            lines.push(format!(
                r#"  grpcurl -plaintext{auth} -d '{{"topics":["project/'$project'"]}}' {gateway} protomesh.hub.v1.HubService/Subscribe"#
            ));
            lines.push(format!(
                "  In a browser's console (WebSocket, the token as a subprotocol): new WebSocket('ws://{gateway}/v1/hub/events?topics=project/' + PROJECT, ['protomesh.json', 'bearer.' + TOKEN]).onmessage = (e) => console.log(e.data)"
            ));
        }
        lines.push(String::new());
        lines.push(format!(
            "Dashboard: http://{gateway}/ui/ (sign in as {}: register that email first, as above)",
            admin_email()
        ));
    }
    if let Some(priority) = report.instances.iter().find(|i| i.service == "priority") {
        let a = &priority.address;
        lines.push(format!("  grpcurl -plaintext {a} list"));
        lines.push(format!(
            "  grpcurl -plaintext {a} describe protomesh.priority.v1.PriorityService"
        ));
        lines.push(format!(
            "  grpcurl -plaintext -d '{{\"title\":\"ship it\",\"urgency\":9,\"impact\":8}}' {a} protomesh.priority.v1.PriorityService/Score"
        ));
        lines.push(format!(
            "  grpcurl -plaintext -d '{{\"service\":\"protomesh.priority.v1.PriorityService\"}}' {a} grpc.health.v1.Health/Check"
        ));
    }
    let consul = client.address();
    lines.push(format!(
        "  curl -s '{consul}/v1/health/service/priority?passing' | python3 -m json.tool"
    ));
    lines.push(format!(
        "  CONSUL_HTTP_ADDR={consul} target/release/mesh status"
    ));
    lines.push(format!("Logs: {}", options.log_dir.display()));
    lines.push("Press Ctrl-C to stop everything.".to_owned());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_counts() {
        assert_eq!(
            "priority=3".parse::<ServiceSpec>().expect("valid"),
            ServiceSpec {
                name: "priority".into(),
                instances: 3
            }
        );
        assert_eq!("tasks".parse::<ServiceSpec>().expect("valid").instances, 1);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for bad in ["", "=3", "priority=x", "priority=0", "../etc=1", "p=65"] {
            let err = bad.parse::<ServiceSpec>().expect_err(bad);
            assert!(err.to_string().contains("invalid service spec"), "{err}");
        }
    }
}
