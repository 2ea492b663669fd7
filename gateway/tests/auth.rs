//! The edge policies end to end, through a running gateway (real Consul dev agent, the
//! in-process echo service): JWTs (RS256 from a PEM key, HS256, RS256 from a JWKS served by an
//! in-process users service and refreshed on an unknown `kid`), API keys, per-route
//! authorization and overrides, identity metadata (and spoofed copies dropped) over HTTP and
//! native gRPC, rate limits per client on Redis and with Redis stopped, and CORS.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use protomesh::auth::{ApiKeys, AuthConfig, JwksSource};
use protomesh::config::ServeConfig;
use protomesh::policy::Requirement;
use protomesh::server::MeshServer;
use protomesh_data::testing::{redis_url, PrivateRedis, TestKeys};
use protomesh_data::{connect_redis, DataConfig};
use protomesh_gateway::codec::DynamicCodec;
use protomesh_gateway::CorsConfig;
use protomesh_gateway::GatewayOptions;
use protomesh_users::proto::protomesh::users::v1::{
    users_service_server::{UsersService, UsersServiceServer},
    GetJwksRequest, GetMeRequest, Jwk, Jwks, LoginRequest, RefreshRequest, RegisterRequest,
    TokenPair, User,
};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::json;
use support::{
    claims, http, now_secs, wait_for_route, Answer, Consul, EchoServer, Received, TestGateway,
    ECHO_SERVICE,
};
use tokio::sync::oneshot;

// ---- keys and tokens ---------------------------------------------------------------------------

/// An RSA key pair generated for the test run.
struct RsaKey {
    encoding: EncodingKey,
    public_pem: String,
    jwk_n: String,
    jwk_e: String,
}

/// Two RSA keys, generated once per test binary (debug-build key generation is slow).
fn rsa_keys() -> &'static [RsaKey; 2] {
    static KEYS: OnceLock<[RsaKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [generate(), generate()])
}

fn generate() -> RsaKey {
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let public = rsa::RsaPublicKey::from(&private);
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    RsaKey {
        encoding: EncodingKey::from_rsa_pem(
            private.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap(),
        public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
        jwk_n: b64(public.n().to_bytes_be()),
        jwk_e: b64(public.e().to_bytes_be()),
    }
}

fn rs256(key: &RsaKey, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `claims` with `changes` applied on top.
fn with(mut claims: serde_json::Value, changes: serde_json::Value) -> serde_json::Value {
    for (key, value) in changes.as_object().unwrap() {
        claims[key] = value.clone();
    }
    claims
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "protomesh-gateway-auth-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- helpers ---------------------------------------------------------------------------------

const HS_SECRET: &str = "the gateway auth test's HS256 secret, 48 bytes!!";
const API_KEY: &str = "pm_live_3f9a8c1d2e7b6a5f4c3d2e1f0a9b8c7d";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn get(gateway: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    http("GET", &gateway.url(path), headers, "").await
}

fn metadata<'a>(received: &'a Received, key: &str) -> Option<&'a str> {
    received
        .metadata
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn assert_unauthenticated(answer: &Answer, message: &str) {
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["code"], 16);
    assert_eq!(body["message"], message);
    let challenge = answer.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"protomesh\""),
        "{challenge}"
    );
    if message != "missing credentials" {
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
}

