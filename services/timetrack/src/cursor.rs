//! The cursor inside `ListEntries` page tokens: a kind byte and the sort key of the last entry of
//! the page before. The handler seals it into a token signed and bound to the request's filter
//! with [`protomesh_data::page_token`], which refuses altered or foreign tokens before these
//! bytes are read.
//!
//! | kind | list | sort key | bytes after the kind |
//! |---|---|---|---|
//! | 1 | entries, newest first | `(started_at, id)` | microseconds since the epoch (i64, big-endian), the UUID (16) |
//!
//! Anything else — another kind, a wrong length — is malformed, which the handler answers with
//! `INVALID_ARGUMENT` naming `page_token`.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

const ENTRY_KIND: u8 = 1;

/// Length of a decoded token after its kind byte: the microseconds and the UUID.
const ENTRY_KEY_LEN: usize = 8 + 16;

/// Why a page token was refused (shown to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Decodes, but is not a token of this list.
    #[error("not a page token of this list")]
    Malformed,
}

/// Where a page of entries starts: after the entry with this `(started_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryCursor {
    /// `started_at` of the last entry of the page before.
    pub started_at: SystemTime,
    /// Its id.
    pub id: Uuid,
}

impl EntryCursor {
    /// The cursor's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1 + ENTRY_KEY_LEN);
        bytes.push(ENTRY_KIND);
        bytes.extend_from_slice(&micros_since_epoch(self.started_at).to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        bytes
    }

    /// The cursor in `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CursorError> {
        let (&kind, rest) = bytes.split_first().ok_or(CursorError::Malformed)?;
        if kind != ENTRY_KIND || rest.len() != ENTRY_KEY_LEN {
            return Err(CursorError::Malformed);
        }
        let (micros, id) = rest.split_at(8);
        let micros = i64::from_be_bytes(micros.try_into().map_err(|_| CursorError::Malformed)?);
        let id = Uuid::from_slice(id).map_err(|_| CursorError::Malformed)?;
        let micros = u64::try_from(micros).map_err(|_| CursorError::Malformed)?;
        Ok(Self {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_micros(micros),
            id,
        })
    }
}

/// Microseconds since the epoch (Postgres keeps timestamps to the microsecond); 0 before it.
fn micros_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_cursors_round_trip() {
        let cursor = EntryCursor {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_714_557_600_123_456),
            id: Uuid::new_v4(),
        };
        assert_eq!(EntryCursor::from_bytes(&cursor.to_bytes()), Ok(cursor));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert_eq!(EntryCursor::from_bytes(b""), Err(CursorError::Malformed));
        assert_eq!(
            EntryCursor::from_bytes(&[1u8, 2, 3]),
            Err(CursorError::Malformed)
        );
        // Right length, another kind.
        let mut other_kind = vec![2u8];
        other_kind.extend_from_slice(&[0; ENTRY_KEY_LEN]);
        assert_eq!(
            EntryCursor::from_bytes(&other_kind),
            Err(CursorError::Malformed)
        );
        // Right kind, one byte too many.
        let mut too_long = vec![ENTRY_KIND];
        too_long.extend_from_slice(&[0; ENTRY_KEY_LEN + 1]);
        assert_eq!(
            EntryCursor::from_bytes(&too_long),
            Err(CursorError::Malformed)
        );
        let mut negative = vec![ENTRY_KIND];
        negative.extend_from_slice(&(-1i64).to_be_bytes());
        negative.extend_from_slice(&[0; 16]);
        assert_eq!(
            EntryCursor::from_bytes(&negative),
            Err(CursorError::Malformed)
        );
    }
}
