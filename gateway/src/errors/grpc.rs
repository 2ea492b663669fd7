//! gRPC error answers: trailers-only responses (HTTP 200, `content-type: application/grpc`,
//! `grpc-status` and a percent-encoded `grpc-message` in the headers), the message capped as the
//! services' runtime caps theirs ([`protomesh::server::message_limit`]).

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderName, HeaderValue};
use protomesh::server::message_limit::MAX_GRPC_MESSAGE;
use tonic::Status;

/// A trailers-only gRPC answer carrying `status`: HTTP 200, `content-type: application/grpc`,
/// `grpc-status`, and `grpc-message` percent-encoded as the gRPC spec asks (plus the status's
/// details and metadata, if any).
pub(crate) fn status_response(status: &Status) -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if status.add_header(headers).is_err() {
        // Only metadata with bytes no header may carry can fail; answer with the code alone.
        headers.insert(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(status.code() as i32),
        );
    }
    protomesh::server::message_limit::cap_grpc_message(headers, MAX_GRPC_MESSAGE);
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn status_responses_are_trailers_only_with_a_percent_encoded_message() {
        let response = status_response(&Status::unimplemented("unknown service a.B: 100% ünknown"));
        assert_eq!(response.status(), http::StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "12");
        // tonic encodes spaces too, which the spec allows (receivers decode any `%XX`).
        assert_eq!(
            headers["grpc-message"],
            "unknown%20service%20a.B:%20100%25%20%C3%BCnknown"
        );
        let status = Status::from_header_map(headers).unwrap();
        assert_eq!(status.message(), "unknown service a.B: 100% ünknown");
    }
}
