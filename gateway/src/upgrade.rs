//! The WebSocket handshake's headers, read before the edge and by the bridge
//! ([`crate::handlers::websocket`]): whether a request asks for a WebSocket, the subprotocols it
//! offers, and a browser's credential carried as one of them.

use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

/// The subprotocol a client offers and the gateway selects: gRPC messages as proto3 JSON.
pub(crate) const PROTOCOL: &str = "protomesh.json";

/// Prefix of the subprotocol that carries a bearer token.
const BEARER_PROTOCOL: &str = "bearer.";

/// Whether a request asks for a WebSocket (`GET` with `Upgrade: websocket`).
pub(crate) fn is_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
            })
}

/// The subprotocols a request offers.
pub(crate) fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// For a WebSocket handshake with neither `Authorization` nor an API key: the token of an offered `bearer.<token>`
/// subprotocol becomes `Authorization: Bearer <token>`, for the edge to verify.
pub(crate) fn credential_from_protocols(method: &Method, headers: &mut HeaderMap) {
    if !is_upgrade(method, headers)
        || headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key(protomesh::auth::API_KEY_HEADER)
    {
        return;
    }
    let token = offered_protocols(headers)
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL))
        .and_then(|token| HeaderValue::from_str(&format!("Bearer {token}")).ok());
    if let Some(token) = token {
        headers.insert(header::AUTHORIZATION, token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn a_websocket_get_is_an_upgrade_and_nothing_else_is() {
        let upgrade = headers(&[("upgrade", "WebSocket"), ("connection", "Upgrade")]);
        assert!(is_upgrade(&Method::GET, &upgrade));
        assert!(!is_upgrade(&Method::POST, &upgrade));
        assert!(!is_upgrade(&Method::GET, &headers(&[("upgrade", "h2c")])));
        assert!(!is_upgrade(&Method::GET, &HeaderMap::new()));
    }

    #[test]
    fn a_bearer_subprotocol_becomes_the_authorization_header() {
        let mut offered = headers(&[
            ("upgrade", "websocket"),
            (
                "sec-websocket-protocol",
                "protomesh.json, bearer.abc.def-ghi_j",
            ),
        ]);
        credential_from_protocols(&Method::GET, &mut offered);
        assert_eq!(offered[header::AUTHORIZATION], "Bearer abc.def-ghi_j");

        // An explicit header wins; a plain request is left alone.
        let mut explicit = headers(&[
            ("upgrade", "websocket"),
            ("authorization", "Bearer mine"),
            ("sec-websocket-protocol", "protomesh.json, bearer.other"),
        ]);
        credential_from_protocols(&Method::GET, &mut explicit);
        assert_eq!(explicit[header::AUTHORIZATION], "Bearer mine");
        // An API key is a credential: no second one is made (two are refused).
        let mut keyed = headers(&[
            ("upgrade", "websocket"),
            ("x-api-key", "k"),
            ("sec-websocket-protocol", "protomesh.json, bearer.other"),
        ]);
        credential_from_protocols(&Method::GET, &mut keyed);
        assert!(!keyed.contains_key(header::AUTHORIZATION));
        let mut plain = headers(&[("sec-websocket-protocol", "bearer.x")]);
        credential_from_protocols(&Method::GET, &mut plain);
        assert!(!plain.contains_key(header::AUTHORIZATION));
    }
}
