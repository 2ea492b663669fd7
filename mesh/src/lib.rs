//! protomesh-mesh: the development mesh behind the `mesh` command: `up` starts a Consul dev agent when none answers,
//! starts service processes, waits until Consul says they pass, and stops it all on Ctrl-C;
//! `status` reads services, instances, addresses and check states from Consul, or with `--client`
//! what one process's mesh client knows (from its admin listener); `up --hosts N` the same on N
//! hosts of their own (network namespaces) with a Consul cluster across them.

mod hosts;
mod process;
mod status;
mod up;

pub use hosts::{up_hosts, HostsUpOptions};
pub use process::ServiceProcess;
pub use status::{client_status, status, InstanceStatus, StatusReport};
pub use up::{up, ServiceSpec, UpOptions};

use protomesh_consul::ConsulError;

/// What can go wrong while bringing the dev mesh up or reading its state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevMeshError {
    /// Consul answered with an error or could not be reached.
    #[error(transparent)]
    Consul(#[from] ConsulError),
    /// No `consul` binary was found to start a dev agent with.
    #[error("no Consul agent answers at {address} and no `consul` binary was found to start one: run scripts/setup.sh, or set CONSUL_BIN")]
    NoConsulBinary {
        /// The address that did not answer.
        address: String,
    },
    /// A dev agent can only be started on a loopback address.
    #[error("no Consul agent answers at {address}; a dev agent is only started on a loopback address (set CONSUL_HTTP_ADDR to 127.0.0.1:<port>)")]
    NotLoopback {
        /// The address that did not answer.
        address: String,
    },
    /// A service binary is missing.
    #[error("service binary {path} not found (build it with `cargo build --workspace --bins`)")]
    MissingBinary {
        /// Where it was looked for.
        path: std::path::PathBuf,
    },
    /// A service process could not be started or watched.
    #[error("service process {name}: {source}")]
    Process {
        /// Which process.
        name: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A service process exited while the mesh was coming up.
    #[error("{name} exited with {status} while starting; last log lines:\n{log_tail}")]
    EarlyExit {
        /// Which process.
        name: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its log.
        log_tail: String,
    },
    /// Services did not all pass their checks in time.
    #[error("timed out after {after:?} waiting for {waiting} to pass in Consul")]
    NotPassing {
        /// How long it waited.
        after: std::time::Duration,
        /// Which services were still short of passing instances.
        waiting: String,
    },
    /// A process's admin listener could not be read.
    #[error("cannot read the mesh client state at http://{address}/mesh (is the process running with --admin {address}?): {reason}")]
    Admin {
        /// The admin address.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The hosts of `mesh up --hosts` could not be built or changed.
    #[error(transparent)]
    Hosts(#[from] protomesh_hosts::HostsError),
    /// A service specification could not be parsed.
    #[error("invalid service spec {spec:?}: {reason}")]
    InvalidSpec {
        /// The text given.
        spec: String,
        /// Why it is invalid.
        reason: &'static str,
    },
}
