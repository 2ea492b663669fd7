//! protomesh-hosts: hosts of our own on one machine, for multi-host tests and `mesh up --hosts`.
//!
//! A [`Lab`] is N network namespaces ("hosts"), each with one veth link to a bridge of its own,
//! addressed in a private /24 that no other interface of the machine uses; the machine itself
//! has the bridge's address (`.1`), so a test process reaches every host, and hosts reach each
//! other, and nothing else: traffic never leaves these links. Each host runs a real Consul agent
//! (the first `servers` as a server cluster, the rest as client agents joined to it), listening
//! on its own loopback and its host address with Consul's default ports, as on a real machine.
//!
//! A host can then die without a goodbye ([`Lab::silence`]: its link down first, so nothing it
//! sends reaches anyone, then every process in it killed), be cut off and healed
//! ([`Lab::partition`], [`Lab::heal`]), or lose its agent ([`Lab::stop_agent`]). Dropping the lab
//! kills every process in its namespaces and deletes them and the bridge.
//!
//! Needs root (`ip netns`); [`Lab::create`] says so with [`HostsError::NotPermitted`].

mod net;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use protomesh_consul::{ConsulClient, ConsulConfig, ConsulError};

use net::ip;

/// Consul's HTTP port on every host (each host has its own network stack).
pub const CONSUL_HTTP_PORT: u16 = 8500;

/// The most hosts a lab has (their addresses are `.11` to `.210` of its /24).
pub const MAX_HOSTS: usize = 200;

/// What can go wrong while building or changing the hosts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostsError {
    /// Network namespaces cannot be made here (not root, or no `ip`).
    #[error("cannot create network namespaces (run as root, with iproute2): {0}")]
    NotPermitted(String),
    /// A command failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What it said, or why it did not run.
        message: String,
    },
    /// The lab's shape is not one Consul can run.
    #[error("{0}")]
    InvalidShape(String),
    /// A file or folder of the agents could not be made.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// No private /24 was free for the lab's hosts.
    #[error("no free 10.215.x.0/24 subnet for the hosts")]
    NoSubnet,
    /// A Consul agent could not be reached or answered with an error.
    #[error(transparent)]
    Consul(#[from] ConsulError),
    /// Something did not happen in time.
    #[error("{what} did not happen within {waited:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
    },
}

/// How to build a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// How many hosts.
    pub hosts: usize,
    /// How many of them (the first ones) run a Consul server (1, 3 or 5 for a quorum).
    pub servers: usize,
    /// The Consul datacenter's name.
    pub datacenter: String,
    /// The `consul` binary.
    pub consul: PathBuf,
    /// Where agents keep their data and logs (one folder per host).
    pub dir: PathBuf,
}

impl LabOptions {
    /// `hosts` hosts, the first `min(hosts, 3)` of them Consul servers, in datacenter `dc1`.
    pub fn new(hosts: usize, consul: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Self {
        Self {
            hosts,
            servers: hosts.min(3),
            datacenter: "dc1".to_owned(),
            consul: consul.into(),
            dir: dir.into(),
        }
    }
}

/// One host: a network namespace with one address on the lab's bridge.
#[derive(Debug)]
pub struct Host {
    /// Its name, also its Consul node name (`host1`, `host2`, …).
    pub name: String,
    /// The network namespace (`ip netns exec <netns> …` runs a program on the host).
    pub netns: String,
    /// Its address on the bridge.
    pub address: Ipv4Addr,
    /// Whether its agent is a Consul server.
    pub server: bool,
    /// The host's end of its link (inside the namespace).
    inner_link: String,
    /// The bridge's end of its link.
    outer_link: String,
    agent: Option<Child>,
}

impl Host {
    /// The words that run a program on this host: `ip netns exec <netns>` (`ip` by its full
    /// path), then the program.
    pub fn exec(&self) -> Vec<String> {
        vec![
            net::ip_program().display().to_string(),
            "netns".to_owned(),
            "exec".to_owned(),
            self.netns.clone(),
        ]
    }

    /// The host's end of its link, inside its namespace (`ip netns exec <netns> ip link set
    /// <link> down` cuts it off).
    pub fn link(&self) -> &str {
        &self.inner_link
    }

