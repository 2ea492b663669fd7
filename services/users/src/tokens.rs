//! The tokens a login hands out.
//!
//! - **Access token**: a JWT signed with the [`SigningKeys`] (`kid` in the header for RS256),
//!   claims `sub` (user id), `iat`, `nbf` (= `iat`), `exp` (`iat` + `--access-token-ttl`), `iss`
//!   (`--jwt-issuer`), `aud` (`--jwt-audience`), `roles` and a random `jti`.
//! - **Refresh token**: 32 random bytes, base64url without padding (43 characters). Only its
//!   SHA-256 is stored, so a copy of the database cannot be replayed as tokens.
//! - **Device token**: the same shape and storage, handed out by every successful login and
//!   valid for `--device-token-ttl` (90 days by default). It only marks a device that logged in
//!   to the account before, for the login limits ([`crate::limits`]); it grants nothing.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::keys::SigningKeys;

/// Default `--jwt-issuer`.
pub const DEFAULT_ISSUER: &str = "protomesh";
/// Default `--jwt-audience`.
pub const DEFAULT_AUDIENCE: &str = "protomesh";
/// Default `--access-token-ttl`.
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Default `--refresh-token-ttl`.
pub const DEFAULT_REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Random bytes in a refresh token.
pub const REFRESH_TOKEN_BYTES: usize = 32;
/// Default `--device-token-ttl`.
pub const DEFAULT_DEVICE_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Random bytes in a device token.
pub const DEVICE_TOKEN_BYTES: usize = 32;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not before, seconds since the epoch (= `iat`).
    pub nbf: u64,
    /// The issuer.
    pub iss: String,
    /// The audience.
    pub aud: String,
    /// The user's roles.
    pub roles: Vec<String>,
    /// A unique id of this token.
    pub jti: String,
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Signing failed (a key that does not fit the algorithm: a bug).
    #[error("signing the access token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// What the access tokens say besides the subject, and how long they live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// `exp` − `iat`.
    pub access_token_ttl: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            access_token_ttl: DEFAULT_ACCESS_TOKEN_TTL,
        }
    }
}

/// Makes signed access tokens.
#[derive(Debug, Clone)]
pub struct AccessTokenIssuer {
    keys: SigningKeys,
    settings: TokenSettings,
}

impl AccessTokenIssuer {
    /// Tokens signed with `keys`, claiming what `settings` say.
    pub fn new(keys: SigningKeys, settings: TokenSettings) -> Self {
        // jsonwebtoken picks its crypto backend from its features; if another crate in the same
        // build enables a second backend, it can no longer pick one by itself. Choose the pure
        // Rust one explicitly (an error only means a provider is already installed).
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        Self { keys, settings }
    }

    /// The signing keys (and JWKS).
    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// The settings.
    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// The claims of a token for `subject` with `roles`, issued at `now`.
    pub fn claims(&self, subject: Uuid, roles: &[String], now: SystemTime) -> AccessClaims {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0);
        AccessClaims {
            sub: subject.to_string(),
            exp: iat.saturating_add(self.settings.access_token_ttl.as_secs()),
            iat,
            nbf: iat,
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            roles: roles.to_vec(),
            jti: Uuid::new_v4().to_string(),
        }
    }

    /// `claims` signed, as a compact JWT.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let mut header = Header::new(self.keys.algorithm());
        header.kid = self.keys.kid().map(str::to_owned);
        Ok(jsonwebtoken::encode(
            &header,
            claims,
            self.keys.encoding_key(),
        )?)
    }

    /// A signed token for `subject` with `roles`, issued now.
    pub fn issue(&self, subject: Uuid, roles: &[String]) -> Result<String, TokenError> {
        self.sign(&self.claims(subject, roles, SystemTime::now()))
    }

    /// A `jsonwebtoken` validation that checks what a verifier of these tokens should: the
    /// algorithm, `exp`, `nbf`, `iss` and `aud`.
    pub fn validation(&self) -> Validation {
        let mut validation = Validation::new(self.keys.algorithm());
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation
    }
}

/// A new refresh token: the text for the caller and the hash to store.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// What the caller gets (base64url, 43 characters).
    pub token: String,
    /// Its SHA-256, what the database keeps.
    pub hash: [u8; 32],
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

impl RefreshToken {
    /// [`REFRESH_TOKEN_BYTES`] random bytes from the thread's CSPRNG.
    pub fn generate() -> Self {
        let token = random_token::<REFRESH_TOKEN_BYTES>();
        let hash = refresh_token_hash(&token);
        Self { token, hash }
    }
}

/// The SHA-256 of a refresh token's text, as stored.
pub fn refresh_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new device token: the text for the caller and the hash to store.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceToken {
    /// What the caller gets (base64url, 43 characters).
    pub token: String,
    /// Its SHA-256, what the database keeps.
    pub hash: [u8; 32],
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceToken([redacted])")
    }
}

