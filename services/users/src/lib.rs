//! The users service: accounts, logins and the tokens the gateway verifies, on Postgres (schema
//! `users`), with login rate limits in Redis.
//!
//! | call | does | fails with |
//! |---|---|---|
//! | `Register` | checks email, display name and password; hashes the password (argon2id); inserts the account with role `user` (and `admin` for `--admin-email` addresses) | `INVALID_ARGUMENT` naming the fields; `ALREADY_EXISTS` naming `email` |
//! | `Login` | checks the login limits ([`limits`]: failures per client on the account, where a valid device token names the client; attempts per address; failures per account from clients without a device token); verifies the password; issues an access token, a refresh token and a device token | `UNAUTHENTICATED` with one message for an unknown email and a wrong password; `RESOURCE_EXHAUSTED` with `RetryInfo` and `retry-after`/`ratelimit-*` metadata |
//! | `Refresh` | exchanges a live refresh token for a new pair, marking the old one used | `UNAUTHENTICATED` for an unknown, used, revoked or expired token |
//! | `GetJwks` | the public keys of the RS256 signing keys (empty for HS256) | |
//! | `GetMe` | the account of the subject the gateway verified (`x-protomesh-subject`) | `UNAUTHENTICATED` without one; `NOT_FOUND` when it is not (or no longer) an account |
//!
//! **Login answers leak nothing.** An unknown email and a wrong password give the same code and
//! message, and take about the same time: for an unknown email the password is checked against a
//! dummy argon2id hash with the same parameters ([`password`]).
//!
//! **Refresh tokens rotate.** Each is single use: `Refresh` marks it used and hands out a new
//! pair. Presenting a token that was already used means two parties hold it (the legitimate
//! client and a thief, in either order), so the service then revokes every other live refresh
//! token of that user: both parties must log in again, and the thief's copy is dead. Two
//! concurrent `Refresh` calls with one token are the same case (the row is locked, the second
//! sees it used). Expired tokens are deleted at the user's next login.
//!
//! **Strangers cannot lock an owner out.** Only failed logins count per account, and per client
//! on it: a client past its quota is refused on that account, nobody else is. Past the
//! account's ceiling, only devices that logged in to it before (they present the device token
//! that login returned) are still let in ([`limits`]).
//!
//! **Secrets stay secret.** Passwords, hashes, tokens and keys appear in no log line, no error
//! message and no `Debug` output; refresh and device tokens are stored only as SHA-256 hashes.
#![forbid(unsafe_code)]

/// Rust code generated from the service's protos by `build.rs` (`protomesh_build`), and
/// `FILE_DESCRIPTOR_SET`, their encoded descriptor set (served over reflection).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    ::protomesh::include_protos!();
}

pub mod keys;
pub mod limits;
pub mod migrations;
pub mod model;
pub mod password;
pub mod tokens;
pub mod validate;

use std::time::Duration;

use crate::proto::protomesh::users::v1::{
    users_service_server::UsersService, GetJwksRequest, GetMeRequest, Jwks, LoginRequest,
    RefreshRequest, RegisterRequest, TokenPair, User,
};
use protomesh::identity::Identity;
use protomesh_data::db_error;
use protomesh_data::deadpool_postgres::{Object, Pool};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use limits::{LoginClient, LoginLimits};
use model::{roles_for, user_columns, UserRecord};
use password::PasswordHasher;
use tokens::{
    AccessTokenIssuer, DeviceToken, RefreshToken, DEFAULT_DEVICE_TOKEN_TTL,
    DEFAULT_REFRESH_TOKEN_TTL,
};

pub use crate::proto::protomesh::users::v1::users_service_server::UsersServiceServer;
pub use migrations::MIGRATIONS;

/// The service's name in Consul, its Postgres schema and its migrations' name.
pub const SERVICE: &str = "users";

/// The one message of every failed login.
pub const LOGIN_FAILED: &str = "email or password is wrong";

/// The one message of every refused refresh.
pub const REFRESH_FAILED: &str = "the refresh token is not valid; log in again";

/// `token_type` of every token pair.
pub const TOKEN_TYPE: &str = "Bearer";

const INSERT_USER: &str = concat!(
    "INSERT INTO users (id, email, display_name, password_hash, roles)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (email) DO NOTHING
    RETURNING ",
    user_columns!()
);

const SELECT_USER: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");

const SELECT_LOGIN: &str = "SELECT id, roles, password_hash FROM users WHERE email = $1";

