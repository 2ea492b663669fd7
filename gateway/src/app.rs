//! The gateway's request pipeline, composed here and nowhere else. A request meets, outermost
//! first:
//!
//! 1. **resolve** ([`crate::resolve`]): the request id (the caller's or a new one) and the
//!    request's target — its route and path bindings, or the native gRPC service it calls —
//!    looked up once in one snapshot of the gateway state, and handed on in the request's
//!    extensions. First, because every layer below reads them: the span carries the id and the
//!    route, the metrics label by the route, the edge takes the route's policy and the handler
//!    calls it, and none of them looks the route up again.
//! 2. **metrics** ([`crate::metrics::record`], only with an admin listener): RED per route
//!    template. Outside everything else below, so a request refused by the edge, or answered by
//!    the gateway's own endpoints, is counted and timed too.
//! 3. **trace** ([`crate::trace::HttpTraceLayer`]): one server span per request, child of the
//!    caller's `traceparent`; outside the edge and the handler, so the mesh call the handler makes
//!    (and a refusal) sits inside it. The probes are not traced.
//! 4. **router**: the gateway's own endpoints (`/healthz`, `/readyz`, `/routes`,
//!    `/openapi.json`; [`crate::handlers::info`]; the dashboard under `/ui/`,
//!    [`crate::dashboard`]) answer here, before any edge policy; everything
//!    else falls back to the routed requests below.
//! 5. **edge** ([`crate::edge`]): CORS, reserved headers, authentication, authorization, rate
//!    limits — only for routed requests (HTTP and native gRPC alike), after routing so a request
//!    with no route passes untouched to its 404/405/`UNIMPLEMENTED`.
//! 6. **handler** ([`crate::handlers::transcoded`]): transcodes an HTTP request and calls the
//!    service through the mesh client, or forwards a native gRPC one ([`crate::grpc_proxy`]).
//!
//! In front of all of them, gRPC-Web (binary and `-text`, from browsers) is turned into native
//! gRPC, and its answer back into gRPC-Web ([`crate::grpc_web`]), so every layer above
//! treats it as the native gRPC it carries.
//!
//! Every refusal and error on the way becomes an answer in [`crate::errors`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use protomesh::admin::{AdminError, AdminHandle, AdminServer, AdminState};
use protomesh::metrics::Metrics;

use crate::gateway::Gateway;
use crate::handlers::{info, transcoded};
use crate::metrics::{watch_rate_limits, ConnectionCollector, GatewayMetrics};
use crate::resolve::{resolve, Resolved};
use crate::trace::HttpTraceLayer;

/// The gateway's public router, recording no metrics (see [`app_with_admin`] for those).
pub fn app(gateway: Gateway) -> Router {
    pipeline(gateway, None)
}

/// The admin listener's `/routes` (`--admin`, never the public port): every route with its
/// policy, the route table's conflicts and errors, and why each unreachable service is
/// (upstream errors, which may name internal addresses).
pub fn admin_app(gateway: Gateway) -> Router {
    Router::new()
        .route("/routes", get(info::admin_routes))
        .with_state(gateway)
}

/// The gateway's public router and, when `admin` is set, its admin listener there: the router
/// then records the `gateway_http_*` metrics, and the listener serves `/metrics` (with the mesh
/// client's state, the listener's connections and the rate-limit rejections), `/healthz`,
/// `/readyz` (ready once the gateway has read the Consul catalog), `/mesh` and the detailed
/// `/routes`, until the returned handle is dropped. Without `admin`, nothing is recorded.
pub async fn app_with_admin(
    admin: Option<SocketAddr>,
    gateway: Gateway,
) -> Result<(Router, Option<AdminHandle>), AdminError> {
    let Some(addr) = admin else {
        return Ok((app(gateway), None));
    };
    let server = AdminServer::bind(addr).await?;
    let metrics = Metrics::new();
    metrics.watch_mesh(gateway.mesh.clone());
    let limits = gateway.clone();
    watch_rate_limits(&metrics, move || limits.rate_limit_rejections());
    metrics.register_collector(ConnectionCollector);
    let http = GatewayMetrics::register(&metrics);
    let state = gateway.state.clone();
    let admin = AdminState::new(Some(gateway.mesh.clone()))
        .with_metrics(metrics)
        // The detailed routes (addresses, upstream errors) are for operators only.
        .with_routes(admin_app(gateway.clone()))
        .with_readiness(move || state.borrow().ready);
    let handle = server.spawn(admin);
    tracing::info!(admin = %handle.local_addr(), "admin listener: /healthz /readyz /mesh /metrics /routes");
    Ok((pipeline(gateway, Some(http)), Some(handle)))
}

