//! The users service against the machine's real Postgres and Redis: each test has a database of
//! its own and a Redis key prefix of its own (the rate limits live there), with the handler
//! served in-process on a free loopback port (not registered) and called with the generated
//! client. Password hashing uses small argon2id costs (a debug build is slow); the parameters
//! themselves are covered by the unit tests.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey};
use protomesh::identity;
use protomesh::server::testing::{quick_config, InProcessServer};
use protomesh::server::MeshServer;
use protomesh::status::testing::violation_fields;
use protomesh::testing::bounded;
use protomesh_data as data;
use protomesh_data::deadpool_postgres::Pool;
use protomesh_data::ratelimit::RateLimiter;
use protomesh_data::testing::{
    closed_port, unreachable_database, ServiceData, TestDatabase, TestKeys,
};
use protomesh_users::keys::{thumbprint, KeySource, SecretBytes, SigningKeys};
use protomesh_users::limits::{
    retry_delay, LoginLimits, LoginQuotas, RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET,
    RETRY_AFTER,
};
use protomesh_users::password::{PasswordHasher, PasswordParams};
use protomesh_users::proto::protomesh::users::v1::{
    users_service_client::UsersServiceClient, users_service_server::UsersService, GetJwksRequest,
    GetMeRequest, Jwks, LoginRequest, RefreshRequest, RegisterRequest, TokenPair, User,
};
use protomesh_users::tokens::{
    device_token_hash, refresh_token_hash, AccessClaims, AccessTokenIssuer, TokenSettings,
};
use protomesh_users::{
    AccountSettings, UsersHandler, UsersServiceServer, LOGIN_FAILED, MIGRATIONS, REFRESH_FAILED,
};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::RsaPrivateKey;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Small argon2id costs for tests.
const CHEAP_PASSWORDS: PasswordParams = PasswordParams {
    memory_kib: 256,
    iterations: 1,
    parallelism: 1,
};

const PASSWORD: &str = "correct horse battery staple";
const HS256_SECRET: &[u8] = b"a-test-secret-that-is-long-enough-for-hs256";

/// One RSA key for the tests that do not test key storage (generating one in a debug build takes
/// a while).
fn test_rsa_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap())
}

fn test_rsa_pem() -> SecretBytes {
    let pem = test_rsa_key().to_pkcs8_pem(LineEnding::LF).unwrap();
    SecretBytes::new(pem.as_bytes().to_vec())
}

/// The handler served in-process on a free port, not registered.
async fn serve(handler: UsersHandler) -> InProcessServer {
    InProcessServer::start(
        MeshServer::new("users", quick_config(None))
            .descriptor_set(protomesh_users::proto::FILE_DESCRIPTOR_SET)
            .add_service(UsersServiceServer::new(handler)),
    )
    .await
    .unwrap()
}

/// The test quotas: 5 failures a minute per client on an account, 20 attempts a minute per
/// address, 20 failures per 15 minutes per account (the defaults).
fn test_quotas() -> LoginQuotas {
    LoginQuotas {
        per_client: "5/1m".parse().unwrap(),
        per_address: "20/1m".parse().unwrap(),
        per_account: "20/15m".parse().unwrap(),
    }
}

/// How a test's handler is set up.
struct Options {
    source: KeySource,
    admin_emails: Vec<String>,
    quotas: LoginQuotas,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            source: KeySource::RsaPem(test_rsa_pem()),
            admin_emails: Vec::new(),
            quotas: test_quotas(),
        }
    }
}

/// One served handler.
struct Instance {
    client: UsersServiceClient<Channel>,
    handler: UsersHandler,
    _served: InProcessServer,
}

impl Instance {
    async fn start(pool: &Pool, limiter: RateLimiter, options: Options) -> Self {
        let keys = SigningKeys::load(&options.source, pool).await.unwrap();
        let limits = LoginLimits::new(limiter, options.quotas);
        let handler = handler(pool.clone(), keys, limits, options.admin_emails).await;
        let served = serve(handler.clone()).await;
        let client = UsersServiceClient::connect(format!("http://{}", served.addr))
            .await
            .unwrap();
        Self {
            client,
            handler,
            _served: served,
        }
    }

