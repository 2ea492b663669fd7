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
//! Missing or unreadable files are start-up errors naming the flag and the file. The admin
//! listener and the gateway's public HTTP side stay plain HTTP (TLS at the edge is terminated in
//! front of the gateway, out of scope here).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::telemetry::error_chain;

/// Longest time a server gives a client to finish the TLS handshake.
const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Flag and variable naming the certificate file, as error messages show them.
const CERT_FLAG: &str = "--tls-cert / PROTOMESH_TLS_CERT";
/// Flag and variable naming the private key file.
const KEY_FLAG: &str = "--tls-key / PROTOMESH_TLS_KEY";
/// Flag and variable naming the CA file.
const CA_FLAG: &str = "--tls-ca / PROTOMESH_TLS_CA";

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

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Some of the three files were given, not all.
    #[error(
        "{missing} is required when {given} is set (mutual TLS needs a certificate, its key \
         and the mesh CA)"
    )]
    Incomplete {
        /// A flag that was given.
        given: &'static str,
        /// The flag that is missing.
        missing: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read {flag} file {}: {source}", path.display())]
    Read {
        /// The flag (and variable) that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what its flag wants.
    #[error("{flag} file {} is not usable: {reason}", path.display())]
    Parse {
        /// The flag (and variable) that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate and key parse but do not make a TLS identity (e.g. they do not match).
    #[error(
        "the certificate {} ({CERT_FLAG}) and key {} ({KEY_FLAG}) are not a usable TLS \
         identity: {reason}",
        cert.display(),
        key.display()
    )]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The `--tls-server-name` override is neither a DNS name nor an IP address.
    #[error(
        "--tls-server-name / PROTOMESH_TLS_SERVER_NAME {name:?} is not a DNS name or an IP address"
    )]
    ServerName {
        /// The name given.
        name: String,
    },
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
        let cert_pem = read_certificates(CERT_FLAG, cert)?;
        let key_pem = read_file(KEY_FLAG, key)?;
        if let Err(err) = PrivateKeyDer::from_pem_slice(&key_pem) {
            return Err(TlsError::Parse {
                flag: KEY_FLAG,
                path: key.to_path_buf(),
                reason: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) found ({err})"),
            });
        }
        let ca_pem = read_certificates(CA_FLAG, ca)?;
        let server_name = self
            .server_name
            .as_deref()
            .filter(|name| !name.is_empty())
            .map(|name| {
                ServerName::try_from(name)
                    .map(|_| name.to_owned())
                    .map_err(|_| TlsError::ServerName {
                        name: name.to_owned(),
                    })
            })
            .transpose()?;
        let tls = MeshTls {
            identity: Identity::from_pem(cert_pem, key_pem),
            ca: Certificate::from_pem(ca_pem),
            server_name,
        };
        tls.check_identity(cert, key)?;
        Ok(Some(tls))
    }
}

/// A path option that is set and not empty.
fn given(path: &Option<PathBuf>) -> Option<&Path> {
    path.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// Reads a file, naming `flag` when it cannot.
fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file that must hold at least one PEM certificate.
fn read_certificates(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read_file(flag, path)?;
    let parse_error = |reason: String| TlsError::Parse {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| parse_error(format!("bad PEM certificate ({err})")))?;
    if certificates.is_empty() {
        return Err(parse_error("no PEM certificate found".to_owned()));
    }
    Ok(pem)
}

/// Loaded mutual-TLS settings: this process's identity, the mesh CA, the optional server name.
/// Cheap to clone. `Debug` shows no key material.
#[derive(Clone)]
pub struct MeshTls {
    identity: Identity,
    ca: Certificate,
    server_name: Option<String>,
}

impl fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    /// The server side: present the identity, require a client certificate signed by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(false)
            .timeout(SERVER_HANDSHAKE_TIMEOUT)
    }

    /// The client side: present the identity, trust only the CA, check the host dialled (or the
    /// `--tls-server-name` override) in the server's certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.ca.clone());
        match &self.server_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }

    /// Builds both rustls configurations once, so that a key that does not match its
    /// certificate fails at start-up rather than on the first connection.
    fn check_identity(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let identity_error = |reason: String| TlsError::Identity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason,
        };
        tonic::transport::Server::builder()
            .tls_config(self.server_config())
            .map_err(|err| identity_error(error_chain(&err)))?;
        tonic::transport::Endpoint::from_static("https://127.0.0.1:1")
            .tls_config(self.client_config())
            .map_err(|err| identity_error(error_chain(&err)))?;
        Ok(())
    }
}

#[cfg(test)]
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

    #[test]
    fn debug_shows_no_key_material() {
        let tls = MeshTls {
            identity: Identity::from_pem("CERT", "SECRET-KEY"),
            ca: Certificate::from_pem("CA"),
            server_name: Some("mesh.internal".to_owned()),
        };
        let debug = format!("{tls:?}");
        assert!(!debug.contains("SECRET-KEY"), "{debug}");
        assert!(debug.contains("mesh.internal"), "{debug}");
    }
}