const DELETE_EXPIRED_TOKENS: &str =
    "DELETE FROM refresh_tokens WHERE user_id = $1 AND expires_at <= clock_timestamp()";

/// `$3` is the lifetime in microseconds.
const INSERT_REFRESH_TOKEN: &str = "INSERT INTO refresh_tokens (token_hash, user_id, expires_at)
    VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 microsecond')";

const LOCK_REFRESH_TOKEN: &str =
    "SELECT t.user_id, t.used_at IS NOT NULL, t.revoked_at IS NOT NULL,
        t.expires_at <= clock_timestamp(), u.roles
    FROM refresh_tokens t JOIN users u ON u.id = t.user_id
    WHERE t.token_hash = $1
    FOR UPDATE OF t";

const USE_REFRESH_TOKEN: &str =
    "UPDATE refresh_tokens SET used_at = clock_timestamp() WHERE token_hash = $1";

/// Whether `$1` is the hash of a live device token of the account with email `$2`.
const VALID_DEVICE_TOKEN: &str = "SELECT EXISTS (
    SELECT 1 FROM device_tokens d JOIN users u ON u.id = d.user_id
    WHERE d.token_hash = $1 AND u.email = $2 AND d.expires_at > clock_timestamp())";

/// `$2` is the hash of the device token the login presented (if any): it is replaced.
const DELETE_SPENT_DEVICE_TOKENS: &str = "DELETE FROM device_tokens
    WHERE user_id = $1 AND (expires_at <= clock_timestamp() OR token_hash = $2)";

/// `$3` is the lifetime in microseconds.
const INSERT_DEVICE_TOKEN: &str = "INSERT INTO device_tokens (token_hash, user_id, expires_at)
    VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 microsecond')";

const REVOKE_LIVE_TOKENS: &str = "UPDATE refresh_tokens SET revoked_at = clock_timestamp()
    WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL";

/// What the handler is configured with besides its keys, limits and hasher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSettings {
    /// Accounts registered with one of these (normalized) addresses get the `admin` role.
    pub admin_emails: Vec<String>,
    /// How long a refresh token is good for.
    pub refresh_token_ttl: Duration,
    /// How long a device token is good for.
    pub device_token_ttl: Duration,
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            admin_emails: Vec::new(),
            refresh_token_ttl: DEFAULT_REFRESH_TOKEN_TTL,
            device_token_ttl: DEFAULT_DEVICE_TOKEN_TTL,
        }
    }
}

/// The gRPC handler of `protomesh.users.v1.UsersService`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UsersHandler {
    pool: Pool,
    issuer: AccessTokenIssuer,
    hasher: PasswordHasher,
    limits: LoginLimits,
    settings: AccountSettings,
}

/// An internal failure: logged (the error never holds a secret), answered without details.
fn internal(what: &str, err: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %err, "{what} failed");
    Status::internal(format!("{what} failed"))
}

impl UsersHandler {
    /// A handler on `pool` (migrated with [`MIGRATIONS`]) signing with `issuer`, hashing with
    /// `hasher`, limiting logins with `limits`.
    pub fn new(
        pool: Pool,
        issuer: AccessTokenIssuer,
        hasher: PasswordHasher,
        limits: LoginLimits,
        settings: AccountSettings,
    ) -> Self {
        Self {
            pool,
            issuer,
            hasher,
            limits,
            settings: AccountSettings {
                admin_emails: settings
                    .admin_emails
                    .iter()
                    .map(|email| validate::normalize_email(email))
                    .filter(|email| !email.is_empty())
                    .collect(),
                ..settings
            },
        }
    }

    /// The issuer of access tokens (and its keys).
    pub fn issuer(&self) -> &AccessTokenIssuer {
        &self.issuer
    }

    /// A connection from the pool (`UNAVAILABLE` within `--db-timeout` when the database is down).
    async fn connection(&self, what: &'static str) -> Result<Object, Status> {
        self.pool.get().await.map_err(db_error(what))
    }

    /// An access token for `user` with `roles` and a new refresh token, stored through `tx`.
    async fn issue_pair(
        &self,
        tx: &protomesh_data::deadpool_postgres::Transaction<'_>,
        user: Uuid,
        roles: &[String],
    ) -> Result<TokenPair, Status> {
        let refresh = RefreshToken::generate();
        let ttl_micros =
            i64::try_from(self.settings.refresh_token_ttl.as_micros()).unwrap_or(i64::MAX);
        let statement = tx
            .prepare_cached(INSERT_REFRESH_TOKEN)
            .await
            .map_err(db_error("refresh token"))?;
        tx.execute(&statement, &[&refresh.hash.as_slice(), &user, &ttl_micros])
            .await
            .map_err(db_error("refresh token"))?;
        let access_token = self
            .issuer
            .issue(user, roles)
            .map_err(|err| internal("signing the access token", &err))?;
        Ok(TokenPair {
            access_token,
            token_type: TOKEN_TYPE.to_owned(),
            expires_in: i64::try_from(self.issuer.settings().access_token_ttl.as_secs())
                .unwrap_or(i64::MAX),
            refresh_token: refresh.token,
            device_token: String::new(),
        })
    }

