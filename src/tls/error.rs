//! Why the TLS settings cannot be used ([`TlsError`]), naming the flags as the messages show them.

use std::path::PathBuf;

/// Flag and variable naming the certificate file, as error messages show them.
pub(crate) const CERT_FLAG: &str = "--tls-cert / PROTOMESH_TLS_CERT";
/// Flag and variable naming the private key file.
pub(crate) const KEY_FLAG: &str = "--tls-key / PROTOMESH_TLS_KEY";
/// Flag and variable naming the CA file.
pub(crate) const CA_FLAG: &str = "--tls-ca / PROTOMESH_TLS_CA";

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
    /// TLS files were given to a binary built without the `tls` feature.
    #[error("{CERT_FLAG}, {KEY_FLAG} and {CA_FLAG} are given, but this binary was built without TLS (protomesh's `tls` feature)")]
    NotBuilt,
    /// The `--tls-server-name` override is neither a DNS name nor an IP address.
    #[error(
        "--tls-server-name / PROTOMESH_TLS_SERVER_NAME {name:?} is not a DNS name or an IP address"
    )]
    ServerName {
        /// The name given.
        name: String,
    },
}
