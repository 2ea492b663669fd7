//! Who is calling: the credentials a call presents, verified into an [`Identity`]. The gateway
//! verifies them at the edge, and every service verifies them again in its server runtime
//! ([`crate::server`]), so that a service believes no caller it cannot check for itself: the
//! credential travels with the call (and on with the calls its handler makes, see
//! [`propagation`]), never a bare claim of who the caller is.
//!
//! Two kinds of credentials are accepted:
//! - **Bearer JWTs** (`Authorization: Bearer TOKEN`), verified with `jsonwebtoken` (pure-Rust
//!   crypto backend): the signature, `exp` and `nbf` (with [`AuthConfig::leeway`]), `iss`
//!   ([`AuthConfig::issuer`]), `aud` ([`AuthConfig::audience`]), and a non-empty `sub`. An
//!   algorithm is accepted only with a key of its own kind: `HS256` only when an HS256 secret is
//!   configured, `RS256` only with RSA public keys (PEM files, or the JWKS of a mesh service, see
//!   [`jwks`]); `none` and every other algorithm are refused. The token's `roles` claim (an array
//!   of strings) becomes the identity's roles.
//! - **API keys** (`X-Api-Key: KEY` or `Authorization: ApiKey KEY`), looked up by the SHA-256
//!   of the key in [`ApiKeys`] (no process ever holds a plain key), compared in constant time.
//!   The identity's subject is the key's name.
//!
//! Failures say only [`AuthError::Invalid`] or [`AuthError::Expired`] (expiry is reported only
//! for tokens whose signature and claims are otherwise valid): never which check failed.

mod api_keys;
mod args;
pub mod jwks;
pub mod propagation;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::client::Mesh;
use crate::identity::{AuthMethod, Identity};

pub use api_keys::{ApiKey, ApiKeys};
pub use args::{CredentialArgs, DEFAULT_JWKS_SERVICE};
use jwks::JwksCache;
pub use jwks::JwksSource;

/// `X-Api-Key`.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// Default `iss` and `aud` a token must carry.
pub const DEFAULT_ISSUER: &str = "protomesh";
/// Default `aud`.
pub const DEFAULT_AUDIENCE: &str = "protomesh";
/// Default clock leeway for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_HS256_SECRET: usize = 32;

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

