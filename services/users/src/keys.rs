//! The keys access tokens are signed with, and the JWKS that publishes their public halves.
//!
//! | `--jwt-algorithm` | key | JWKS |
//! |---|---|---|
//! | `RS256` (default), no key file | an RSA 2048 key generated on the first start and kept in the service's schema (`signing_keys`), so every instance on that database signs with the same key | every active stored key |
//! | `RS256` with `--jwt-private-key-file` | the RSA key in that PEM file (PKCS#1 or PKCS#8, at least 2048 bits) | that key |
//! | `HS256` with `--jwt-secret-file` | the file's bytes without trailing newline characters (as the gateway reads it); at least 32 bytes | empty |
//!
//! An RSA key's `kid` is its RFC 7638 JWK thumbprint (SHA-256, base64url), so the same key has
//! the same `kid` wherever it is loaded from. Keys are read once, when the handler is built: an
//! operator who rotates the stored key (inserts a new one, later sets `active = false` on the old
//! one) restarts the instances.
//!
//! No key material appears in a `Debug` output, a log line or an error message.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::proto::protomesh::users::v1::{Jwk, Jwks};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use protomesh_data::deadpool_postgres::Pool;
use protomesh_data::DataError;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

/// Size of the RSA keys this service generates, in bits.
pub const RSA_KEY_BITS: usize = 2048;
/// Smallest RSA key accepted from a file, in bits.
pub const MIN_RSA_KEY_BITS: usize = 2048;
/// Shortest HS256 secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_SECRET: usize = 32;

/// The active stored keys, newest (the signing one) first.
const SELECT_ACTIVE_KEYS: &str =
    "SELECT kid, private_key_pem FROM signing_keys WHERE active ORDER BY created_at DESC, kid";

/// Serializes the instances that may each want to store a first key (plain reads go on).
const LOCK_KEYS: &str = "LOCK TABLE signing_keys IN EXCLUSIVE MODE";

const INSERT_KEY: &str = "INSERT INTO signing_keys (kid, private_key_pem) VALUES ($1, $2)";

/// Bytes that must not be shown: a secret file's content, a private key's PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

/// Where the signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// RS256 with the keys stored in the service's schema; one is generated when there is none.
    Stored,
    /// RS256 with the RSA private key in this PEM text.
    RsaPem(SecretBytes),
    /// HS256 with this secret.
    HmacSecret(SecretBytes),
}

impl KeySource {
    /// RS256 with the PEM file at `path` (`--jwt-private-key-file`).
    pub fn rsa_pem_file(path: &Path) -> Result<Self, KeyError> {
        read_secret_file("--jwt-private-key-file", path).map(Self::RsaPem)
    }

    /// HS256 with the secret in the file at `path` (`--jwt-secret-file`), trailing `\n` and `\r`
    /// removed (the gateway reads its copy the same way).
    pub fn hmac_secret_file(path: &Path) -> Result<Self, KeyError> {
        let mut secret = read_secret_file("--jwt-secret-file", path)?.0;
        while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            secret.pop();
        }
        Ok(Self::HmacSecret(SecretBytes(secret)))
    }
}

fn read_secret_file(setting: &'static str, path: &Path) -> Result<SecretBytes, KeyError> {
    std::fs::read(path)
        .map(SecretBytes)
        .map_err(|source| KeyError::ReadFile {
            setting,
            path: path.to_owned(),
            source,
        })
}

/// Why the signing keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key or secret file could not be read.
    #[error("{setting} {}: {source}", path.display())]
    ReadFile {
        /// The setting that named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The PEM text is not an RSA private key.
    #[error("{origin}: not an RSA private key in PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`)")]
    NotRsaPem {
        /// Where it came from (`--jwt-private-key-file`, `signing key <kid>`).
        origin: String,
    },
    /// The RSA key is smaller than [`MIN_RSA_KEY_BITS`].
    #[error("{origin}: an RSA key of {bits} bits is too small, use at least {MIN_RSA_KEY_BITS}")]
    RsaTooSmall {
        /// Where it came from.
        origin: String,
        /// Its size.
        bits: usize,
    },
    /// The HS256 secret is shorter than [`MIN_HMAC_SECRET`].
    #[error(
        "--jwt-secret-file: the secret has {len} bytes, HS256 needs at least {MIN_HMAC_SECRET}"
    )]
    SecretTooShort {
        /// Its length.
        len: usize,
    },
    /// RSA key generation or encoding failed.
    #[error("RSA key: {0}")]
    Rsa(String),
    /// The database could not be read or written.
    #[error("signing keys: {0}")]
    Data(#[from] DataError),
    /// The key generation task did not finish.
    #[error("signing key generation: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The key that signs access tokens and the JWKS that goes with it.
#[derive(Clone)]
pub struct SigningKeys {
    algorithm: Algorithm,
    encoding: EncodingKey,
    kid: Option<String>,
    jwks: Jwks,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("published", &self.jwks.keys.len())
            .finish_non_exhaustive()
    }
}

