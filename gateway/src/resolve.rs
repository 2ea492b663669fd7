//! The request's context, made once at the front of the pipeline ([`crate::app`]) and handed on
//! in the request's extensions as an `Arc<`[`Resolved`]`>`:
//! - its **request id**: the caller's `x-request-id` when usable, else a new one (the only place
//!   one is made); the span, the logs, the services called and the answer all carry it;
//! - the **gateway state** it is served from (one snapshot for the whole request, so the edge
//!   and the handler see the same routes);
//! - its **target** ([`Target`]): the route it matches (with the path's bindings), or the
//!   native gRPC service it calls, or why it has none. The route table is looked up here and
//!   nowhere else; the trace span, the metrics, the edge policies and the handlers read this.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use protomesh::telemetry::REQUEST_ID_HEADER_NAME;
use tokio::sync::watch;

use crate::discovery::GatewayState;
use crate::routes::{Lookup, Route};
use crate::template::Binding;
use crate::upgrade;

/// Longest request id taken from a caller; a longer (or empty, or non-text) one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The server reflection services the gateway answers itself (never forwarded).
pub(crate) const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// What a request calls.
#[derive(Debug)]
pub(crate) enum Target {
    /// A transcoded route, and the values its template bound.
    Route {
        /// The route.
        route: Arc<Route>,
        /// The path's values, by field path.
        bindings: Vec<Binding>,
    },
    /// No route for this HTTP request: 405 when `allowed` lists the methods that have one for
    /// its path, else 404.
    NoRoute {
        /// Methods with a route for the path (empty: none).
        allowed: Vec<Method>,
    },
    /// Native gRPC to a service of the mesh, which the Consul service `consul` serves.
    Grpc {
        /// The Consul service serving it.
        consul: String,
    },
    /// Native gRPC server reflection, answered by the gateway.
    Reflection,
    /// Native gRPC to a service no service of the mesh serves.
    UnknownGrpc {
        /// The gRPC service named by the path.
        service: String,
    },
    /// Native gRPC with a path that is not `/pkg.Service/Method`.
    MalformedGrpc,
}

impl Target {
    /// The target of a request with `method`, `path` and `headers` in `state`.
    pub(crate) fn of(
        state: &GatewayState,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Self {
        if is_grpc(headers) {
            return Self::of_grpc(state, path);
        }
        if upgrade::is_upgrade(method, headers) {
            if let Some((route, bindings)) = state.table.lookup_streaming(path) {
                return Self::Route {
                    route: Arc::clone(route),
                    bindings,
                };
            }
        }
        match state.table.lookup(method, path) {
            Lookup::Found(route, bindings) => Self::Route {
                route: Arc::clone(route),
                bindings,
            },
            Lookup::MethodNotAllowed(allowed) => Self::NoRoute { allowed },
            // A browser's preflight of a gRPC-Web call: a gRPC method's path is POSTed to.
            Lookup::NotFound
                if method == Method::OPTIONS && Self::of_grpc(state, path).is_served() =>
            {
                Self::NoRoute {
                    allowed: vec![Method::POST],
                }
            }
            Lookup::NotFound => Self::NoRoute {
                allowed: Vec::new(),
            },
        }
    }

    /// The target of a native gRPC call to `path` in `state`.
    pub(crate) fn of_grpc(state: &GatewayState, path: &str) -> Self {
        let Some(service) = grpc_service_of(path) else {
            return Self::MalformedGrpc;
        };
        if REFLECTION_SERVICES.contains(&service) {
            return Self::Reflection;
        }
        match state.grpc_services.get(service) {
            Some(consul) => Self::Grpc {
                consul: consul.clone(),
            },
            None => Self::UnknownGrpc {
                service: service.to_owned(),
            },
        }
    }

    /// Whether a native gRPC target is answered (by a service or by the gateway's reflection).
    fn is_served(&self) -> bool {
        matches!(self, Self::Grpc { .. } | Self::Reflection)
    }

    /// Whether the request is native gRPC (answered in gRPC, errors included).
    pub(crate) fn is_grpc(&self) -> bool {
        !matches!(self, Self::Route { .. } | Self::NoRoute { .. })
    }
}

/// A request's context (see the [module](self)).
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The state the request is served from.
    pub(crate) state: Arc<GatewayState>,
    /// What it calls.
    pub(crate) target: Target,
    /// Its request id.
    pub(crate) request_id: HeaderValue,
}