    fn client(&self) -> UsersServiceClient<Channel> {
        self.client.clone()
    }

    async fn jwks(&self) -> Jwks {
        self.client()
            .get_jwks(GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

/// A handler with the default token settings.
async fn handler(
    pool: Pool,
    keys: SigningKeys,
    limits: LoginLimits,
    admin_emails: Vec<String>,
) -> UsersHandler {
    let issuer = AccessTokenIssuer::new(keys, TokenSettings::default());
    let hasher = PasswordHasher::new(CHEAP_PASSWORDS, 4).await.unwrap();
    UsersHandler::new(
        pool,
        issuer,
        hasher,
        limits,
        AccountSettings {
            admin_emails,
            ..AccountSettings::default()
        },
    )
}

/// Everything one test needs. Field order is drop order: the server goes before the database.
struct Harness {
    service: Instance,
    pool: Pool,
    limiter: RateLimiter,
    _keys: TestKeys,
    _db: TestDatabase,
}

impl Harness {
    async fn start() -> Self {
        Self::with(Options::default()).await
    }

    async fn with(options: Options) -> Self {
        let db = TestDatabase::create().await.unwrap();
        let keys = TestKeys::new();
        let ServiceData { pool, redis, .. } = ServiceData::start(&db, &keys, "users", MIGRATIONS)
            .await
            .unwrap();
        let limiter = RateLimiter::new(redis, keys.prefix());
        let service = Instance::start(&pool, limiter.clone(), options).await;
        Self {
            service,
            pool,
            limiter,
            _keys: keys,
            _db: db,
        }
    }

    /// Another instance of the service on the same database and Redis.
    async fn another_instance(&self, options: Options) -> Instance {
        Instance::start(&self.pool, self.limiter.clone(), options).await
    }

    fn client(&self) -> UsersServiceClient<Channel> {
        self.service.client()
    }

    async fn register(
        &self,
        email: &str,
        name: &str,
        password: &str,
    ) -> Result<User, tonic::Status> {
        self.client()
            .register(RegisterRequest {
                email: email.into(),
                display_name: name.into(),
                password: password.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn login(&self, email: &str, password: &str) -> Result<TokenPair, tonic::Status> {
        self.login_from(email, password, None).await
    }

    /// A login as the gateway forwards it, from client address `ip`.
    async fn login_from(
        &self,
        email: &str,
        password: &str,
        ip: Option<&str>,
    ) -> Result<TokenPair, tonic::Status> {
        self.login_with(email, password, ip, "").await
    }

    /// A login from client address `ip` presenting `device_token` (empty: none).
    async fn login_with(
        &self,
        email: &str,
        password: &str,
        ip: Option<&str>,
        device_token: &str,
    ) -> Result<TokenPair, tonic::Status> {
        let mut request = Request::new(LoginRequest {
            email: email.into(),
            password: password.into(),
            device_token: device_token.into(),
        });
        if let Some(ip) = ip {
            request
                .metadata_mut()
                .insert(identity::CLIENT_IP, ip.parse().unwrap());
        }
        self.client()
            .login(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn refresh(&self, token: &str) -> Result<TokenPair, tonic::Status> {
        self.client()
            .refresh(RefreshRequest {
                refresh_token: token.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// GetMe signed in as `subject` (a test-issuer token; none: no credential).
    async fn me(&self, subject: Option<&str>) -> Result<User, tonic::Status> {
        let mut request = Request::new(GetMeRequest {});
        if let Some(subject) = subject {
            let token = protomesh::auth::testing::token(subject, &["user"]);
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        self.client()
            .get_me(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// The claims of `token`, verified with the JWKS key its header names, as the gateway would.
fn verify_with_jwks(token: &str, jwks: &Jwks) -> AccessClaims {
    let header = decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.expect("a kid in the header");
    let jwk = jwks
        .keys
        .iter()
        .find(|key| key.kid == kid)
        .expect("the token's kid is in the JWKS");
    let key = DecodingKey::from_rsa_components(&jwk.n, &jwk.e).unwrap();
    decode::<AccessClaims>(token, &key, &validation(Algorithm::RS256))
        .unwrap()
        .claims
}

/// What a verifier with the default settings checks.
fn validation(algorithm: Algorithm) -> jsonwebtoken::Validation {
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.validate_nbf = true;
    validation.set_issuer(&["protomesh"]);
    validation.set_audience(&["protomesh"]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    validation
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn register_login_refresh_and_get_me_round_trip() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let user = h
            .register("Ada.Lovelace@Example.ORG", " Ada ", PASSWORD)
            .await
            .unwrap();
        assert_eq!(user.email, "ada.lovelace@example.org");
        assert_eq!(user.display_name, "Ada");
        assert_eq!(user.roles, vec!["user"]);
        assert!(user.created_at.is_some());
        assert!(uuid::Uuid::parse_str(&user.id).is_ok());

        // Any case and surrounding spaces log in to the same account.
        let pair = h
            .login("ADA.lovelace@example.org  ", PASSWORD)
            .await
            .unwrap();
        assert_eq!(pair.token_type, "Bearer");
        assert_eq!(pair.expires_in, 900);
        assert_eq!(pair.refresh_token.len(), 43);

        let jwks = h.service.jwks().await;
        assert_eq!(jwks.keys.len(), 1);
        let jwk = &jwks.keys[0];
        assert_eq!(
            (
                jwk.kty.as_str(),
                jwk.r#use.as_str(),
                jwk.alg.as_str(),
                jwk.e.as_str()
            ),
            ("RSA", "sig", "RS256", "AQAB")
        );
        assert_eq!(jwk.kid, thumbprint(test_rsa_key()));
        let claims = verify_with_jwks(&pair.access_token, &jwks);
        assert_eq!(claims.sub, user.id);
        assert_eq!(claims.iss, "protomesh");
        assert_eq!(claims.aud, "protomesh");
        assert_eq!(claims.roles, vec!["user"]);
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(claims.nbf, claims.iat);
        assert!(claims.iat.abs_diff(now_secs()) <= 5, "{claims:?}");
        assert!(uuid::Uuid::parse_str(&claims.jti).is_ok());

        let refreshed = h.refresh(&pair.refresh_token).await.unwrap();
        assert_ne!(refreshed.refresh_token, pair.refresh_token);
        let again = verify_with_jwks(&refreshed.access_token, &jwks);
        assert_eq!(again.sub, user.id);
        assert_ne!(again.jti, claims.jti);

        // GetMe: the subject the gateway verified.
        let me = h.me(Some(&claims.sub)).await.unwrap();
        assert_eq!(me, user);
        let status = h.me(None).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        // Identity metadata set by the caller proves nothing: the runtime removes it.
        let mut spoofed = Request::new(GetMeRequest {});
        spoofed
            .metadata_mut()
            .insert(identity::SUBJECT, claims.sub.parse().unwrap());
        spoofed
            .metadata_mut()
            .insert(identity::AUTH_METHOD, "jwt".parse().unwrap());
        let status = h.client().get_me(spoofed).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = h
            .me(Some(&uuid::Uuid::new_v4().to_string()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let status = h.me(Some("ci-api-key")).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");

        // The handler also answers without the network in between.
        let direct = h
            .service
            .handler
            .get_jwks(Request::new(GetJwksRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(direct, jwks);
    })
    .await;
}

#[tokio::test]
async fn admin_emails_get_the_admin_role_at_registration() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::with(Options {
            admin_emails: vec![" Root@Example.org".into()],
            ..Options::default()
        })
        .await;
        let root = h
            .register("root@EXAMPLE.org", "Root", PASSWORD)
            .await
            .unwrap();
        assert_eq!(root.roles, vec!["user", "admin"]);
        let plain = h
            .register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        assert_eq!(plain.roles, vec!["user"]);
        let pair = h.login("root@example.org", PASSWORD).await.unwrap();
        let claims = verify_with_jwks(&pair.access_token, &h.service.jwks().await);
        assert_eq!(claims.roles, vec!["user", "admin"]);
    })
    .await;
}

#[tokio::test]
async fn a_taken_email_is_already_exists_whatever_its_case() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        h.register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        let status = h
            .register("ADA@example.org", "Other Ada", "another password!")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(
            status.message().starts_with("email"),
            "{}",
            status.message()
        );
        // The first account is untouched.
        assert!(h.login("ada@example.org", PASSWORD).await.is_ok());
        assert_eq!(
            h.login("ada@example.org", "another password!")
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
    })
    .await;
}

#[tokio::test]
async fn bad_requests_name_their_fields_and_never_echo_secrets() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let status = h.register("not-an-email", "", "hunter2").await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(
            violation_fields(&status),
            vec!["email", "display_name", "password"]
        );
        assert!(
            !status.message().contains("hunter2"),
            "{}",
            status.message()
        );

        let long_name = "n".repeat(101);
        let status = h
            .register("ada@example.org", &long_name, &"p".repeat(1025))
            .await
            .unwrap_err();
        assert_eq!(violation_fields(&status), vec!["display_name", "password"]);
        let status = h
            .register(&format!("{}@example.org", "a".repeat(250)), "Ada", PASSWORD)
            .await
            .unwrap_err();
        assert_eq!(violation_fields(&status), vec!["email"]);
        // An address is taken as sent: surrounding spaces are not part of one.
        let status = h
            .register(" ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap_err();
        assert_eq!(violation_fields(&status), vec!["email"]);

        let status = h.login("", "").await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violation_fields(&status), vec!["email", "password"]);

        let status = h.refresh("").await.unwrap_err();
        assert_eq!(violation_fields(&status), vec!["refresh_token"]);

        // Nothing was written.
        let client = h.pool.get().await.unwrap();
        let count: i64 = client
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 0);
    })
    .await;
}

#[tokio::test]
async fn unknown_email_and_wrong_password_are_indistinguishable() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        h.register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        let wrong_password = h
            .login("ada@example.org", "not the password")
            .await
            .unwrap_err();
        let unknown_email = h
            .login("nobody@example.org", "not the password")
            .await
            .unwrap_err();
        for status in [&wrong_password, &unknown_email] {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert_eq!(status.message(), LOGIN_FAILED);
        }
        assert_eq!(wrong_password.code(), unknown_email.code());
        assert_eq!(wrong_password.message(), unknown_email.message());
        assert_eq!(wrong_password.details(), unknown_email.details());
        // A syntactically odd address is just unknown, too.
        let odd = h
            .login("not-an-address", "not the password")
            .await
            .unwrap_err();
        assert_eq!(
            (odd.code(), odd.message()),
            (Code::Unauthenticated, LOGIN_FAILED)
        );
    })
    .await;
}

#[tokio::test]
async fn hs256_tokens_verify_with_the_shared_secret() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::with(Options {
            source: KeySource::HmacSecret(SecretBytes::new(HS256_SECRET.to_vec())),
            ..Options::default()
        })
        .await;
        let user = h
            .register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        let pair = h.login("ada@example.org", PASSWORD).await.unwrap();
        let header = decode_header(&pair.access_token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        let claims = decode::<AccessClaims>(
            &pair.access_token,
            &DecodingKey::from_secret(HS256_SECRET),
            &validation(Algorithm::HS256),
        )
        .unwrap()
        .claims;
        assert_eq!(claims.sub, user.id);
        assert_eq!(claims.roles, vec!["user"]);
        assert!(decode::<AccessClaims>(
            &pair.access_token,
            &DecodingKey::from_secret(b"some-other-secret-that-is-long-enough!!"),
            &validation(Algorithm::HS256),
        )
        .is_err());
        assert!(h.service.jwks().await.keys.is_empty());
    })
    .await;
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        let user = h
            .register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        let first = h.login("ada@example.org", PASSWORD).await.unwrap();
        let other_device = h.login("ada@example.org", PASSWORD).await.unwrap();

        // Only hashes are stored.
        let client = h.pool.get().await.unwrap();
        let stored: Vec<Vec<u8>> = client
            .query("SELECT token_hash FROM refresh_tokens", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(stored.len(), 2);
        assert!(stored.contains(&refresh_token_hash(&first.refresh_token).to_vec()));
        assert!(!stored.contains(&first.refresh_token.as_bytes().to_vec()));

        // Rotation: the old token is spent, the new one works.
        let second = h.refresh(&first.refresh_token).await.unwrap();
        let third = h.refresh(&second.refresh_token).await.unwrap();

        // Reuse of a spent token: refused, and every live token of the user is revoked.
        let status = h.refresh(&first.refresh_token).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, REFRESH_FAILED)
        );
        for revoked in [&third.refresh_token, &other_device.refresh_token] {
            let status = h.refresh(revoked).await.unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert_eq!(status.message(), REFRESH_FAILED);
        }
        let live: i64 = client
            .query_one(
                "SELECT count(*) FROM refresh_tokens WHERE used_at IS NULL AND revoked_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(live, 0);

        // Unknown tokens are refused the same way; logging in again starts a new family.
        let status = h.refresh("never-issued").await.unwrap_err();
        assert_eq!(status.message(), REFRESH_FAILED);
        let fresh = h.login("ada@example.org", PASSWORD).await.unwrap();
        let rotated = h.refresh(&fresh.refresh_token).await.unwrap();
        let claims = verify_with_jwks(&rotated.access_token, &h.service.jwks().await);
        assert_eq!(claims.sub, user.id);

        // An expired token is refused.
        client
            .execute(
                "UPDATE refresh_tokens SET expires_at = clock_timestamp() - interval '1 second'
                 WHERE token_hash = $1",
                &[&refresh_token_hash(&rotated.refresh_token).as_slice()],
            )
            .await
            .unwrap();
        let status = h.refresh(&rotated.refresh_token).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, REFRESH_FAILED)
        );
        // Expired tokens are deleted at the next login.
        h.login("ada@example.org", PASSWORD).await.unwrap();
        let expired: i64 = client
            .query_one(
                "SELECT count(*) FROM refresh_tokens WHERE expires_at <= clock_timestamp()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(expired, 0);
    })
    .await;
}

/// Asserts `status` is a rate-limit refusal with a `RetryInfo` of 1..=`max` seconds and the
/// matching `retry-after` and `ratelimit-*` metadata for a quota of `limit`.
fn assert_refused(status: &tonic::Status, limit: u32, max: Duration) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = retry_delay(status).expect("a RetryInfo detail");
    assert!(delay >= Duration::from_secs(1) && delay <= max, "{delay:?}");
    let metadata = status.metadata();
    let number = |name: &str| -> u64 {
        metadata
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {metadata:?}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(number(RETRY_AFTER), delay.as_secs());
    assert_eq!(number(RATELIMIT_LIMIT), u64::from(limit));
    assert_eq!(number(RATELIMIT_REMAINING), 0);
    assert!(number(RATELIMIT_RESET) >= 1, "{metadata:?}");
}

#[tokio::test]
async fn the_sixth_failure_on_one_account_from_one_client_is_refused() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        h.register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        h.register("bob@example.org", "Bob", PASSWORD)
            .await
            .unwrap();
        // Five failures, with successes in between: the successes count for nothing.
        for attempt in 0..10 {
            let password = if attempt % 2 == 0 {
                PASSWORD
            } else {
                "wrong password"
            };
            let result = h.login("ada@example.org", password).await;
            if attempt % 2 == 0 {
                assert!(result.is_ok(), "attempt {attempt}: {result:?}");
            } else {
                assert_eq!(result.unwrap_err().code(), Code::Unauthenticated);
            }
        }
        let status = h.login("ADA@example.org", PASSWORD).await.unwrap_err();
        assert_refused(&status, 5, Duration::from_secs(60));
        // Other accounts from the same address are not affected.
        assert!(h.login("bob@example.org", PASSWORD).await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn a_strangers_failures_do_not_lock_the_owner_out() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        h.register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        let (a, b) = (Some("203.0.113.66"), Some("198.51.100.7"));
        let mut codes = Vec::new();
        for _ in 0..10 {
            let status = h
                .login_from("ada@example.org", "wrong password", a)
                .await
                .unwrap_err();
            codes.push(status.code());
        }
        assert_eq!(codes[..5], [Code::Unauthenticated; 5]);
        assert_eq!(codes[5..], [Code::ResourceExhausted; 5]);
        // The owner, from another address and without a device token, gets in.
        h.login_from("ada@example.org", PASSWORD, b).await.unwrap();
        // Client A is refused even with the right password.
        let status = h
            .login_from("ada@example.org", PASSWORD, a)
            .await
            .unwrap_err();
        assert_refused(&status, 5, Duration::from_secs(60));
        assert!(status.message().contains("client"), "{}", status.message());
    })
    .await;
}

