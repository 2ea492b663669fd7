//! The edge policies, as one middleware in front of every routed request (transcoded HTTP and
//! native gRPC alike; the gateway's own `/healthz`, `/readyz`, `/routes` and `/openapi.json` are
//! outside it). In order, and why in that order:
//! 1. **CORS preflight** answered here ([`crate::cors`]): browsers send it without credentials.
//! 2. **Reserved headers removed**: every incoming `x-protomesh-*` header, so only what this
//!    middleware sets below reaches a service as the caller's identity.
//! 3. **Policy** of the target method ([`crate::access`]): by route (HTTP) or by
//!    `/package.Service/Method` path (gRPC). Requests that match no route pass on untouched, to
//!    be answered 404 / 405 / `UNIMPLEMENTED`; server reflection is public.
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
//! Refusals are the transport's own: JSON errors (`{"code", "message", "details"}`) with
//! `WWW-Authenticate` on 401, or trailers-only gRPC statuses (`UNAUTHENTICATED`,
//! `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`). Messages say "missing", "invalid" or "expired"
//! credentials and nothing more.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use protomesh::client::Mesh;
use protomesh::identity::{self, AuthMethod, Identity};
use protomesh::policy::{self, Requirement, ResolvedPolicy};
use protomesh::proto::protomesh::options::v1::{AuthRequirement, MethodPolicy};
use protomesh_data::ratelimit::Decision;
use tonic::Status;

use crate::access::{AccessConfig, AccessPolicy};
use crate::cors::CorsConfig;
use crate::discovery::GatewayState;
use crate::errors::HttpError;
use crate::grpc_proxy::{self, REFLECTION_SERVICES};
use crate::ratelimit::{
    self, ClientKey, EdgeRateLimits, RateLimitConfig, INVALID_CREDENTIALS_CLASS,
};
use crate::routes::{Lookup, Route};
use protomesh::auth::{AuthConfig, AuthError, Authenticator, Credential};

/// The realm of the `WWW-Authenticate` challenges.
pub const REALM: &str = "protomesh";

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
pub struct Edge {
    authenticator: Authenticator,
    access: AccessPolicy,
    limits: EdgeRateLimits,
    cors: CorsConfig,
}

/// The declared policy of every method of `services`, by gRPC path: what
/// [`GatewayState::policies`] holds. A policy option that cannot be read fails closed
/// (authenticated).
pub fn declared_policies<'a>(
    methods: impl IntoIterator<Item = &'a prost_reflect::MethodDescriptor>,
) -> HashMap<String, MethodPolicy> {
    methods
        .into_iter()
        .map(|method| {
            let path = format!(
                "/{}/{}",
                method.parent_service().full_name(),
                method.name()
            );
            let declared = policy::declared(method).unwrap_or_else(|err| {
                tracing::warn!(method = %path, error = %err, "gateway: unreadable policy option; requiring authentication");
                MethodPolicy {
                    auth: AuthRequirement::Authenticated as i32,
                    ..MethodPolicy::default()
                }
            });
            (path, declared)
        })
        .collect()
}

