//! Every call a service serves is authenticated by the runtime, not by its handlers: the server
//! verifies the caller's own credential (the bearer token or API key the gateway, or a calling
//! service, passed on) with [`crate::auth::Authenticator`] and checks the method's policy
//! (`(protomesh.options.v1.policy)`, see [`crate::policy`]) before the handler runs.
//!
//! | policy | no credential | invalid credential | valid, role missing | valid |
//! |---|---|---|---|---|
//! | public | handled, no identity | handled, no identity | — | handled, no identity |
//! | authenticated | `UNAUTHENTICATED` | `UNAUTHENTICATED` | — | handled |
//! | role | `UNAUTHENTICATED` | `UNAUTHENTICATED` | `PERMISSION_DENIED` | handled |
//!
//! Identity metadata a caller sets itself (`x-protomesh-subject`, `-roles`, `-auth`) is removed
//! from every call; on a verified call the runtime sets it from the credential, so handlers read
//! [`crate::identity::Identity::from_metadata`] and believe only what was verified here. Public
//! methods are not verified at all (they grant nothing to anyone), so a service that is down
//! cannot stall a public call through a JWKS fetch. Methods whose descriptors state no policy, and
//! methods the descriptors do not know (outside health and reflection), get the server's
//! `--default-auth`: a verified caller unless it says otherwise, so a service served without its
//! descriptors fails closed.
//!
//! The credential of a handled call goes on with the calls its handler makes
//! ([`crate::credential`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::Status;
use tower::{Layer, Service};

use crate::auth::{AuthError, Authenticator, Credential};
use crate::credential::{with_caller_credential, CallerCredential};
use crate::identity::{self, Identity};
use crate::policy::{self, Requirement, ResolvedPolicy};

/// Services every caller may use: health checks (Consul's included) and reflection.
const OPEN_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Who may call each method, by gRPC path.
#[derive(Debug)]
pub(crate) struct MethodRequirements {
    by_path: HashMap<String, Requirement>,
    default: Requirement,
}

impl MethodRequirements {
    /// The requirements of every method in `pool`, `default` where a method states none (a
    /// method whose policy cannot be read needs a verified caller).
    pub(crate) fn from_pool(pool: &prost_reflect::DescriptorPool, default: Requirement) -> Self {
        let fallback = ResolvedPolicy::with_auth(default.clone());
        let mut by_path = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let requirement = policy::resolve(&method, &fallback)
                    .map_or(Requirement::Authenticated, |resolved| resolved.auth);
                by_path.insert(path, requirement);
            }
        }
        Self { by_path, default }
    }

    /// The requirement of the method at `path`.
    fn of(&self, path: &str) -> &Requirement {
        static PUBLIC: Requirement = Requirement::Public;
        if let Some(requirement) = self.by_path.get(path) {
            return requirement;
        }
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if OPEN_SERVICES.contains(&service) {
            &PUBLIC
        } else {
            &self.default
        }
    }
}

/// Server layer: authenticates each call and checks its method's requirement (module docs).
#[derive(Debug, Clone)]
pub(crate) struct AuthenticationLayer {
    requirements: Arc<MethodRequirements>,
    authenticator: Authenticator,
}

impl AuthenticationLayer {
    /// Calls are checked against `requirements`, credentials verified by `authenticator`.
    pub(crate) fn new(requirements: MethodRequirements, authenticator: Authenticator) -> Self {
        Self {
            requirements: Arc::new(requirements),
            authenticator,
        }
    }
}

impl<S> Layer<S> for AuthenticationLayer {
    type Service = Authentication<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authentication {
            inner,
            requirements: Arc::clone(&self.requirements),
            authenticator: self.authenticator.clone(),
        }
    }
}

/// See [`AuthenticationLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Authentication<S> {
    inner: S,
    requirements: Arc<MethodRequirements>,
    authenticator: Authenticator,
}

/// A credential copied out of the request, so the request can change while it is verified.
enum PresentedCredential {
    Bearer(String),
    ApiKey(String),
}

impl PresentedCredential {
    fn of(headers: &HeaderMap) -> Result<Option<Self>, AuthError> {
        Ok(
            Credential::from_headers(headers)?.map(|credential| match credential {
                Credential::Bearer(token) => Self::Bearer(token.to_owned()),
                Credential::ApiKey(key) => Self::ApiKey(key.to_owned()),
            }),
        )
    }

    fn borrow(&self) -> Credential<'_> {
        match self {
            Self::Bearer(token) => Credential::Bearer(token),
            Self::ApiKey(key) => Credential::ApiKey(key),
        }
    }
}

type ResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Authentication<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        remove_identity(request.headers_mut());
        let forwarded = CallerCredential::from_headers(request.headers());
        let requirement = self.requirements.of(request.uri().path()).clone();
        if requirement == Requirement::Public {
            return Box::pin(with_caller_credential(forwarded, self.inner.call(request)));
        }
        // The service that was polled ready handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let verified = match PresentedCredential::of(request.headers()) {
                Ok(Some(presented)) => authenticator.verify(presented.borrow()).await.map(Some),
                Ok(None) => Ok(None),
                Err(err) => Err(err),
            };
            let identity = match verified {
                Err(err) => return Ok(Status::unauthenticated(err.to_string()).into_http()),
                Ok(None) => {
                    return Ok(Status::unauthenticated("missing credentials").into_http());
                }
                Ok(Some(identity)) => identity,
            };
            if !requirement.allows(Some(&identity.roles)) {
                return Ok(Status::permission_denied(format!("requires {requirement}")).into_http());
            }
            set_identity(request.headers_mut(), &identity);
            request.extensions_mut().insert(identity);
            with_caller_credential(forwarded, inner.call(request)).await
        })
    }
}

/// The identity headers, named once (a name given as text is parsed on every use).
static SUBJECT: HeaderName = HeaderName::from_static(identity::SUBJECT);
static ROLES: HeaderName = HeaderName::from_static(identity::ROLES);
static AUTH_METHOD: HeaderName = HeaderName::from_static(identity::AUTH_METHOD);

/// Removes identity metadata the caller set itself.
fn remove_identity(headers: &mut HeaderMap) {
    for name in [&SUBJECT, &ROLES, &AUTH_METHOD] {
        headers.remove(name);
    }
}

/// Sets the identity metadata handlers read.
fn set_identity(headers: &mut HeaderMap, identity: &Identity) {
    let values = [
        (&SUBJECT, identity.subject.as_str()),
        (&AUTH_METHOD, identity.method.as_str()),
    ];
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), value);
        }
    }
    if let Ok(roles) = HeaderValue::from_str(&identity.roles.join(",")) {
        headers.insert(ROLES.clone(), roles);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::testing;

    /// Calls `path` with `headers` through the layer; the answer's gRPC code (`Ok` when the
    /// handler ran) and the subject the handler saw.
    async fn call(path: &str, headers: &[(&str, &str)]) -> (tonic::Code, Option<String>) {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let record = Arc::clone(&seen);
        let inner = tower::service_fn(move |request: http::Request<()>| {
            let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
            *record.lock().unwrap() = Identity::from_metadata(&metadata).map(|i| i.subject);
            async { Ok::<_, std::convert::Infallible>(Status::ok("").into_http()) }
        });
        let layer = AuthenticationLayer::new(
            MethodRequirements::from_pool(
                &crate::descriptors::lean_pool(crate::test_protos::SETS).unwrap(),
                Requirement::Authenticated,
            ),
            testing::authenticator(),
        );
        let mut service = layer.layer(inner);
        let mut request = http::Request::builder().uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = service.call(request.body(()).unwrap()).await.unwrap();
        let code =
            Status::from_header_map(response.headers()).map_or(tonic::Code::Ok, |s| s.code());
        let subject = seen.lock().unwrap().clone();
        (code, subject)
    }

    #[tokio::test]
    async fn callers_are_verified_against_the_method_policy() {
        let get_task = "/protomesh.tasks.v1.TasksService/GetTask";
        let delete_task = "/protomesh.tasks.v1.TasksService/DeleteTask";
        let score = "/protomesh.priority.v1.PriorityService/Score";
        let alice = format!("Bearer {}", testing::token("alice", &["user"]));
        let admin = format!("Bearer {}", testing::token("root", &["admin"]));
        let forged = format!("Bearer {}", testing::forged_token("alice"));

        assert_eq!(call(get_task, &[]).await.0, tonic::Code::Unauthenticated);
        assert_eq!(
            call(
                get_task,
                &[("x-protomesh-subject", "bob"), ("x-protomesh-auth", "jwt")]
            )
            .await
            .0,
            tonic::Code::Unauthenticated,
            "identity metadata alone proves nothing"
        );
        assert_eq!(
            call(get_task, &[("authorization", &forged)]).await.0,
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            call(
                get_task,
                &[("authorization", &alice), ("x-protomesh-subject", "bob")]
            )
            .await,
            (tonic::Code::Ok, Some("alice".to_owned())),
            "the verified subject replaces a claimed one"
        );
        assert_eq!(
            call(delete_task, &[("authorization", &alice)]).await.0,
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            call(delete_task, &[("authorization", &admin)]).await.0,
            tonic::Code::Ok
        );
        assert_eq!(
            call(
                score,
                &[("x-protomesh-subject", "bob"), ("x-protomesh-auth", "jwt")]
            )
            .await,
            (tonic::Code::Ok, None),
            "public methods run, with no identity"
        );
        assert_eq!(
            call("/grpc.health.v1.Health/Check", &[]).await.0,
            tonic::Code::Ok
        );
        assert_eq!(
            call("/unknown.v1.Svc/Method", &[]).await.0,
            tonic::Code::Unauthenticated,
            "methods without descriptors fail closed"
        );
    }
}