#[tokio::test]
async fn right_passwords_use_no_failure_quota() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        h.register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        let ip = Some("203.0.113.5");
        for n in 0..10 {
            let result = h.login_from("ada@example.org", PASSWORD, ip).await;
            assert!(result.is_ok(), "login {n}: {result:?}");
        }
        // All five failures are still there for this client.
        for n in 0..5 {
            let status = h
                .login_from("ada@example.org", "wrong password", ip)
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "failure {n}");
        }
        let status = h
            .login_from("ada@example.org", "wrong password", ip)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        // Concurrent wrong guesses from one new client: exactly five are checked.
        let mut guesses = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let mut client = h.client();
            let mut request = Request::new(LoginRequest {
                email: "ada@example.org".into(),
                password: "wrong password".into(),
                device_token: String::new(),
            });
            request
                .metadata_mut()
                .insert(identity::CLIENT_IP, "203.0.113.6".parse().unwrap());
            guesses.spawn(async move { client.login(request).await.unwrap_err().code() });
        }
        let codes: Vec<Code> = guesses.join_all().await;
        let checked = codes
            .iter()
            .filter(|c| **c == Code::Unauthenticated)
            .count();
        assert_eq!(checked, 5, "{codes:?}");
    })
    .await;
}

#[tokio::test]
async fn past_the_account_ceiling_only_the_owners_device_gets_in() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::with(Options {
            quotas: LoginQuotas {
                per_account: "8/15m".parse().unwrap(),
                ..test_quotas()
            },
            ..Options::default()
        })
        .await;
        h.register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        h.register("bob@example.org", "Bob", PASSWORD)
            .await
            .unwrap();
        // Earlier logins: Ada's device and Bob's each got a device token, stored as a hash.
        let ada = h.login("ada@example.org", PASSWORD).await.unwrap();
        let bob = h.login("bob@example.org", PASSWORD).await.unwrap();
        assert_eq!(ada.device_token.len(), 43);
        assert_ne!(ada.device_token, bob.device_token);
        let client = h.pool.get().await.unwrap();
        let stored: Vec<Vec<u8>> = client
            .query("SELECT token_hash FROM device_tokens", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(stored.len(), 2);
        assert!(stored.contains(&device_token_hash(&ada.device_token).to_vec()));
        assert!(!stored.contains(&ada.device_token.as_bytes().to_vec()));

        // Eight failures spread over four addresses: each address is far from its own limits,
        // the account's ceiling is reached.
        for n in 0..8 {
            let ip = format!("203.0.113.{}", n / 2 + 10);
            let status = h
                .login_from("ada@example.org", "wrong password", Some(&ip))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "failure {n}");
        }
        // Without a device token, even the right password from a fresh address is refused.
        let fresh = Some("198.51.100.20");
        let status = h
            .login_from("ada@example.org", PASSWORD, fresh)
            .await
            .unwrap_err();
        assert_refused(&status, 8, Duration::from_secs(15 * 60));
        // A made-up token, and another account's real one, are no device token of Ada's.
        for token in ["A".repeat(43), bob.device_token.clone(), "short".to_owned()] {
            let status = h
                .login_with("ada@example.org", PASSWORD, fresh, &token)
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        }
        // The owner's device gets in, from any address, and its token is replaced.
        let again = h
            .login_with("ada@example.org", PASSWORD, fresh, &ada.device_token)
            .await
            .unwrap();
        assert_ne!(again.device_token, ada.device_token);
        let status = h
            .login_with("ada@example.org", PASSWORD, fresh, &ada.device_token)
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "the old token is spent"
        );
        // The device's own wrong passwords are limited per device, not by the ceiling.
        for n in 0..5 {
            let status = h
                .login_with("ada@example.org", "wrong", fresh, &again.device_token)
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "device failure {n}");
        }
        let status = h
            .login_with("ada@example.org", PASSWORD, fresh, &again.device_token)
            .await
            .unwrap_err();
        assert_refused(&status, 5, Duration::from_secs(60));
        // Bob's account has a ceiling of its own.
        h.login_from("bob@example.org", PASSWORD, fresh)
            .await
            .unwrap();

        // An expired device token is no device token.
        client
            .execute(
                "UPDATE device_tokens SET expires_at = clock_timestamp() - interval '1 second'",
                &[],
            )
            .await
            .unwrap();
        let status = h
            .login_with(
                "bob@example.org",
                "wrong",
                Some("198.51.100.21"),
                &bob.device_token,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let expired: i64 = client
            .query_one(
                "SELECT count(*) FROM device_tokens WHERE expires_at <= clock_timestamp()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(expired >= 1);
        // A successful login deletes the user's expired device tokens.
        let last = h.login("bob@example.org", PASSWORD).await.unwrap();
        let bobs: Vec<Vec<u8>> = client
            .query(
                "SELECT d.token_hash FROM device_tokens d JOIN users u ON u.id = d.user_id
                 WHERE u.email = 'bob@example.org'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(bobs, vec![device_token_hash(&last.device_token).to_vec()]);
    })
    .await;
}

