//! Mutual TLS between mesh processes (rustls through tonic; no OpenSSL), off by default.
//!
//! Every binary takes the same three files ([`TlsConfig`], flattened into
//! [`ServeConfig`](crate::config::ServeConfig) and the gateway's options):
//!
//! - `--tls-cert FILE` / `PROTOMESH_TLS_CERT`: this process's certificate chain (PEM), presented
//!   both when it serves and when it calls;
//! - `--tls-key FILE` / `PROTOMESH_TLS_KEY`: its private key (PEM: PKCS#8, PKCS#1 or SEC1);
//! - `--tls-ca FILE` / `PROTOMESH_TLS_CA`: the mesh CA (PEM), which must have signed every peer.
//!
//! With them, a [`MeshServer`](crate::server::MeshServer) serves TLS only and refuses clients
//! without a certificate signed by the CA, and the [`Mesh`](crate::client::Mesh) client dials
//! `https://`, presents its certificate and verifies the server against the CA. The name checked
//! in the server's certificate is the host dialled: the IP address Consul advertises, so server
//! certificates must carry IP subject alternative names (e.g. `IP:127.0.0.1`) — or every process
//! passes `--tls-server-name NAME` and the certificates carry that DNS name.
//!
//! Missing or unreadable files are start-up errors naming the flag and the file. Built without
//! the `tls` feature (on by default), the flags are still accepted, but giving any of the files
//! is a start-up error ([`TlsError::NotBuilt`]) and no TLS library is compiled in. The admin
//! listener and the gateway's public HTTP side stay plain HTTP (TLS at the edge is terminated in
//! front of the gateway, out of scope here).

use std::path::{Path, PathBuf};

use clap::Args;

mod error;
#[cfg(feature = "tls")]
mod rustls;
#[cfg(feature = "tls")]
pub use self::rustls::MeshTls;
pub use error::TlsError;
use error::{CA_FLAG, CERT_FLAG, KEY_FLAG};

/// The mutual-TLS options every binary accepts (`#[command(flatten)]` it). All three files or
/// none: none means plaintext gRPC (the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct TlsConfig {
    /// Certificate chain (PEM) this process presents to its peers, as server and as client.
    /// Server certificates need an IP SAN for the address advertised in Consul.
    #[arg(long = "tls-cert", env = "PROTOMESH_TLS_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of `--tls-cert`.
    #[arg(long = "tls-key", env = "PROTOMESH_TLS_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// The mesh CA (PEM): peers' certificates must be signed by it, both ways.
    #[arg(long = "tls-ca", env = "PROTOMESH_TLS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Name to verify in servers' certificates instead of the IP address dialled.
    #[arg(
        long = "tls-server-name",
        env = "PROTOMESH_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// True when any of the three files is set (then [`TlsConfig::load`] needs all three).
    pub fn is_enabled(&self) -> bool {
        [&self.cert, &self.key, &self.ca]
            .into_iter()
            .any(|path| given(path).is_some())
    }

    /// Reads and checks the files: `None` when TLS is off, the loaded settings when all three
    /// files are given and valid, an error naming the flag and file otherwise.
    pub fn load(&self) -> Result<Option<MeshTls>, TlsError> {
        let (cert, key, ca) = match (given(&self.cert), given(&self.key), given(&self.ca)) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
            (cert, key, ca) => {
                let given = [(cert, CERT_FLAG), (key, KEY_FLAG), (ca, CA_FLAG)];
                let first_given = given.iter().find(|(path, _)| path.is_some());
                let first_missing = given.iter().find(|(path, _)| path.is_none());
                return Err(TlsError::Incomplete {
                    given: first_given.map_or(CERT_FLAG, |(_, flag)| flag),
                    missing: first_missing.map_or(CA_FLAG, |(_, flag)| flag),
                });
            }
        };
        MeshTls::load(cert, key, ca, self.server_name.as_deref())
    }
}

/// Without the `tls` feature no TLS settings can be loaded: [`TlsConfig::load`] never returns one.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub struct MeshTls(());

#[cfg(not(feature = "tls"))]
impl MeshTls {
    fn load(
        _cert: &Path,
        _key: &Path,
        _ca: &Path,
        _server_name: Option<&str>,
    ) -> Result<Option<MeshTls>, TlsError> {
        Err(TlsError::NotBuilt)
    }
}

/// A path option that is set and not empty.
fn given(path: &Option<PathBuf>) -> Option<&Path> {
    path.as_deref().filter(|p| !p.as_os_str().is_empty())
}

// The tests load real files, which needs the TLS library.
#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsConfig,
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("protomesh-tls-unit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn off_by_default() {
        let cli = Cli::try_parse_from(["svc"]).expect("defaults parse");
        assert!(!cli.tls.is_enabled());
        assert!(cli.tls.load().expect("no TLS is fine").is_none());
    }

    #[test]
    fn a_partial_configuration_names_the_missing_flag() {
        let cli = Cli::try_parse_from(["svc", "--tls-cert", "/x/cert.pem", "--tls-ca", "/x/ca"])
            .expect("flags parse");
        assert!(cli.tls.is_enabled());
        let err = cli.tls.load().expect_err("the key is missing");
        let text = err.to_string();
        assert!(text.contains("--tls-key"), "{text}");
        assert!(text.contains("--tls-cert"), "{text}");
    }

    #[test]
    fn a_missing_file_names_the_flag_and_the_file() {
        let dir = temp_dir("missing");
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "not a certificate").expect("write");
        let config = TlsConfig {
            cert: Some(dir.join("absent-cert.pem")),
            key: Some(dir.join("absent-key.pem")),
            ca: Some(cert.clone()),
            server_name: None,
        };
        let text = config.load().expect_err("missing file").to_string();
        assert!(text.contains("--tls-cert"), "{text}");
        assert!(text.contains("absent-cert.pem"), "{text}");

        let config = TlsConfig {
            cert: Some(cert.clone()),
            ..config
        };
        let text = config.load().expect_err("not PEM").to_string();
        assert!(text.contains("--tls-cert"), "{text}");
        assert!(text.contains("no PEM certificate"), "{text}");
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}
