//! Security at the edge end to end, across real processes: the `users`, `tasks` and `priority`
//! services and the `gateway`, registered in a private Consul dev agent, over a database of the
//! test's own; the gateway verifies tokens with the users service's JWKS and keeps its rate limits
//! in a private `redis-server`. Register → login → a protected route with the token (200),
//! without (401), with the wrong role (403), with an expired or a tampered token (401), with an
//! API key (200); too many wrong passwords from one client → the users service's 429 with
//! `Retry-After` and `RateLimit-*`, while the owner's device token still logs in; a rate-limit
//! class exceeded → 429 with `Retry-After`; the private Redis stopped →
//! the local limiter still refuses past the quota. Finally the debug logs of the gateway and the
//! users service are searched for every secret the flow used: the password, the access and
//! refresh tokens and the API key must appear nowhere.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use protomesh_data::testing::{redis_url, PrivateRedis, TestDatabase, TestKeys};
use sha2::{Digest, Sha256};
use support::http::{bearer, field, field_number, http, spawn};
use support::mesh::wait_passing;
use support::{eventually, gateway_addr, tempdir, unique, Consul};

const PASSWORD: &str = "correct horse battery staple";
const API_KEY: &str = "pm_test_4f1d9c2b7a8e6d5c3b2a1f0e9d8c7b6a";
/// The public class's quota at the gateway, small enough to exceed.
const PUBLIC_QUOTA: u32 = 5;
/// The users service's failed logins per client on an account.
const LOGIN_FAILURES: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_and_call_protected_routes_through_the_gateway() {
    let consul = Consul::start().await;
    let database = TestDatabase::create().await.unwrap();
    let keys = TestKeys::new();
    let mut gateway_redis = PrivateRedis::start().await.unwrap();
    let admin_email = format!("{}@example.com", unique("admin"));
    let email = format!("{}@example.com", unique("ada"));

    let api_keys = tempdir().join("api-keys");
    let key_hash = hex(&Sha256::digest(API_KEY.as_bytes()));
    std::fs::write(&api_keys, format!("ci-bot {key_hash} user\n")).unwrap();

    let common = [
        ("CONSUL_HTTP_ADDR", consul.addr()),
        ("DATABASE_URL", database.url().to_owned()),
        ("PROTOMESH_KEY_PREFIX", keys.prefix().to_owned()),
        ("PROTOMESH_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ];
    let with = |extra: &[(&'static str, String)]| {
        let mut env = common.to_vec();
        env.extend_from_slice(extra);
        env
    };
    let login_limit = format!("{LOGIN_FAILURES}/1m");
    let users = spawn(
        "users",
        &with(&[("REDIS_URL", redis_url())]),
        &[
            "--admin-email",
            &admin_email,
            "--login-limit-account",
            &login_limit,
        ],
    );
    // Services verify API keys themselves too: the same (hashes-only) file.
    let _tasks = spawn(
        "tasks",
        &with(&[("REDIS_URL", redis_url())]),
        &["--api-keys-file", api_keys.to_str().unwrap()],
    );
    let _priority = spawn("priority", &with(&[]), &[]);
    wait_passing(&consul, &["users", "tasks", "priority"]).await;
    let public_quota = format!("public={PUBLIC_QUOTA}/1m");
    let gateway = spawn(
        "gateway",
        &with(&[("REDIS_URL", gateway_redis.url())]),
        &[
            "--jwt-leeway",
            "0s",
            "--api-keys-file",
            api_keys.to_str().unwrap(),
            "--rate-limit",
            &public_quota,
        ],
    );
    let addr: SocketAddr = gateway_addr(&gateway).await;
    let url = |path: &str| format!("http://{addr}{path}");

    // The users routes are learned from Consul like any other.
    eventually(Duration::from_secs(20), "the users routes", || async {
        let answer = http("GET", url("/.well-known/jwks.json"), vec![], None).await;
        (answer.status == 200 && answer.body.contains("RS256")).then_some(())
    })
    .await;

    // Register and log in.
    let registered = http(
        "POST",
        url("/v1/users:register"),
        vec![],
        Some(format!(
            r#"{{"email":"{email}","displayName":"Ada","password":"{PASSWORD}"}}"#
        )),
    )
    .await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    let user_id = field(&registered, "id");
    let login_with = |email: String, password: &'static str, device_token: String| {
        let url = url("/v1/auth:login");
        async move {
            http(
                "POST",
                url,
                vec![],
                Some(format!(
                    r#"{{"email":"{email}","password":"{password}","deviceToken":"{device_token}"}}"#
                )),
            )
            .await
        }
    };
    let login = |email: String, password: &'static str| login_with(email, password, String::new());
    let tokens = login(email.clone(), PASSWORD).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    let token = field(&tokens, "accessToken");
    let refresh = field(&tokens, "refreshToken");
    let device_token = field(&tokens, "deviceToken");
    let wrong = login(email.clone(), "not the password at all").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    // A protected route: with the token 200, without 401.
    let me = http("GET", url("/v1/users/me"), bearer(&token), None).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(field(&me, "id"), user_id);
    let project = http(
        "POST",
        url("/v1/projects"),
        bearer(&token),
        Some(format!(r#"{{"name":"{}"}}"#, unique("sec"))),
    )
    .await;
    assert_eq!(project.status, 200, "{}", project.body);
    let project_id = field(&project, "id");
    let task = http(
        "POST",
        url(&format!("/v1/projects/{project_id}/tasks")),
        bearer(&token),
        Some(r#"{"title":"guarded","urgency":5,"impact":5}"#.to_owned()),
    )
    .await;
    assert_eq!(task.status, 200, "{}", task.body);
    let task_id = field(&task, "id");
    let list = url(&format!("/v1/tasks?project_id={project_id}"));
    let anonymous = http("GET", list.clone(), vec![], None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(
        anonymous
            .headers
            .get("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        anonymous.headers
    );

    // Wrong role: DeleteTask needs admin (its policy in tasks.proto).
    let delete = url(&format!("/v1/tasks/{task_id}"));
    let forbidden = http("DELETE", delete.clone(), bearer(&token), None).await;
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    let admin = http(
        "POST",
        url("/v1/users:register"),
        vec![],
        Some(format!(
            r#"{{"email":"{admin_email}","displayName":"Root","password":"{PASSWORD}"}}"#
        )),
    )
    .await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    let admin_token = field(&login(admin_email.clone(), PASSWORD).await, "accessToken");

    // Tampered: one character of the signature changed.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let answer = http("GET", list.clone(), bearer(&tampered), None).await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    // Expired: signed with the users service's own key, with exp in the past.
    let client = tokio_postgres_client(database.url()).await;
    let row = client
        .query_one(
            "SELECT kid, private_key_pem FROM users.signing_keys WHERE active \
             ORDER BY created_at DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (kid, pem): (String, String) = (row.get(0), row.get(1));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": user_id, "iss": "protomesh", "aud": "protomesh", "roles": ["user"],
        "iat": now - 600, "nbf": now - 600, "exp": now - 60, "jti": unique("jti"),
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid);
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let expired = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let answer = http("GET", list.clone(), bearer(&expired), None).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    // The same key with a valid exp passes: the 401 above was the expiry.
    let claims = serde_json::json!({
        "sub": user_id, "iss": "protomesh", "aud": "protomesh", "roles": ["user"],
        "iat": now, "nbf": now, "exp": now + 600, "jti": unique("jti"),
    });
    let fresh = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    assert_eq!(
        http("GET", list.clone(), bearer(&fresh), None).await.status,
        200
    );

    // An API key: the key's name is a subject like any other; once a member of the project, its
    // list is 200 (verified again by tasks); a wrong key 401.
    let stranger = http(
        "GET",
        list.clone(),
        vec![format!("x-api-key: {API_KEY}")],
        None,
    )
    .await;
    assert_eq!(stranger.status, 404, "not a member yet: {}", stranger.body);
    let added = http(
        "POST",
        url(&format!("/v1/projects/{project_id}/members")),
        bearer(&fresh),
        Some(r#"{"userId":"ci-bot"}"#.to_owned()),
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.body);
    let with_key = http(
        "GET",
        list.clone(),
        vec![format!("x-api-key: {API_KEY}")],
        None,
    )
    .await;
    assert_eq!(with_key.status, 200, "{}", with_key.body);
    assert!(with_key.body.contains(&task_id), "{}", with_key.body);
    let bad_key = http(
        "GET",
        list.clone(),
        vec!["x-api-key: pm_test_wrong".to_owned()],
        None,
    )
    .await;
    assert_eq!(bad_key.status, 401, "{}", bad_key.body);

    // The admin may delete.
    let deleted = http("DELETE", delete, bearer(&admin_token), None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);

    // Refresh works through the gateway, once.
    let refreshed = http(
        "POST",
        url("/v1/auth:refresh"),
        vec![],
        Some(format!(r#"{{"refreshToken":"{refresh}"}}"#)),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let refreshed_token = field(&refreshed, "accessToken");

    // Wrong passwords from this client past its quota on the account: the users service refuses
    // even the right one, and the gateway passes its limit on as headers.
    for _ in 1..LOGIN_FAILURES {
        let wrong = login(email.clone(), "not the password at all").await;
        assert_eq!(wrong.status, 401, "{}", wrong.body);
    }
    let locked = login(email.clone(), PASSWORD).await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert_eq!(field_number(&locked, "code"), 8, "{}", locked.body);
    assert!(
        locked.body.contains("google.rpc.RetryInfo"),
        "{}",
        locked.body
    );
    let retry_after: u64 = locked.headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        locked.headers["ratelimit-limit"],
        LOGIN_FAILURES.to_string(),
        "{:?}",
        locked.headers
    );
    assert_eq!(locked.headers["ratelimit-remaining"], "0");
    let reset: u64 = locked.headers["ratelimit-reset"].parse().unwrap();
    assert!((1..=60).contains(&reset), "{reset}");
    // The owner's device token from the first login keeps this device's count apart: it logs
    // in from the same address, and gets a new device token.
    let by_device = login_with(email.clone(), PASSWORD, device_token.clone()).await;
    assert_eq!(by_device.status, 200, "{}", by_device.body);
    let new_device_token = field(&by_device, "deviceToken");
    assert_ne!(new_device_token, device_token);

    // The public class's quota, counted in Redis per client address: the next call is 429.
    let score = url("/v1/priority:score");
    let body = r#"{"title":"x","urgency":2,"impact":3}"#.to_owned();
    let mut statuses = Vec::new();
    for _ in 0..=PUBLIC_QUOTA {
        statuses.push(http("POST", score.clone(), vec![], Some(body.clone())).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|a| a.status).collect();
    assert_eq!(
        codes[..PUBLIC_QUOTA as usize],
        vec![200; PUBLIC_QUOTA as usize][..]
    );
    let refused = statuses.last().unwrap();
    assert_eq!(refused.status, 429, "{}", refused.body);
    let retry_after: u64 = refused.headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.headers["ratelimit-limit"], PUBLIC_QUOTA.to_string());
    assert_eq!(refused.headers["ratelimit-remaining"], "0");
    assert!(statuses[0].headers.contains_key("ratelimit-remaining"));

    // Redis stopped: the gateway limits in process; the quota still holds.
    gateway_redis.stop().await.unwrap();
    let mut local = Vec::new();
    for _ in 0..(PUBLIC_QUOTA * 2) {
        local.push(
            http("POST", score.clone(), vec![], Some(body.clone()))
                .await
                .status,
        );
    }
    assert!(
        local.iter().filter(|s| **s == 200).count() <= PUBLIC_QUOTA as usize,
        "{local:?}"
    );
    assert!(local.contains(&429), "{local:?}");
    assert!(local.iter().all(|s| *s == 200 || *s == 429), "{local:?}");

    // No secret of the flow in any log line of the gateway or the users service.
    let logs = [
        ("gateway", gateway.log_path().to_owned()),
        ("users", users.log_path().to_owned()),
    ];
    drop(gateway);
    drop(users);
    let secrets = [
        ("password", PASSWORD),
        ("access token", token.as_str()),
        ("admin token", admin_token.as_str()),
        ("refresh token", refresh.as_str()),
        ("refreshed token", refreshed_token.as_str()),
        ("expired token", expired.as_str()),
        ("API key", API_KEY),
        ("device token", device_token.as_str()),
        ("new device token", new_device_token.as_str()),
    ];
    for (name, path) in logs {
        let log = std::fs::read_to_string(path).unwrap();
        assert!(log.lines().count() > 5, "{name} logged: {log}");
        for (what, secret) in secrets {
            // The signature part alone must not show either.
            let tail = &secret[secret.len().saturating_sub(24)..];
            assert!(
                !log.contains(secret) && !log.contains(tail),
                "the {what} appears in the {name} log"
            );
        }
    }
}

async fn tokio_postgres_client(url: &str) -> protomesh_data::tokio_postgres::Client {
    let (client, connection) =
        protomesh_data::tokio_postgres::connect(url, protomesh_data::tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
