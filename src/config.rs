//! Configuration every mesh service binary shares: where to listen, what to advertise, which Consul
//! agent to register with, where it runs (zone, failover datacenters), how to shut down, how to
//! log, how to verify callers. Filled from flags and environment by clap
//! and validated once at start-up with errors that name the setting.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use protomesh_consul::{ConsulConfig, ConsulError};

use crate::auth::{AuthConfig, CredentialArgs};
use crate::policy::DefaultAuth;
use crate::tls::TlsConfig;

pub use crate::telemetry::LogFormat;

/// The options every service binary accepts (`#[command(flatten)]` it into the binary's parser).
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "PROTOMESH_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Address other processes reach this instance at (defaults to the address really bound;
    /// when listening on 0.0.0.0, the local address that routes to the Consul agent).
    #[arg(long, env = "PROTOMESH_ADVERTISE")]
    pub advertise: Option<SocketAddr>,

    /// Consul agent HTTP address (`host:port` or `http://host:port`).
    #[arg(
        long = "consul-addr",
        env = "CONSUL_HTTP_ADDR",
        default_value = "127.0.0.1:8500"
    )]
    pub consul_addr: String,

    /// Consul ACL token sent with every request to the agent.
    #[arg(
        long = "consul-token",
        env = "CONSUL_HTTP_TOKEN",
        hide_env_values = true
    )]
    pub consul_token: Option<String>,

    /// Consul datacenter (defaults to the agent's own).
    #[arg(long = "consul-datacenter", env = "CONSUL_DATACENTER")]
    pub consul_datacenter: Option<String>,

    /// Address of the admin HTTP listener (`/healthz`, `/readyz`, `/mesh`), kept off the
    /// public port; none by default.
    #[arg(long, env = "PROTOMESH_ADMIN")]
    pub admin: Option<SocketAddr>,

    /// Serve without registering in Consul (standalone use, benchmarks).
    #[arg(long, env = "PROTOMESH_NO_REGISTER")]
    pub no_register: bool,

    /// Extra Consul tags for this instance (the tag `grpc` is always added).
    #[arg(long = "tag", env = "PROTOMESH_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,

    /// How often Consul runs the gRPC health check of this instance.
    #[arg(long, env = "PROTOMESH_CHECK_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,

    /// How long a critical instance stays in Consul before the agent removes it (Consul's minimum is 1m).
    #[arg(long, env = "PROTOMESH_DEREGISTER_AFTER", default_value = "1m", value_parser = humantime::parse_duration)]
    pub deregister_after: Duration,

    /// On SIGTERM/SIGINT: how long to keep serving after NOT_SERVING and deregistration, so that
    /// watchers see the change before connections go away.
    #[arg(long, env = "PROTOMESH_LAME_DUCK", default_value = "1s", value_parser = humantime::parse_duration)]
    pub lame_duck: Duration,

    /// On shutdown: how long in-flight calls may take to finish before they are cut.
    #[arg(long, env = "PROTOMESH_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Log format.
    #[arg(long, env = "PROTOMESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Mutual TLS for the gRPC port and for outgoing mesh calls (off unless its files are given).
    #[command(flatten)]
    pub tls: TlsConfig,

    /// The zone this instance runs in and the datacenters its calls fail over to.
    #[command(flatten)]
    pub locality: crate::client::Locality,

    /// How callers' credentials are verified (the same flags as the gateway's).
    #[command(flatten)]
    pub credentials: CredentialArgs,

    /// Who may call methods whose protos state no policy (this runtime's services all state one;
    /// this is for services built from protos without `protomesh.options`).
    #[arg(long = "default-auth", env = "PROTOMESH_DEFAULT_AUTH", value_enum, default_value_t = DefaultAuth::Authenticated)]
    pub default_auth: DefaultAuth,

    /// Verify credentials with this configuration instead of the one `credentials` describes
    /// (tests: [`crate::server::testing::quick_config`] accepts the test issuer's tokens).
    #[arg(skip)]
    pub authenticate_with: Option<AuthConfig>,
}

