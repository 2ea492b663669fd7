//! Password hashing with argon2id: PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) with a
//! random 16-byte salt each, computed on the blocking pool and bounded in how many run at once
//! (each one holds `m` KiB of memory).
//!
//! Login answers the same, in about the same time, whether the account exists or not: for an
//! unknown email, [`PasswordHasher::verify`] checks the password against a dummy hash made at
//! start-up with the same parameters, and says no.

use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use tokio::sync::Semaphore;

/// argon2id cost parameters: memory in KiB, iterations and lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory per hash, in KiB (`m`).
    pub memory_kib: u32,
    /// Passes over the memory (`t`).
    pub iterations: u32,
    /// Lanes (`p`).
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// m = 19 MiB, t = 2, p = 1: OWASP's recommendation for argon2id, about 20–50 ms per hash
    /// on a server core.
    fn default() -> Self {
        Self {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

impl fmt::Display for PasswordParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "m={},t={},p={}",
            self.memory_kib, self.iterations, self.parallelism
        )
    }
}

/// Why hashing or checking a password failed (never because the password is wrong: that is
/// `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The cost parameters are out of argon2's range.
    #[error("argon2 parameters {params}: {source}")]
    Params {
        /// The parameters given.
        params: PasswordParams,
        /// argon2's objection.
        #[source]
        source: argon2::Error,
    },
    /// argon2 failed (out of memory, a bad stored hash).
    #[error("argon2: {0}")]
    Hash(argon2::password_hash::Error),
    /// The blocking task did not finish (the runtime is shutting down).
    #[error("password hashing task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The hasher's concurrency limit was closed.
    #[error("password hasher closed")]
    Closed,
}

/// Hashes and verifies passwords. Cheap to clone; clones share the concurrency limit.
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    params: PasswordParams,
    /// A hash of a random password nobody knows, checked when the account does not exist.
    dummy_hash: Arc<str>,
    permits: Arc<Semaphore>,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .field("concurrency", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// A hasher with `params`, running at most `concurrency` (at least 1) hashes at once. Makes
    /// the dummy hash, so it takes one hash's time.
    pub async fn new(params: PasswordParams, concurrency: usize) -> Result<Self, PasswordError> {
        let argon2_params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(|source| PasswordError::Params { params, source })?;
        let mut hasher = Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, argon2_params),
            params,
            dummy_hash: Arc::from(""),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        };
        let mut unknowable = [0u8; 32];
        rand::rng().fill_bytes(&mut unknowable);
        let unknowable = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            unknowable,
        );
        hasher.dummy_hash = Arc::from(hasher.hash(unknowable).await?);
        Ok(hasher)
    }

    /// The cost parameters new hashes get.
    pub fn params(&self) -> PasswordParams {
        self.params
    }

    /// The PHC string of `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let argon2 = self.argon2.clone();
        self.run(move || {
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt).map_err(PasswordError::Hash)?;
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(PasswordError::Hash)
        })
        .await
    }

    /// Whether `password` matches `stored` (a PHC string); with no stored hash (unknown account)
    /// the dummy hash is checked instead, which takes the same time, and the answer is `false`.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let argon2 = self.argon2.clone();
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .run(move || {
                let parsed = PasswordHash::new(&phc).map_err(PasswordError::Hash)?;
                match argon2.verify_password(password.as_bytes(), &parsed) {
                    Ok(()) => Ok(true),
                    Err(argon2::password_hash::Error::Password) => Ok(false),
                    Err(err) => Err(PasswordError::Hash(err)),
                }
            })
            .await?;
        Ok(known && matches)
    }

    /// Runs `work` on the blocking pool once a permit is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Closed)?;
        tokio::task::spawn_blocking(work).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small costs: argon2 in a debug build is slow.
    const CHEAP: PasswordParams = PasswordParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_with_random_salts() {
        let hasher = PasswordHasher::new(CHEAP, 2).await.unwrap();
        let first = hasher.hash("correct horse battery".into()).await.unwrap();
        let second = hasher.hash("correct horse battery".into()).await.unwrap();
        assert!(first.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{first}");
        assert_ne!(first, second, "a fresh salt each time");
        assert!(!first.contains("correct horse"));
        assert!(hasher
            .verify("correct horse battery".into(), Some(first.clone()))
            .await
            .unwrap());
        assert!(!hasher
            .verify("correct horse batterz".into(), Some(first))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify() {
        let hasher = PasswordHasher::new(CHEAP, 1).await.unwrap();
        assert!(!hasher.verify(String::new(), None).await.unwrap());
        assert!(!hasher.verify("anything at all".into(), None).await.unwrap());
        assert!(
            !format!("{hasher:?}").contains("argon2id"),
            "no hash in Debug"
        );
    }

    #[tokio::test]
    async fn unknown_accounts_take_a_real_hash_s_time() {
        let params = PasswordParams {
            memory_kib: 1024,
            iterations: 2,
            parallelism: 1,
        };
        let hasher = PasswordHasher::new(params, 1).await.unwrap();
        let stored = hasher.hash("correct horse battery".into()).await.unwrap();
        // The fastest of a few runs each, so that a busy machine does not decide.
        let mut known = std::time::Duration::MAX;
        let mut unknown = std::time::Duration::MAX;
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let _ = hasher.verify("wrong".into(), Some(stored.clone())).await;
            known = known.min(started.elapsed());
            let started = std::time::Instant::now();
            let _ = hasher.verify("wrong".into(), None).await;
            unknown = unknown.min(started.elapsed());
        }
        assert!(
            unknown * 2 >= known && known * 2 >= unknown,
            "unknown {unknown:?} vs known {known:?}"
        );
    }

    #[tokio::test]
    async fn bad_parameters_and_bad_hashes_are_errors() {
        let bad = PasswordParams {
            memory_kib: 1,
            ..CHEAP
        };
        assert!(matches!(
            PasswordHasher::new(bad, 1).await,
            Err(PasswordError::Params { .. })
        ));
        let hasher = PasswordHasher::new(CHEAP, 1).await.unwrap();
        assert!(hasher
            .verify("pw".into(), Some("not a phc string".into()))
            .await
            .is_err());
        assert_eq!(PasswordParams::default().to_string(), "m=19456,t=2,p=1");
    }
}
