//! The edge policies, as one middleware in front of every routed request (transcoded HTTP and
//! native gRPC alike; the gateway's own `/healthz`, `/readyz`, `/routes` and `/openapi.json` are
//! outside it). In order, and why in that order:
//! 1. **CORS preflight** answered here ([`crate::cors`]): browsers send it without credentials.
//! 2. **Reserved headers removed**: every incoming `x-protomesh-*` header, so only what this
//!    middleware sets below reaches a service as the caller's identity.
//! 3. **Policy** of the target method ([`crate::access`]), by the target [`crate::resolve`]
//!    found: a route (HTTP) or a `/package.Service/Method` path (gRPC). Requests that match no
//!    route pass on untouched, to be answered 404 / 405 / `UNIMPLEMENTED`; server reflection is
//!    public.
//! 4. **Authentication** ([`protomesh::auth`]): credentials, when sent, must be valid — on public
//!    routes too, so that a client learns its token is bad. Every 401 counts against the client
//!    address in the [`INVALID_CREDENTIALS_CLASS`] quota; past it the answer is 429.
//! 5. **Authorization**: the policy's requirement; no credentials → 401, a valid caller without
//!    the role → 403.
//! 6. **Rate limit** ([`crate::ratelimit`]), after authentication so the client key is known.
//! 7. **Credential and identity forwarded**: the credential itself (bearer token or API key) goes
//!    on, and every service verifies it again ([`protomesh::auth`]); `x-protomesh-subject`,
//!    `-roles`, `-auth` for a verified caller (for services not built with the protomesh runtime)
//!    and `-client-ip` always ([`protomesh::identity`]).
//!
//! A refusal is a [`Refusal`], answered in the caller's transport by [`crate::errors`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use protomesh::auth::{AuthConfig, Authenticator, Credential};
use protomesh::client::Mesh;
use protomesh::identity::{self, AuthMethod, Identity};
use protomesh::policy::{Requirement, ResolvedPolicy};

use crate::access::{AccessConfig, AccessPolicy};
use crate::cors::CorsConfig;
use crate::discovery::GatewayState;
use crate::errors::Refusal;
use crate::ratelimit::{
    self, ClientKey, EdgeRateLimits, RateLimitConfig, INVALID_CREDENTIALS_CLASS,
};
use crate::resolve::{Resolved, Target};
use crate::routes::Route;

/// Every edge setting.
#[derive(Debug, Clone, Default)]
pub struct EdgeOptions {
    /// Authentication: JWT keys, API keys.
    pub auth: AuthConfig,
    /// Authorization: the default requirement and overrides.
    pub access: AccessConfig,
    /// Rate limits.
    pub rate_limits: RateLimitConfig,
    /// CORS.
    pub cors: CorsConfig,
}

/// The edge policies, ready to enforce.
#[derive(Debug)]
pub(crate) struct Edge {
    authenticator: Authenticator,
    access: AccessPolicy,
    limits: EdgeRateLimits,
    cors: CorsConfig,
}

impl Edge {
    /// The policies of `options`; a JWKS is fetched through `mesh`; `forward_headers` are
    /// allowed in CORS requests too.
    pub(crate) fn new(options: &EdgeOptions, mesh: &Mesh, forward_headers: &[HeaderName]) -> Self {
        let mut cors = options.cors.clone();
        for name in forward_headers {
            if !cors.allowed_headers.contains(name) {
                cors.allowed_headers.push(name.clone());
            }
        }
        Self {
            authenticator: Authenticator::new(options.auth.clone(), mesh),
            access: AccessPolicy::new(&options.access),
            limits: EdgeRateLimits::new(options.rate_limits.clone()),
            cors,
        }
    }

    /// The effective policy of the method at `grpc_path` in `state`.
    pub(crate) fn policy_of(&self, state: &GatewayState, grpc_path: &str) -> ResolvedPolicy {
        self.access.policy(grpc_path, state.policies.get(grpc_path))
    }

    /// The verified caller of `headers` when it holds `role`: 401 without a valid credential,
    /// 403 without the role.
    pub(crate) async fn require_role(
        &self,
        headers: &HeaderMap,
        role: &str,
    ) -> Result<Identity, Refusal> {
        let identity = match Credential::from_headers(headers) {
            Ok(Some(credential)) => self
                .authenticator
                .verify(credential)
                .await
                .map_err(|err| Refusal::Unauthenticated(Some(err)))?,
            Ok(None) => return Err(Refusal::Unauthenticated(None)),
            Err(err) => return Err(Refusal::Unauthenticated(Some(err))),
        };
        if identity.has_role(role) {
            Ok(identity)
        } else {
            Err(Refusal::Forbidden)
        }
    }

    /// Whether CORS allows pages of `origin` (a WebSocket's handshake is checked with it).
    pub(crate) fn allows_origin(&self, origin: &HeaderValue) -> bool {
        self.cors.allow_origin(origin).is_some()
    }

    /// Rate-limit refusals so far, per class.
    pub(crate) fn rate_limit_rejections(&self) -> Vec<(String, u64)> {
        self.limits.rejections()
    }

    /// The policy of `target`, or `None` when it matches no route.
    fn target_policy(
        &self,
        state: &GatewayState,
        target: &Target,
        path: &str,
    ) -> Option<ResolvedPolicy> {
        match target {
            Target::Route { route, .. } => Some(self.policy_of(state, route.grpc_path())),
            // A native gRPC path is the method's own `/package.Service/Method`.
            Target::Grpc { .. } => Some(self.policy_of(state, path)),
            Target::Reflection => Some(ResolvedPolicy::public()),
            Target::NoRoute { .. } | Target::UnknownGrpc { .. } | Target::MalformedGrpc => None,
        }
    }