impl Edge {
    /// The policies of `options`; a JWKS is fetched through `mesh`; `forward_headers` are
    /// allowed in CORS requests too.
    pub fn new(options: &EdgeOptions, mesh: &Mesh, forward_headers: &[HeaderName]) -> Self {
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
    pub fn policy_of(&self, state: &GatewayState, grpc_path: &str) -> ResolvedPolicy {
        self.access.policy(grpc_path, state.policies.get(grpc_path))
    }

    /// Rate-limit refusals so far, per class.
    pub fn rate_limit_rejections(&self) -> Vec<(String, u64)> {
        self.limits.rejections()
    }

    /// The policy of what `request` calls, or `None` when it matches no route.
    fn target(
        &self,
        state: &GatewayState,
        request: &Request,
        grpc: bool,
    ) -> Option<ResolvedPolicy> {
        let path = request.uri().path();
        if grpc {
            let service = grpc_proxy::grpc_service_of(path)?;
            if REFLECTION_SERVICES.contains(&service) {
                return Some(ResolvedPolicy::public());
            }
            state.grpc_services.get(service)?;
            return Some(self.policy_of(state, path));
        }
        match state.table.lookup(request.method(), path) {
            Lookup::Found(route, _) => Some(self.policy_of(state, &route.grpc_path())),
            Lookup::MethodNotAllowed(_) | Lookup::NotFound => None,
        }
    }

    /// Applies the edge policies to `request` and passes it to `next` if they allow it.
    pub async fn enforce(
        &self,
        state: &GatewayState,
        mut request: Request,
        next: Next,
    ) -> Response {
        let grpc = grpc_proxy::is_grpc(request.headers());
        let origin = request.headers().get(header::ORIGIN).cloned();
        if !grpc && self.cors.is_preflight(request.method(), request.headers()) {
            if let Lookup::MethodNotAllowed(methods) =
                state.table.lookup(&Method::OPTIONS, request.uri().path())
            {
                return self.cors.preflight(request.headers(), &methods);
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

        let Some(policy) = self.target(state, &request, grpc) else {
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
        if let Some(refusal) = refusal {
            let mut response = match refusal {
                Refusal::Unauthenticated(reason) => {
                    // Every 401 counts per address: floods of bad or missing credentials end
                    // in 429 like any other.
                    let decision = self
                        .limits
                        .check(INVALID_CREDENTIALS_CLASS, &ClientKey::Ip(client_ip))
                        .await;
                    match decision {
                        Some(decision) if !decision.allowed => too_many(&decision, grpc),
                        _ => unauthenticated(reason, grpc),
                    }
                }
                Refusal::Forbidden => forbidden(grpc),
            };
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
        if let Some(decision) = decision.filter(|d| !d.allowed) {
            let mut response = too_many(&decision, grpc);
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

/// Why a request is refused before it reaches a service.
enum Refusal {
    /// No credentials (`None`) or bad ones.
    Unauthenticated(Option<AuthError>),
    /// A verified caller without the required role.
    Forbidden,
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

/// 401 / `UNAUTHENTICATED`, with a `WWW-Authenticate` challenge (RFC 6750: no error code when
/// no credentials were sent).
fn unauthenticated(reason: Option<AuthError>, grpc: bool) -> Response {
    let message = match reason {
        None => "missing credentials".to_owned(),
        Some(err) => err.to_string(),
    };
    if grpc {
        return grpc_proxy::status_response(&Status::unauthenticated(message));
    }
    let challenge = match reason {
        None => format!("Bearer realm=\"{REALM}\""),
        Some(_) => format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{message}\""
        ),
    };
    let mut error = HttpError::new(
        StatusCode::UNAUTHORIZED,
        tonic::Code::Unauthenticated,
        message,
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        error.headers.push((header::WWW_AUTHENTICATE, value));
    }
    error.into_response()
}

/// 403 / `PERMISSION_DENIED`.
fn forbidden(grpc: bool) -> Response {
    let message = "permission denied";
    if grpc {
        return grpc_proxy::status_response(&Status::permission_denied(message));
    }
    let mut error = HttpError::new(
        StatusCode::FORBIDDEN,
        tonic::Code::PermissionDenied,
        message,
    );
    error.headers.push((
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"protomesh\", error=\"insufficient_scope\""),
    ));
    error.into_response()
}

/// 429 / `RESOURCE_EXHAUSTED`, with `Retry-After` and the `RateLimit-*` headers.
fn too_many(decision: &Decision, grpc: bool) -> Response {
    let message = format!(
        "rate limit exceeded; retry after {} s",
        decision.retry_after_secs()
    );
    let mut response = if grpc {
        grpc_proxy::status_response(&Status::resource_exhausted(message))
    } else {
        HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::ResourceExhausted,
            message,
        )
        .into_response()
    };
    ratelimit::add_headers(decision, response.headers_mut());
    response
}

/// The routes' policies for the OpenAPI document, by gRPC path.
pub fn route_requirements(
    edge: &Edge,
    state: &GatewayState,
    routes: &[Arc<Route>],
) -> HashMap<String, Requirement> {
    routes
        .iter()
        .map(|route| {
            let path = route.grpc_path();
            let auth = edge.policy_of(state, &path).auth;
            (path, auth)
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

    #[test]
    fn a_missing_credential_gets_a_bare_challenge_and_a_bad_one_invalid_token() {
        let missing = unauthenticated(None, false);
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()["www-authenticate"],
            "Bearer realm=\"protomesh\""
        );
        let expired = unauthenticated(Some(AuthError::Expired), false);
        let challenge = expired.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(challenge.contains("expired credentials"), "{challenge}");
        let grpc = unauthenticated(Some(AuthError::Invalid), true);
        assert_eq!(grpc.headers()["grpc-status"], "16");
    }
}
