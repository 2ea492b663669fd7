//! The `users` binary: parses the common serve and data options and the token, password and
//! login-limit settings, prepares the database (creates it if missing, migrates the `users`
//! schema), loads or creates the signing key, and serves the users service with the mesh runtime
//! until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use jsonwebtoken::{Algorithm, DecodingKey};
use protomesh::auth::{AuthConfig, Authenticator};
use protomesh::service::{Context, Service};
use protomesh_data::ratelimit::{Quota, RateLimiter};
use protomesh_data::{self as data, DataConfig, DataError};
use protomesh_users::keys::{KeyError, KeySource, SigningKeys};
use protomesh_users::limits::{
    LoginLimits, LoginQuotas, DEFAULT_ACCOUNT_QUOTA, DEFAULT_ACCOUNT_TOTAL_QUOTA, DEFAULT_IP_QUOTA,
};
use protomesh_users::password::{PasswordError, PasswordHasher, PasswordParams};
use protomesh_users::tokens::{AccessTokenIssuer, TokenSettings};
use protomesh_users::{AccountSettings, UsersHandler, UsersServiceServer, MIGRATIONS, SERVICE};

/// Accounts, logins, JWTs and the JWKS over gRPC (Postgres, Redis rate limits), registered in
/// Consul.
#[derive(Debug, Args)]
struct Flags {
    #[command(flatten)]
    data: DataConfig,

    /// Accounts registered with this email get the `admin` role too (repeatable; the
    /// environment variable takes a comma-separated list).
    #[arg(
        long = "admin-email",
        env = "PROTOMESH_USERS_ADMIN_EMAILS",
        value_delimiter = ','
    )]
    admin_emails: Vec<String>,

    /// Failed logins allowed on one account per client: per device token, else per address
    /// (`LIMIT/PERIOD`).
    #[arg(long = "login-limit-account", env = "PROTOMESH_USERS_LOGIN_LIMIT_ACCOUNT", default_value = DEFAULT_ACCOUNT_QUOTA)]
    login_limit_account: Quota,

    /// Login attempts allowed per client address, on any account (`LIMIT/PERIOD`).
    #[arg(long = "login-limit-ip", env = "PROTOMESH_USERS_LOGIN_LIMIT_IP", default_value = DEFAULT_IP_QUOTA)]
    login_limit_ip: Quota,

    /// Failed logins allowed on one account by clients without a device token of it; past it,
    /// only logins with one are checked (`LIMIT/PERIOD`).
    #[arg(long = "login-limit-account-total", env = "PROTOMESH_USERS_LOGIN_LIMIT_ACCOUNT_TOTAL", default_value = DEFAULT_ACCOUNT_TOTAL_QUOTA)]
    login_limit_account_total: Quota,

    /// How tokens are signed: RS256 (RSA keys, published in the JWKS) or HS256 (a shared
    /// secret, `--jwt-secret-file`).
    #[arg(long = "jwt-algorithm", env = "PROTOMESH_JWT_ALGORITHM", value_enum, default_value_t = JwtAlgorithm::Rs256)]
    jwt_algorithm: JwtAlgorithm,

    /// RS256: the RSA private key (PEM, PKCS#1 or PKCS#8, at least 2048 bits). Without it, a key
    /// is generated once and kept in the database for every instance.
    #[arg(long = "jwt-private-key-file", env = "PROTOMESH_JWT_PRIVATE_KEY_FILE")]
    jwt_private_key_file: Option<PathBuf>,

    /// HS256: the file holding the shared secret (at least 32 bytes; trailing newline characters
    /// are not part of it).
    #[arg(long = "jwt-secret-file", env = "PROTOMESH_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,

    /// How long an access token is valid.
    #[arg(long = "access-token-ttl", env = "PROTOMESH_USERS_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    access_token_ttl: Duration,

    /// How long a refresh token is valid.
    #[arg(long = "refresh-token-ttl", env = "PROTOMESH_USERS_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = humantime::parse_duration)]
    refresh_token_ttl: Duration,

    /// How long a device token (handed out at each login) is valid.
    #[arg(long = "device-token-ttl", env = "PROTOMESH_USERS_DEVICE_TOKEN_TTL", default_value = "90d", value_parser = humantime::parse_duration)]
    device_token_ttl: Duration,

    /// argon2id memory per password hash, in KiB.
    #[arg(long = "password-memory-kib", env = "PROTOMESH_USERS_PASSWORD_MEMORY_KIB", default_value_t = PasswordParams::default().memory_kib)]
    password_memory_kib: u32,

    /// argon2id passes over the memory.
    #[arg(long = "password-iterations", env = "PROTOMESH_USERS_PASSWORD_ITERATIONS", default_value_t = PasswordParams::default().iterations)]
    password_iterations: u32,

    /// argon2id lanes.
    #[arg(long = "password-parallelism", env = "PROTOMESH_USERS_PASSWORD_PARALLELISM", default_value_t = PasswordParams::default().parallelism)]
    password_parallelism: u32,

    /// Password hashes computed at once (each holds its memory); 0: one per CPU.
    #[arg(
        long = "password-concurrency",
        env = "PROTOMESH_USERS_PASSWORD_CONCURRENCY",
        default_value_t = 0
    )]
    password_concurrency: usize,
}