impl ServeConfig {
    /// A configuration with every default, listening on `listen`; handy for tests and examples.
    pub fn with_listen(listen: SocketAddr) -> Self {
        Self {
            listen,
            advertise: None,
            admin: None,
            consul_addr: "127.0.0.1:8500".to_owned(),
            consul_token: None,
            consul_datacenter: None,
            no_register: false,
            tags: Vec::new(),
            check_interval: Duration::from_secs(1),
            deregister_after: Duration::from_secs(60),
            lame_duck: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            log_format: LogFormat::Auto,
            tls: TlsConfig::default(),
            locality: crate::client::Locality::default(),
            credentials: CredentialArgs::default(),
            default_auth: DefaultAuth::Authenticated,
            authenticate_with: None,
        }
    }

    /// The Consul client configuration these options describe.
    pub fn consul(&self) -> Result<ConsulConfig, ConsulError> {
        let mut config = ConsulConfig::new(&self.consul_addr)?;
        if let Some(token) = self.consul_token.as_deref().filter(|t| !t.is_empty()) {
            config = config.with_token(token);
        }
        if let Some(dc) = self.consul_datacenter.as_deref().filter(|d| !d.is_empty()) {
            config = config.with_datacenter(dc);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    #[test]
    fn defaults_listen_on_a_free_loopback_port() {
        let cli = Cli::try_parse_from(["svc"]).expect("defaults parse");
        assert_eq!(cli.serve.listen.port(), 0);
        assert!(cli.serve.listen.ip().is_loopback());
        assert_eq!(cli.serve.lame_duck, Duration::from_secs(1));
    }

    #[test]
    fn durations_and_tags_parse_from_flags() {
        let cli = Cli::try_parse_from([
            "svc",
            "--drain-timeout",
            "250ms",
            "--tag",
            "canary,blue",
            "--advertise",
            "10.0.0.7:9000",
        ])
        .expect("flags parse");
        assert_eq!(cli.serve.drain_timeout, Duration::from_millis(250));
        assert_eq!(cli.serve.tags, vec!["canary", "blue"]);
        assert_eq!(
            cli.serve.advertise,
            Some("10.0.0.7:9000".parse().expect("addr"))
        );
    }

    #[test]
    fn tls_files_parse_from_flags() {
        let cli = Cli::try_parse_from([
            "svc",
            "--tls-cert",
            "/etc/mesh/cert.pem",
            "--tls-key",
            "/etc/mesh/key.pem",
            "--tls-ca",
            "/etc/mesh/ca.pem",
        ])
        .expect("flags parse");
        assert!(cli.serve.tls.is_enabled());
        assert_eq!(
            cli.serve.tls.ca.as_deref(),
            Some(std::path::Path::new("/etc/mesh/ca.pem"))
        );
        assert!(!ServeConfig::with_listen(cli.serve.listen).tls.is_enabled());
    }

    #[test]
    fn zone_and_failover_datacenters_parse_and_bad_names_are_refused() {
        let cli = Cli::try_parse_from([
            "svc",
            "--zone",
            "eu-west-1a",
            "--failover-datacenters",
            "dc2,dc_3",
        ])
        .expect("flags parse");
        assert_eq!(cli.serve.locality.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(cli.serve.locality.failover_datacenters, ["dc2", "dc_3"]);
        for bad in [
            ["--zone", "a b"],
            ["--zone", ""],
            ["--failover-datacenters", "dc2,dc?3"],
            ["--failover-datacenters", "DC2"],
        ] {
            let err = Cli::try_parse_from(["svc", bad[0], bad[1]])
                .err()
                .expect("must fail");
            assert!(err.to_string().contains(bad[0]), "{err}");
        }
    }

    #[test]
    fn a_bad_listen_address_names_the_flag() {
        let err = Cli::try_parse_from(["svc", "--listen", "nowhere"])
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("--listen"), "{err}");
    }
}