/// Whether `text` can travel as one value of a comma-separated metadata list.
fn is_header_safe(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

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

/// The claims read from a token (the standard ones are checked by `jsonwebtoken`).
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// The credential a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `Authorization: Bearer TOKEN`.
    Bearer(&'a str),
    /// `X-Api-Key: KEY` or `Authorization: ApiKey KEY`.
    ApiKey(&'a str),
}

impl<'a> Credential<'a> {
    /// The credential in `headers`: none, one, or [`AuthError::Invalid`] when a header is
    /// malformed, uses another scheme, or two credentials are sent.
    pub fn from_headers(headers: &'a HeaderMap) -> Result<Option<Self>, AuthError> {
        let mut found = None;
        let mut count = 0;
        for value in headers.get_all(&API_KEY_HEADER) {
            count += 1;
            found = Some(Credential::ApiKey(
                value.to_str().map_err(|_| AuthError::Invalid)?.trim(),
            ));
        }
        for value in headers.get_all(header::AUTHORIZATION) {
            count += 1;
            let text = value.to_str().map_err(|_| AuthError::Invalid)?.trim();
            let (scheme, rest) = text.split_once(' ').ok_or(AuthError::Invalid)?;
            let rest = rest.trim();
            found = Some(if scheme.eq_ignore_ascii_case("bearer") {
                Credential::Bearer(rest)
            } else if scheme.eq_ignore_ascii_case("apikey") {
                Credential::ApiKey(rest)
            } else {
                return Err(AuthError::Invalid);
            });
        }
        match (count, found) {
            (0, _) => Ok(None),
            (1, Some(Credential::Bearer("") | Credential::ApiKey(""))) => Err(AuthError::Invalid),
            (1, found) => Ok(found),
            _ => Err(AuthError::Invalid),
        }
    }
}

/// Verifies credentials. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    config: Arc<AuthConfig>,
    jwks: Option<Arc<JwksCache>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator with `config`'s keys only: a JWKS source in it is not used (it needs a
    /// mesh client to fetch keys).
    pub fn without_mesh(config: AuthConfig) -> Self {
        Self {
            config: Arc::new(config),
            jwks: None,
        }
    }

    /// An authenticator for `config`; a JWKS is fetched through `mesh`.
    pub fn new(config: AuthConfig, mesh: &Mesh) -> Self {
        let jwks = config
            .jwks
            .clone()
            .map(|source| Arc::new(JwksCache::new(source, mesh.clone())));
        Self {
            config: Arc::new(config),
            jwks,
        }
    }

    /// The identity the credential proves.
    pub async fn verify(&self, credential: Credential<'_>) -> Result<Identity, AuthError> {
        match credential {
            Credential::ApiKey(presented) => {
                let key = self
                    .config
                    .api_keys
                    .verify(presented)
                    .ok_or(AuthError::Invalid)?;
                Ok(Identity {
                    subject: key.name.clone(),
                    roles: key.roles.clone(),
                    method: AuthMethod::ApiKey,
                })
            }
            Credential::Bearer(token) => self.verify_jwt(token).await,
        }
    }

    async fn verify_jwt(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let keys: Vec<DecodingKey> = match header.alg {
            Algorithm::HS256 => match &self.config.hs256_secret {
                Some(secret) => vec![DecodingKey::from_secret(secret)],
                None => Vec::new(),
            },
            Algorithm::RS256 => {
                let mut keys = Vec::new();
                if let (Some(kid), Some(jwks)) = (header.kid.as_deref(), &self.jwks) {
                    keys.extend(jwks.key(kid).await);
                }
                keys.extend(self.config.rsa_public_keys.iter().cloned());
                keys
            }
            _ => Vec::new(),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        let mut outcome = Err(AuthError::Invalid);
        for key in &keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    outcome = identity_of(data.claims);
                    break;
                }
                Err(err) if *err.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    outcome = Err(AuthError::Expired);
                    break;
                }
                Err(_) => {}
            }
        }
        outcome
    }
}

fn identity_of(claims: Claims) -> Result<Identity, AuthError> {
    if !is_header_safe(&claims.sub) {
        return Err(AuthError::Invalid);
    }
    Ok(Identity {
        subject: claims.sub,
        roles: claims
            .roles
            .into_iter()
            .filter(|r| is_header_safe(r))
            .collect(),
        method: AuthMethod::Jwt,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credentials_come_from_one_header() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        let none = headers(&[]);
        assert_eq!(Credential::from_headers(&none), Ok(None));
        let bearer = headers(&[("authorization", "Bearer a.b.c")]);
        assert_eq!(
            Credential::from_headers(&bearer),
            Ok(Some(Credential::Bearer("a.b.c")))
        );
        let api = headers(&[("authorization", "apikey k1")]);
        assert_eq!(
            Credential::from_headers(&api),
            Ok(Some(Credential::ApiKey("k1")))
        );
        let x_api = headers(&[("x-api-key", "k2")]);
        assert_eq!(
            Credential::from_headers(&x_api),
            Ok(Some(Credential::ApiKey("k2")))
        );
        for bad in [
            headers(&[("authorization", "Basic dXNlcjpwdw==")]),
            headers(&[("authorization", "Bearer")]),
            headers(&[("authorization", "Bearer ")]),
            headers(&[("authorization", "Bearer a"), ("x-api-key", "k")]),
        ] {
            assert_eq!(
                Credential::from_headers(&bad),
                Err(AuthError::Invalid),
                "{bad:?}"
            );
        }
    }
}
