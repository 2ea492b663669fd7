//! Which policy applies to a method, by precedence (first that states it wins):
//! 1. a `--route-policy 'package.Service/Method=…'` override;
//! 2. a `--route-policy 'package.Service=…'` override;
//! 3. the method's `(protomesh.options.v1.policy)`;
//! 4. its service's `(protomesh.options.v1.default_policy)`;
//! 5. `--default-auth` (`authenticated` unless configured).
//!
//! Overrides set only the auth requirement; the default deadline and rate-limit class always come
//! from the descriptors ([`protomesh::policy`]).

use std::collections::HashMap;
use std::str::FromStr;

use protomesh::policy::{Requirement, ResolvedPolicy};
use protomesh::proto::protomesh::options::v1::MethodPolicy;

/// Parses `public`, `authenticated`, or `role:a,b`.
pub(crate) fn parse_requirement(text: &str) -> Result<Requirement, String> {
    match text.trim() {
        "public" => Ok(Requirement::Public),
        "authenticated" => Ok(Requirement::Authenticated),
        other => match other.strip_prefix("role:") {
            Some(roles) => {
                let roles: Vec<String> = roles
                    .split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect();
                if roles.is_empty() {
                    Err(format!("{text:?}: role: needs at least one role"))
                } else {
                    Ok(Requirement::Role(roles))
                }
            }
            None => Err(format!(
                "{text:?}: expected public, authenticated or role:NAME[,NAME…]"
            )),
        },
    }
}

/// One `--route-policy` override: `package.Service/Method=REQUIREMENT` or
/// `package.Service=REQUIREMENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOverride {
    /// `package.Service/Method` or `package.Service`.
    pub target: String,
    /// The requirement it sets.
    pub auth: Requirement,
}

impl FromStr for RouteOverride {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (target, requirement) = text.split_once('=').ok_or_else(|| {
            format!("{text:?}: expected package.Service[/Method]=public|authenticated|role:NAME")
        })?;
        let target = target.trim().trim_start_matches('/');
        let valid_target = match target.split_once('/') {
            Some((service, method)) => {
                !service.is_empty() && !method.is_empty() && !method.contains('/')
            }
            None => !target.is_empty(),
        };
        if !valid_target {
            return Err(format!(
                "{text:?}: the target must be package.Service or package.Service/Method"
            ));
        }
        Ok(Self {
            target: target.to_owned(),
            auth: parse_requirement(requirement)?,
        })
    }
}

/// The authorization configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    /// The requirement of methods whose descriptors state none.
    pub default_auth: Requirement,
    /// Overrides by service or method.
    pub overrides: Vec<RouteOverride>,
}

impl Default for AccessConfig {
    /// Authenticated by default, no overrides.
    fn default() -> Self {
        Self {
            default_auth: Requirement::Authenticated,
            overrides: Vec::new(),
        }
    }
}

/// [`AccessConfig`] ready for lookups.
#[derive(Debug, Clone)]
pub(crate) struct AccessPolicy {
    default: ResolvedPolicy,
    overrides: HashMap<String, Requirement>,
}

impl AccessPolicy {
    /// The policy of `config` (a later override of the same target wins).
    pub(crate) fn new(config: &AccessConfig) -> Self {
        Self {
            default: ResolvedPolicy::with_auth(config.default_auth.clone()),
            overrides: config
                .overrides
                .iter()
                .map(|o| (o.target.clone(), o.auth.clone()))
                .collect(),
        }
    }

    /// The effective policy of the method at `grpc_path` (`/package.Service/Method`) whose
    /// descriptors state `declared` (`None`: nothing known about it). A declared policy that
    /// cannot be used (an unknown requirement, a negative timeout) fails closed: authenticated.
    pub(crate) fn policy(
        &self,
        grpc_path: &str,
        declared: Option<&MethodPolicy>,
    ) -> ResolvedPolicy {
        let mut policy = match declared {
            Some(declared) => ResolvedPolicy::from_declared(declared, &self.default)
                .unwrap_or_else(|err| {
                    tracing::warn!(method = %grpc_path, error = %err, "gateway: unusable policy option; requiring authentication");
                    ResolvedPolicy {
                        auth: Requirement::Authenticated,
                        ..self.default.clone()
                    }
                }),
            None => self.default.clone(),
        };
        let method = grpc_path.trim_start_matches('/');
        let service = method.split_once('/').map(|(service, _)| service);
        if let Some(auth) = self
            .overrides
            .get(method)
            .or_else(|| service.and_then(|s| self.overrides.get(s)))
        {
            policy.auth = auth.clone();
        }
        policy
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use protomesh::proto::protomesh::options::v1::AuthRequirement;

    #[test]
    fn overrides_parse_and_name_the_mistake() {
        let parsed: RouteOverride = "pkg.S/M=role:admin, ops".parse().unwrap();
        assert_eq!(parsed.target, "pkg.S/M");
        assert_eq!(
            parsed.auth,
            Requirement::Role(vec!["admin".into(), "ops".into()])
        );
        let service: RouteOverride = "pkg.S=public".parse().unwrap();
        assert_eq!(service.auth, Requirement::Public);
        for bad in [
            "pkg.S",
            "=public",
            "pkg.S/=public",
            "pkg.S=everyone",
            "pkg.S=role:",
        ] {
            assert!(bad.parse::<RouteOverride>().is_err(), "{bad}");
        }
    }

    #[test]
    fn precedence_is_method_override_service_override_declared_default() {
        let config = AccessConfig {
            default_auth: Requirement::Public,
            overrides: vec![
                "pkg.S=authenticated".parse().unwrap(),
                "pkg.S/Open=public".parse().unwrap(),
            ],
        };
        let access = AccessPolicy::new(&config);
        let declared_role = MethodPolicy {
            auth: AuthRequirement::Role as i32,
            roles: vec!["admin".into()],
            rate_limit_class: "admin".into(),
            ..MethodPolicy::default()
        };
        assert_eq!(
            access.policy("/pkg.S/Open", Some(&declared_role)).auth,
            Requirement::Public
        );
        let other = access.policy("/pkg.S/Other", Some(&declared_role));
        assert_eq!(other.auth, Requirement::Authenticated);
        assert_eq!(
            other.rate_limit_class, "admin",
            "classes are not overridden"
        );
        assert_eq!(
            access.policy("/pkg.T/M", Some(&declared_role)).auth,
            Requirement::Role(vec!["admin".into()])
        );
        assert_eq!(
            access
                .policy("/pkg.T/M", Some(&MethodPolicy::default()))
                .auth,
            Requirement::Public
        );
        let broken = MethodPolicy {
            auth: 99,
            ..MethodPolicy::default()
        };
        assert_eq!(
            access.policy("/pkg.T/M", Some(&broken)).auth,
            Requirement::Authenticated
        );
    }
}
