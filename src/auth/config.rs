//! How callers are authenticated: the issuer, audience and leeway a token is checked against,
//! and where keys come from ([`AuthConfig`]), with the defaults and the key-file readers.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;

use super::api_keys::ApiKeys;
use super::error::AuthConfigError;
use super::jwks::JwksSource;

/// Default `iss` and `aud` a token must carry.
pub const DEFAULT_ISSUER: &str = "protomesh";
/// Default `aud`.
pub const DEFAULT_AUDIENCE: &str = "protomesh";
/// Default clock leeway for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_HS256_SECRET: usize = 32;

/// How callers are authenticated. The defaults accept no credential at all (every credential is
/// then invalid): the binary fills it from its flags.
#[derive(Clone)]
pub struct AuthConfig {
    /// The `iss` a token must carry.
    pub issuer: String,
    /// The `aud` a token must carry.
    pub audience: String,
    /// Clock leeway for `exp` and `nbf`.
    pub leeway: Duration,
    /// The HS256 secret, if HS256 tokens are accepted.
    pub hs256_secret: Option<Arc<[u8]>>,
    /// RSA public keys (RS256) not tied to a `kid`.
    pub rsa_public_keys: Vec<DecodingKey>,
    /// Where more RSA public keys come from, by `kid`.
    pub jwks: Option<JwksSource>,
    /// Accepted API keys.
    pub api_keys: ApiKeys,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            leeway: DEFAULT_LEEWAY,
            hs256_secret: None,
            rsa_public_keys: Vec::new(),
            jwks: None,
            api_keys: ApiKeys::default(),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "…"))
            .field("rsa_public_keys", &self.rsa_public_keys.len())
            .field("jwks", &self.jwks)
            .field("api_keys", &self.api_keys)
            .finish()
    }
}

impl AuthConfig {
    /// Whether any JWT key source is configured (a secret, a PEM key, or a JWKS).
    pub fn has_jwt_keys(&self) -> bool {
        self.hs256_secret.is_some() || !self.rsa_public_keys.is_empty() || self.jwks.is_some()
    }

    /// The HS256 secret in the file at `path` (`--jwt-hs256-secret-file`; one trailing newline
    /// is ignored), at least [`MIN_HS256_SECRET`] bytes.
    pub fn read_hs256_secret(path: &Path) -> Result<Arc<[u8]>, AuthConfigError> {
        let setting = "--jwt-hs256-secret-file";
        let mut secret = std::fs::read(path).map_err(|source| AuthConfigError::Read {
            setting,
            path: path.display().to_string(),
            source,
        })?;
        while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            secret.pop();
        }
        if secret.len() < MIN_HS256_SECRET {
            return Err(AuthConfigError::Content {
                setting,
                path: path.display().to_string(),
                reason: format!("the secret must be at least {MIN_HS256_SECRET} bytes"),
            });
        }
        Ok(secret.into())
    }

    /// The RSA public key in the PEM file at `path` (`--jwt-rsa-public-key-file`).
    pub fn read_rsa_public_key(path: &Path) -> Result<DecodingKey, AuthConfigError> {
        let setting = "--jwt-rsa-public-key-file";
        let pem = std::fs::read(path).map_err(|source| AuthConfigError::Read {
            setting,
            path: path.display().to_string(),
            source,
        })?;
        DecodingKey::from_rsa_pem(&pem).map_err(|err| AuthConfigError::Content {
            setting,
            path: path.display().to_string(),
            reason: format!("not an RSA public key in PEM: {err}"),
        })
    }
}