/// One native gRPC `Get` through the gateway, with `metadata`.
async fn grpc_call(
    gateway: &TestGateway,
    method: &str,
    metadata: &[(&'static str, &str)],
) -> Result<DynamicMessage, tonic::Status> {
    let pool = DescriptorPool::decode(support::echo_descriptor_set()).unwrap();
    let method = pool
        .get_service_by_name(ECHO_SERVICE)
        .and_then(|s| s.methods().find(|m| m.name() == method))
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut message = DynamicMessage::new(method.input());
    message.set_field_by_name("id", Value::String("g1".to_owned()));
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(10));
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    let path = format!("/{ECHO_SERVICE}/{}", method.name())
        .parse()
        .unwrap();
    grpc.unary(request, path, DynamicCodec::new(method.output()))
        .await
        .map(tonic::Response::into_inner)
}

// ---- authentication and authorization ----------------------------------------------------------

#[tokio::test]
async fn credentials_are_verified_and_routes_authorized() {
    let consul = Consul::start().await;
    let echo = EchoServer::start(&consul.addr()).await;
    let [key, stranger] = rsa_keys();
    let dir = TempDir::new("credentials");

    let mut options = GatewayOptions::default();
    options.edge.auth = AuthConfig {
        hs256_secret: Some(AuthConfig::read_hs256_secret(&dir.write("hs256", HS_SECRET)).unwrap()),
        rsa_public_keys: vec![AuthConfig::read_rsa_public_key(
            &dir.write("key.pem", &key.public_pem),
        )
        .unwrap()],
        api_keys: ApiKeys::load(&dir.write(
            "api-keys",
            &format!("# CI\nci {} deploy,admin\n", sha256_hex(API_KEY)),
        ))
        .unwrap(),
        ..AuthConfig::default()
    };
    options.edge.access.overrides = vec![
        format!("{ECHO_SERVICE}/List=public").parse().unwrap(),
        format!("{ECHO_SERVICE}/Delete=role:admin").parse().unwrap(),
    ];
    options.edge.cors = CorsConfig::with_origins(&["https://app.example.com".to_owned()]);
    let gateway = TestGateway::start(&consul.client, options).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;
    echo.take();

    // No credentials on a protected (default: authenticated) route: 401, nothing forwarded.
    let answer = get(&gateway, "/v1/items/a", &[]).await;
    assert_unauthenticated(&answer, "missing credentials");
    assert_eq!(
        answer.headers["www-authenticate"],
        "Bearer realm=\"protomesh\""
    );
    assert!(echo.take().is_empty());

    // A valid RS256 token: the service gets the credential itself (its runtime verifies it again
    // and sets the identity; these test services' methods are public there, so it sets none) and
    // the client's address.
    let token = rs256(key, None, &claims("alice", &["user", "ops"]));
    let answer = get(
        &gateway,
        "/v1/items/a",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let received = echo.take();
    assert_eq!(
        metadata(&received[0], "authorization"),
        Some(bearer(&token).as_str())
    );
    assert_eq!(metadata(&received[0], "x-protomesh-subject"), None);
    assert_eq!(
        metadata(&received[0], "x-protomesh-client-ip"),
        Some("127.0.0.1")
    );

    // HS256 with the configured secret.
    let token = hs256(HS_SECRET, &claims("bob", &[]));
    let answer = get(
        &gateway,
        "/v1/items/a",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        metadata(&echo.take()[0], "authorization"),
        Some(bearer(&token).as_str())
    );

    // Time claims, with the 30 s leeway.
    let now = now_secs();
    let expired = rs256(
        key,
        None,
        &with(claims("alice", &[]), json!({"exp": now - 120})),
    );
    let answer = get(
        &gateway,
        "/v1/items/a",
        &[("authorization", &bearer(&expired))],
    )
    .await;
    assert_unauthenticated(&answer, "expired credentials");
    let barely = rs256(
        key,
        None,
        &with(claims("alice", &[]), json!({"exp": now - 5})),
    );
    let answer = get(
        &gateway,
        "/v1/items/a",
        &[("authorization", &bearer(&barely))],
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "within the leeway: {}",
        answer.body
    );
    let early = rs256(
        key,
        None,
        &with(claims("alice", &[]), json!({"nbf": now + 300})),
    );
    let answer = get(
        &gateway,
        "/v1/items/a",
        &[("authorization", &bearer(&early))],
    )
    .await;
    assert_unauthenticated(&answer, "invalid credentials");
    echo.take();

    // Tampered, wrong issuer or audience, alg none, another key, HS256 keyed with the RSA
    // public key (algorithm confusion), garbage: all simply "invalid".
    let good = rs256(key, None, &claims("alice", &["user"]));
    let mut parts: Vec<&str> = good.split('.').collect();
    let elevated = b64url(
        serde_json::to_string(&claims("alice", &["admin"]))
            .unwrap()
            .as_bytes(),
    );
    parts[1] = &elevated;
    let tampered = parts.join(".");
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(
            serde_json::to_string(&claims("alice", &["admin"]))
                .unwrap()
                .as_bytes()
        )
    );
    let confused = hs256(&key.public_pem, &claims("alice", &["admin"]));
    for (what, token) in [
        ("tampered", tampered),
        (
            "wrong issuer",
            rs256(key, None, &with(claims("a", &[]), json!({"iss": "evil"}))),
        ),
        (
            "wrong audience",
            rs256(key, None, &with(claims("a", &[]), json!({"aud": "other"}))),
        ),
        ("alg none", none),
        ("unknown key", rs256(stranger, None, &claims("a", &[]))),
        ("alg confusion", confused),
        (
            "wrong secret",
            hs256("another secret that is long enough!!", &claims("a", &[])),
        ),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let answer = get(
            &gateway,
            "/v1/items/a",
            &[("authorization", &bearer(&token))],
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            answer.body
        );
        assert_unauthenticated(&answer, "invalid credentials");
    }
    assert!(
        echo.take().is_empty(),
        "no refused call reached the service"
    );

    // Roles: Delete needs `admin` (an override): 403 without it, 200 with it.
    let user = rs256(key, None, &claims("alice", &["user"]));
    let answer = http(
        "DELETE",
        &gateway.url("/v1/items/d"),
        &[("authorization", &bearer(&user))],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert_eq!(answer.json()["code"], 7);
    assert_eq!(answer.json()["message"], "permission denied");
    let admin = rs256(key, None, &claims("root", &["admin"]));
    let answer = http(
        "DELETE",
        &gateway.url("/v1/items/d"),
        &[("authorization", &bearer(&admin))],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    echo.take();

    // API keys, by header or scheme; forwarded as sent (services verify them against the same
    // hashes). A wrong key is invalid.
    let answer = get(&gateway, "/v1/items/k", &[("x-api-key", API_KEY)]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let authorization = format!("ApiKey {API_KEY}");
    let answer = get(
        &gateway,
        "/v1/items/k",
        &[("authorization", &authorization)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let received = echo.take();
    assert_eq!(metadata(&received[0], "x-api-key"), Some(API_KEY));
    assert_eq!(
        metadata(&received[1], "authorization"),
        Some(authorization.as_str())
    );
    for received in received {
        assert_eq!(metadata(&received, "x-protomesh-subject"), None);
    }
    let answer = get(&gateway, "/v1/items/k", &[("x-api-key", "pm_live_wrong")]).await;
    assert_unauthenticated(&answer, "invalid credentials");

    // Spoofed identity headers never reach the service: not alone, not next to a token.
    let answer = http(
        "LIST",
        &gateway.url("/v1/items"),
        &[
            ("x-protomesh-subject", "root"),
            ("x-protomesh-roles", "admin"),
            ("x-protomesh-auth", "jwt"),
        ],
        "",
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "List is public by override: {}",
        answer.body
    );
    let received = echo.take();
    assert_eq!(metadata(&received[0], "x-protomesh-subject"), None);
    assert_eq!(metadata(&received[0], "x-protomesh-roles"), None);
    assert_eq!(metadata(&received[0], "x-protomesh-auth"), None);
    let answer = get(
        &gateway,
        "/v1/items/s",
        &[
            ("authorization", &bearer(&user)),
            ("x-protomesh-subject", "root"),
            ("x-protomesh-client-ip", "10.0.0.1"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let received = echo.take();
    assert_eq!(metadata(&received[0], "x-protomesh-subject"), None);
    assert_eq!(
        metadata(&received[0], "authorization"),
        Some(bearer(&user).as_str())
    );
    assert_eq!(
        metadata(&received[0], "x-protomesh-client-ip"),
        Some("127.0.0.1")
    );

    // A bad token on a public route is still refused, so the client learns it is bad.
    let answer = http(
        "LIST",
        &gateway.url("/v1/items"),
        &[("authorization", "Bearer nope")],
        "",
    )
    .await;
    assert_unauthenticated(&answer, "invalid credentials");

    // Native gRPC: the same policies by method path, the same stripping.
    let status = grpc_call(&gateway, "Get", &[]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "missing credentials");
    let status = grpc_call(&gateway, "Get", &[("authorization", "Bearer nope")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let user_bearer = bearer(&user);
    let status = grpc_call(&gateway, "Delete", &[("authorization", &user_bearer)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    echo.take();
    grpc_call(
        &gateway,
        "Get",
        &[
            ("authorization", &user_bearer),
            ("x-protomesh-subject", "root"),
            ("x-protomesh-roles", "admin"),
        ],
    )
    .await
    .unwrap();
    let received = echo.take();
    assert_eq!(metadata(&received[0], "x-protomesh-subject"), None);
    assert_eq!(metadata(&received[0], "x-protomesh-roles"), None);
    assert_eq!(
        metadata(&received[0], "authorization"),
        Some(user_bearer.as_str())
    );
    grpc_call(&gateway, "List", &[("x-protomesh-subject", "root")])
        .await
        .unwrap();
    assert_eq!(metadata(&echo.take()[0], "x-protomesh-subject"), None);

    // /routes and /openapi.json show each route's requirement.
    let routes = get(&gateway, "/routes", &[]).await.json();
    let auth_of = |grpc: &str| {
        routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["grpc_method"] == grpc)
            .map(|r| r["auth"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(auth_of(&format!("{ECHO_SERVICE}.Get")), "authenticated");
    assert_eq!(auth_of(&format!("{ECHO_SERVICE}.List")), "public");
    assert_eq!(auth_of(&format!("{ECHO_SERVICE}.Delete")), "role:admin");
    let openapi = get(&gateway, "/openapi.json", &[]).await.json();
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    assert_eq!(
        openapi["components"]["securitySchemes"]["apiKey"]["name"],
        "X-Api-Key"
    );
    let item = &openapi["paths"]["/v1/items/{id}"];
    assert_eq!(
        item["get"]["security"],
        json!([{ "bearerAuth": [] }, { "apiKey": [] }])
    );
    assert_eq!(item["delete"]["x-required-roles"], json!(["admin"]));

    // CORS: the preflight is answered by the gateway, without credentials.
    let answer = http(
        "OPTIONS",
        &gateway.url("/v1/items/a"),
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization, x-unknown"),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    let methods = answer.headers["access-control-allow-methods"]
        .to_str()
        .unwrap();
    for method in ["GET", "DELETE", "PATCH"] {
        assert!(methods.contains(method), "{methods}");
    }
    assert_eq!(
        answer.headers["access-control-allow-headers"],
        "authorization"
    );
    assert_eq!(answer.headers["access-control-max-age"], "600");
    // A simple request: the origin allowed back, with Vary; a stranger's is not.
    let answer = get(
        &gateway,
        "/v1/items/c",
        &[
            ("origin", "https://app.example.com"),
            ("authorization", &bearer(&user)),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(answer.headers["vary"], "origin");
    let answer = get(
        &gateway,
        "/v1/items/c",
        &[
            ("origin", "https://evil.example.com"),
            ("authorization", &bearer(&user)),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.headers.get("access-control-allow-origin").is_none());
    assert_eq!(answer.headers["vary"], "origin");
    // Refusals carry CORS headers too, so a page can read the 401.
    let answer = get(
        &gateway,
        "/v1/items/c",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
}

#[tokio::test]
async fn a_route_policy_override_flips_routes_public_and_protected() {
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    // Default public, the service protected, one method of it public again.
    let mut options = support::public_options();
    options.edge.access.overrides = vec![
        format!("{ECHO_SERVICE}=authenticated").parse().unwrap(),
        format!("{ECHO_SERVICE}/Search=public").parse().unwrap(),
    ];
    let gateway = TestGateway::start(&consul.client, options).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;
    let answer = get(&gateway, "/v1/items/a", &[]).await;
    assert_unauthenticated(&answer, "missing credentials");
    let answer = get(&gateway, "/v1/search/a/b", &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let token = support::hs256_token("carol", &[]);
    let answer = get(
        &gateway,
        "/v1/items/a",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let routes = get(&gateway, "/routes", &[]).await.json();
    assert!(routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["grpc_method"] == format!("{ECHO_SERVICE}.Search") && r["auth"] == "public"));
}

// ---- rate limits -------------------------------------------------------------------------------

fn assert_limited(answer: &Answer, limit: u32) {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert_eq!(answer.json()["code"], 8);
    let retry_after: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        answer.headers["ratelimit-limit"],
        limit.to_string().as_str()
    );
    assert_eq!(answer.headers["ratelimit-remaining"], "0");
    assert!(answer.headers.contains_key("ratelimit-reset"));
}

async fn connected_redis(url: &str) -> protomesh_data::fred::prelude::Client {
    let config =
        DataConfig::with_database_url(protomesh_data::DEFAULT_DATABASE_URL).with_redis_url(url);
    let client = connect_redis(&config).unwrap();
    support::eventually(Duration::from_secs(10), "Redis connected", || async {
        protomesh_data::fred::prelude::ClientLike::is_connected(&client).then_some(())
    })
    .await;
    client
}

fn limited_options(redis: protomesh_data::fred::prelude::Client, prefix: &str) -> GatewayOptions {
    let mut options = support::public_options();
    options
        .edge
        .rate_limits
        .quotas
        .insert("default".into(), "3/1m".parse().unwrap());
    options
        .edge
        .rate_limits
        .quotas
        .insert("invalid-credentials".into(), "2/1m".parse().unwrap());
    options.edge.rate_limits.redis = Some(redis);
    options.edge.rate_limits.key_prefix = prefix.to_owned();
    options
}

#[tokio::test]
async fn rate_limits_apply_per_client_key_in_redis() {
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    let keys = TestKeys::new();
    let dir = TempDir::new("ratelimit");
    let mut options = limited_options(connected_redis(&redis_url()).await, keys.prefix());
    options.edge.auth.api_keys =
        ApiKeys::load(&dir.write("api-keys", &format!("ci {}\n", sha256_hex(API_KEY)))).unwrap();
    let gateway = TestGateway::start(&consul.client, options).await;
    wait_for_route(&gateway, "POST", "/v1/items", Duration::from_secs(15)).await;

    // Anonymous calls count per address. (wait_for_route's POSTs hit /v1/items, another route
    // of the same class: use a fresh window by counting from the first 429.)
    let mut remaining = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        let answer = get(&gateway, "/v1/items/r", &[]).await;
        if answer.status == StatusCode::OK {
            assert_eq!(answer.headers["ratelimit-limit"], "3");
            remaining.push(
                answer.headers["ratelimit-remaining"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        } else {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("a 429 within 6 calls of a 3/1m quota");
    assert_limited(&refused, 3);
    assert!(remaining.len() <= 3, "{remaining:?}");
    assert_eq!(
        remaining.last().map(String::as_str),
        Some("0"),
        "{remaining:?}"
    );

    // A JWT subject and an API key each have their own bucket.
    let token = support::hs256_token("dave", &[]);
    for _ in 0..3 {
        let answer = get(
            &gateway,
            "/v1/items/r",
            &[("authorization", &bearer(&token))],
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert_limited(
        &get(
            &gateway,
            "/v1/items/r",
            &[("authorization", &bearer(&token))],
        )
        .await,
        3,
    );
    let other = support::hs256_token("erin", &[]);
    assert_eq!(
        get(
            &gateway,
            "/v1/items/r",
            &[("authorization", &bearer(&other))]
        )
        .await
        .status,
        StatusCode::OK
    );
    for _ in 0..3 {
        assert_eq!(
            get(&gateway, "/v1/items/r", &[("x-api-key", API_KEY)])
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_limited(
        &get(&gateway, "/v1/items/r", &[("x-api-key", API_KEY)]).await,
        3,
    );

    // Bad credentials count per address: 401, 401, then 429.
    for _ in 0..2 {
        assert_unauthenticated(
            &get(&gateway, "/v1/items/r", &[("authorization", "Bearer bad")]).await,
            "invalid credentials",
        );
    }
    assert_limited(
        &get(&gateway, "/v1/items/r", &[("authorization", "Bearer bad")]).await,
        2,
    );

    // The state is in Redis, under the configured prefix.
    let redis = connected_redis(&redis_url()).await;
    let stored: Option<String> = protomesh_data::fred::prelude::KeysInterface::get(
        &redis,
        format!("{}ratelimit:default:sub:dave", keys.prefix()),
    )
    .await
    .unwrap();
    assert!(stored.is_some(), "the subject's bucket is in Redis");
}

#[tokio::test]
async fn limiting_goes_on_in_process_while_redis_is_stopped() {
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    let mut redis = PrivateRedis::start().await.unwrap();
    let options = limited_options(connected_redis(&redis.url()).await, "gw-test:");
    let gateway = TestGateway::start(&consul.client, options).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;

    redis.stop().await.unwrap();
    let token = support::hs256_token("frank", &[]);
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let answer = get(
            &gateway,
            "/v1/items/r",
            &[("authorization", &bearer(&token))],
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert_limited(
        &get(
            &gateway,
            "/v1/items/r",
            &[("authorization", &bearer(&token))],
        )
        .await,
        3,
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "decisions stay fast with Redis down: {:?}",
        started.elapsed()
    );
}

// ---- JWKS through the mesh -------------------------------------------------------------------

/// A users service that only serves `GetJwks`, from a key list the test changes.
struct JwksOnly {
    keys: Arc<Mutex<Vec<Jwk>>>,
}

#[tonic::async_trait]
impl UsersService for JwksOnly {
    async fn register(
        &self,
        _: tonic::Request<RegisterRequest>,
    ) -> Result<tonic::Response<User>, tonic::Status> {
        Err(tonic::Status::unimplemented("register"))
    }

    async fn login(
        &self,
        _: tonic::Request<LoginRequest>,
    ) -> Result<tonic::Response<TokenPair>, tonic::Status> {
        Err(tonic::Status::unimplemented("login"))
    }

    async fn refresh(
        &self,
        _: tonic::Request<RefreshRequest>,
    ) -> Result<tonic::Response<TokenPair>, tonic::Status> {
        Err(tonic::Status::unimplemented("refresh"))
    }

    async fn get_jwks(
        &self,
        _: tonic::Request<GetJwksRequest>,
    ) -> Result<tonic::Response<Jwks>, tonic::Status> {
        Ok(tonic::Response::new(Jwks {
            keys: self.keys.lock().unwrap().clone(),
        }))
    }

    async fn get_me(
        &self,
        _: tonic::Request<GetMeRequest>,
    ) -> Result<tonic::Response<User>, tonic::Status> {
        Err(tonic::Status::unimplemented("get_me"))
    }
}

fn jwk(key: &RsaKey, kid: &str) -> Jwk {
    Jwk {
        kty: "RSA".into(),
        r#use: "sig".into(),
        kid: kid.into(),
        alg: "RS256".into(),
        n: key.jwk_n.clone(),
        e: key.jwk_e.clone(),
    }
}

#[tokio::test]
async fn jwks_keys_come_from_the_users_service_and_a_new_kid_is_fetched() {
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    let [first, second] = rsa_keys();
    let published = Arc::new(Mutex::new(vec![jwk(first, "kid-1")]));

    let mut config = ServeConfig::with_listen("127.0.0.1:0".parse().unwrap());
    config.consul_addr = consul.addr();
    config.lame_duck = Duration::from_millis(100);
    let bound = MeshServer::new("users", config)
        .descriptor_set(protomesh_users::proto::FILE_DESCRIPTOR_SET)
        .add_service(UsersServiceServer::new(JwksOnly {
            keys: Arc::clone(&published),
        }))
        .bind()
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let users = tokio::spawn(async move {
        bound
            .run_until(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });

    let min_refetch = Duration::from_secs(1);
    let mut options = GatewayOptions::default();
    // Polling below makes many 401s: keep them from turning into 429s.
    options
        .edge
        .rate_limits
        .quotas
        .insert("invalid-credentials".into(), "10000/1m".parse().unwrap());
    options.edge.auth.jwks = Some(JwksSource {
        min_refetch,
        ..JwksSource::new("users")
    });
    let gateway = TestGateway::start(&consul.client, options).await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;

    let ok = |token: String| {
        let gateway = &gateway;
        async move {
            get(
                gateway,
                "/v1/items/j",
                &[("authorization", &bearer(&token))],
            )
            .await
        }
    };
    // The users service may still be registering: the first fetch is retried per min_refetch.
    let token = rs256(first, Some("kid-1"), &claims("gina", &[]));
    support::eventually(Duration::from_secs(20), "a kid-1 token accepted", || {
        let answer = ok(token.clone());
        async move { (answer.await.status == StatusCode::OK).then_some(()) }
    })
    .await;

    // A token of a key the JWKS does not have: refused.
    let rotated = rs256(second, Some("kid-2"), &claims("gina", &[]));
    assert_unauthenticated(&ok(rotated.clone()).await, "invalid credentials");

    // The users service rotates: once min_refetch has passed, the unknown kid triggers a fetch
    // and the very next token is accepted (long before the 5-minute refresh).
    published.lock().unwrap().push(jwk(second, "kid-2"));
    tokio::time::sleep(min_refetch + Duration::from_millis(200)).await;
    let answer = ok(rotated).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    // The key of kid-1 is still known; a kid signed by another key is not accepted.
    assert_eq!(ok(token).await.status, StatusCode::OK);
    let forged = rs256(second, Some("kid-1"), &claims("gina", &["admin"]));
    assert_unauthenticated(&ok(forged).await, "invalid credentials");

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), users).await;
}

#[test]
fn the_default_requirement_is_authenticated() {
    assert_eq!(
        GatewayOptions::default().edge.access.default_auth,
        Requirement::Authenticated
    );
}
