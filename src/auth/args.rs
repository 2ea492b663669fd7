//! The credential-verification flags (and environment variables) the gateway and every service
//! binary share, validated once at start-up into an [`AuthConfig`]; every error names its flag.
//!
//! Where JWT keys come from: `--jwt-hs256-secret-file`, `--jwt-rsa-public-key-file` (repeatable)
//! and `--jwks-service NAME`. When none of the three is given, the JWKS of the `users` service is
//! used, so a mesh with the users service verifies its tokens with no configuration;
//! `--jwks-service ''` turns that off.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::api_keys::ApiKeys;
use super::config::{AuthConfig, DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_LEEWAY};
use super::error::AuthConfigError;
use super::jwks::JwksSource;

/// The service whose JWKS is used when no JWT key source is configured.
pub const DEFAULT_JWKS_SERVICE: &str = "users";

/// How callers' credentials are verified (`#[command(flatten)]` it into a binary's parser).
#[derive(Debug, Clone, Args)]
pub struct CredentialArgs {
    /// The `iss` a JWT must carry.
    #[arg(long = "jwt-issuer", env = "PROTOMESH_JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    pub jwt_issuer: String,
    /// The `aud` a JWT must carry.
    #[arg(long = "jwt-audience", env = "PROTOMESH_JWT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub jwt_audience: String,
    /// Clock leeway for a JWT's `exp` and `nbf`.
    #[arg(long = "jwt-leeway", env = "PROTOMESH_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,
    /// File holding the HS256 secret (accepts HS256 tokens).
    #[arg(long = "jwt-hs256-secret-file", env = "PROTOMESH_JWT_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM file of an RSA public key (accepts RS256 tokens it signed); repeat for more keys.
    #[arg(
        long = "jwt-rsa-public-key-file",
        env = "PROTOMESH_JWT_RSA_PUBLIC_KEY_FILES",
        value_delimiter = ','
    )]
    pub jwt_rsa_public_key_files: Vec<PathBuf>,
    /// Consul name of the service whose `GetJwks` gives RS256 keys by `kid` (default `users`
    /// when no other key source is configured; empty: none).
    #[arg(long = "jwks-service", env = "PROTOMESH_JWKS_SERVICE")]
    pub jwks_service: Option<String>,
    /// How often the JWKS is fetched again.
    #[arg(long = "jwks-refresh", env = "PROTOMESH_JWKS_REFRESH", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwks_refresh: Duration,
    /// API keys file: lines `NAME SHA256-HEX-OF-KEY ROLE,ROLE` (hashes only, so the same file
    /// can be given to the gateway and to every service).
    #[arg(long = "api-keys-file", env = "PROTOMESH_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
}

impl Default for CredentialArgs {
    /// Every flag at its default: tokens of the `users` service's JWKS, no API keys.
    fn default() -> Self {
        Self {
            jwt_issuer: DEFAULT_ISSUER.to_owned(),
            jwt_audience: DEFAULT_AUDIENCE.to_owned(),
            jwt_leeway: DEFAULT_LEEWAY,
            jwt_hs256_secret_file: None,
            jwt_rsa_public_key_files: Vec::new(),
            jwks_service: None,
            jwks_refresh: Duration::from_secs(300),
            api_keys_file: None,
        }
    }
}

impl CredentialArgs {
    /// The configuration these flags describe (key files read and checked).
    pub fn auth_config(&self) -> Result<AuthConfig, AuthConfigError> {
        let mut auth = AuthConfig {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
            ..AuthConfig::default()
        };
        if let Some(path) = &self.jwt_hs256_secret_file {
            auth.hs256_secret = Some(AuthConfig::read_hs256_secret(path)?);
        }
        for path in self
            .jwt_rsa_public_key_files
            .iter()
            .filter(|p| !p.as_os_str().is_empty())
        {
            auth.rsa_public_keys
                .push(AuthConfig::read_rsa_public_key(path)?);
        }
        let jwks_service = match &self.jwks_service {
            Some(name) => Some(name.clone()).filter(|n| !n.is_empty()),
            None if !auth.has_jwt_keys() => Some(DEFAULT_JWKS_SERVICE.to_owned()),
            None => None,
        };
        auth.jwks = jwks_service.map(|service| JwksSource {
            refresh: self.jwks_refresh,
            ..JwksSource::new(service)
        });
        if let Some(path) = &self.api_keys_file {
            auth.api_keys = ApiKeys::load(path)?;
        }
        Ok(auth)
    }
}