impl SigningKeys {
    /// The keys of `source`; for [`KeySource::Stored`], those in `pool`'s `signing_keys`, after
    /// storing a new one if none is active (one instance generates it; the others wait for it
    /// and use it).
    pub async fn load(source: &KeySource, pool: &Pool) -> Result<Self, KeyError> {
        match Self::from_material(source)? {
            Some(keys) => Ok(keys),
            None => load_stored(pool).await,
        }
    }

    /// The keys of a source that carries its own material (a PEM key, an HS256 secret), checked;
    /// `None` for [`KeySource::Stored`]. Lets a binary refuse a bad key file before it touches
    /// the database.
    pub fn from_material(source: &KeySource) -> Result<Option<Self>, KeyError> {
        match source {
            KeySource::Stored => Ok(None),
            KeySource::RsaPem(pem) => {
                let key = parse_rsa_pem(pem, "--jwt-private-key-file")?;
                Self::rsa(&[key]).map(Some)
            }
            KeySource::HmacSecret(secret) => Self::hmac(secret).map(Some),
        }
    }

    /// HS256 with `secret` (at least [`MIN_HMAC_SECRET`] bytes); the JWKS is empty.
    pub fn hmac(secret: &SecretBytes) -> Result<Self, KeyError> {
        let len = secret.expose().len();
        if len < MIN_HMAC_SECRET {
            return Err(KeyError::SecretTooShort { len });
        }
        Ok(Self {
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret.expose()),
            kid: None,
            jwks: Jwks::default(),
        })
    }

    /// RS256 signing with the first of `keys`, publishing all of them.
    fn rsa(keys: &[RsaPrivateKey]) -> Result<Self, KeyError> {
        let Some(signing) = keys.first() else {
            return Err(KeyError::Rsa("no key".to_owned()));
        };
        let der = signing
            .to_pkcs1_der()
            .map_err(|err| KeyError::Rsa(err.to_string()))?;
        let jwks = Jwks {
            keys: keys.iter().map(public_jwk).collect(),
        };
        Ok(Self {
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            kid: Some(thumbprint(signing)),
            jwks,
        })
    }

    /// `RS256` or `HS256`.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The `kid` of the signing key (none for HS256).
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The key to sign with.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The public keys, as `GetJwks` answers them.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }
}

/// Generates an RSA key of [`RSA_KEY_BITS`] on the blocking pool.
pub async fn generate_rsa_key() -> Result<RsaPrivateKey, KeyError> {
    tokio::task::spawn_blocking(|| {
        RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_KEY_BITS)
            .map_err(|err| KeyError::Rsa(err.to_string()))
    })
    .await?
}

/// The RFC 7638 thumbprint of an RSA key's public half: base64url(SHA-256 of
/// `{"e":…,"kty":"RSA","n":…}`).
pub fn thumbprint(key: &RsaPrivateKey) -> String {
    let (n, e) = public_components(key);
    rsa_thumbprint(&n, &e)
}

/// The RFC 7638 thumbprint of the RSA public key with base64url modulus `n` and exponent `e`.
fn rsa_thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// The key's modulus and exponent, base64url without padding.
fn public_components(key: &RsaPrivateKey) -> (String, String) {
    (
        URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    )
}

/// The public JWK of an RS256 signing key.
pub fn public_jwk(key: &RsaPrivateKey) -> Jwk {
    let (n, e) = public_components(key);
    Jwk {
        kty: "RSA".to_owned(),
        r#use: "sig".to_owned(),
        kid: thumbprint(key),
        alg: "RS256".to_owned(),
        n,
        e,
    }
}

