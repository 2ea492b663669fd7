//! Signed page tokens, bound to the filter of the list they page: one mechanism for every list
//! of every service.
//!
//! A token is base64url (no padding) of the list's cursor bytes followed by a 16-byte tag,
//! HMAC-SHA256 (truncated) under the deployment's key over a fingerprint of the request's filter
//! ([`PageFilter`]: the list's name and its filter fields, never the page size) and the cursor
//! bytes. So a token is good only
//! - as it was handed out (a flipped byte fails the tag),
//! - for the list and the filter it was handed out for (another project, status or user gives
//!   another fingerprint), and
//! - in the deployment that signed it (another key).
//!
//! Anything else is [`PageTokenError`], which a handler answers with `INVALID_ARGUMENT` naming
//! `page_token`; its messages never repeat the token.
//!
//! The key ([`PageTokenKey`]): by default generated at a deployment's first start and kept in
//! the service's own schema (the one-row table [`PAGE_TOKEN_KEY_DDL`], part of the service's
//! migrations; insert-if-absent, so instances starting together agree), so every instance of a
//! deployment shares it with no configuration. `--page-token-key-file` ([`PageTokenConfig`])
//! sets it from a file instead (at least [`MIN_KEY_LEN`] bytes). Keys appear in no `Debug`
//! output, log line or message.
//!
//! ```no_run
//! # use protomesh_data::page_token::{PageFilter, PageTokens};
//! # async fn run(pool: protomesh_data::deadpool_postgres::Pool) -> Result<(), tonic::Status> {
//! let tokens = PageTokens::stored(pool);
//! let filter = PageFilter::new("tasks.ListTasks").field("project_id", "7d0c…");
//! let token = tokens.seal(&filter, b"cursor bytes").await?;
//! assert_eq!(tokens.open(&filter, &token).await?.ok(), Some(b"cursor bytes".to_vec()));
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use clap::Args;
use deadpool_postgres::Pool;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tonic::Status;

use super::{status_from_pg, DataError};

/// The one-row table holding a deployment's page-token key, in the service's schema: add it to
/// the service's migrations.
pub const PAGE_TOKEN_KEY_DDL: &str = "CREATE TABLE IF NOT EXISTS page_token_key (
    id boolean PRIMARY KEY DEFAULT true CONSTRAINT page_token_key_one_row CHECK (id),
    key bytea NOT NULL CONSTRAINT page_token_key_length CHECK (octet_length(key) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
)";

/// Stores a first key unless there is one (another instance may have stored its own first).
const INSERT_KEY: &str =
    "INSERT INTO page_token_key (id, key) VALUES (true, $1) ON CONFLICT (id) DO NOTHING";

/// The deployment's key, whichever instance stored it.
const SELECT_KEY: &str = "SELECT key FROM page_token_key WHERE id";

/// Length of a generated key, in bytes (the HMAC-SHA256 block is longer, the hash as long).
pub const KEY_LEN: usize = 32;

/// Shortest key accepted from a file, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// Length of a token's tag, in bytes: HMAC-SHA256 truncated to 128 bits.
const TAG_LEN: usize = 16;

/// Domain separation of the MAC input, and its version.
const CONTEXT: &[u8] = b"protomesh page token v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a page token was refused. Shown to the caller (as the description of `page_token`):
/// neither message repeats the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// Not base64url, or too short to hold a tag.
    #[error("not a page token of this list")]
    Malformed,
    /// Well formed, but not signed by this deployment for this list and filter (altered, from
    /// another filter or another deployment).
    #[error("not a page token of this list with these filters (page tokens are valid only with the request that returned them)")]
    Forged,
}

/// Why a key could not be had from a file.
#[derive(Debug, thiserror::Error)]
pub enum PageTokenKeyError {
    /// The file could not be read.
    #[error("--page-token-key-file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The key is shorter than [`MIN_KEY_LEN`].
    #[error("--page-token-key-file: the key has {len} bytes, at least {MIN_KEY_LEN} are needed")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The stored key could not be read or stored.
    #[error("page token key: {0}")]
    Data(#[from] DataError),
}

/// The secret that signs a deployment's page tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct PageTokenKey(Arc<[u8]>);

impl fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageTokenKey([redacted; {} bytes])", self.0.len())
    }
}

impl PageTokenKey {
    /// A new random key of [`KEY_LEN`] bytes (from the operating system's generator, through
    /// `rand`'s thread-local CSPRNG).
    pub fn generate() -> Self {
        let bytes: [u8; KEY_LEN] = rand::random();
        Self(Arc::from(bytes.as_slice()))
    }

