//! A method's effective policy — who may call it, its default deadline, its rate-limit class —
//! read from its descriptors: the method option `(protomesh.options.v1.policy)` field by field
//! over the service option `(protomesh.options.v1.default_policy)`, over a default the caller
//! supplies (the gateway's `--default-auth`, say).
//!
//! | field | taken from the first level that sets it |
//! |---|---|
//! | `auth` | not `AUTH_REQUIREMENT_UNSPECIFIED` |
//! | `roles` | non-empty |
//! | `default_timeout` | present |
//! | `rate_limit_class` | non-empty ([`DEFAULT_RATE_LIMIT_CLASS`] when no level sets it) |
//!
//! The options are read whether or not `protomesh/options/v1/options.proto` is in the
//! descriptor pool: when the pool knows the extensions they are read as such; when it does not
//! (a service that sent its descriptors without that file), the options message still carries
//! them as unknown fields, which are decoded by their field numbers ([`METHOD_POLICY_FIELD`],
//! [`SERVICE_POLICY_FIELD`]) into the generated [`MethodPolicy`].
//!
//! ```
//! use prost_reflect::DescriptorPool;
//! use protomesh::policy::{self, Requirement, ResolvedPolicy};
//! let pool = DescriptorPool::decode(protomesh_users::proto::FILE_DESCRIPTOR_SET).expect("pool");
//! let get_me = pool
//!     .get_service_by_name("protomesh.users.v1.UsersService")
//!     .and_then(|s| s.methods().find(|m| m.name() == "GetMe"))
//!     .expect("GetMe");
//! let resolved = policy::resolve(&get_me, &ResolvedPolicy::authenticated()).expect("policy");
//! assert_eq!(resolved.auth, Requirement::Authenticated);
//! ```

use std::time::Duration;

use prost::Message;
use prost_reflect::{DynamicMessage, MethodDescriptor, ReflectMessage, ServiceDescriptor, Value};

use crate::proto::protomesh::options::v1::{AuthRequirement, MethodPolicy};

/// Full name of the method option.
pub const METHOD_POLICY_EXTENSION: &str = "protomesh.options.v1.policy";
/// Full name of the service option.
pub const SERVICE_POLICY_EXTENSION: &str = "protomesh.options.v1.default_policy";
/// Field number of the method option in `google.protobuf.MethodOptions`.
pub const METHOD_POLICY_FIELD: u32 = 51001;
/// Field number of the service option in `google.protobuf.ServiceOptions`.
pub const SERVICE_POLICY_FIELD: u32 = 51002;
/// The rate-limit class of methods whose policy names none.
pub const DEFAULT_RATE_LIMIT_CLASS: &str = "default";

/// The requirement of methods whose descriptors state none (`--default-auth` of the gateway and
/// of every service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DefaultAuth {
    /// Anyone.
    Public,
    /// Any verified caller.
    #[default]
    Authenticated,
}

impl DefaultAuth {
    /// The requirement it stands for.
    pub fn requirement(self) -> Requirement {
        match self {
            Self::Public => Requirement::Public,
            Self::Authenticated => Requirement::Authenticated,
        }
    }
}

/// Who may call a method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// Anyone, without credentials.
    Public,
    /// Any verified caller.
    Authenticated,
    /// A verified caller holding at least one of these roles (none listed: nobody passes).
    Role(Vec<String>),
}

impl Requirement {
    /// Whether a caller with these roles (`None`: not verified) meets the requirement.
    pub fn allows(&self, roles: Option<&[String]>) -> bool {
        match (self, roles) {
            (Self::Public, _) => true,
            (_, None) => false,
            (Self::Authenticated, Some(_)) => true,
            (Self::Role(wanted), Some(held)) => wanted.iter().any(|w| held.contains(w)),
        }
    }
}

impl std::fmt::Display for Requirement {
    /// `public`, `authenticated`, or `role:a,b`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Public => f.write_str("public"),
            Self::Authenticated => f.write_str("authenticated"),
            Self::Role(roles) => write!(f, "role:{}", roles.join(",")),
        }
    }
}

/// A method's effective policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedPolicy {
    /// Who may call it.
    pub auth: Requirement,
    /// The deadline of a call that sets none, if the policy states one.
    pub default_timeout: Option<Duration>,
    /// The rate-limit class calls count in (never empty).
    pub rate_limit_class: String,
}

impl ResolvedPolicy {
    /// Authenticated callers, no default deadline, the default rate-limit class.
    pub fn authenticated() -> Self {
        Self::with_auth(Requirement::Authenticated)
    }

    /// Anyone, no default deadline, the default rate-limit class.
    pub fn public() -> Self {
        Self::with_auth(Requirement::Public)
    }