/// The pipeline of the [module](self), in one place. `Router::layer` wraps what is above it,
/// so the layers read bottom-up: the last one added is the one a request meets first.
fn pipeline(gateway: Gateway, metrics: Option<GatewayMetrics>) -> Router {
    let state = gateway.state.clone();
    // 5 and 6: the edge in front of the handler, for routed requests only.
    let routed = transcoded::handle.layer(from_fn_with_state(gateway.clone(), edge_policies));
    // 4: the gateway's own endpoints, then everything else.
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(info::readyz))
        .route("/routes", get(info::routes))
        .route("/openapi.json", get(info::openapi))
        .merge(crate::dashboard::routes(metrics.clone()))
        .fallback(routed)
        .with_state(gateway)
        // 3: the span.
        .layer(HttpTraceLayer);
    // 2: the metrics, when recorded.
    let router = match metrics {
        Some(metrics) => router.layer(from_fn_with_state(metrics, crate::metrics::record)),
        None => router,
    };
    // 1: the request id and the target.
    let router = router.layer(from_fn_with_state(state, resolve));
    // 0: gRPC-Web (`application/grpc-web`, `+proto`, `-text`) becomes native gRPC before anything
    // looks at the request, and its answer gRPC-Web again (trailers in the body) after.
    router.layer(axum::middleware::from_fn(crate::grpc_web::translate))
}

/// The edge policies ([`crate::edge`]) in front of every routed request.
async fn edge_policies(State(gateway): State<Gateway>, request: Request, next: Next) -> Response {
    let resolved: Arc<Resolved> = Resolved::of(&request, &gateway.state);
    gateway.edge.enforce(&resolved, request, next).await
}

#[cfg(test)]
mod tests {
    //! The whole pipeline, driven with `oneshot`, routing to an in-process priority server found
    //! through a static list: no Consul agent.
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use axum::body::Body;
    use http_body_util::BodyExt;

    use protomesh::client::{Mesh, MethodTable, StaticDiscovery};
    use protomesh_priority::proto::protomesh::priority::v1::{
        priority_service_client::PriorityServiceClient,
        priority_service_server::{PriorityService, PriorityServiceServer},
        PrioritizeRequest, PrioritizeResponse, ScoreRequest, ScoreResponse,
    };
    use tokio::sync::watch;
    use tower::ServiceExt;

    use super::*;

    use crate::gateway::GatewayOptions;
    use crate::test_support::{priority_descriptors, state_with, PRIORITY};

    /// Scores as the priority service does, noting the request id of every call it gets.
    #[derive(Default, Clone)]
    struct Scorer {
        request_ids: Arc<Mutex<Vec<String>>>,
    }

    #[tonic::async_trait]
    impl PriorityService for Scorer {
        async fn score(
            &self,
            request: tonic::Request<ScoreRequest>,
        ) -> Result<tonic::Response<ScoreResponse>, tonic::Status> {
            let id = request
                .metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            self.request_ids.lock().unwrap().push(id);
            let request = request.into_inner();
            Ok(tonic::Response::new(ScoreResponse {
                title: request.title,
                score: request.urgency * request.impact,
                level: 3,
            }))
        }

        async fn prioritize(
            &self,
            _request: tonic::Request<PrioritizeRequest>,
        ) -> Result<tonic::Response<PrioritizeResponse>, tonic::Status> {
            Ok(tonic::Response::new(PrioritizeResponse::default()))
        }
    }

