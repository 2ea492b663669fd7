//! The edge policies' flags (and environment variables), validated once at start-up into
//! [`EdgeOptions`]; every error names its flag.
//! The credential flags (`--jwt-*`, `--jwks-*`, `--api-keys-file`) are the ones every service takes
//! too: [`protomesh::auth::CredentialArgs`].

use std::time::Duration;

use clap::Args;

use crate::access::{AccessConfig, RouteOverride};
use crate::cors::CorsConfig;
use crate::edge::EdgeOptions;
use crate::ratelimit::{default_quotas, parse_class_quota, RateLimitConfig};
use protomesh::auth::{AuthConfigError, CredentialArgs};

pub(crate) use protomesh::policy::DefaultAuth;

/// Why the edge flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EdgeConfigError {
    /// A key or API keys file.
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// A flag's value.
    #[error("{flag}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The edge policies' flags.
#[derive(Debug, Clone, Args)]
pub struct EdgeConfig {
    /// Who may call methods whose protos state no policy.
    #[arg(long = "default-auth", env = "PROTOMESH_GATEWAY_DEFAULT_AUTH", value_enum, default_value_t = DefaultAuth::Authenticated)]
    pub default_auth: DefaultAuth,
    /// Policy override: `package.Service/Method=REQ` or `package.Service=REQ`, REQ one of
    /// `public`, `authenticated`, `role:NAME[,NAME…]` (repeat the flag; `;` between entries in
    /// the environment variable).
    #[arg(
        long = "route-policy",
        env = "PROTOMESH_GATEWAY_ROUTE_POLICIES",
        value_delimiter = ';'
    )]
    pub route_policies: Vec<String>,
    /// How credentials are verified.
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// Rate limit of a class, `CLASS=LIMIT/PERIOD` (repeat; defaults: default=600/1m,
    /// auth=20/1m, public=1200/1m, invalid-credentials=30/1m).
    #[arg(
        long = "rate-limit",
        env = "PROTOMESH_GATEWAY_RATE_LIMITS",
        value_delimiter = ','
    )]
    pub rate_limits: Vec<String>,
    /// Redis shared by the gateway instances for rate limits (none: limits per instance).
    #[arg(long = "redis-url", env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of the gateway's Redis keys.
    #[arg(long = "key-prefix", env = "PROTOMESH_KEY_PREFIX", default_value = "")]
    pub key_prefix: String,
    /// Origin allowed to call from a browser (repeat; `*` for any; none: CORS off).
    #[arg(
        long = "cors-origin",
        env = "PROTOMESH_GATEWAY_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[arg(long = "cors-max-age", env = "PROTOMESH_GATEWAY_CORS_MAX_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub cors_max_age: Duration,
}

impl EdgeConfig {
    /// The options these flags describe (files read, values checked). A Redis URL makes a
    /// client that connects in the background: call it inside a Tokio runtime.
    pub fn options(&self) -> Result<EdgeOptions, EdgeConfigError> {
        let invalid =
            |flag: &'static str| move |reason: String| EdgeConfigError::Invalid { flag, reason };

        let auth = self.credentials.auth_config()?;

        let access = AccessConfig {
            default_auth: self.default_auth.requirement(),
            overrides: self
                .route_policies
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.parse::<RouteOverride>())
                .collect::<Result<_, _>>()
                .map_err(invalid("--route-policy"))?,
        };

        let mut quotas = default_quotas();
        for spec in self.rate_limits.iter().filter(|s| !s.trim().is_empty()) {
            let (class, quota) = parse_class_quota(spec).map_err(invalid("--rate-limit"))?;
            quotas.insert(class, quota);
        }
        let redis = match self.redis_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => {
                let config = protomesh_data::DataConfig::with_database_url(
                    protomesh_data::DEFAULT_DATABASE_URL,
                )
                .with_redis_url(url);
                Some(
                    protomesh_data::connect_redis(&config)
                        .map_err(|err| invalid("--redis-url")(err.to_string()))?,
                )
            }
            None => None,
        };
        let rate_limits = RateLimitConfig {
            quotas,
            redis,
            key_prefix: self.key_prefix.clone(),
        };

        let cors = CorsConfig {
            max_age: self.cors_max_age,
            ..CorsConfig::with_origins(
                &self
                    .cors_origins
                    .iter()
                    .filter(|o| !o.is_empty())
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        };
        Ok(EdgeOptions {
            auth,
            access,
            rate_limits,
            cors,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;
    use protomesh::policy::Requirement;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        edge: EdgeConfig,
    }

    fn parse(args: &[&str]) -> EdgeConfig {
        Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))
            .unwrap()
            .edge
    }

    // Tokio tests: a REDIS_URL in the environment makes a client, which needs a runtime.
    #[tokio::test]
    async fn the_defaults_require_authentication_and_use_the_users_jwks() {
        let options = parse(&[]).options().unwrap();
        assert_eq!(options.access.default_auth, Requirement::Authenticated);
        assert_eq!(options.auth.jwks.unwrap().service, "users");
        assert_eq!(options.auth.issuer, "protomesh");
        assert_eq!(options.auth.leeway, Duration::from_secs(30));
        assert_eq!(options.rate_limits.quotas["auth"].limit(), 20);
        assert!(!options.cors.is_enabled());
    }

    #[tokio::test]
    async fn another_key_source_turns_the_default_jwks_off() {
        let dir =
            std::env::temp_dir().join(format!("protomesh-edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, format!("{}\n", "s".repeat(40))).unwrap();
        let options = parse(&["--jwt-hs256-secret-file", secret.to_str().unwrap()])
            .options()
            .unwrap();
        assert!(options.auth.jwks.is_none());
        assert_eq!(options.auth.hs256_secret.unwrap().len(), 40);

        std::fs::write(&secret, "short").unwrap();
        let err = parse(&["--jwt-hs256-secret-file", secret.to_str().unwrap()])
            .options()
            .unwrap_err();
        assert!(err.to_string().contains("--jwt-hs256-secret-file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--route-policy", "pkg.S=nobody"][..], "--route-policy"),
            (&["--rate-limit", "auth"][..], "--rate-limit"),
            (
                &["--api-keys-file", "/nonexistent/keys"][..],
                "--api-keys-file",
            ),
            (
                &["--jwt-rsa-public-key-file", "/nonexistent/key.pem"][..],
                "--jwt-rsa-public-key-file",
            ),
        ] {
            let err = parse(args).options().unwrap_err();
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
    }
}
