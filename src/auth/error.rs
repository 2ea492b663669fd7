//! Why credentials are refused ([`AuthError`], all a caller learns) and why a credential setting
//! cannot be used ([`AuthConfigError`], naming the setting).

/// Why a request's credentials were refused. The message is all a caller learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Malformed, badly signed, for another issuer or audience, not yet valid, unknown key…
    #[error("invalid credentials")]
    Invalid,
    /// A token that is valid but expired.
    #[error("expired credentials")]
    Expired,
}

/// A configuration file or setting that cannot be used; each names the setting.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A file cannot be read.
    #[error("{setting} {path}: {source}")]
    Read {
        /// The flag.
        setting: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what the setting takes.
    #[error("{setting} {path}: {reason}")]
    Content {
        /// The flag.
        setting: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}