    /// A priority server on a free port.
    async fn priority_server(scorer: Scorer) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PriorityServiceServer::new(scorer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// The app routing the Consul service `priority` to `addr`, with `options`.
    fn gateway_app(addr: std::net::SocketAddr, options: GatewayOptions) -> Router {
        let state = state_with(&[("priority", priority_descriptors())]);
        let (_, state) = watch::channel(Arc::new(state));
        let methods = MethodTable::from_descriptor_sets(crate::test_support::SETS).unwrap();
        let mesh = Mesh::with_discovery(StaticDiscovery::new().with("priority", [addr]), methods);
        app(Gateway::new(mesh, state, options))
    }

    fn post(path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut request = http::Request::builder().method("POST").uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::from(body.to_owned())).unwrap()
    }

    async fn json(response: Response) -> serde_json::Value {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    const SCORE: &str = r#"{"title":"ship it","urgency":9,"impact":8}"#;

    #[tokio::test]
    async fn a_route_reaches_its_static_backend_with_the_request_id() {
        let scorer = Scorer::default();
        let app = gateway_app(
            priority_server(scorer.clone()).await,
            GatewayOptions::default(),
        );
        let response = app
            .oneshot(post(
                "/v1/priority:score",
                &[("x-request-id", "req-1")],
                SCORE,
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(response.headers()["x-request-id"], "req-1");
        assert_eq!(
            json(response).await,
            serde_json::json!({"title": "ship it", "score": 72, "level": "LEVEL_HIGH"})
        );
        assert_eq!(*scorer.request_ids.lock().unwrap(), ["req-1"]);
    }

    #[tokio::test]
    async fn native_grpc_goes_through_the_same_pipeline() {
        let app = gateway_app(
            priority_server(Scorer::default()).await,
            GatewayOptions::default(),
        );
        let mut client = PriorityServiceClient::new(app);
        let answer = client
            .score(ScoreRequest {
                title: "t".into(),
                urgency: 3,
                impact: 4,
            })
            .await
            .unwrap();
        assert_eq!(answer.into_inner().score, 12);
    }

    #[tokio::test]
    async fn refusals_and_unrouted_requests_are_answered_before_the_backend() {
        let scorer = Scorer::default();
        let mut options = GatewayOptions::default();
        options.edge.access.overrides =
            vec![format!("{PRIORITY}/Score=role:admin").parse().unwrap()];
        let app = gateway_app(priority_server(scorer.clone()).await, options);

        // The route now needs a role: no credentials is 401 with a bare challenge.
        let response = app
            .clone()
            .oneshot(post("/v1/priority:score", &[], SCORE))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"protomesh\""
        );
        assert_eq!(json(response).await["message"], "missing credentials");

        // A credential that is no token: 401, invalid.
        let response = app
            .clone()
            .oneshot(post(
                "/v1/priority:score",
                &[("authorization", "Bearer not-a-token")],
                SCORE,
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));

        // A known path with another method: 405 naming the allowed one, with a request id.
        let request = http::Request::builder()
            .uri("/v1/priority:score")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "POST");
        assert_eq!(response.headers()["x-request-id"].len(), 32);

        // No route: 404.
        let response = app
            .clone()
            .oneshot(post("/v1/nowhere", &[], "{}"))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
        assert_eq!(json(response).await["code"], 5);

        assert!(scorer.request_ids.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_gateway_s_own_endpoints_answer_outside_the_edge() {
        let mut options = GatewayOptions::default();
        // Even with every route closed, `/routes` answers.
        options.edge.access.overrides = vec![format!("{PRIORITY}=role:admin").parse().unwrap()];
        let app = gateway_app(priority_server(Scorer::default()).await, options);
        let request = http::Request::builder()
            .uri("/routes")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        let routes = json(response).await;
        assert_eq!(routes["services"]["priority"], "available");
        assert!(routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == "/v1/priority:score" && r["auth"] == "role:admin"));
    }

    /// A gRPC-Web message frame: flag 0, the length, the message.
    fn grpc_web_frame(message: &impl prost::Message) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&bytes);
        frame
    }

