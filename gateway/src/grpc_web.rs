//! gRPC-Web from browsers (`application/grpc-web`, `+proto`, `-text`, `-text+proto`; unary and
//! server-streaming calls): turned into native gRPC before the pipeline looks at the request, and
//! its answer back into gRPC-Web — trailers in the body's last frame, base64 for `-text` — by
//! `tonic-web`. Every other request passes untouched (tonic-web alone would refuse HTTP/1.1
//! requests that are not gRPC-Web). CORS for these calls is the edge's, as for any request.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::header;
use tonic_web::GrpcWebLayer;
use tower::{Layer, ServiceBuilder, ServiceExt};

/// Whether a request is gRPC-Web, by its `content-type`.
fn is_grpc_web(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc-web"))
}

/// The middleware (see the [module](self)).
pub(crate) async fn translate(request: Request, next: Next) -> Response {
    if !is_grpc_web(&request) {
        return next.run(request).await;
    }
    let service = ServiceBuilder::new()
        .map_request(|request: http::Request<tonic::body::Body>| request.map(axum::body::Body::new))
        .service(next);
    match GrpcWebLayer::new().layer(service).oneshot(request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(never) => match never {},
    }
}