    /// A command running `program` on this host.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(net::ip_program());
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// Its Consul agent's HTTP address, as seen from the machine and the other hosts.
    pub fn consul_address(&self) -> String {
        format!("{}:{CONSUL_HTTP_PORT}", self.address)
    }
}

/// Hosts on a bridge, with a Consul cluster once [`Lab::start_consul`] ran.
#[derive(Debug)]
pub struct Lab {
    options: LabOptions,
    bridge: String,
    /// The bridge's address: the machine's own on the hosts' network.
    gateway: Ipv4Addr,
    hosts: Vec<Host>,
}

impl Lab {
    /// Builds the bridge and the hosts, without agents (and without the agents' data of an
    /// earlier lab in the same folder: hosts of the same names would find its services).
    pub fn create(options: LabOptions) -> Result<Self, HostsError> {
        if !(1..=MAX_HOSTS).contains(&options.hosts) {
            return Err(HostsError::InvalidShape(format!(
                "{} hosts: a lab has 1 to {MAX_HOSTS}",
                options.hosts
            )));
        }
        if !(1..=options.hosts).contains(&options.servers) {
            return Err(HostsError::InvalidShape(format!(
                "{} Consul servers among {} hosts: 1 to the number of hosts",
                options.servers, options.hosts
            )));
        }
        for index in 0..options.hosts {
            let data = options.dir.join(format!("host{}", index + 1)).join("data");
            match std::fs::remove_dir_all(&data) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(HostsError::Io { path: data, source }),
            }
        }
        static LABS: AtomicU32 = AtomicU32::new(0);
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        // Link names are at most 15 bytes: a letter pair, 5 hex digits of the pid, the lab's
        // number, the host's.
        let tag = format!("{:05x}{}", std::process::id() % 0x10_0000, n % 10);
        let subnet = net::free_subnet(std::process::id().wrapping_add(n))?;
        let bridge = format!("pmb{tag}");
        let gateway = Ipv4Addr::new(10, 215, subnet, 1);
        net::add_bridge(&bridge, gateway)?;
        let mut lab = Self {
            options,
            bridge,
            gateway,
            hosts: Vec::new(),
        };
        for index in 0..lab.options.hosts {
            // At most MAX_HOSTS (checked above): the number fits, and `10 + number` too.
            let number = u8::try_from(index + 1).unwrap_or(u8::MAX);
            let host = Host {
                name: format!("host{number}"),
                netns: format!("pm{tag}-h{number}"),
                address: Ipv4Addr::new(10, 215, subnet, 10 + number),
                server: index < lab.options.servers,
                inner_link: format!("pmi{tag}{number}"),
                outer_link: format!("pmo{tag}{number}"),
                agent: None,
            };
            // Kept before it is wired, so that a failure below still deletes it.
            net::add_namespace(&host.netns)?;
            lab.hosts.push(host);
            let host = &lab.hosts[index];
            net::wire_host(
                &host.netns,
                &host.inner_link,
                &host.outer_link,
                &lab.bridge,
                host.address,
            )?;
        }
        Ok(lab)
    }