#[tokio::test]
async fn one_address_is_limited_across_accounts() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::start().await;
        h.register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        let attacker = Some("203.0.113.66");
        for n in 0..20 {
            let status = h
                .login_from(&format!("guess{n}@example.org"), "wrong password", attacker)
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "attempt {n}: {status:?}"
            );
        }
        let status = h
            .login_from("ada@example.org", PASSWORD, attacker)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("address"), "{}", status.message());
        assert!(retry_delay(&status).is_some());
        // Another address (and the account itself) are fine.
        assert!(h
            .login_from("ada@example.org", PASSWORD, Some("198.51.100.7"))
            .await
            .is_ok());
    })
    .await;
}

#[tokio::test]
async fn instances_on_one_database_share_the_generated_signing_key() {
    bounded(TEST_TIMEOUT, async {
        let h = Harness::with(Options {
            source: KeySource::Stored,
            ..Options::default()
        })
        .await;
        let other = h
            .another_instance(Options {
                source: KeySource::Stored,
                ..Options::default()
            })
            .await;
        let client = h.pool.get().await.unwrap();
        let stored: Vec<String> = client
            .query("SELECT kid FROM signing_keys WHERE active", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(stored.len(), 1, "one key for all instances");
        let (jwks, other_jwks) = (h.service.jwks().await, other.jwks().await);
        assert_eq!(jwks, other_jwks);
        assert_eq!(jwks.keys[0].kid, stored[0]);
        assert_eq!(
            h.service.handler.issuer().keys().kid(),
            Some(stored[0].as_str())
        );

        let user = h
            .register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        let pair = h.login("ada@example.org", PASSWORD).await.unwrap();
        assert_eq!(
            verify_with_jwks(&pair.access_token, &other_jwks).sub,
            user.id
        );
        let from_other = other
            .client()
            .login(LoginRequest {
                email: "ada@example.org".into(),
                password: PASSWORD.into(),
                device_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            verify_with_jwks(&from_other.access_token, &jwks).sub,
            user.id
        );
        // A refresh token from one instance works on the other.
        other
            .client()
            .refresh(RefreshRequest {
                refresh_token: pair.refresh_token,
            })
            .await
            .unwrap();

        // Instances starting at the same time on a fresh database agree too.
        let db = TestDatabase::create().await.unwrap();
        let config = db.config().with_default_schema("users");
        let pool = data::connect_pool(&config).unwrap();
        data::migrate(&pool, "users", MIGRATIONS).await.unwrap();
        let (a, b) = tokio::join!(
            SigningKeys::load(&KeySource::Stored, &pool),
            SigningKeys::load(&KeySource::Stored, &pool)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.jwks(), b.jwks());
        let count: i64 = pool
            .get()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM signing_keys", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 1);
        drop(pool);
    })
    .await;
}

#[tokio::test]
async fn a_key_file_signs_and_is_published() {
    bounded(TEST_TIMEOUT, async {
        let dir = std::env::temp_dir().join(format!("users-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwt.pem");
        std::fs::write(&path, test_rsa_pem().expose()).unwrap();
        let source = KeySource::rsa_pem_file(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!format!("{source:?}").contains("PRIVATE KEY"));

        let h = Harness::with(Options {
            source,
            ..Options::default()
        })
        .await;
        let jwks = h.service.jwks().await;
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.keys[0].kid, thumbprint(test_rsa_key()));
        h.register("ada@example.org", "Ada", PASSWORD)
            .await
            .unwrap();
        let pair = h.login("ada@example.org", PASSWORD).await.unwrap();
        verify_with_jwks(&pair.access_token, &jwks);
        // Nothing was stored: the file is the key.
        let count: i64 = h
            .pool
            .get()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM signing_keys", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 0);
    })
    .await;
}

#[tokio::test]
async fn a_database_that_is_down_answers_unavailable() {
    bounded(TEST_TIMEOUT, async {
        let port = closed_port();
        let config = unreachable_database(port);
        let pool = data::connect_pool(&config).unwrap();
        let keys = SigningKeys::hmac(&SecretBytes::new(HS256_SECRET.to_vec())).unwrap();
        let limits = LoginLimits::new(RateLimiter::local_only(), test_quotas());
        let handler = handler(pool, keys, limits, Vec::new()).await;
        let started = Instant::now();
        let status = handler
            .register(Request::new(RegisterRequest {
                email: "ada@example.org".into(),
                display_name: "Ada".into(),
                password: PASSWORD.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let status = handler
            .login(Request::new(LoginRequest {
                email: "ada@example.org".into(),
                password: PASSWORD.into(),
                device_token: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let status = handler
            .refresh(Request::new(RefreshRequest {
                refresh_token: "some-token".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let mut me = Request::new(GetMeRequest {});
        protomesh::auth::testing::verified_as(&mut me, &uuid::Uuid::new_v4().to_string(), &[]);
        let status = handler.get_me(me).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // No secret in what the caller is told.
        assert!(!status.message().contains(PASSWORD));
        // The JWKS needs no database (and is empty for HS256).
        let jwks = handler
            .get_jwks(Request::new(GetJwksRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert!(jwks.keys.is_empty());
    })
    .await;
}
