//! The edge's refusals ([`crate::edge`]) as answers in the caller's transport: JSON errors with
//! `WWW-Authenticate` on 401 and 403, or trailers-only gRPC statuses (`UNAUTHENTICATED`,
//! `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`); a 429 carries `Retry-After` and the `RateLimit-*`
//! headers either way. Messages say "missing", "invalid" or "expired" credentials and nothing
//! more.

use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};
use http::StatusCode;
use protomesh::auth::AuthError;
use protomesh_data::ratelimit::Decision;
use tonic::Status;

use super::grpc::status_response;
use super::http::HttpError;

/// The realm of the `WWW-Authenticate` challenges.
const REALM: &str = "protomesh";

/// Why a request is refused before it reaches a service.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No credentials (`None`) or bad ones: 401 / `UNAUTHENTICATED`.
    Unauthenticated(Option<AuthError>),
    /// A verified caller without the required role: 403 / `PERMISSION_DENIED`.
    Forbidden,
    /// Over a rate limit: 429 / `RESOURCE_EXHAUSTED`.
    TooManyRequests(Decision),
}

impl Refusal {
    /// The answer, as native gRPC when `grpc`, else as HTTP/JSON.
    pub(crate) fn into_response(self, grpc: bool) -> Response {
        match self {
            Self::Unauthenticated(reason) => unauthenticated(reason, grpc),
            Self::Forbidden => forbidden(grpc),
            Self::TooManyRequests(decision) => too_many(&decision, grpc),
        }
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
        return status_response(&Status::unauthenticated(message));
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
        return status_response(&Status::permission_denied(message));
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
        status_response(&Status::resource_exhausted(message))
    } else {
        HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::ResourceExhausted,
            message,
        )
        .into_response()
    };
    crate::ratelimit::add_headers(decision, response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_missing_credential_gets_a_bare_challenge_and_a_bad_one_invalid_token() {
        let missing = Refusal::Unauthenticated(None).into_response(false);
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()["www-authenticate"],
            "Bearer realm=\"protomesh\""
        );
        let expired = Refusal::Unauthenticated(Some(AuthError::Expired)).into_response(false);
        let challenge = expired.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(challenge.contains("expired credentials"), "{challenge}");
        let grpc = Refusal::Unauthenticated(Some(AuthError::Invalid)).into_response(true);
        assert_eq!(grpc.headers()["grpc-status"], "16");
    }

    #[test]
    fn forbidden_is_403_or_permission_denied() {
        let http = Refusal::Forbidden.into_response(false);
        assert_eq!(http.status(), StatusCode::FORBIDDEN);
        assert!(http.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope"));
        let grpc = Refusal::Forbidden.into_response(true);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "7");
    }
}
