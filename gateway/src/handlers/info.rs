//! The gateway's own endpoints: `/readyz`, the public `/routes` (each route's template, HTTP
//! method, target gRPC method and its service's coarse state), the admin listener's `/routes`
//! (with policies, the route table's conflicts and errors, and upstream errors) and
//! `/openapi.json`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Serialize;

use crate::discovery::GatewayState;
use crate::gateway::Gateway;
use crate::routes::Route;
use protomesh::policy::ResolvedPolicy;

/// `/readyz`: 200 once the Consul catalog was read, else 503.
pub(crate) async fn readyz(State(gateway): State<Gateway>) -> Response {
    if gateway.current().ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the Consul catalog\n",
        )
            .into_response()
    }
}

/// What both `/routes` show of a route.
#[derive(Serialize)]
struct RouteFields {
    method: String,
    path: String,
    grpc_method: String,
    service: String,
    streaming: bool,
    /// `public`, `authenticated` or `role:a,b` (as `/openapi.json` shows it too).
    auth: String,
}

impl RouteFields {
    fn of(route: &Route, policy: &ResolvedPolicy) -> Self {
        Self {
            method: route.http_method.to_string(),
            path: route.template.to_string(),
            grpc_method: route.method.full_name().to_owned(),
            service: route.service.clone(),
            streaming: route.method.is_server_streaming(),
            auth: policy.auth.to_string(),
        }
    }
}

/// A route as anyone may see it on the public port: no address, no upstream error.
#[derive(Serialize)]
struct PublicRouteView {
    #[serde(flatten)]
    route: RouteFields,
    /// The service's state: `available` or `unavailable`.
    state: &'static str,
}

/// The public `/routes`: the routes, and the state of every service of the catalog.
#[derive(Serialize)]
pub(crate) struct PublicRoutesView {
    routes: Vec<PublicRouteView>,
    /// Consul service → `available` or `unavailable` (its descriptors cannot be fetched now).
    services: std::collections::BTreeMap<String, &'static str>,
}

/// A service's coarse state for the public `/routes`.
fn service_state(state: &GatewayState, service: &str) -> &'static str {
    if state.unreachable.contains_key(service) {
        "unavailable"
    } else {
        "available"
    }
}

pub(crate) async fn routes(State(gateway): State<Gateway>) -> Json<PublicRoutesView> {
    let state = gateway.current();
    let mut services: std::collections::BTreeMap<String, &'static str> = state
        .services
        .keys()
        .map(|name| (name.clone(), service_state(&state, name)))
        .collect();
    for name in state.unreachable.keys() {
        services.insert(name.clone(), "unavailable");
    }
    Json(PublicRoutesView {
        routes: state
            .table
            .routes()
            .iter()
            .map(|r| PublicRouteView {
                route: RouteFields::of(r, &gateway.edge.policy_of(&state, r.grpc_path())),
                state: service_state(&state, &r.service),
            })
            .collect(),
        services,
    })
}

/// A route as operators see it on the admin listener.
#[derive(Serialize)]
struct RouteView {
    #[serde(flatten)]
    route: RouteFields,
    rate_limit_class: String,
}

#[derive(Serialize)]
pub(crate) struct RoutesView {
    routes: Vec<RouteView>,
    conflicts: Vec<String>,
    errors: Vec<String>,
    unreachable: std::collections::BTreeMap<String, String>,
}

pub(crate) async fn admin_routes(State(gateway): State<Gateway>) -> Json<RoutesView> {
    let state = gateway.current();
    Json(RoutesView {
        routes: state
            .table
            .routes()
            .iter()
            .map(|r| {
                let policy = gateway.edge.policy_of(&state, r.grpc_path());
                RouteView {
                    route: RouteFields::of(r, &policy),
                    rate_limit_class: policy.rate_limit_class,
                }
            })
            .collect(),
        conflicts: state
            .table
            .conflicts()
            .iter()
            .map(ToString::to_string)
            .collect(),
        errors: state
            .table
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect(),
        unreachable: state.unreachable.clone(),
    })
}

/// The OpenAPI 3 document of the live routes (built from the same table, so always in sync).
pub(crate) async fn openapi(State(gateway): State<Gateway>) -> Json<serde_json::Value> {
    let state = gateway.current();
    let mut document = crate::openapi::document(
        &state.table,
        &gateway.options.json,
        "protomesh gateway",
        env!("CARGO_PKG_VERSION"),
    );
    let requirements = crate::edge::route_requirements(&gateway.edge, &state, state.table.routes());
    crate::openapi::add_security(&mut document, &requirements);
    Json(document)
}