    /// `auth`, no default deadline, the default rate-limit class.
    pub fn with_auth(auth: Requirement) -> Self {
        Self {
            auth,
            default_timeout: None,
            rate_limit_class: DEFAULT_RATE_LIMIT_CLASS.to_owned(),
        }
    }

    /// `declared` (a policy as the options state it, possibly partial) over `default`, field by
    /// field. A negative `default_timeout` is an error.
    pub fn from_declared(declared: &MethodPolicy, default: &Self) -> Result<Self, PolicyError> {
        let auth = match AuthRequirement::try_from(declared.auth) {
            Ok(AuthRequirement::Public) => Requirement::Public,
            Ok(AuthRequirement::Authenticated) => Requirement::Authenticated,
            Ok(AuthRequirement::Role) if declared.roles.is_empty() => match &default.auth {
                Requirement::Role(roles) => Requirement::Role(roles.clone()),
                _ => Requirement::Role(Vec::new()),
            },
            Ok(AuthRequirement::Role) => Requirement::Role(declared.roles.clone()),
            Ok(AuthRequirement::Unspecified) => default.auth.clone(),
            Err(_) => return Err(PolicyError::UnknownRequirement(declared.auth)),
        };
        let default_timeout = match &declared.default_timeout {
            Some(timeout) => Some(
                Duration::try_from(*timeout)
                    .map_err(|_| PolicyError::InvalidTimeout(format!("{timeout:?}")))?,
            ),
            None => default.default_timeout,
        };
        let rate_limit_class = if declared.rate_limit_class.is_empty() {
            default.rate_limit_class.clone()
        } else {
            declared.rate_limit_class.clone()
        };
        Ok(Self {
            auth,
            default_timeout,
            rate_limit_class: if rate_limit_class.is_empty() {
                DEFAULT_RATE_LIMIT_CLASS.to_owned()
            } else {
                rate_limit_class
            },
        })
    }
}

/// Why a method's policy cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The option's bytes are not a `MethodPolicy`.
    #[error("{owner}: the policy option does not decode: {reason}")]
    Decode {
        /// The method or service whose option it is.
        owner: String,
        /// What the decoder said.
        reason: String,
    },
    /// `auth` holds a value `AuthRequirement` does not define.
    #[error("unknown auth requirement {0}")]
    UnknownRequirement(i32),
    /// `default_timeout` is negative or out of range.
    #[error("invalid default_timeout {0}")]
    InvalidTimeout(String),
}

/// The method's stated policy: its `(protomesh.options.v1.policy)` field by field over its
/// service's `(protomesh.options.v1.default_policy)` (either may be absent: an empty policy).
pub fn declared(method: &MethodDescriptor) -> Result<MethodPolicy, PolicyError> {
    let service = service_policy(method.parent_service())?;
    let own = method_policy(method)?;
    Ok(merge(&own, &service))
}

/// The method's effective policy: [`declared`] over `default`.
pub fn resolve(
    method: &MethodDescriptor,
    default: &ResolvedPolicy,
) -> Result<ResolvedPolicy, PolicyError> {
    ResolvedPolicy::from_declared(&declared(method)?, default)
}

/// The method's own `(protomesh.options.v1.policy)`, empty when absent.
pub fn method_policy(method: &MethodDescriptor) -> Result<MethodPolicy, PolicyError> {
    option_policy(
        &method.options(),
        METHOD_POLICY_EXTENSION,
        METHOD_POLICY_FIELD,
        method.full_name(),
    )
}

/// The service's `(protomesh.options.v1.default_policy)`, empty when absent.
pub fn service_policy(service: &ServiceDescriptor) -> Result<MethodPolicy, PolicyError> {
    option_policy(
        &service.options(),
        SERVICE_POLICY_EXTENSION,
        SERVICE_POLICY_FIELD,
        service.full_name(),
    )
}

/// `over` field by field over `under`.
pub fn merge(over: &MethodPolicy, under: &MethodPolicy) -> MethodPolicy {
    MethodPolicy {
        auth: if over.auth == AuthRequirement::Unspecified as i32 {
            under.auth
        } else {
            over.auth
        },
        roles: if over.roles.is_empty() {
            under.roles.clone()
        } else {
            over.roles.clone()
        },
        default_timeout: over.default_timeout.or(under.default_timeout),
        rate_limit_class: if over.rate_limit_class.is_empty() {
            under.rate_limit_class.clone()
        } else {
            over.rate_limit_class.clone()
        },
    }
}