    /// The stored hash of `token` when it is a live device token of the account with `email`.
    async fn valid_device_token(
        &self,
        email: &str,
        token: &str,
    ) -> Result<Option<[u8; 32]>, Status> {
        if !tokens::is_device_token_shaped(token) {
            return Ok(None);
        }
        let hash = tokens::device_token_hash(token);
        let client = self.connection("device token").await?;
        let statement = client
            .prepare_cached(VALID_DEVICE_TOKEN)
            .await
            .map_err(db_error("device token"))?;
        let valid: bool = client
            .query_one(&statement, &[&hash.as_slice(), &email])
            .await
            .map_err(db_error("device token"))?
            .get(0);
        Ok(valid.then_some(hash))
    }

    /// Checks `password` against the account with `email`; when it matches, issues a token pair
    /// with a new device token (replacing `device`, the one the login presented). `None`: the
    /// email is unknown or the password wrong.
    async fn verify_and_issue(
        &self,
        email: &str,
        password: String,
        device: Option<&[u8; 32]>,
    ) -> Result<Option<(Uuid, TokenPair)>, Status> {
        let row = {
            // Not held while the password is checked: hashing may wait for a permit.
            let client = self.connection("user").await?;
            let statement = client
                .prepare_cached(SELECT_LOGIN)
                .await
                .map_err(db_error("user"))?;
            client
                .query_opt(&statement, &[&email])
                .await
                .map_err(db_error("user"))?
        };
        let (account, stored_hash) = match row {
            Some(row) => {
                let id: Uuid = row.get(0);
                let roles: Vec<String> = row.get(1);
                (Some((id, roles)), Some(row.get::<_, String>(2)))
            }
            None => (None, None),
        };
        // The same work whether the account exists or not: see `PasswordHasher::verify`.
        let matches = self
            .hasher
            .verify(password, stored_hash)
            .await
            .map_err(|err| internal("checking the password", &err))?;
        let Some((id, roles)) = account.filter(|_| matches) else {
            return Ok(None);
        };

        let mut client = self.connection("refresh token").await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("refresh token"))?;
        tx.execute(DELETE_EXPIRED_TOKENS, &[&id])
            .await
            .map_err(db_error("refresh token"))?;
        let mut pair = self.issue_pair(&tx, id, &roles).await?;
        let presented: &[u8] = device.map_or(&[], |hash| hash.as_slice());
        tx.execute(DELETE_SPENT_DEVICE_TOKENS, &[&id, &presented])
            .await
            .map_err(db_error("device token"))?;
        let device_token = DeviceToken::generate();
        let ttl_micros =
            i64::try_from(self.settings.device_token_ttl.as_micros()).unwrap_or(i64::MAX);
        tx.execute(
            INSERT_DEVICE_TOKEN,
            &[&device_token.hash.as_slice(), &id, &ttl_micros],
        )
        .await
        .map_err(db_error("device token"))?;
        tx.commit().await.map_err(db_error("refresh token"))?;
        pair.device_token = device_token.token;
        Ok(Some((id, pair)))
    }
}

#[tonic::async_trait]
impl UsersService for UsersHandler {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<User>, Status> {
        let request = request.into_inner();
        // Checked against the declared rules already (an address, a display name that is not
        // blank, a password of 12..1024 characters); what is kept is normalized.
        let email = validate::normalize_email(&request.email);
        let display_name = request.display_name.trim().to_owned();

