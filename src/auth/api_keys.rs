//! API keys: a deployment's keys as `NAME SHA256-HEX [ROLE,ROLE…]` lines (`--api-keys-file`), matched
//! by the SHA-256 of the presented key in constant time. Only hashes are ever held, so the same file
//! can be given to the gateway and to every service.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::AuthConfigError;
use crate::identity::is_header_safe;

/// One API key: its name (the subject), the SHA-256 of the key, its roles.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key's name: the identity's subject.
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// The roles the key grants.
    pub roles: Vec<String>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// The API keys the gateway accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    /// Keys from the text of an API keys file: one key a line, `NAME SHA256-HEX [ROLE,ROLE…]`;
    /// blank lines and lines starting with `#` are skipped. The error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hex), roles, None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(format!(
                    "line {}: expected `NAME SHA256-HEX [ROLE,ROLE…]`",
                    number + 1
                ));
            };
            let hash = parse_sha256_hex(hex).ok_or_else(|| {
                format!(
                    "line {}: the key hash must be 64 hex digits (sha256sum of the key)",
                    number + 1
                )
            })?;
            if !is_header_safe(name) {
                return Err(format!("line {}: invalid key name {name:?}", number + 1));
            }
            let roles = roles
                .unwrap_or_default()
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
            keys.push(ApiKey {
                name: name.to_owned(),
                hash,
                roles,
            });
        }
        Ok(Self { keys })
    }

    /// The keys of the file at `path` (`--api-keys-file`).
    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let setting = "--api-keys-file";
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            setting,
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| AuthConfigError::Content {
            setting,
            path: path.display().to_string(),
            reason,
        })
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose hash is the SHA-256 of `presented`. Every configured hash is compared, each
    /// in constant time.
    pub fn verify(&self, presented: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(&key.hash, &digest) {
                found = Some(key);
            }
        }
        found
    }
}

/// Whether `a == b`, in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    difference == 0
}

fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut hash = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        hash[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HASH_OF_SECRET: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    #[test]
    fn api_keys_are_matched_by_hash() {
        let keys = ApiKeys::parse(&format!(
            "# name hash roles\n\nci {HASH_OF_SECRET} deploy,read\nbare {} \n",
            "0".repeat(64)
        ))
        .unwrap();
        let ci = keys.verify("secret").unwrap();
        assert_eq!(ci.name, "ci");
        assert_eq!(ci.roles, ["deploy", "read"]);
        assert!(keys.verify("Secret").is_none());
        assert!(keys.verify("").is_none());
        assert!(!format!("{ci:?}").contains("2bb8"), "no hash in Debug");
    }

    #[test]
    fn a_bad_api_keys_file_names_the_line() {
        for (text, line) in [
            ("a b c d", "line 1"),
            ("\nname nothex", "line 2"),
            (&format!("a,b {HASH_OF_SECRET}") as &str, "line 1"),
        ] {
            let err = ApiKeys::parse(text).unwrap_err();
            assert!(err.contains(line), "{text:?}: {err}");
        }
    }
}