/// The options of a method or service carrying a policy at `field`, by extension when the
/// options' pool knows `extension`, else from the options' encoding (the extension is then an
/// unknown field, kept by the dynamic message).
fn option_policy(
    options: &DynamicMessage,
    extension: &str,
    field: u32,
    owner: &str,
) -> Result<MethodPolicy, PolicyError> {
    let decode_error = |reason: String| PolicyError::Decode {
        owner: owner.to_owned(),
        reason,
    };
    let pool = options.descriptor().parent_pool().clone();
    if let Some(extension) = pool.get_extension_by_name(extension) {
        if !options.has_extension(&extension) {
            return Ok(MethodPolicy::default());
        }
        return match options.get_extension(&extension).as_ref() {
            Value::Message(policy) => policy
                .transcode_to::<MethodPolicy>()
                .map_err(|err| decode_error(err.to_string())),
            other => Err(decode_error(format!("not a message: {other:?}"))),
        };
    }
    let carrier = PolicyCarrier::decode(options.encode_to_vec().as_slice())
        .map_err(|err| decode_error(err.to_string()))?;
    let found = if field == METHOD_POLICY_FIELD {
        carrier.method
    } else {
        carrier.service
    };
    Ok(found.unwrap_or_default())
}

/// `MethodOptions` / `ServiceOptions` as far as the policy options go: every other field is
/// skipped by the decoder.
#[derive(Clone, PartialEq, Message)]
struct PolicyCarrier {
    #[prost(message, optional, tag = "51001")]
    method: Option<MethodPolicy>,
    #[prost(message, optional, tag = "51002")]
    service: Option<MethodPolicy>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost_reflect::DescriptorPool;

    /// A service with every combination of method and service options, compiled with protox.
    const POLICIES_PROTO: &str = r#"
syntax = "proto3";
package test.policy.v1;
import "google/protobuf/empty.proto";
import "protomesh/options/v1/options.proto";

service Guarded {
  option (protomesh.options.v1.default_policy) = {
    auth: AUTH_REQUIREMENT_AUTHENTICATED
    rate_limit_class: "guarded"
    default_timeout { seconds: 5 }
  };
  rpc Inherits(google.protobuf.Empty) returns (google.protobuf.Empty);
  rpc Public(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (protomesh.options.v1.policy) = { auth: AUTH_REQUIREMENT_PUBLIC };
  }
  rpc Admin(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (protomesh.options.v1.policy) = {
      auth: AUTH_REQUIREMENT_ROLE
      roles: ["admin", "ops"]
      rate_limit_class: "admin"
      default_timeout { nanos: 250000000 }
    };
  }
}

service Bare {
  rpc Plain(google.protobuf.Empty) returns (google.protobuf.Empty);
  rpc OnlyClass(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (protomesh.options.v1.policy) = { rate_limit_class: "cheap" };
  }
}
"#;

