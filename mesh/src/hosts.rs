//! `mesh up --hosts N`: the multi-host tests' topology for a user to try on one machine (as
//! root): N hosts of their own (network namespaces on a bridge, [`protomesh_hosts::Lab`]), a
//! Consul server cluster on the first three and client agents on the rest, `priority` on every
//! host but the first, each registering with its own host's agent, and the gateway on the first.
//! The data services stay out: Postgres and Redis listen on the machine's loopback, which the
//! hosts do not reach.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use protomesh_consul::QueryOptions;
use protomesh_hosts::{Lab, LabOptions};

use crate::{DevMeshError, ServiceProcess};

/// The service run on the hosts.
const SERVICE: &str = "priority";

/// What `mesh up --hosts` starts.
#[derive(Debug, Clone)]
pub struct HostsUpOptions {
    /// How many hosts (1 to 200).
    pub hosts: usize,
    /// The `consul` binary.
    pub consul_binary: PathBuf,
    /// Folder holding the service binaries.
    pub bin_dir: PathBuf,
    /// Folder for the agents' data and every log.
    pub log_dir: PathBuf,
    /// The gateway's port on the first host.
    pub gateway_port: u16,
    /// How long to wait for the cluster and every instance.
    pub ready_timeout: Duration,
    /// How long each service may take to stop after SIGTERM.
    pub stop_grace: Duration,
}

/// Brings the hosts up, reports to `out`, and runs until `shutdown` completes; then stops every
/// process and deletes the hosts.
pub async fn up_hosts(
    options: HostsUpOptions,
    out: &mut (dyn Write + Send),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DevMeshError> {
    for binary in [SERVICE, "gateway"] {
        let path = options.bin_dir.join(binary);
        if !path.is_file() {
            return Err(DevMeshError::MissingBinary { path });
        }
    }
    let lab_options = LabOptions::new(
        options.hosts,
        &options.consul_binary,
        options.log_dir.join("hosts"),
    );
    let mut lab = Lab::create(lab_options)?;
    let mut processes = Vec::new();
    // Ctrl-C is heard from here on, while the hosts come up too: the hosts are always deleted.
    tokio::pin!(shutdown);
    let started = async {
        lab.start_consul()?;
        lab.wait_cluster(options.ready_timeout).await?;
        let on = usize::from(options.hosts > 1);
        for index in on..options.hosts {
            let listen = format!("{}:0", lab.host(index).address);
            processes.push(spawn_on(
                &lab,
                index,
                &options,
                SERVICE,
                &["--listen", &listen],
            )?);
        }
        let gateway = format!("{}:{}", lab.host(0).address, options.gateway_port);
        processes.push(spawn_on(
            &lab,
            0,
            &options,
            "gateway",
            &["--listen", &gateway],
        )?);
        wait_passing(&lab, &options, options.hosts - on).await?;
        wait_routed(&gateway, &options).await?;
        report(&lab, &gateway, out);
        Ok::<(), DevMeshError>(())
    };
    let result = tokio::select! {
        started = started => match started {
            Ok(()) => {
                (&mut shutdown).await;
                Ok(())
            }
            Err(err) => Err(err),
        },
        () = &mut shutdown => Ok(()),
    };
    for process in processes.iter_mut().rev() {
        let _ = process.stop(options.stop_grace).await;
    }
    drop(lab);
    let _ = writeln!(out, "stopped; the hosts are gone");
    result
}

/// Starts `binary` on the host at `index`, registering with that host's agent.
fn spawn_on(
    lab: &Lab,
    index: usize,
    options: &HostsUpOptions,
    binary: &str,
    args: &[&str],
) -> Result<ServiceProcess, DevMeshError> {
    let host = lab.host(index);
    let mut words = host.exec();
    let ip = std::path::PathBuf::from(words.remove(0));
    words.push(options.bin_dir.join(binary).display().to_string());
    words.extend(args.iter().map(|arg| (*arg).to_owned()));
    let name = format!("{binary}-{}", host.name);
    ServiceProcess::spawn(
        &name,
        &ip,
        &words,
        &[
            ("CONSUL_HTTP_ADDR".to_owned(), "127.0.0.1:8500".to_owned()),
            ("PROTOMESH_LOG_FORMAT".to_owned(), "json".to_owned()),
        ],
        options.log_dir.join(format!("{name}.log")),
    )
}

/// Waits until `count` instances of the service pass, as the first host's agent sees them.
async fn wait_passing(
    lab: &Lab,
    options: &HostsUpOptions,
    count: usize,
) -> Result<(), DevMeshError> {
    let consul = lab.consul(0)?;
    let passing = QueryOptions {
        passing: true,
        ..Default::default()
    };
    let found = std::cell::Cell::new(0);
    let ready = || async {
        found.set(
            consul
                .health_service(SERVICE, &passing)
                .await
                .map(|entries| entries.value.len())
                .unwrap_or(0),
        );
        found.get() >= count
    };
    poll_until(options.ready_timeout, ready, || {
        format!("{SERVICE} ({} of {count} passing)", found.get())
    })
    .await
}

/// Waits until the gateway at `gateway` routes the service (it learns routes from the
/// instances' reflection, after they pass).
async fn wait_routed(gateway: &str, options: &HostsUpOptions) -> Result<(), DevMeshError> {
    let routed = format!("\"service\":\"{SERVICE}\"");
    let ready = || async {
        crate::status::http_get(gateway, "/routes")
            .await
            .is_ok_and(|(status, body)| status.is_success() && body.contains(&routed))
    };
    poll_until(options.ready_timeout, ready, || {
        format!("the gateway at {gateway} to route {SERVICE}")
    })
    .await
}

/// Asks `ready` every 250 ms until it says yes, for `timeout` at most; the error names what was
/// `waiting`.
async fn poll_until<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut ready: impl FnMut() -> F,
    waiting: impl FnOnce() -> String,
) -> Result<(), DevMeshError> {
    let started = Instant::now();
    while !ready().await {
        if started.elapsed() > timeout {
            return Err(DevMeshError::NotPassing {
                after: timeout,
                waiting: waiting(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Prints the hosts and what to try.
fn report(lab: &Lab, gateway: &str, out: &mut (dyn Write + Send)) {
    let _ = writeln!(
        out,
        "{} hosts up, datacenter {} (the machine is {} on their bridge):",
        lab.hosts().len(),
        lab.datacenter(),
        lab.machine_address()
    );
    for host in lab.hosts() {
        let role = if host.server { "server" } else { "client" };
        let _ = writeln!(
            out,
            "  {:<7} {:<15} netns {:<16} Consul {role}",
            host.name,
            host.address.to_string(),
            host.netns
        );
    }
    let first = lab.host(0);
    let _ = writeln!(out, "Consul: http://{}/ui", first.consul_address());
    let _ = writeln!(
        out,
        "Try: curl -s -X POST http://{gateway}/v1/priority:score -d '{{\"title\":\"t\",\"urgency\":9,\"impact\":8}}'"
    );
    if let Some(last) = lab.hosts().last() {
        let _ = writeln!(
            out,
            "A host dying without a goodbye: ip netns exec {ns} ip link set {link} down; ip netns pids {ns} | xargs kill -9",
            ns = last.netns,
            link = last.link()
        );
    }
    let _ = writeln!(out, "Ctrl-C stops every process and deletes the hosts.");
}
