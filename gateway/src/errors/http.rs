//! HTTP error answers: a gRPC status becomes the HTTP code of the standard table (the one
//! grpc-gateway and Envoy use) and a JSON body `{"code": <gRPC code>, "message": "...",
//! "details": [...]}`, its `google.rpc.Status` details decoded to JSON (`{"@type": ..., ...}`);
//! errors the gateway makes itself (no route, wrong method, body too big, bad JSON) use the same
//! body.
//!
//! An upstream `RESOURCE_EXHAUSTED` (429) also carries `Retry-After`: the status's `retry-after`
//! metadata, else its `google.rpc.RetryInfo` delay (whole seconds, rounded up, at least 1); and
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` when the service sent them as
//! `ratelimit-*` metadata (the users service does for its login limits).

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, StatusCode};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde::Serialize;

/// The HTTP status for a gRPC status code.
pub(crate) fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        // nginx's "client closed request": the caller went away.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON error body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ErrorBody {
    /// The gRPC status code, as a number.
    pub(crate) code: i32,
    /// What went wrong.
    pub(crate) message: String,
    /// The status details (`google.protobuf.Any` in JSON form), possibly empty.
    pub(crate) details: Vec<serde_json::Value>,
}

/// An error ready to send: HTTP status, extra headers, JSON body.
#[derive(Debug, Clone)]
pub(crate) struct HttpError {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// Headers to add (`Allow` for 405, say).
    pub(crate) headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The body.
    pub(crate) body: ErrorBody,
}

impl HttpError {
    /// An error of the gateway's own, with the gRPC `code` its body reports.
    pub(crate) fn new(status: StatusCode, code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: ErrorBody {
                code: code as i32,
                message: message.into(),
                details: Vec::new(),
            },
        }
    }

    /// No route for the path.
    pub(crate) fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            tonic::Code::NotFound,
            format!("no route for path {path}"),
        )
    }

    /// A route exists for the path, but not for this method; `allow` lists the methods that
    /// have one.
    pub(crate) fn method_not_allowed(
        method: &http::Method,
        path: &str,
        allow: &[http::Method],
    ) -> Self {
        let allowed = allow
            .iter()
            .map(http::Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let mut error = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            tonic::Code::Unimplemented,
            format!("method {method} not allowed for path {path}; allowed: {allowed}"),
        );
        if let Ok(value) = HeaderValue::from_str(&allowed) {
            error.headers.push((header::ALLOW, value));
        }
        error
    }

    /// The body is larger than `limit` bytes.
    pub(crate) fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::ResourceExhausted,
            format!("request body larger than the limit of {limit} bytes"),
        )
    }

    /// The request body did not arrive within `limit`.
    pub(crate) fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            tonic::Code::DeadlineExceeded,
            format!("request body not received within {limit:?}"),
        )
    }

    /// The request cannot be turned into the method's request message.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            message,
        )
    }

    /// The request names a field wrongly: 400 with a `google.rpc.BadRequest` detail naming it.
    pub(crate) fn bad_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut error = Self::bad_request(message.clone());
        error.body.details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": field, "description": message }],
        }));
        error
    }

    /// A gRPC status from upstream (or from the mesh client), its details decoded with the
    /// messages `pool` knows.
    /// A `RESOURCE_EXHAUSTED` status also gets the [`rate_limit_headers`].
    pub(crate) fn from_status(status: &tonic::Status, pool: &DescriptorPool) -> Self {
        let headers = if status.code() == tonic::Code::ResourceExhausted {
            rate_limit_headers(status)
        } else {
            Vec::new()
        };
        Self {
            status: http_status(status.code()),
            headers,
            body: ErrorBody {
                code: status.code() as i32,
                message: status.message().to_owned(),
                details: decode_details(status.details(), pool),
            },
        }
    }

    /// The JSON body, encoded.
    pub(crate) fn body_bytes(&self) -> Bytes {
        serde_json::to_vec(&self.body)
            .map(Bytes::from)
            .unwrap_or_else(|_| {
                Bytes::from_static(b"{\"code\":13,\"message\":\"internal error\",\"details\":[]}")
            })
    }
}

impl axum::response::IntoResponse for HttpError {
    fn into_response(self) -> axum::response::Response {
        let body = self.body_bytes();
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

/// The headers of a 429 from an upstream `status`: `Retry-After` from its `retry-after`
/// metadata, else from its `RetryInfo` detail (whole seconds, rounded up, at least 1; none when
/// it has neither), and the `RateLimit-Limit/Remaining/Reset` it sent as metadata (whole
/// numbers only; anything else is dropped).
pub(crate) fn rate_limit_headers(status: &tonic::Status) -> Vec<(HeaderName, HeaderValue)> {
    let metadata = status.metadata();
    let number = |name: &str| -> Option<u64> {
        metadata
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
    };
    let mut headers = Vec::new();
    let retry_after = number("retry-after")
        .or_else(|| retry_info_delay(status.details()).map(ceil_secs))
        .map(|secs| secs.max(1));
    if let Some(secs) = retry_after {
        headers.push((header::RETRY_AFTER, HeaderValue::from(secs)));
    }
    for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        if let Some(value) = number(name) {
            headers.push((HeaderName::from_static(name), HeaderValue::from(value)));
        }
    }
    headers
}

/// The delay of the first `google.rpc.RetryInfo` in an encoded `google.rpc.Status`.
fn retry_info_delay(encoded: &[u8]) -> Option<std::time::Duration> {
    use protomesh::proto::google::rpc::RetryInfo;
    let status = RpcStatus::decode(encoded).ok()?;
    let delay = status
        .details
        .iter()
        .filter(|any| any.type_url.rsplit('/').next() == Some("google.rpc.RetryInfo"))
        .find_map(|any| RetryInfo::decode(any.value.as_slice()).ok())?
        .retry_delay?;
    Some(std::time::Duration::new(
        u64::try_from(delay.seconds).ok()?,
        u32::try_from(delay.nanos).ok()?,
    ))
}

fn ceil_secs(duration: std::time::Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// The details of an encoded `google.rpc.Status` as JSON values: each `Any` in its JSON form when
/// `pool` knows its type, else `{"@type": url, "value": <base64>}`.
pub(crate) fn decode_details(encoded: &[u8], pool: &DescriptorPool) -> Vec<serde_json::Value> {
    if encoded.is_empty() {
        return Vec::new();
    }
    let Ok(status) = RpcStatus::decode(encoded) else {
        return Vec::new();
    };
    status
        .details
        .iter()
        .map(|any| any_to_json(any, pool))
        .collect()
}

/// `google.rpc.Status`, as far as the gateway needs it.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The mesh's own descriptors, which hold the `google.rpc` detail types: details are decoded
/// with them when the service's pool does not know the type (a service that returns
/// `BadRequest` need not import `error_details.proto`).
fn builtin_pool() -> Option<&'static DescriptorPool> {
    static POOL: std::sync::OnceLock<Option<DescriptorPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(protomesh::proto::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
}

fn any_to_json(any: &prost_types::Any, pool: &DescriptorPool) -> serde_json::Value {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let decoded = pool
        .get_message_by_name(type_name)
        .or_else(|| builtin_pool().and_then(|p| p.get_message_by_name(type_name)))
        .and_then(|descriptor| DynamicMessage::decode(descriptor, any.value.as_slice()).ok())
        .and_then(|message| {
            message
                .serialize_with_options(
                    serde_json::value::Serializer,
                    &SerializeOptions::new().stringify_64_bit_integers(true),
                )
                .ok()
        });
    match decoded {
        Some(serde_json::Value::Object(mut fields)) => {
            let mut object = serde_json::Map::new();
            object.insert("@type".into(), any.type_url.clone().into());
            object.append(&mut fields);
            serde_json::Value::Object(object)
        }
        _ => serde_json::json!({
            "@type": any.type_url,
            "value": base64_encode(&any.value),
        }),
    }
}

/// Standard base64 with padding (what proto3 JSON uses for bytes).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(protomesh::proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn the_standard_table() {
        use tonic::Code;
        let table = [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Cancelled, 499),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn bad_request_details_are_decoded_to_json() {
        let status = protomesh::status::invalid_argument("urgency", "must be 1..10, got 11");
        let error = HttpError::from_status(&status, &pool());
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        let body: serde_json::Value = serde_json::from_slice(&error.body_bytes()).unwrap();
        assert_eq!(body["code"], 3);
        assert!(body["message"].as_str().unwrap().contains("urgency"));
        let detail = &body["details"][0];
        assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.BadRequest");
        assert_eq!(detail["fieldViolations"][0]["field"], "urgency");
    }

    #[test]
    fn rpc_details_decode_even_when_the_service_pool_lacks_them() {
        let status = protomesh::status::invalid_argument("urgency", "must be 1..10");
        let error = HttpError::from_status(&status, &DescriptorPool::new());
        assert_eq!(
            error.body.details[0]["fieldViolations"][0]["field"],
            "urgency"
        );
    }

    #[test]
    fn unknown_detail_types_keep_their_bytes() {
        let any = prost_types::Any {
            type_url: "type.googleapis.com/nobody.Knows".into(),
            value: vec![1, 2, 3, 4],
        };
        let json = any_to_json(&any, &pool());
        assert_eq!(json["@type"], "type.googleapis.com/nobody.Knows");
        assert_eq!(json["value"], "AQIDBA==");
    }

    /// `RESOURCE_EXHAUSTED` with a `RetryInfo` of `delay` and `metadata`.
    fn exhausted(delay: prost_types::Duration, metadata: &[(&'static str, &str)]) -> tonic::Status {
        use protomesh::proto::google::rpc::RetryInfo;
        let details = RpcStatus {
            code: tonic::Code::ResourceExhausted as i32,
            message: "slow down".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: RetryInfo {
                    retry_delay: Some(delay),
                }
                .encode_to_vec(),
            }],
        };
        let mut map = tonic::metadata::MetadataMap::new();
        for (name, value) in metadata {
            map.insert(*name, value.parse().unwrap());
        }
        tonic::Status::with_details_and_metadata(
            tonic::Code::ResourceExhausted,
            "slow down",
            details.encode_to_vec().into(),
            map,
        )
    }

    fn header<'a>(error: &'a HttpError, name: &str) -> Option<&'a str> {
        error
            .headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn upstream_429s_carry_retry_after_and_the_rate_limit_headers_they_sent() {
        let delay = prost_types::Duration {
            seconds: 12,
            nanos: 1,
        };
        let status = exhausted(
            delay,
            &[
                ("retry-after", "9"),
                ("ratelimit-limit", "5"),
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "58"),
            ],
        );
        let error = HttpError::from_status(&status, &pool());
        assert_eq!(error.status, StatusCode::TOO_MANY_REQUESTS);
        // The metadata wins over the detail.
        assert_eq!(header(&error, "retry-after"), Some("9"));
        assert_eq!(header(&error, "ratelimit-limit"), Some("5"));
        assert_eq!(header(&error, "ratelimit-remaining"), Some("0"));
        assert_eq!(header(&error, "ratelimit-reset"), Some("58"));
        assert_eq!(
            error.body.details[0]["@type"],
            "type.googleapis.com/google.rpc.RetryInfo"
        );

        // Only a RetryInfo: its delay rounded up; no RateLimit-* headers; junk metadata ignored.
        let error =
            HttpError::from_status(&exhausted(delay, &[("ratelimit-limit", "lots")]), &pool());
        assert_eq!(header(&error, "retry-after"), Some("13"));
        assert_eq!(header(&error, "ratelimit-limit"), None);
        let instant = prost_types::Duration {
            seconds: 0,
            nanos: 0,
        };
        let error = HttpError::from_status(&exhausted(instant, &[]), &pool());
        assert_eq!(header(&error, "retry-after"), Some("1"));

        // Neither: no Retry-After; other codes get none of these headers.
        let bare = HttpError::from_status(&tonic::Status::resource_exhausted("full"), &pool());
        assert!(bare.headers.is_empty());
        let mut other = tonic::Status::unavailable("down");
        other
            .metadata_mut()
            .insert("retry-after", "5".parse().unwrap());
        assert!(HttpError::from_status(&other, &pool()).headers.is_empty());
    }

    #[test]
    fn garbage_details_give_no_details_not_a_panic() {
        assert!(decode_details(b"\xff\xff\xff", &pool()).is_empty());
    }

    #[test]
    fn method_not_allowed_lists_the_allowed_methods() {
        let error = HttpError::method_not_allowed(
            &http::Method::DELETE,
            "/v1/priority:score",
            &[http::Method::POST],
        );
        assert_eq!(error.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error.headers[0].1, "POST");
    }

    #[test]
    fn base64_pads_like_the_standard() {
        for (input, expected) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64_encode(input), expected);
        }
    }
}