        let password_hash = self
            .hasher
            .hash(request.password)
            .await
            .map_err(|err| internal("hashing the password", &err))?;
        let roles = roles_for(&email, &self.settings.admin_emails);
        let id = Uuid::new_v4();
        let client = self.connection("user").await?;
        let statement = client
            .prepare_cached(INSERT_USER)
            .await
            .map_err(db_error("user"))?;
        let row = client
            .query_opt(
                &statement,
                &[&id, &email, &display_name, &password_hash, &roles],
            )
            .await
            .map_err(db_error("user"))?;
        let Some(row) = row else {
            return Err(Status::already_exists(
                "email: an account with this email already exists",
            ));
        };
        let user = UserRecord::from_row(&row);
        tracing::info!(user = %user.id, roles = ?user.roles, "account registered");
        Ok(Response::new(user.to_proto()))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<TokenPair>, Status> {
        let address = limits::client_address(
            request.metadata(),
            request.remote_addr().map(|addr| addr.ip()),
        );
        let request = request.into_inner();
        // Given and bounded (the declared rules); no syntax check: an address that could not
        // register is simply unknown.
        let email = validate::normalize_email(&request.email);

        // A device token that is not a live one of this account counts as none.
        let device = match request.device_token.as_str() {
            "" => None,
            token => self.valid_device_token(&email, token).await?,
        };
        let client = match &device {
            Some(hash) => LoginClient::Device(hash),
            None => LoginClient::Address(&address),
        };
        let attempt = self.limits.begin(&email, &address, client).await?;
        match self
            .verify_and_issue(&email, request.password, device.as_ref())
            .await
        {
            Ok(Some((id, pair))) => {
                attempt.refund().await;
                tracing::info!(user = %id, device = device.is_some(), "logged in");
                Ok(Response::new(pair))
            }
            Ok(None) => {
                attempt.failed();
                tracing::info!(%address, device = device.is_some(), "login failed");
                Err(Status::unauthenticated(LOGIN_FAILED))
            }
            Err(status) => {
                // Not a wrong password: the attempt uses no failure quota.
                attempt.refund().await;
                Err(status)
            }
        }
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let token = request.into_inner().refresh_token;
        let hash = tokens::refresh_token_hash(&token);

        let mut client = self.connection("refresh token").await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("refresh token"))?;
        let statement = tx
            .prepare_cached(LOCK_REFRESH_TOKEN)
            .await
            .map_err(db_error("refresh token"))?;
        let Some(row) = tx
            .query_opt(&statement, &[&hash.as_slice()])
            .await
            .map_err(db_error("refresh token"))?
        else {
            return Err(Status::unauthenticated(REFRESH_FAILED));
        };
        let user: Uuid = row.get(0);
        let (used, revoked, expired): (bool, bool, bool) = (row.get(1), row.get(2), row.get(3));
        let roles: Vec<String> = row.get(4);
        if used {
            // Someone presents a token that was already exchanged: whoever holds the new pair
            // may be a thief. Revoke everything still live for this user.
            let revoked = tx
                .execute(REVOKE_LIVE_TOKENS, &[&user])
                .await
                .map_err(db_error("refresh token"))?;
            tx.commit().await.map_err(db_error("refresh token"))?;
            tracing::warn!(
                %user,
                revoked,
                "a used refresh token was presented again: revoked the user's live refresh tokens"
            );
            return Err(Status::unauthenticated(REFRESH_FAILED));
        }
        if revoked || expired {
            return Err(Status::unauthenticated(REFRESH_FAILED));
        }
        tx.execute(USE_REFRESH_TOKEN, &[&hash.as_slice()])
            .await
            .map_err(db_error("refresh token"))?;
        let pair = self.issue_pair(&tx, user, &roles).await?;
        tx.commit().await.map_err(db_error("refresh token"))?;
        tracing::debug!(%user, "refresh token rotated");
        Ok(Response::new(pair))
    }

    async fn get_jwks(&self, _request: Request<GetJwksRequest>) -> Result<Response<Jwks>, Status> {
        Ok(Response::new(self.issuer.keys().jwks().clone()))
    }

    async fn get_me(&self, request: Request<GetMeRequest>) -> Result<Response<User>, Status> {
        let Some(identity) = Identity::from_metadata(request.metadata()) else {
            return Err(Status::unauthenticated("no verified caller"));
        };
        let not_found = || Status::not_found(format!("user {} not found", identity.subject));
        // API keys have names, not user ids: they are no account.
        let Ok(id) = Uuid::parse_str(&identity.subject) else {
            return Err(not_found());
        };
        let client = self.connection("user").await?;
        let statement = client
            .prepare_cached(SELECT_USER)
            .await
            .map_err(db_error("user"))?;
        let row = client
            .query_opt(&statement, &[&id])
            .await
            .map_err(db_error("user"))?;
        let user = row
            .as_ref()
            .map(UserRecord::from_row)
            .ok_or_else(not_found)?;
        Ok(Response::new(user.to_proto()))
    }
}