    /// The message frames and the trailers (the frame flagged 0x80) of a gRPC-Web body.
    fn grpc_web_frames(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
        let (mut messages, mut trailers) = (Vec::new(), String::new());
        while body.len() >= 5 {
            let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
            let payload = body[5..5 + length].to_vec();
            if body[0] & 0x80 != 0 {
                trailers = String::from_utf8(payload).unwrap();
            } else {
                messages.push(payload);
            }
            body = &body[5 + length..];
        }
        (messages, trailers)
    }

    fn grpc_web_request(content_type: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Request {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("/{PRIORITY}/Score"))
            .header("content-type", content_type)
            .header("x-grpc-web", "1");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn grpc_web_calls_are_answered_in_grpc_web_binary_and_text() {
        use base64::Engine;
        use prost::Message;
        let app = gateway_app(
            priority_server(Scorer::default()).await,
            GatewayOptions::default(),
        );
        let request = ScoreRequest {
            title: "web".into(),
            urgency: 2,
            impact: 5,
        };
        for content_type in ["application/grpc-web", "application/grpc-web+proto"] {
            let response = app
                .clone()
                .oneshot(grpc_web_request(
                    content_type,
                    grpc_web_frame(&request),
                    &[],
                ))
                .await
                .unwrap();
            assert_eq!(response.status(), http::StatusCode::OK);
            assert!(response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/grpc-web"));
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let (messages, trailers) = grpc_web_frames(&body);
            assert_eq!(messages.len(), 1);
            assert_eq!(ScoreResponse::decode(&messages[0][..]).unwrap().score, 10);
            assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
        }

        // The text form: base64 both ways.
        let engine = base64::engine::general_purpose::STANDARD;
        let body = engine.encode(grpc_web_frame(&request)).into_bytes();
        let response = app
            .clone()
            .oneshot(grpc_web_request(
                "application/grpc-web-text",
                body,
                // As the grpc-web client sends it.
                &[("accept", "application/grpc-web-text")],
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web-text"));
        let text = response.into_body().collect().await.unwrap().to_bytes();
        // Each chunk is encoded on its own (padding and all).
        let mut decoded = Vec::new();
        for chunk in String::from_utf8(text.to_vec())
            .unwrap()
            .split_inclusive('=')
        {
            decoded.extend(
                engine
                    .decode(chunk.trim_start_matches('='))
                    .unwrap_or_default(),
            );
        }
        let (messages, trailers) = grpc_web_frames(&decoded);
        assert_eq!(ScoreResponse::decode(&messages[0][..]).unwrap().score, 10);
        assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    }

    #[tokio::test]
    async fn grpc_web_refusals_and_errors_come_back_as_grpc_statuses_and_preflights_are_answered() {
        let mut options = GatewayOptions::default();
        options.edge.access.overrides =
            vec![format!("{PRIORITY}/Score=role:admin").parse().unwrap()];
        options.edge.cors = crate::cors::CorsConfig::with_origins(&["https://app.example".into()]);
        let app = gateway_app(priority_server(Scorer::default()).await, options);
        let request = ScoreRequest::default();
        let response = app
            .clone()
            .oneshot(grpc_web_request(
                "application/grpc-web+proto",
                grpc_web_frame(&request),
                &[("origin", "https://app.example")],
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        // A trailers-only answer: the status in the headers, readable by the page.
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let (_, trailers) = grpc_web_frames(&body);
        let status = headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| trailers.clone());
        assert!(status.contains("16"), "{headers:?} {trailers:?}");
        assert!(headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("grpc-status"));

        // The browser's preflight for a gRPC method's path: POST, with the gRPC-Web headers.
        let preflight = http::Request::builder()
            .method("OPTIONS")
            .uri(format!("/{PRIORITY}/Score"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,x-user-agent,authorization",
            )
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(preflight).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::NO_CONTENT);
        assert_eq!(response.headers()["access-control-allow-methods"], "POST");
        let allowed = response.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_owned();
        for header in ["x-grpc-web", "x-user-agent", "authorization"] {
            assert!(allowed.contains(header), "{allowed}");
        }
    }
}