    /// `bytes` as a key: at least [`MIN_KEY_LEN`] of them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PageTokenKeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(PageTokenKeyError::TooShort { len: bytes.len() });
        }
        Ok(Self(Arc::from(bytes)))
    }

    /// The key in the file at `path`: its bytes without trailing `\n` and `\r`.
    pub fn from_file(path: &Path) -> Result<Self, PageTokenKeyError> {
        let mut bytes = std::fs::read(path).map_err(|source| PageTokenKeyError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Self::from_bytes(&bytes)
    }

    /// The key stored in `pool`'s schema ([`PAGE_TOKEN_KEY_DDL`]), stored first when there is
    /// none: instances that start together each offer one, the first insert wins, and all read
    /// the winner.
    pub async fn stored(pool: &Pool) -> Result<Self, DataError> {
        let client = pool.get().await?;
        let offered = Self::generate();
        client.execute(INSERT_KEY, &[&&*offered.0]).await?;
        let row = client.query_one(SELECT_KEY, &[]).await?;
        let bytes: Vec<u8> = row.get(0);
        Ok(Self(Arc::from(bytes)))
    }
}

/// Where a service's page-token key comes from: flatten it into the binary's parser, next to
/// [`DataConfig`](super::DataConfig).
#[derive(Debug, Clone, Default, Args)]
pub struct PageTokenConfig {
    /// File holding the key that signs page tokens (at least 32 bytes; trailing newlines are
    /// ignored). Without it, a key generated at the first start is kept in the service's
    /// database schema and shared by every instance.
    #[arg(long = "page-token-key-file", env = "PROTOMESH_PAGE_TOKEN_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

impl PageTokenConfig {
    /// The signer these settings describe: the file's key, or the key stored in `pool` (read,
    /// and generated if need be, now).
    pub async fn page_tokens(&self, pool: &Pool) -> Result<PageTokens, PageTokenKeyError> {
        let key = match &self.key_file {
            Some(path) => PageTokenKey::from_file(path)?,
            None => PageTokenKey::stored(pool).await?,
        };
        Ok(PageTokens::with_key(key))
    }
}

/// The filter a page token is bound to: the list's name and the request's filter fields (not
/// its page size, which may change from page to page).
#[derive(Clone)]
pub struct PageFilter(Sha256);

impl fmt::Debug for PageFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PageFilter").finish_non_exhaustive()
    }
}

impl PageFilter {
    /// The filter of list `list` (`"tasks.ListTasks"`), with no field yet.
    pub fn new(list: &str) -> Self {
        let mut hash = Sha256::new();
        hash.update(CONTEXT);
        put(&mut hash, list.as_bytes());
        Self(hash)
    }

    /// Adds field `name` with `value` (as the request has it; empty for "not given").
    pub fn field(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        put(&mut self.0, name.as_bytes());
        put(&mut self.0, value.as_ref());
        self
    }

    /// The fingerprint: SHA-256 of the length-prefixed list name, field names and values.
    fn fingerprint(&self) -> [u8; 32] {
        self.0.clone().finalize().into()
    }
}

/// Length-prefixed, so that no two different lists of fields hash alike.
fn put(hash: &mut Sha256, bytes: &[u8]) {
    hash.update((bytes.len() as u64).to_be_bytes());
    hash.update(bytes);
}

/// Signs and checks the page tokens of a deployment. Cheap to clone; clones share the key.
#[derive(Clone)]
pub struct PageTokens {
    key: Arc<OnceCell<PageTokenKey>>,
    /// Where the key is read (and stored first) when it was not given.
    pool: Option<Pool>,
}

impl fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTokens")
            .field("key_loaded", &self.key.initialized())
            .finish_non_exhaustive()
    }
}

impl PageTokens {
    /// Tokens signed with `key`.
    pub fn with_key(key: PageTokenKey) -> Self {
        Self {
            key: Arc::new(OnceCell::new_with(Some(key))),
            pool: None,
        }
    }

    /// Tokens signed with the key stored in `pool`'s schema ([`PageTokenKey::stored`]), read at
    /// the first use (and again after a failed read: `UNAVAILABLE` while the database is down).
    pub fn stored(pool: Pool) -> Self {
        Self {
            key: Arc::new(OnceCell::new()),
            pool: Some(pool),
        }
    }

