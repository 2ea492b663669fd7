//! Cross-origin requests from browsers (CORS), per configuration: the origins allowed
//! (`--cors-origin`, or `*` for any), how long a browser may cache a preflight
//! (`--cors-max-age`), and the request headers a page may send.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by the
//!   gateway, `204`, without authentication: the methods allowed are those the route table has
//!   for the path (`POST` for a gRPC method's path, which gRPC-Web clients call); the requested headers are echoed when allowed (the ones listed in
//!   [`CorsConfig::allowed_headers`], and the CORS-safelisted ones).
//! - Every other answer gets `Access-Control-Allow-Origin` (and `Access-Control-Expose-Headers`)
//!   only when the request's `Origin` is allowed, and `Vary: Origin` always (CORS enabled).
//!
//! The gateway authenticates by header, never by cookie, so it never sends
//! `Access-Control-Allow-Credentials`.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Headers a page may read in an answer besides the safelisted ones.
const EXPOSED_HEADERS: &str = "x-request-id, ratelimit-limit, ratelimit-remaining, \
                               ratelimit-reset, retry-after, www-authenticate, grpc-status, \
                               grpc-message, grpc-status-details-bin";

/// Request headers a browser sends without asking (the CORS-safelisted request headers).
const SAFELISTED: [&str; 4] = [
    "accept",
    "accept-language",
    "content-language",
    "content-type",
];

/// Which origins may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// None: CORS is off (no CORS header is ever sent).
    #[default]
    None,
    /// Any origin (`*`).
    Any,
    /// These origins exactly (`https://app.example.com`).
    List(Vec<String>),
}

/// The CORS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Which origins may call.
    pub origins: AllowedOrigins,
    /// How long a browser may cache a preflight answer.
    pub max_age: Duration,
    /// Request headers a page may send (lowercase), besides the safelisted ones.
    pub allowed_headers: Vec<HeaderName>,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            origins: AllowedOrigins::None,
            max_age: Duration::from_secs(600),
            allowed_headers: [
                "authorization",
                "x-api-key",
                "x-request-id",
                "grpc-timeout",
                "traceparent",
                "tracestate",
                // gRPC-Web clients send these.
                "x-grpc-web",
                "x-user-agent",
            ]
            .into_iter()
            .map(HeaderName::from_static)
            .collect(),
        }
    }
}

impl CorsConfig {
    /// The configuration for `--cors-origin` values: `*` anywhere means any origin; none means
    /// CORS is off.
    pub fn with_origins(origins: &[String]) -> Self {
        let origins = if origins.iter().any(|o| o == "*") {
            AllowedOrigins::Any
        } else if origins.is_empty() {
            AllowedOrigins::None
        } else {
            AllowedOrigins::List(
                origins
                    .iter()
                    .map(|o| o.trim_end_matches('/').to_owned())
                    .collect(),
            )
        };
        Self {
            origins,
            ..Self::default()
        }
    }

    /// Whether CORS is on.
    pub(crate) fn is_enabled(&self) -> bool {
        self.origins != AllowedOrigins::None
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
    pub(crate) fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            AllowedOrigins::None => None,
            AllowedOrigins::Any => Some(HeaderValue::from_static("*")),
            AllowedOrigins::List(list) => {
                let origin_text = origin.to_str().ok()?;
                list.iter()
                    .any(|allowed| allowed == origin_text)
                    .then(|| origin.clone())
            }
        }
    }

    /// Whether `headers` are those of a preflight request.
    pub(crate) fn is_preflight(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.is_enabled()
            && method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight with `headers` for a path the routes allow `methods` on.
    pub(crate) fn preflight(&self, headers: &HeaderMap, methods: &[Method]) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        let Some(allow_origin) = headers
            .get(header::ORIGIN)
            .and_then(|origin| self.allow_origin(origin))
        else {
            return response;
        };
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        let methods = methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(value) = HeaderValue::from_str(&methods) {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, value);
        }
        let requested: Vec<String> = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .filter(|h| {
                SAFELISTED.contains(&h.as_str())
                    || self.allowed_headers.iter().any(|a| a.as_str() == h)
            })
            .collect();
        if !requested.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&requested.join(", ")) {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
            }
        }
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(self.max_age.as_secs()),
        );
        response
    }

    /// Adds the CORS headers of an answer to a request from `origin` (if any) to `headers`.
    pub(crate) fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if !self.is_enabled() {
            return;
        }
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        if let Some(allow_origin) = origin.and_then(|origin| self.allow_origin(origin)) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED_HEADERS),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn only_listed_origins_are_allowed() {
        let cors = CorsConfig::with_origins(&["https://app.example.com/".to_owned()]);
        let allowed = HeaderValue::from_static("https://app.example.com");
        assert_eq!(cors.allow_origin(&allowed), Some(allowed.clone()));
        assert_eq!(
            cors.allow_origin(&HeaderValue::from_static("https://evil.example.com")),
            None
        );
        let any = CorsConfig::with_origins(&["*".to_owned()]);
        assert_eq!(any.allow_origin(&allowed).unwrap(), "*");
        assert!(!CorsConfig::with_origins(&[]).is_enabled());
    }

    #[test]
    fn a_preflight_lists_the_methods_and_echoes_allowed_headers() {
        let cors = CorsConfig::with_origins(&["https://app.example.com".to_owned()]);
        let headers = request(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Authorization, Content-Type, X-Secret",
            ),
        ]);
        assert!(cors.is_preflight(&Method::OPTIONS, &headers));
        let response = cors.preflight(&headers, &[Method::GET, Method::POST]);
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let out = response.headers();
        assert_eq!(
            out["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(out["access-control-allow-methods"], "GET, POST");
        assert_eq!(
            out["access-control-allow-headers"],
            "authorization, content-type"
        );
        assert_eq!(out["access-control-max-age"], "600");

        let stranger = request(&[
            ("origin", "https://evil.example.com"),
            ("access-control-request-method", "POST"),
        ]);
        let response = cors.preflight(&stranger, &[Method::POST]);
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
    }
}