/// `--jwt-algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum JwtAlgorithm {
    /// RSA signatures with SHA-256.
    #[value(name = "RS256", alias = "rs256")]
    Rs256,
    /// HMAC with SHA-256.
    #[value(name = "HS256", alias = "hs256")]
    Hs256,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{0}")]
    Data(#[from] DataError),
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Password(#[from] PasswordError),
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Serve(#[from] protomesh::server::ServeError),
}

fn main() -> ExitCode {
    Service::new(SERVICE, env!("CARGO_PKG_VERSION"))
        .about("Accounts, logins, JWTs and the JWKS over gRPC (Postgres, Redis rate limits), registered in Consul.")
        .flags::<Flags>()
        .run(run)
}

/// The signing key source the flags describe, or why they do not fit together.
fn key_source(cli: &Flags) -> Result<KeySource, StartError> {
    match (
        cli.jwt_algorithm,
        &cli.jwt_private_key_file,
        &cli.jwt_secret_file,
    ) {
        (JwtAlgorithm::Rs256, _, Some(_)) => Err(StartError::Settings(
            "--jwt-secret-file is for --jwt-algorithm HS256; RS256 uses --jwt-private-key-file (or a stored key)".to_owned(),
        )),
        (JwtAlgorithm::Rs256, Some(path), None) => Ok(KeySource::rsa_pem_file(path)?),
        (JwtAlgorithm::Rs256, None, None) => Ok(KeySource::Stored),
        (JwtAlgorithm::Hs256, Some(_), _) => Err(StartError::Settings(
            "--jwt-private-key-file is for --jwt-algorithm RS256; HS256 uses --jwt-secret-file"
                .to_owned(),
        )),
        (JwtAlgorithm::Hs256, None, Some(path)) => Ok(KeySource::hmac_secret_file(path)?),
        (JwtAlgorithm::Hs256, None, None) => Err(StartError::Settings(
            "--jwt-algorithm HS256 needs --jwt-secret-file".to_owned(),
        )),
    }
}

/// Verifies callers' tokens with the service's own keys (it is the JWKS every other process
/// fetches, so it needs no fetch itself), plus the API keys of `--api-keys-file`.
fn own_token_verifier(
    credentials: &protomesh::auth::CredentialArgs,
    hs256_secret_file: Option<&std::path::Path>,
    keys: &SigningKeys,
) -> Result<Authenticator, StartError> {
    let mut config = credentials
        .auth_config()
        .map_err(|err| StartError::Settings(err.to_string()))?;
    config.jwks = None;
    match (keys.algorithm(), hs256_secret_file) {
        (Algorithm::HS256, Some(path)) => {
            config.hs256_secret = Some(
                AuthConfig::read_hs256_secret(path)
                    .map_err(|err| StartError::Settings(err.to_string()))?,
            );
        }
        _ => {
            for jwk in &keys.jwks().keys {
                let key = DecodingKey::from_rsa_components(&jwk.n, &jwk.e)
                    .map_err(|err| StartError::Settings(format!("the signing key: {err}")))?;
                config.rsa_public_keys.push(key);
            }
        }
    }
    Ok(Authenticator::without_mesh(config))
}

async fn run(ctx: Context<Flags>) -> Result<(), StartError> {
    let server = ctx.server();
    let (serve, cli) = (ctx.serve, ctx.flags);
    let source = key_source(&cli)?;
    // A bad key file is refused before the database is touched.
    let file_keys = SigningKeys::from_material(&source)?;
    if cli.access_token_ttl < Duration::from_secs(1) {
        return Err(StartError::Settings(
            "--access-token-ttl must be at least 1s".to_owned(),
        ));
    }
    if cli.refresh_token_ttl < Duration::from_secs(1) {
        return Err(StartError::Settings(
            "--refresh-token-ttl must be at least 1s".to_owned(),
        ));
    }
    if cli.device_token_ttl < Duration::from_secs(1) {
        return Err(StartError::Settings(
            "--device-token-ttl must be at least 1s".to_owned(),
        ));
    }
    let params = PasswordParams {
        memory_kib: cli.password_memory_kib,
        iterations: cli.password_iterations,
        parallelism: cli.password_parallelism,
    };
    let concurrency = match cli.password_concurrency {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let hasher = PasswordHasher::new(params, concurrency).await?;

    let config = cli.data.with_default_schema(SERVICE);
    let pool = data::prepare_database(&config, SERVICE, MIGRATIONS).await?;

    let keys = match file_keys {
        Some(keys) => keys,
        None => SigningKeys::load(&source, &pool).await?,
    };
    tracing::info!(algorithm = ?keys.algorithm(), kid = ?keys.kid(), "signing key ready");
    let verifier = own_token_verifier(&serve.credentials, cli.jwt_secret_file.as_deref(), &keys)?;
    let issuer = AccessTokenIssuer::new(
        keys,
        TokenSettings {
            issuer: serve.credentials.jwt_issuer.clone(),
            audience: serve.credentials.jwt_audience.clone(),
            access_token_ttl: cli.access_token_ttl,
        },
    );

    let redis = data::connect_redis(&config)?;
    let limits = LoginLimits::new(
        RateLimiter::new(redis, config.key_prefix.clone()),
        LoginQuotas {
            per_client: cli.login_limit_account,
            per_address: cli.login_limit_ip,
            per_account: cli.login_limit_account_total,
        },
    );

    let handler = UsersHandler::new(
        pool,
        issuer,
        hasher,
        limits,
        AccountSettings {
            admin_emails: cli.admin_emails,
            refresh_token_ttl: cli.refresh_token_ttl,
            device_token_ttl: cli.device_token_ttl,
        },
    );
    Ok(server
        .descriptor_set(protomesh_users::proto::FILE_DESCRIPTOR_SET)
        .authenticator(verifier)
        .add_service(UsersServiceServer::new(handler))
        .serve()
        .await?)
}