    /// The hosts, `host1` first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host at `index` (0 is `host1`). Methods taking a host's index panic on an index past
    /// the last host, as slices do.
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    /// The machine's own address on the hosts' network.
    pub fn machine_address(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The datacenter's name.
    pub fn datacenter(&self) -> &str {
        &self.options.datacenter
    }

    /// Starts a Consul agent on every host: servers on the first `servers`, which elect a leader
    /// among themselves, and client agents joined to them.
    pub fn start_consul(&mut self) -> Result<(), HostsError> {
        for index in 0..self.hosts.len() {
            self.start_agent(index)?;
        }
        Ok(())
    }

    /// Starts the agent of the host at `index` (again, after [`Lab::stop_agent`]; one still
    /// running is killed first).
    pub fn start_agent(&mut self, index: usize) -> Result<(), HostsError> {
        self.stop_agent(index);
        let joins: Vec<String> = self
            .hosts
            .iter()
            .filter(|host| host.server)
            .map(|host| format!("-retry-join={}", host.address))
            .collect();
        let host = &self.hosts[index];
        let dir = self.options.dir.join(&host.name);
        let io = |path: PathBuf| move |source| HostsError::Io { path, source };
        std::fs::create_dir_all(&dir).map_err(io(dir.clone()))?;
        let log_path = dir.join("consul.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(log_path.clone()))?;
        let log_err = log.try_clone().map_err(io(log_path))?;
        let mut command = host.command(&self.options.consul);
        command
            .arg("agent")
            .arg(format!("-node={}", host.name))
            .arg(format!("-datacenter={}", self.options.datacenter))
            .arg(format!("-data-dir={}", dir.join("data").display()))
            .arg(format!("-bind={}", host.address))
            .arg(format!("-advertise={}", host.address))
            .arg(format!("-client=127.0.0.1 {}", host.address))
            .arg("-disable-host-node-id")
            .arg("-ui")
            .arg("-log-level=warn")
            // Elections and leader leases at their production timing (the default is 5× slower,
            // for small machines).
            .arg("-hcl=performance { raft_multiplier = 1 }")
            .args(&joins)
            // Agents start together: the first joins find no one listening yet (the default
            // waits 30 s before trying again).
            .arg("-retry-interval=1s")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if host.server {
            command
                .arg("-server")
                .arg(format!("-bootstrap-expect={}", self.options.servers));
        }
        let child = command.spawn().map_err(|err| HostsError::Command {
            command: format!("{command:?}"),
            message: err.to_string(),
        })?;
        self.hosts[index].agent = Some(child);
        Ok(())
    }

    /// Kills the agent of the host at `index` at once (no leave: the others find it gone).
    pub fn stop_agent(&mut self, index: usize) {
        if let Some(mut agent) = self.hosts[index].agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// A client of the host at `index`'s agent.
    pub fn consul(&self, index: usize) -> Result<ConsulClient, HostsError> {
        let config = ConsulConfig::new(&self.hosts[index].consul_address())?;
        Ok(ConsulClient::new(config)?)
    }

    /// Waits until every running agent knows the same leader.
    pub async fn wait_cluster(&self, timeout: Duration) -> Result<(), HostsError> {
        let elected = async {
            while !self.cluster_ready().await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::time::timeout(timeout, elected)
            .await
            .map_err(|_| HostsError::Timeout {
                what: "the Consul cluster's election (where hosts cannot reach each other, a \
                       firewall may drop the bridge's traffic: net.bridge.bridge-nf-call-iptables)"
                    .to_owned(),
                waited: timeout,
            })
    }

    /// Whether every running agent names a leader, and the same one (the servers elect one only
    /// once all `servers` joined).
    async fn cluster_ready(&self) -> bool {
        let mut leaders = Vec::new();
        for (index, host) in self.hosts.iter().enumerate() {
            if host.agent.is_none() {
                continue;
            }
            match self.consul(index) {
                Ok(consul) => match consul.status_leader().await {
                    Ok(leader) if !leader.is_empty() => leaders.push(leader),
                    _ => return false,
                },
                Err(_) => return false,
            }
        }
        !leaders.is_empty() && leaders.windows(2).all(|pair| pair[0] == pair[1])
    }

    /// The index of the host whose server leads the cluster, as the agent at `asking` says.
    pub async fn leader(&self, asking: usize) -> Result<Option<usize>, HostsError> {
        let leader = self.consul(asking)?.status_leader().await?;
        Ok(self
            .hosts
            .iter()
            .position(|host| leader.starts_with(&format!("{}:", host.address))))
    }

    /// The host at `index` dies without a goodbye: its link goes down first (nothing it sends
    /// gets out, nothing sent to it is answered, no reset), then every process on it is killed.
    pub fn silence(&mut self, index: usize) -> Result<(), HostsError> {
        self.partition(index)?;
        net::kill_all(&self.hosts[index].netns);
        if let Some(mut agent) = self.hosts[index].agent.take() {
            let _ = agent.wait();
        }
        Ok(())
    }

    /// Cuts the host at `index` off: its link goes down; its processes keep running.
    pub fn partition(&self, index: usize) -> Result<(), HostsError> {
        let host = &self.hosts[index];
        net::in_namespace(&host.netns, &["link", "set", &host.inner_link, "down"])
    }

    /// Brings the link of the host at `index` back up.
    pub fn heal(&self, index: usize) -> Result<(), HostsError> {
        let host = &self.hosts[index];
        net::in_namespace(&host.netns, &["link", "set", &host.inner_link, "up"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            net::kill_all(&host.netns);
            if let Some(mut agent) = host.agent.take() {
                let _ = agent.kill();
                let _ = agent.wait();
            }
            // Deleting the namespace deletes the link's inner end, and with it the outer one.
            if let Err(err) = ip(&["netns", "del", &host.netns]) {
                eprintln!("cleanup: {err}");
            }
            let _ = ip(&["link", "del", &host.outer_link]);
        }
        if let Err(err) = ip(&["link", "del", &self.bridge]) {
            eprintln!("cleanup: {err}");
        }
    }
}