    async fn key(&self) -> Result<&PageTokenKey, Status> {
        self.key
            .get_or_try_init(|| async {
                match &self.pool {
                    Some(pool) => PageTokenKey::stored(pool)
                        .await
                        .map_err(|err| status_from_pg(&err, "page token key")),
                    None => Err(Status::internal("page token key: none configured")),
                }
            })
            .await
    }

    /// The token for `cursor` (a list's own encoding of where the next page starts) under
    /// `filter`.
    pub async fn seal(&self, filter: &PageFilter, cursor: &[u8]) -> Result<String, Status> {
        let tag = mac(self.key().await?, filter, cursor)
            .finalize()
            .into_bytes();
        let mut bytes = Vec::with_capacity(cursor.len() + TAG_LEN);
        bytes.extend_from_slice(cursor);
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The cursor of `token` if this deployment sealed it under `filter`. The outer error is the
    /// key's (`UNAVAILABLE` while it cannot be read); the inner one the token's.
    pub async fn open(
        &self,
        filter: &PageFilter,
        token: &str,
    ) -> Result<Result<Vec<u8>, PageTokenError>, Status> {
        let key = self.key().await?;
        Ok(open_with(key, filter, token))
    }
}

/// [`PageTokens::open`] with the key in hand.
fn open_with(
    key: &PageTokenKey,
    filter: &PageFilter,
    token: &str,
) -> Result<Vec<u8>, PageTokenError> {
    let mut bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| PageTokenError::Malformed)?;
    if bytes.len() <= TAG_LEN {
        return Err(PageTokenError::Malformed);
    }
    let tag = bytes.split_off(bytes.len() - TAG_LEN);
    mac(key, filter, &bytes)
        .verify_truncated_left(&tag)
        .map_err(|_| PageTokenError::Forged)?;
    Ok(bytes)
}

/// The MAC over the filter's fingerprint and the cursor.
fn mac(key: &PageTokenKey, filter: &PageFilter, cursor: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(&key.0)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(CONTEXT);
    mac.update(&filter.fingerprint());
    mac.update(cursor);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(project: &str) -> PageFilter {
        PageFilter::new("tasks.ListTasks")
            .field("project_id", project)
            .field("status", 1i32.to_be_bytes())
    }

    #[tokio::test]
    async fn tokens_round_trip_under_their_filter() {
        let tokens = PageTokens::with_key(PageTokenKey::generate());
        let token = tokens.seal(&filter("a"), b"\x01cursor").await.unwrap();
        assert!(token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(
            tokens.open(&filter("a"), &token).await.unwrap(),
            Ok(b"\x01cursor".to_vec())
        );
    }

    #[tokio::test]
    async fn altered_foreign_and_malformed_tokens_are_refused() {
        let key = PageTokenKey::generate();
        let tokens = PageTokens::with_key(key.clone());
        let token = tokens.seal(&filter("a"), b"\x01cursor").await.unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x01;
            let flipped = URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(
                open_with(&key, &filter("a"), &flipped),
                Err(PageTokenError::Forged),
                "byte {i}"
            );
            bytes[i] ^= 0x01;
        }
        assert_eq!(
            open_with(&key, &filter("b"), &token),
            Err(PageTokenError::Forged)
        );
        let other_list = PageFilter::new("tasks.ListProjects");
        assert_eq!(
            open_with(&key, &other_list, &token),
            Err(PageTokenError::Forged)
        );
        let other_deployment = PageTokenKey::generate();
        assert_eq!(
            open_with(&other_deployment, &filter("a"), &token),
            Err(PageTokenError::Forged)
        );
        for malformed in ["%%%", "", "AAAA"] {
            assert_eq!(
                open_with(&key, &filter("a"), malformed),
                Err(PageTokenError::Malformed)
            );
        }
        // Neither message repeats the token.
        for err in [PageTokenError::Malformed, PageTokenError::Forged] {
            assert!(!err.to_string().contains(&token));
        }
    }

    #[test]
    fn fields_are_length_prefixed() {
        let ab = PageFilter::new("l").field("a", "bc").fingerprint();
        let abc = PageFilter::new("l").field("ab", "c").fingerprint();
        assert_ne!(ab, abc);
    }

    #[test]
    fn keys_are_long_enough_and_never_shown() {
        assert!(matches!(
            PageTokenKey::from_bytes(&[7; 31]),
            Err(PageTokenKeyError::TooShort { len: 31 })
        ));
        let key = PageTokenKey::from_bytes(&[7; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "PageTokenKey([redacted; 32 bytes])");
    }
}