impl DeviceToken {
    /// [`DEVICE_TOKEN_BYTES`] random bytes from the thread's CSPRNG.
    pub fn generate() -> Self {
        let token = random_token::<DEVICE_TOKEN_BYTES>();
        let hash = device_token_hash(&token);
        Self { token, hash }
    }
}

/// The SHA-256 of a device token's text, as stored.
pub fn device_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `text` has the shape of a device token (43 base64url characters): anything else is
/// not looked up.
pub fn is_device_token_shaped(text: &str) -> bool {
    text.len() == URL_SAFE_NO_PAD.encode([0u8; DEVICE_TOKEN_BYTES]).len()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `N` random bytes from the thread's CSPRNG, base64url without padding.
fn random_token<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey};

    use super::*;
    use crate::keys::SecretBytes;

    const SECRET: &[u8] = b"an-hs256-secret-of-at-least-32-bytes!";

    fn issuer(ttl: Duration) -> AccessTokenIssuer {
        let keys = SigningKeys::hmac(&SecretBytes::new(SECRET.to_vec())).unwrap();
        AccessTokenIssuer::new(
            keys,
            TokenSettings {
                issuer: "issuer-x".into(),
                audience: "audience-y".into(),
                access_token_ttl: ttl,
            },
        )
    }

    #[test]
    fn claims_carry_subject_roles_times_issuer_and_audience() {
        let issuer = issuer(Duration::from_secs(900));
        let subject = Uuid::new_v4();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let roles = vec!["user".to_owned(), "admin".to_owned()];
        let claims = issuer.claims(subject, &roles, now);
        assert_eq!(claims.sub, subject.to_string());
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(claims.nbf, claims.iat);
        assert_eq!(claims.exp, 1_700_000_900);
        assert_eq!(claims.iss, "issuer-x");
        assert_eq!(claims.aud, "audience-y");
        assert_eq!(claims.roles, roles);
        assert!(Uuid::parse_str(&claims.jti).is_ok());
        assert_ne!(claims.jti, issuer.claims(subject, &roles, now).jti);
    }

    #[test]
    fn hs256_tokens_verify_with_the_secret_and_nothing_else() {
        let issuer = issuer(Duration::from_secs(60));
        let subject = Uuid::new_v4();
        let token = issuer.issue(subject, &["user".to_owned()]).unwrap();
        let header = decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        assert_eq!(header.kid, None);
        let data = decode::<AccessClaims>(
            &token,
            &DecodingKey::from_secret(SECRET),
            &issuer.validation(),
        )
        .unwrap();
        assert_eq!(data.claims.sub, subject.to_string());
        assert!(decode::<AccessClaims>(
            &token,
            &DecodingKey::from_secret(b"another-secret-another-secret-another"),
            &issuer.validation(),
        )
        .is_err());
        let mut other_audience = issuer.validation();
        other_audience.set_audience(&["someone-else"]);
        assert!(
            decode::<AccessClaims>(&token, &DecodingKey::from_secret(SECRET), &other_audience)
                .is_err()
        );
    }

    #[test]
    fn expired_tokens_do_not_verify() {
        let issuer = issuer(Duration::from_secs(60));
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        let token = issuer
            .sign(&issuer.claims(Uuid::new_v4(), &[], long_ago))
            .unwrap();
        let err = decode::<AccessClaims>(
            &token,
            &DecodingKey::from_secret(SECRET),
            &issuer.validation(),
        )
        .unwrap_err();
        assert_eq!(
            err.kind(),
            &jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_as_hashes() {
        let first = RefreshToken::generate();
        let second = RefreshToken::generate();
        assert_eq!(first.token.len(), 43);
        assert_ne!(first.token, second.token);
        assert_eq!(first.hash, refresh_token_hash(&first.token));
        assert_ne!(first.hash, second.hash);
        assert_eq!(format!("{first:?}"), "RefreshToken([redacted])");
    }

    #[test]
    fn device_tokens_are_random_shaped_and_stored_as_hashes() {
        let first = DeviceToken::generate();
        let second = DeviceToken::generate();
        assert_eq!(first.token.len(), 43);
        assert_ne!(first.token, second.token);
        assert_eq!(first.hash, device_token_hash(&first.token));
        assert_eq!(format!("{first:?}"), "DeviceToken([redacted])");
        assert!(is_device_token_shaped(&first.token));
        for bad in [
            "",
            "short",
            &"a".repeat(44),
            &format!("{}=", &first.token[..42]),
        ] {
            assert!(!is_device_token_shaped(bad), "{bad}");
        }
    }
}