impl Resolved {
    /// The context of `request`: the one the front of the pipeline resolved, or (for a router
    /// used without it) resolved now.
    pub(crate) fn of(request: &Request, state: &watch::Receiver<Arc<GatewayState>>) -> Arc<Self> {
        if let Some(resolved) = request.extensions().get::<Arc<Self>>() {
            return Arc::clone(resolved);
        }
        Arc::new(Self::new(request, Arc::clone(&state.borrow())))
    }

    fn new(request: &Request, state: Arc<GatewayState>) -> Self {
        let target = Target::of(
            &state,
            request.method(),
            request.uri().path(),
            request.headers(),
        );
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER_NAME)
            .filter(|id| usable_request_id(id))
            .cloned()
            .unwrap_or_else(new_request_id);
        Self {
            state,
            target,
            request_id,
        }
    }
}

/// The front of the pipeline: gives `request` a usable `x-request-id` and its context.
pub(crate) async fn resolve(
    State(state): State<watch::Receiver<Arc<GatewayState>>>,
    request: Request,
    next: Next,
) -> Response {
    // A browser's WebSocket carries its credential as a subprotocol, for the edge to verify.
    let (mut parts, body) = request.into_parts();
    upgrade::credential_from_protocols(&parts.method, &mut parts.headers);
    let mut request = Request::from_parts(parts, body);
    let resolved = Resolved::new(&request, Arc::clone(&state.borrow()));
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER_NAME, resolved.request_id.clone());
    request.extensions_mut().insert(Arc::new(resolved));
    next.run(request).await
}

fn usable_request_id(id: &HeaderValue) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.to_str().is_ok()
}

/// A new request id: 32 random hex digits (written by hand: every request without an id makes
/// one, and `format!` costs several times more).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let digits: Vec<u8> = (0..32)
        .rev()
        .map(|nibble| HEX[((id >> (nibble * 4)) & 0xf) as usize])
        .collect();
    HeaderValue::from_maybe_shared(bytes::Bytes::from(digits))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Whether a request is native gRPC, by its `content-type`: `application/grpc`, optionally
/// followed by `+codec` or parameters. gRPC-Web (`application/grpc-web…`) is not.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

/// The gRPC service of a method path: `pkg.Service` for `/pkg.Service/Method`; `None` when the
/// path is not of that form.
fn grpc_service_of(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PRIORITY: &str = "protomesh.priority.v1.PriorityService";

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut request =
            http::Request::builder().uri("/protomesh.priority.v1.PriorityService/Score");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn a_request_id_is_kept_or_made() {
        let state = Arc::new(GatewayState::default());
        let kept = Resolved::new(&request(&[("x-request-id", "abc-1")]), Arc::clone(&state));
        assert_eq!(kept.request_id, "abc-1");

        for bad in [String::new(), "x".repeat(MAX_REQUEST_ID + 1)] {
            let made = Resolved::new(&request(&[("x-request-id", &bad)]), Arc::clone(&state));
            let made = made.request_id.to_str().unwrap();
            assert_eq!(made.len(), 32, "{made}");
            assert!(made.chars().all(|c| c.is_ascii_hexdigit()));
        }
        let ids: std::collections::HashSet<_> = (0..64).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 64, "every id is new");
    }

    #[test]
    fn grpc_content_types_are_recognised_and_grpc_web_is_not() {
        let with = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc(&headers)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("application/grpc;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/grpc-web+proto"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn the_service_is_read_from_the_method_path() {
        assert_eq!(
            grpc_service_of("/protomesh.priority.v1.PriorityService/Score"),
            Some(PRIORITY)
        );
        assert_eq!(grpc_service_of("/Bare/Method"), Some("Bare"));
        for bad in ["", "/", "/pkg.S", "/pkg.S/", "//M", "pkg.S/M", "/pkg.S/M/x"] {
            assert_eq!(grpc_service_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_targets_are_known_services_reflection_or_unknown() {
        let mut state = GatewayState::default();
        state
            .grpc_services
            .insert(PRIORITY.to_owned(), "priority".to_owned());
        let target = |path: &str| Target::of_grpc(&state, path);
        assert!(matches!(
            target("/protomesh.priority.v1.PriorityService/Score"),
            Target::Grpc { ref consul, .. } if consul == "priority"
        ));
        assert!(matches!(
            target("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Target::Reflection
        ));
        assert!(matches!(
            target("/acme.Nope/Call"),
            Target::UnknownGrpc { ref service } if service == "acme.Nope"
        ));
        assert!(matches!(target("/not-a-method"), Target::MalformedGrpc));
        assert!(target("/acme.Nope/Call").is_grpc());
    }
}
