//! The live mesh dashboard, served by the gateway at `/ui/`: a page, a script and a style sheet
//! built into the binary (nothing fetched from elsewhere; a `Content-Security-Policy` keeps it
//! so), and one JSON endpoint for admins, `/ui/api/status`:
//! - every service the gateway knows, routed or not (and why not), with its instances and their
//!   health as Consul has them (every check, not only the passing instances);
//! - the route table;
//! - `gateway_http_requests_total` as the gateway's `/metrics` has it (with `--admin`; the page
//!   turns two readings into per-route rates and errors).
//!
//! The page signs in through the users service's JSON route (or takes a token), polls the status,
//! and follows a project's events live through the WebSocket bridge (`/v1/hub/events`, the token
//! as a subprotocol), resuming with its last cursor when the socket closes.

use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use protomesh_consul::{CheckStatus, QueryOptions, ServiceEntry};
use serde::Serialize;

use crate::gateway::Gateway;
use crate::metrics::GatewayMetrics;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// What the page may load and connect to: this origin only (`'self'` covers its WebSocket).
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// The role the status endpoint requires.
const ADMIN_ROLE: &str = "admin";

/// Longest wait for Consul's answer about one service.
const CONSUL_TIMEOUT: Duration = Duration::from_secs(2);

/// The request counts the dashboard reads, when the gateway records metrics.
#[derive(Clone)]
pub(crate) struct DashboardMetrics(pub(crate) Option<GatewayMetrics>);

/// The dashboard's routes: add them to the gateway's own endpoints.
pub(crate) fn routes(metrics: Option<GatewayMetrics>) -> Router<Gateway> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/api/status",
            get(status).layer(Extension(DashboardMetrics(metrics))),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The status the page shows.
#[derive(Debug, Serialize)]
struct Status {
    services: Vec<ServiceView>,
    routes: Vec<RouteView>,
    /// `gateway_http_requests_total` in the text format; `None` without `--admin`.
    requests: Option<String>,
}

#[derive(Debug, Serialize)]
struct ServiceView {
    name: String,
    /// `routed`, or `unreachable` with the reason.
    state: &'static str,
    reason: Option<String>,
    /// Instances and their health; `None` when Consul could not be asked.
    instances: Option<Vec<InstanceView>>,
    /// Why the instances are unknown.
    instances_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct InstanceView {
    id: String,
    address: String,
    /// The worst of its checks: `passing`, `warning`, `critical` or `maintenance`.
    status: &'static str,
    checks: Vec<CheckView>,
}

#[derive(Debug, Serialize)]
struct CheckView {
    name: String,
    status: &'static str,
    output: String,
}

#[derive(Debug, Serialize)]
struct RouteView {
    method: String,
    path: String,
    service: String,
    rpc: String,
}

fn status_name(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Passing => "passing",
        CheckStatus::Warning => "warning",
        CheckStatus::Critical => "critical",
        CheckStatus::Maintenance => "maintenance",
    }
}

fn instance_view(entry: &ServiceEntry) -> InstanceView {
    InstanceView {
        id: entry.service.id.clone(),
        address: format!("{}:{}", entry.address(), entry.service.port),
        status: status_name(entry.aggregated_status()),
        checks: entry
            .checks
            .iter()
            .map(|check| CheckView {
                name: check.name.clone(),
                status: status_name(check.status),
                output: check.output.chars().take(300).collect(),
            })
            .collect(),
    }
}

/// `/ui/api/status`, for admins.
async fn status(
    State(gateway): State<Gateway>,
    Extension(metrics): Extension<DashboardMetrics>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = gateway.edge.require_role(&headers, ADMIN_ROLE).await {
        return refusal.into_response(false);
    }
    let state = std::sync::Arc::clone(&gateway.state.borrow());
    let mut names: Vec<String> = state.services.keys().cloned().collect();
    names.extend(state.unreachable.keys().cloned());
    names.sort();
    names.dedup();
    let instances = futures::future::join_all(names.iter().map(|name| {
        let consul = gateway.consul.clone();
        async move {
            let Some(consul) = consul else {
                return Err("the gateway has no Consul agent".to_owned());
            };
            let asked = tokio::time::timeout(
                CONSUL_TIMEOUT,
                consul.health_service(name, &QueryOptions::default()),
            )
            .await;
            match asked {
                Ok(Ok(answer)) => Ok(answer.value.iter().map(instance_view).collect()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!(
                    "Consul did not answer within {}",
                    humantime::format_duration(CONSUL_TIMEOUT)
                )),
            }
        }
    }))
    .await;
    let services = names
        .into_iter()
        .zip(instances)
        .map(|(name, instances)| {
            let reason = state.unreachable.get(&name).cloned();
            let (instances, instances_error) = match instances {
                Ok(list) => (Some(list), None),
                Err(err) => (None, Some(err)),
            };
            ServiceView {
                state: if state.services.contains_key(&name) {
                    "routed"
                } else {
                    "unreachable"
                },
                name,
                reason,
                instances,
                instances_error,
            }
        })
        .collect();
    let routes = state
        .table
        .routes()
        .iter()
        .map(|route| RouteView {
            method: route.http_method.to_string(),
            path: route.template.to_string(),
            service: route.service.clone(),
            rpc: route.method.full_name().to_owned(),
        })
        .collect();
    let body = Status {
        services,
        routes,
        requests: metrics.0.map(|m| m.requests_text()),
    };
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
