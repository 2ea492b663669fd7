//! Who is calling, as the gateway verified it: the metadata the gateway sets on every call it
//! forwards (after removing any copy the outside caller sent), and how a service reads it.
//!
//! | metadata | value |
//! |---|---|
//! | [`SUBJECT`] `x-protomesh-subject` | the verified subject: a JWT's `sub`, or an API key's name |
//! | [`ROLES`] `x-protomesh-roles` | its roles, comma-separated |
//! | [`AUTH_METHOD`] `x-protomesh-auth` | `jwt` or `api-key` |
//! | [`CLIENT_IP`] `x-protomesh-client-ip` | the address the HTTP request came from |
//!
//! Services trust these only because the gateway strips every incoming `x-protomesh-*` header
//! (and, with mTLS between services, only mesh peers can reach a service at all).

use tonic::metadata::MetadataMap;

/// The prefix of every identity header; the gateway drops incoming headers that start with it.
pub const RESERVED_PREFIX: &str = "x-protomesh-";
/// The verified subject.
pub const SUBJECT: &str = "x-protomesh-subject";
/// The subject's roles, comma-separated.
pub const ROLES: &str = "x-protomesh-roles";
/// How the subject was verified: [`AuthMethod::as_str`].
pub const AUTH_METHOD: &str = "x-protomesh-auth";
/// The HTTP client's address, as the gateway saw it.
pub const CLIENT_IP: &str = "x-protomesh-client-ip";

/// How the gateway verified a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A signed JWT.
    Jwt,
    /// An API key from the gateway's configuration.
    ApiKey,
}

impl AuthMethod {
    /// The metadata value: `jwt` or `api-key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ApiKey => "api-key",
        }
    }

    /// The method named by a metadata value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "jwt" => Some(Self::Jwt),
            "api-key" => Some(Self::ApiKey),
            _ => None,
        }
    }
}

/// A caller the gateway verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject (user id or API key name).
    pub subject: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// How it was verified.
    pub method: AuthMethod,
}

impl Identity {
    /// The identity in a call's metadata, if the gateway set one.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        let subject = text(SUBJECT).filter(|s| !s.is_empty())?.to_owned();
        let method = AuthMethod::parse(text(AUTH_METHOD)?)?;
        let roles = text(ROLES)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect();
        Some(Self {
            subject,
            roles,
            method,
        })
    }

    /// Whether the identity holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The HTTP client's address the gateway passed on, if any.
pub fn client_ip(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(CLIENT_IP).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_read_back_from_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(Identity::from_metadata(&metadata), None);
        metadata.insert(SUBJECT, "u-1".parse().expect("value"));
        metadata.insert(ROLES, "user, admin".parse().expect("value"));
        assert_eq!(
            Identity::from_metadata(&metadata),
            None,
            "no method, no identity"
        );
        metadata.insert(AUTH_METHOD, "jwt".parse().expect("value"));
        metadata.insert(CLIENT_IP, "127.0.0.1".parse().expect("value"));
        let identity = Identity::from_metadata(&metadata).expect("identity");
        assert_eq!(identity.subject, "u-1");
        assert_eq!(identity.roles, ["user", "admin"]);
        assert_eq!(identity.method, AuthMethod::Jwt);
        assert!(identity.has_role("admin") && !identity.has_role("root"));
        assert_eq!(client_ip(&metadata), Some("127.0.0.1"));
        for key in [SUBJECT, ROLES, AUTH_METHOD, CLIENT_IP] {
            assert!(key.starts_with(RESERVED_PREFIX));
        }
    }
}
