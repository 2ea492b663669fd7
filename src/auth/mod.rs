//! Who is calling: the credentials a call presents, verified into an [`Identity`]. The gateway
//! verifies them at the edge, and every service verifies them again in its server runtime
//! ([`crate::server`]), so that a service believes no caller it cannot check for itself: the
//! credential travels with the call (and on with the calls its handler makes, see
//! [`crate::credential`]), never a bare claim of who the caller is.
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
mod config;
mod error;
pub mod jwks;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::fmt;
use std::sync::Arc;

use http::header::{self, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::client::Mesh;
use crate::identity::{is_header_safe, AuthMethod, Identity};

pub use api_keys::{ApiKey, ApiKeys};
pub use args::{CredentialArgs, DEFAULT_JWKS_SERVICE};
pub use config::{AuthConfig, DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_LEEWAY, MIN_HS256_SECRET};
pub use error::{AuthConfigError, AuthError};
use jwks::JwksCache;
pub use jwks::JwksSource;

pub use crate::credential::API_KEY_HEADER;

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
    use http::{HeaderName, HeaderValue};

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
