//! RSA public keys by `kid` from a mesh service's `GetJwks` (the users service): fetched through the
//! mesh client, cached, refreshed in the background once older than [`JwksSource::refresh`], and
//! fetched again at once for an unknown `kid` (at most once per [`JwksSource::min_refetch`], so a
//! flood of made-up `kid`s costs one fetch per period). A fetch is bounded by
//! [`JwksSource::timeout`]; while the service is unreachable the keys already known keep working.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;

use crate::client::{Mesh, MeshChannel};

/// The method keys are fetched with (the users service's, `protomesh/users/v1/users.proto`).
const GET_JWKS: &str = "/protomesh.users.v1.UsersService/GetJwks";

/// `GetJwksRequest` of `users.proto` (no fields). The runtime speaks this one method of the
/// identity provider with these mirrors of its messages rather than compiling the users service's
/// protos, so that no service's proto change rebuilds the runtime.
#[derive(Clone, PartialEq, prost::Message)]
struct GetJwksRequest {}

/// `Jwks` of `users.proto`: a JSON Web Key Set.
#[derive(Clone, PartialEq, prost::Message)]
struct Jwks {
    #[prost(message, repeated, tag = "1")]
    keys: Vec<Jwk>,
}

/// `Jwk` of `users.proto`: one public key (RFC 7517/7518).
#[derive(Clone, PartialEq, prost::Message)]
struct Jwk {
    #[prost(string, tag = "1")]
    kty: String,
    #[prost(string, tag = "2")]
    r#use: String,
    #[prost(string, tag = "3")]
    kid: String,
    #[prost(string, tag = "4")]
    alg: String,
    #[prost(string, tag = "5")]
    n: String,
    #[prost(string, tag = "6")]
    e: String,
}

/// Calls `GetJwks` on `channel`.
async fn get_jwks(
    channel: MeshChannel,
    request: tonic::Request<GetJwksRequest>,
) -> Result<tonic::Response<Jwks>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|err| tonic::Status::unavailable(format!("service not ready: {err}")))?;
    let codec = tonic_prost::ProstCodec::default();
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(GET_JWKS),
        codec,
    )
    .await
}

/// Where RSA public keys are fetched from: a mesh service's `GetJwks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    /// The Consul name of the service serving `protomesh.users.v1.UsersService/GetJwks`.
    pub service: String,
    /// Keys older than this are fetched again (in the background).
    pub refresh: Duration,
    /// Least time between two fetches (an unknown `kid` fetches at once, but not more often).
    pub min_refetch: Duration,
    /// Bound on one fetch.
    pub timeout: Duration,
}

impl JwksSource {
    /// The JWKS of `service`, refreshed every 5 minutes, at most every 5 seconds.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// RSA keys by `kid`, from a service's `GetJwks`.
pub(super) struct JwksCache {
    source: JwksSource,
    mesh: Mesh,
    state: RwLock<JwksState>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

impl JwksCache {
    pub(super) fn new(source: JwksSource, mesh: Mesh) -> Self {
        Self {
            source,
            mesh,
            state: RwLock::new(JwksState::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, JwksState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The key `kid`: from the cache (refreshed in the background when old), else after one
    /// fetch (unless one happened within `min_refetch`).
    pub(super) async fn key(self: &Arc<Self>, kid: &str) -> Option<DecodingKey> {
        let (cached, stale) = {
            let state = self.read();
            (
                state.keys.get(kid).cloned(),
                state
                    .fetched
                    .is_none_or(|at| at.elapsed() >= self.source.refresh),
            )
        };
        if let Some(key) = cached {
            if stale {
                let cache = Arc::clone(self);
                tokio::spawn(async move { cache.fetch_unless_recent().await });
            }
            return Some(key);
        }
        self.fetch_unless_recent().await;
        self.read().keys.get(kid).cloned()
    }

    /// Fetches the keys, unless a fetch started within `min_refetch` (callers that waited for a
    /// fetch in progress then use its result).
    async fn fetch_unless_recent(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if state
                .attempted
                .is_some_and(|at| at.elapsed() < self.source.min_refetch)
            {
                return;
            }
            state.attempted = Some(Instant::now());
        }
        let channel = self.mesh.channel(&self.source.service);
        let mut request = tonic::Request::new(GetJwksRequest {});
        request.set_timeout(self.source.timeout);
        let answer = tokio::time::timeout(self.source.timeout, get_jwks(channel, request)).await;
        let jwks = match answer {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                tracing::warn!(service = %self.source.service, %status, "cannot fetch the JWKS");
                return;
            }
            Err(_) => {
                tracing::warn!(service = %self.source.service, timeout = ?self.source.timeout, "the JWKS fetch timed out");
                return;
            }
        };
        let mut keys = HashMap::new();
        for jwk in jwks.keys {
            let usable = jwk.kty == "RSA"
                && !jwk.kid.is_empty()
                && (jwk.alg.is_empty() || jwk.alg == "RS256")
                && (jwk.r#use.is_empty() || jwk.r#use == "sig");
            if !usable {
                continue;
            }
            match DecodingKey::from_rsa_components(&jwk.n, &jwk.e) {
                Ok(key) => {
                    keys.insert(jwk.kid, key);
                }
                Err(err) => {
                    tracing::warn!(kid = %jwk.kid, error = %err, "unusable key in the JWKS");
                }
            }
        }
        tracing::info!(service = %self.source.service, keys = keys.len(), "JWKS fetched");
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.keys = keys;
        state.fetched = Some(Instant::now());
    }
}