    /// Applies the edge policies to `request`, whose context is `resolved`, and passes it to
    /// `next` if they allow it.
    pub(crate) async fn enforce(
        &self,
        resolved: &Resolved,
        mut request: Request,
        next: Next,
    ) -> Response {
        let grpc = resolved.target.is_grpc();
        let origin = request.headers().get(header::ORIGIN).cloned();
        if !grpc && self.cors.is_preflight(request.method(), request.headers()) {
            // A preflight is an OPTIONS request: its target lists the methods of the path.
            if let Target::NoRoute { allowed } = &resolved.target {
                if !allowed.is_empty() {
                    return self.cors.preflight(request.headers(), allowed);
                }
            }
        }
        strip_reserved(request.headers_mut());
        let client_ip = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        insert_header(
            request.headers_mut(),
            identity::CLIENT_IP,
            &client_ip.to_string(),
        );

        let Some(policy) =
            self.target_policy(&resolved.state, &resolved.target, request.uri().path())
        else {
            let mut response = next.run(request).await;
            self.cors.decorate(origin.as_ref(), response.headers_mut());
            return response;
        };

        let verified = match Credential::from_headers(request.headers()) {
            Ok(None) => Ok(None),
            Ok(Some(credential)) => self.authenticator.verify(credential).await.map(Some),
            Err(err) => Err(err),
        };
        let refusal = match &verified {
            Err(err) => Some(Refusal::Unauthenticated(Some(*err))),
            Ok(identity) => {
                let roles = identity.as_ref().map(|i| i.roles.as_slice());
                match (&policy.auth, identity) {
                    (auth, _) if auth.allows(roles) => None,
                    (_, None) => Some(Refusal::Unauthenticated(None)),
                    (_, Some(_)) => Some(Refusal::Forbidden),
                }
            }
        };
        if let Some(mut refusal) = refusal {
            if let Refusal::Unauthenticated(_) = refusal {
                // Every 401 counts per address: floods of bad or missing credentials end in
                // 429 like any other.
                let decision = self
                    .limits
                    .check(INVALID_CREDENTIALS_CLASS, &ClientKey::Ip(client_ip))
                    .await;
                if let Some(decision) = decision.filter(|d| !d.allowed) {
                    refusal = Refusal::TooManyRequests(decision);
                }
            }
            let mut response = refusal.into_response(grpc);
            self.cors.decorate(origin.as_ref(), response.headers_mut());
            return response;
        }
        let identity = verified.ok().flatten();

        let client = match &identity {
            Some(id) if id.method == AuthMethod::ApiKey => ClientKey::ApiKey(id.subject.clone()),
            Some(id) => ClientKey::Subject(id.subject.clone()),
            None => ClientKey::Ip(client_ip),
        };
        let decision = self.limits.check(&policy.rate_limit_class, &client).await;
        if let Some(decision) = decision.as_ref().filter(|d| !d.allowed) {
            let mut response = Refusal::TooManyRequests(*decision).into_response(grpc);
            self.cors.decorate(origin.as_ref(), response.headers_mut());
            return response;
        }

        forward_identity(request.headers_mut(), identity.as_ref());
        request.extensions_mut().insert(Arc::new(policy));
        let mut response = next.run(request).await;
        if let Some(decision) = &decision {
            ratelimit::add_headers(decision, response.headers_mut());
        }
        self.cors.decorate(origin.as_ref(), response.headers_mut());
        response
    }
}

/// Removes every `x-protomesh-*` header.
fn strip_reserved(headers: &mut HeaderMap) {
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(identity::RESERVED_PREFIX))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(name);
    }
}

fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// Sets the identity headers (for services not built with the protomesh runtime; the runtime
/// verifies the credential itself, which goes on untouched, see [`protomesh::auth`]).
fn forward_identity(headers: &mut HeaderMap, identity: Option<&Identity>) {
    if let Some(identity) = identity {
        insert_header(headers, identity::SUBJECT, &identity.subject);
        insert_header(headers, identity::ROLES, &identity.roles.join(","));
        insert_header(headers, identity::AUTH_METHOD, identity.method.as_str());
    }
}

/// The routes' policies for the OpenAPI document, by gRPC path.
pub(crate) fn route_requirements(
    edge: &Edge,
    state: &GatewayState,
    routes: &[Arc<Route>],
) -> HashMap<String, Requirement> {
    routes
        .iter()
        .map(|route| {
            let path = route.grpc_path();
            let auth = edge.policy_of(state, path).auth;
            (path.to_owned(), auth)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reserved_headers_are_stripped_and_credentials_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert("x-protomesh-subject", HeaderValue::from_static("admin"));
        headers.insert("X-Protomesh-Roles", HeaderValue::from_static("admin"));
        headers.insert("x-protomeshy", HeaderValue::from_static("kept"));
        headers.insert("authorization", HeaderValue::from_static("ApiKey k"));
        headers.insert("x-api-key", HeaderValue::from_static("k"));
        strip_reserved(&mut headers);
        forward_identity(
            &mut headers,
            Some(&Identity {
                subject: "ci".into(),
                roles: vec!["a".into(), "b".into()],
                method: AuthMethod::ApiKey,
            }),
        );
        assert_eq!(headers["x-protomesh-subject"], "ci");
        assert_eq!(headers["x-protomesh-roles"], "a,b");
        assert_eq!(headers["x-protomesh-auth"], "api-key");
        assert_eq!(headers["x-protomeshy"], "kept");
        assert_eq!(
            headers["authorization"], "ApiKey k",
            "services verify it themselves"
        );
        assert_eq!(headers["x-api-key"], "k");
    }
}
