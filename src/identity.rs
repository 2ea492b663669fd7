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
//! A service built with this runtime believes these only because its server runtime set them:
//! it removes any copy the caller sent and sets them from the credential it verified itself
//! ([`crate::server`], [`crate::auth`]). [`CLIENT_IP`] is advisory (whoever reaches a service
//! directly can set it): use it to key limits, never to grant anything.
//!
//! Ownership helpers: [`caller`] is the verified caller of a call (`UNAUTHENTICATED` without
//! one), and [`Identity::resolve_user`] maps a request's `user_id` (`me`, empty, the caller's own
//! id, or — for admins — anyone's) to the user whose data the call may touch. Others' data does
//! not exist for a caller: `NOT_FOUND`, the same answer as for data that does not exist.

use tonic::metadata::MetadataMap;
use tonic::Status;

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
/// The role that may act for every user.
pub const ADMIN_ROLE: &str = "admin";
/// The `user_id` that names the caller.
pub const ME: &str = "me";

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

    /// Whether the identity may act for every user ([`ADMIN_ROLE`]).
    pub fn is_admin(&self) -> bool {
        self.has_role(ADMIN_ROLE)
    }

    /// The user whose data a call naming `requested` (a request's `user_id`) touches: the caller
    /// for `""`, [`ME`] or its own id; anyone for an admin; for anyone else `NOT_FOUND` naming
    /// `field` (another user's data does not exist for the caller).
    pub fn resolve_user(&self, field: &str, requested: &str) -> Result<String, Status> {
        if requested.is_empty() || requested == ME || requested == self.subject {
            return Ok(self.subject.clone());
        }
        if self.is_admin() {
            return Ok(requested.to_owned());
        }
        Err(Status::not_found(format!(
            "{field}: user {} not found",
            crate::status::echo(requested)
        )))
    }
}

/// The verified caller of the call with `metadata`, or `UNAUTHENTICATED` (a method that
/// requires one is refused by the runtime before its handler runs, so this fails only for
/// methods declared public).
pub fn caller(metadata: &MetadataMap) -> Result<Identity, Status> {
    Identity::from_metadata(metadata).ok_or_else(|| Status::unauthenticated("missing credentials"))
}

/// The HTTP client's address the gateway passed on, if any.
pub fn client_ip(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(CLIENT_IP).and_then(|v| v.to_str().ok())
}

/// Whether `text` can travel as one value of a comma-separated metadata list.
pub(crate) fn is_header_safe(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && b != b',')
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

    #[test]
    fn users_resolve_to_the_caller_unless_an_admin_asks() {
        let alice = Identity {
            subject: "alice".into(),
            roles: vec!["user".into()],
            method: AuthMethod::Jwt,
        };
        for own in ["", ME, "alice"] {
            assert_eq!(alice.resolve_user("user_id", own).unwrap(), "alice");
        }
        let refused = alice.resolve_user("user_id", "bob").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound);
        assert!(refused.message().contains("user_id"), "{refused:?}");
        let long = "x".repeat(10_000);
        assert!(
            alice
                .resolve_user("user_id", &long)
                .unwrap_err()
                .message()
                .len()
                < 300
        );
        let admin = Identity {
            roles: vec![ADMIN_ROLE.into()],
            ..alice
        };
        assert_eq!(admin.resolve_user("user_id", "bob").unwrap(), "bob");
        assert_eq!(admin.resolve_user("user_id", ME).unwrap(), "alice");
        assert_eq!(
            caller(&MetadataMap::new()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
