//! For tests: an HS256 issuer whose tokens every test server accepts
//! ([`crate::server::testing::quick_config`] verifies with [`auth_config`]), and a tonic
//! interceptor that signs calls in as someone.
//!
//! ```
//! use protomesh::auth::testing;
//! let token = testing::token("alice", &["user"]);
//! let _as_alice = testing::SignedIn::bearer(&token);
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use super::{AuthConfig, Authenticator, DEFAULT_AUDIENCE, DEFAULT_ISSUER};

/// The HS256 secret of test tokens.
pub const TEST_SECRET: &[u8] = b"protomesh-test-only-hs256-secret-0123456789";

/// Accepts the test issuer's tokens (HS256 with [`TEST_SECRET`]) and nothing else.
pub fn auth_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(TEST_SECRET.into()),
        ..AuthConfig::default()
    }
}

/// An authenticator for [`auth_config`] (it fetches no keys, so it needs no mesh).
pub fn authenticator() -> Authenticator {
    Authenticator::without_mesh(auth_config())
}

/// A token for `subject` with `roles`, valid for an hour.
pub fn token(subject: &str, roles: &[&str]) -> String {
    sign(subject, roles, TEST_SECRET)
}

/// A well-formed token for `subject` signed with another secret: every check refuses it.
pub fn forged_token(subject: &str) -> String {
    sign(
        subject,
        &["admin"],
        b"not-the-test-secret-not-the-test-secret!!",
    )
}

fn sign(subject: &str, roles: &[&str], secret: &[u8]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "sub": subject,
        "roles": roles,
        "iss": DEFAULT_ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    });
    // HS256 with a byte secret cannot fail to sign.
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// Sets on `request` the identity metadata the server runtime sets on a call it verified: for
/// tests that call a handler directly, without a server (and so without its runtime).
pub fn verified_as<T>(request: &mut tonic::Request<T>, subject: &str, roles: &[&str]) {
    let metadata = request.metadata_mut();
    for (key, value) in [
        (crate::identity::SUBJECT, subject.to_owned()),
        (crate::identity::ROLES, roles.join(",")),
        (crate::identity::AUTH_METHOD, "jwt".to_owned()),
    ] {
        if let Ok(value) = value.parse() {
            metadata.insert(key, value);
        }
    }
}

/// A tonic interceptor that adds `authorization: Bearer TOKEN` to every call.
#[derive(Debug, Clone)]
pub struct SignedIn {
    authorization: AsciiMetadataValue,
}

impl SignedIn {
    /// Calls carrying `token` as a bearer token.
    pub fn bearer(token: &str) -> Self {
        Self {
            authorization: MetadataValue::try_from(format!("Bearer {token}"))
                .unwrap_or_else(|_| MetadataValue::from_static("Bearer invalid")),
        }
    }

    /// Calls signed in as `subject` with `roles` (a test token).
    pub fn as_user(subject: &str, roles: &[&str]) -> Self {
        Self::bearer(&token(subject, roles))
    }
}

impl tonic::service::Interceptor for SignedIn {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        Ok(request)
    }
}
