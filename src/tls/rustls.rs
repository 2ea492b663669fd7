//! The TLS settings loaded with rustls (through tonic): the identity, the mesh CA, and the server
//! and client configurations built from them. Compiled with the `tls` feature.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use protomesh_consul::error_chain;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::error::{TlsError, CA_FLAG, CERT_FLAG, KEY_FLAG};

/// Longest time a server gives a client to finish the TLS handshake.
const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Reads and checks the three files (see [`super::TlsConfig::load`]).
    pub(super) fn load(
        cert: &Path,
        key: &Path,
        ca: &Path,
        server_name: Option<&str>,
    ) -> Result<Option<MeshTls>, TlsError> {
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
        let server_name = server_name
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