    /// The encoded set (raw files, options kept as protox wrote them) of the test proto and
    /// its imports.
    fn compiled() -> Vec<u8> {
        let dir =
            std::env::temp_dir().join(format!("protomesh-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("test")).unwrap();
        std::fs::write(dir.join("test/policies.proto"), POLICIES_PROTO).unwrap();
        let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let mut compiler = protox::Compiler::new([dir.clone(), proto_root]).unwrap();
        compiler.include_imports(true);
        compiler.open_file("test/policies.proto").unwrap();
        let set = compiler.encode_file_descriptor_set();
        let _ = std::fs::remove_dir_all(&dir);
        set
    }

    fn method(pool: &DescriptorPool, service: &str, name: &str) -> MethodDescriptor {
        pool.get_service_by_name(&format!("test.policy.v1.{service}"))
            .and_then(|s| s.methods().find(|m| m.name() == name))
            .unwrap()
    }

    fn check_policies(pool: &DescriptorPool) {
        let public_default = ResolvedPolicy::public();
        let resolved = |service: &str, name: &str| {
            resolve(&method(pool, service, name), &public_default).unwrap()
        };
        assert_eq!(
            resolved("Guarded", "Inherits"),
            ResolvedPolicy {
                auth: Requirement::Authenticated,
                default_timeout: Some(Duration::from_secs(5)),
                rate_limit_class: "guarded".to_owned(),
            }
        );
        assert_eq!(
            resolved("Guarded", "Public"),
            ResolvedPolicy {
                auth: Requirement::Public,
                default_timeout: Some(Duration::from_secs(5)),
                rate_limit_class: "guarded".to_owned(),
            }
        );
        assert_eq!(
            resolved("Guarded", "Admin"),
            ResolvedPolicy {
                auth: Requirement::Role(vec!["admin".to_owned(), "ops".to_owned()]),
                default_timeout: Some(Duration::from_millis(250)),
                rate_limit_class: "admin".to_owned(),
            }
        );
        assert_eq!(resolved("Bare", "Plain"), ResolvedPolicy::public());
        let with_class = resolve(
            &method(pool, "Bare", "OnlyClass"),
            &ResolvedPolicy::authenticated(),
        )
        .unwrap();
        assert_eq!(with_class.auth, Requirement::Authenticated);
        assert_eq!(with_class.rate_limit_class, "cheap");
    }

    #[test]
    fn method_options_override_service_options_field_by_field() {
        let pool = DescriptorPool::decode(compiled().as_slice()).unwrap();
        assert!(pool
            .get_extension_by_name(METHOD_POLICY_EXTENSION)
            .is_some());
        check_policies(&pool);
    }

    /// An encoded `FileDescriptorSet` whose files stay raw bytes.
    #[derive(Clone, PartialEq, Message)]
    struct RawSet {
        #[prost(bytes = "vec", repeated, tag = "1")]
        file: Vec<Vec<u8>>,
    }

    #[test]
    fn options_are_read_by_field_number_when_the_pool_lacks_options_proto() {
        // The set as a service could send it without options.proto: the option bytes stay in
        // the options messages, as fields the pool knows no extension for.
        let options_file = "protomesh/options/v1/options.proto";
        let mut set = RawSet::decode(compiled().as_slice()).unwrap();
        set.file.retain(|raw| {
            prost_types::FileDescriptorProto::decode(raw.as_slice())
                .unwrap()
                .name()
                != options_file
        });
        for raw in &mut set.file {
            *raw = without_dependency(raw, options_file);
        }
        let pool = DescriptorPool::decode(set.encode_to_vec().as_slice()).unwrap();
        assert!(pool
            .get_extension_by_name(METHOD_POLICY_EXTENSION)
            .is_none());
        check_policies(&pool);
    }

    /// A raw `FileDescriptorProto` without its `dependency` (field 3) entry `name`, every other
    /// byte as it was.
    fn without_dependency(raw: &[u8], name: &str) -> Vec<u8> {
        use prost::encoding::{decode_key, decode_varint, WireType};
        let mut out = Vec::new();
        let mut rest = raw;
        while !rest.is_empty() {
            let start = rest;
            let (tag, wire) = decode_key(&mut rest).unwrap();
            let length = match wire {
                WireType::Varint => {
                    decode_varint(&mut rest).unwrap();
                    0
                }
                WireType::LengthDelimited => {
                    usize::try_from(decode_varint(&mut rest).unwrap()).unwrap()
                }
                WireType::SixtyFourBit => 8,
                WireType::ThirtyTwoBit => 4,
                other => panic!("unexpected wire type {other:?} in a descriptor"),
            };
            let value = &rest[..length];
            rest = &rest[length..];
            if tag == 3 && value == name.as_bytes() {
                continue;
            }
            out.extend_from_slice(&start[..start.len() - rest.len()]);
        }
        out
    }

    #[test]
    fn the_reference_protos_state_their_policies() {
        let pool = crate::test_protos::pool();
        let users = |name: &str| {
            pool.get_service_by_name("protomesh.users.v1.UsersService")
                .and_then(|s| s.methods().find(|m| m.name() == name))
                .unwrap()
        };
        let default = ResolvedPolicy::authenticated();
        let login = resolve(&users("Login"), &default).unwrap();
        assert_eq!(login.auth, Requirement::Public);
        assert_eq!(login.rate_limit_class, "auth");
        assert_eq!(
            resolve(&users("GetMe"), &default).unwrap().auth,
            Requirement::Authenticated
        );
        let probe = pool
            .get_service_by_name("protomesh.probe.v1.ProbeService")
            .and_then(|s| s.methods().next())
            .unwrap();
        assert_eq!(
            resolve(&probe, &ResolvedPolicy::public()).unwrap(),
            ResolvedPolicy::public(),
            "an unannotated service takes the default"
        );
    }

    #[test]
    fn requirements_allow_the_right_callers() {
        let roles = vec!["user".to_owned()];
        assert!(Requirement::Public.allows(None));
        assert!(!Requirement::Authenticated.allows(None));
        assert!(Requirement::Authenticated.allows(Some(&[])));
        assert!(Requirement::Role(vec!["user".into()]).allows(Some(&roles)));
        assert!(!Requirement::Role(vec!["admin".into()]).allows(Some(&roles)));
        assert!(!Requirement::Role(Vec::new()).allows(Some(&roles)));
        assert_eq!(
            Requirement::Role(vec!["a".into(), "b".into()]).to_string(),
            "role:a,b"
        );
    }

    #[test]
    fn a_bad_requirement_or_timeout_is_an_error() {
        let default = ResolvedPolicy::public();
        let bad_auth = MethodPolicy {
            auth: 42,
            ..MethodPolicy::default()
        };
        assert_eq!(
            ResolvedPolicy::from_declared(&bad_auth, &default),
            Err(PolicyError::UnknownRequirement(42))
        );
        let negative = MethodPolicy {
            default_timeout: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..MethodPolicy::default()
        };
        assert!(matches!(
            ResolvedPolicy::from_declared(&negative, &default),
            Err(PolicyError::InvalidTimeout(_))
        ));
    }
}