/// An RSA private key from PEM text (PKCS#8 or PKCS#1) of at least [`MIN_RSA_KEY_BITS`].
fn parse_rsa_pem(pem: &SecretBytes, origin: &str) -> Result<RsaPrivateKey, KeyError> {
    let not_rsa = || KeyError::NotRsaPem {
        origin: origin.to_owned(),
    };
    let text = std::str::from_utf8(pem.expose()).map_err(|_| not_rsa())?;
    let key = RsaPrivateKey::from_pkcs8_pem(text)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(text))
        .map_err(|_| not_rsa())?;
    let bits = key.size() * 8;
    if bits < MIN_RSA_KEY_BITS {
        return Err(KeyError::RsaTooSmall {
            origin: origin.to_owned(),
            bits,
        });
    }
    Ok(key)
}

/// The active stored keys, after storing a generated one if there is none.
async fn load_stored(pool: &Pool) -> Result<SigningKeys, KeyError> {
    let mut keys = read_active_keys(pool).await?;
    if keys.is_empty() {
        // Generate outside any lock (it takes a while); only one instance's key is stored.
        let generated = generate_rsa_key().await?;
        let kid = thumbprint(&generated);
        let pem = generated
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|err| KeyError::Rsa(err.to_string()))?;
        let mut client = pool.get().await.map_err(DataError::from)?;
        let tx = client.transaction().await.map_err(DataError::from)?;
        tx.batch_execute(LOCK_KEYS).await.map_err(DataError::from)?;
        let active = tx
            .query(SELECT_ACTIVE_KEYS, &[])
            .await
            .map_err(DataError::from)?;
        if active.is_empty() {
            tx.execute(INSERT_KEY, &[&kid, &pem.as_str()])
                .await
                .map_err(DataError::from)?;
            tracing::info!(%kid, "generated and stored a new RS256 signing key");
        }
        tx.commit().await.map_err(DataError::from)?;
        keys = read_active_keys(pool).await?;
    }
    SigningKeys::rsa(&keys)
}

/// The active stored keys, newest first.
async fn read_active_keys(pool: &Pool) -> Result<Vec<RsaPrivateKey>, KeyError> {
    let client = pool.get().await.map_err(DataError::from)?;
    let rows = client
        .query(SELECT_ACTIVE_KEYS, &[])
        .await
        .map_err(DataError::from)?;
    rows.iter()
        .map(|row| {
            let kid: String = row.get(0);
            let pem: String = row.get(1);
            parse_rsa_pem(
                &SecretBytes(pem.into_bytes()),
                &format!("signing key {kid}"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_secrets_must_be_long_enough_and_are_never_shown() {
        let short = SecretBytes::new(b"x".repeat(31));
        assert!(matches!(
            SigningKeys::hmac(&short),
            Err(KeyError::SecretTooShort { len: 31 })
        ));
        let secret = SecretBytes::new(b"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t".to_vec());
        let keys = SigningKeys::hmac(&secret).unwrap();
        assert_eq!(keys.algorithm(), Algorithm::HS256);
        assert_eq!(keys.kid(), None);
        assert!(keys.jwks().keys.is_empty());
        assert!(!format!("{secret:?}{keys:?}").contains("s3cr3t"));
    }

    #[test]
    fn secret_files_lose_their_final_newline() {
        let dir = std::env::temp_dir().join(format!("users-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let source = KeySource::hmac_secret_file(&path).unwrap();
        assert_eq!(
            source,
            KeySource::HmacSecret(SecretBytes::new(
                b"0123456789abcdef0123456789abcdef".to_vec()
            ))
        );
        let missing = KeySource::rsa_pem_file(&dir.join("missing")).unwrap_err();
        assert!(
            missing.to_string().starts_with("--jwt-private-key-file "),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pem_that_is_not_an_rsa_key_is_refused_without_echoing_it() {
        let pem = SecretBytes::new(
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n".to_vec(),
        );
        let err = parse_rsa_pem(&pem, "--jwt-private-key-file").unwrap_err();
        assert!(matches!(err, KeyError::NotRsaPem { .. }));
        assert!(!err.to_string().contains("c2VjcmV0"));
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 §3.1's example key.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let e = "AQAB";
        assert_eq!(
            rsa_thumbprint(n, e),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
