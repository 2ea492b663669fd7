//! Who is calling: the credentials a request presents, verified into an [`Identity`].
//!
//! Two kinds of credentials are accepted:
//! - **Bearer JWTs** (`Authorization: Bearer TOKEN`), verified with `jsonwebtoken` (pure-Rust
//!   crypto backend): the signature, `exp` and `nbf` (with [`AuthConfig::leeway`]), `iss`
//!   ([`AuthConfig::issuer`]), `aud` ([`AuthConfig::audience`]), and a non-empty `sub`. An
//!   algorithm is accepted only with a key of its own kind: `HS256` only when an HS256 secret is
//!   configured, `RS256` only with RSA public keys (PEM files, or the JWKS of a mesh service);
//!   `none` and every other algorithm are refused. The token's `roles` claim (an array of
//!   strings) becomes the identity's roles.
//! - **API keys** (`X-Api-Key: KEY` or `Authorization: ApiKey KEY`), looked up by the SHA-256
//!   of the key in [`ApiKeys`] (the gateway never holds a plain key), compared in constant time.
//!   The identity's subject is the key's name.
//!
//! RSA keys from a JWKS ([`JwksSource`]) are fetched with `GetJwks` through the mesh client,
//! cached by `kid`, refreshed in the background once they are older than
//! [`JwksSource::refresh`], and fetched again at once when a token names an unknown `kid` (at most
//! once per [`JwksSource::min_refetch`], so a flood of made-up `kid`s costs one fetch per period).
//!
//! Failures say only [`AuthError::Invalid`] or [`AuthError::Expired`] (expiry is reported only
//! for tokens whose signature and claims are otherwise valid): never which check failed.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use protomesh::client::Mesh;
use protomesh::identity::{AuthMethod, Identity};
use protomesh::proto::protomesh::users::v1::{
    users_service_client::UsersServiceClient, GetJwksRequest,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

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

/// One API key: its name (the subject), the SHA-256 of the key, its roles.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key's name: the identity's subject.
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// The roles the key grants.
    pub roles: Vec<String>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// The API keys the gateway accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    /// Keys from the text of an API keys file: one key a line, `NAME SHA256-HEX [ROLE,ROLE…]`;
    /// blank lines and lines starting with `#` are skipped. The error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hex), roles, None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(format!(
                    "line {}: expected `NAME SHA256-HEX [ROLE,ROLE…]`",
                    number + 1
                ));
            };
            let hash = parse_sha256_hex(hex).ok_or_else(|| {
                format!(
                    "line {}: the key hash must be 64 hex digits (sha256sum of the key)",
                    number + 1
                )
            })?;
            if !is_header_safe(name) {
                return Err(format!("line {}: invalid key name {name:?}", number + 1));
            }
            let roles = roles
                .unwrap_or_default()
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
            keys.push(ApiKey {
                name: name.to_owned(),
                hash,
                roles,
            });
        }
        Ok(Self { keys })
    }

    /// The keys of the file at `path` (`--api-keys-file`).
    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let setting = "--api-keys-file";
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            setting,
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| AuthConfigError::Content {
            setting,
            path: path.display().to_string(),
            reason,
        })
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose hash is the SHA-256 of `presented`. Every configured hash is compared, each
    /// in constant time.
    pub fn verify(&self, presented: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(&key.hash, &digest) {
                found = Some(key);
            }
        }
        found
    }
}

/// Whether `a == b`, in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    difference == 0
}

fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut hash = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        hash[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

/// Whether `text` can travel as one value of a comma-separated metadata list.
fn is_header_safe(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// Where RSA public keys are fetched from: a mesh service's `GetJwks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    /// The Consul name of the service serving `protomesh.users.v1.UsersService/GetJwks`.
    pub service: String,
    /// Keys older than this are fetched again (in the background).
    pub refresh: Duration,
    /// Least time between two fetches (an unknown `kid` fetches at once, but not more often).
    pub min_refetch: Duration,
    /// Bound on one fetch.
    pub timeout: Duration,
}

impl JwksSource {
    /// The JWKS of `service`, refreshed every 5 minutes, at most every 5 seconds.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
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

/// The claims the gateway reads (the standard ones are checked by `jsonwebtoken`).
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

/// RSA keys by `kid`, from a service's `GetJwks`.
struct JwksCache {
    source: JwksSource,
    mesh: Mesh,
    state: RwLock<JwksState>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

impl JwksCache {
    fn new(source: JwksSource, mesh: Mesh) -> Self {
        Self {
            source,
            mesh,
            state: RwLock::new(JwksState::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, JwksState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The key `kid`: from the cache (refreshed in the background when old), else after one
    /// fetch (unless one happened within `min_refetch`).
    async fn key(self: &Arc<Self>, kid: &str) -> Option<DecodingKey> {
        let (cached, stale) = {
            let state = self.read();
            (
                state.keys.get(kid).cloned(),
                state
                    .fetched
                    .is_none_or(|at| at.elapsed() >= self.source.refresh),
            )
        };
        if let Some(key) = cached {
            if stale {
                let cache = Arc::clone(self);
                tokio::spawn(async move { cache.fetch_unless_recent().await });
            }
            return Some(key);
        }
        self.fetch_unless_recent().await;
        self.read().keys.get(kid).cloned()
    }

    /// Fetches the keys, unless a fetch started within `min_refetch` (callers that waited for a
    /// fetch in progress then use its result).
    async fn fetch_unless_recent(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if state
                .attempted
                .is_some_and(|at| at.elapsed() < self.source.min_refetch)
            {
                return;
            }
            state.attempted = Some(Instant::now());
        }
        let mut client = UsersServiceClient::new(self.mesh.channel(&self.source.service));
        let mut request = tonic::Request::new(GetJwksRequest {});
        request.set_timeout(self.source.timeout);
        let answer = tokio::time::timeout(self.source.timeout, client.get_jwks(request)).await;
        let jwks = match answer {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                tracing::warn!(service = %self.source.service, %status, "gateway: cannot fetch the JWKS");
                return;
            }
            Err(_) => {
                tracing::warn!(service = %self.source.service, timeout = ?self.source.timeout, "gateway: the JWKS fetch timed out");
                return;
            }
        };
        let mut keys = HashMap::new();
        for jwk in jwks.keys {
            let usable = jwk.kty == "RSA"
                && !jwk.kid.is_empty()
                && (jwk.alg.is_empty() || jwk.alg == "RS256")
                && (jwk.r#use.is_empty() || jwk.r#use == "sig");
            if !usable {
                continue;
            }
            match DecodingKey::from_rsa_components(&jwk.n, &jwk.e) {
                Ok(key) => {
                    keys.insert(jwk.kid, key);
                }
                Err(err) => {
                    tracing::warn!(kid = %jwk.kid, error = %err, "gateway: unusable key in the JWKS");
                }
            }
        }
        tracing::info!(service = %self.source.service, keys = keys.len(), "gateway: JWKS fetched");
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.keys = keys;
        state.fetched = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    const HASH_OF_SECRET: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    #[test]
    fn api_keys_are_matched_by_hash() {
        let keys = ApiKeys::parse(&format!(
            "# name hash roles\n\nci {HASH_OF_SECRET} deploy,read\nbare {} \n",
            "0".repeat(64)
        ))
        .unwrap();
        let ci = keys.verify("secret").unwrap();
        assert_eq!(ci.name, "ci");
        assert_eq!(ci.roles, ["deploy", "read"]);
        assert!(keys.verify("Secret").is_none());
        assert!(keys.verify("").is_none());
        assert!(!format!("{ci:?}").contains("2bb8"), "no hash in Debug");
    }

    #[test]
    fn a_bad_api_keys_file_names_the_line() {
        for (text, line) in [
            ("a b c d", "line 1"),
            ("\nname nothex", "line 2"),
            (&format!("a,b {HASH_OF_SECRET}") as &str, "line 1"),
        ] {
            let err = ApiKeys::parse(text).unwrap_err();
            assert!(err.contains(line), "{text:?}: {err}");
        }
    }

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
