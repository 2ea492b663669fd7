//! The cursors inside page tokens: a kind byte and the sort key of the last item of the page
//! before. The handler seals them into tokens signed and bound to the request's filter with
//! [`protomesh_data::page_token`], which refuses altered or foreign tokens before these bytes
//! are read.
//!
//! | kind | list | sort key | bytes after the kind |
//! |---|---|---|---|
//! | 1 | tasks, newest first | `(created_at, id)` | microseconds since the epoch (i64, big-endian), the UUID (16) |
//! | 2 | projects, by name | `(name, id)` (names are unique per owner only) | the UUID (16), the name (UTF-8) |
//!
//! Anything else — another kind, a wrong length — is malformed, which the handler answers with
//! `INVALID_ARGUMENT` naming `page_token`.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

const TASK_KIND: u8 = 1;
const PROJECT_KIND: u8 = 2;

/// Why a page token was refused (shown to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Decodes, but is not a token of this list.
    #[error("not a page token of this list")]
    Malformed,
}

/// Where a page of tasks starts: after the task with this `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCursor {
    /// `created_at` of the last task of the page before.
    pub created_at: SystemTime,
    /// Its id.
    pub id: Uuid,
}

impl TaskCursor {
    /// The cursor's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(25);
        bytes.push(TASK_KIND);
        bytes.extend_from_slice(&micros_since_epoch(self.created_at).to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        bytes
    }

    /// The cursor in `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CursorError> {
        let (&kind, rest) = bytes.split_first().ok_or(CursorError::Malformed)?;
        if kind != TASK_KIND || rest.len() != 24 {
            return Err(CursorError::Malformed);
        }
        let (micros, id) = rest.split_at(8);
        let micros = i64::from_be_bytes(micros.try_into().map_err(|_| CursorError::Malformed)?);
        let id = Uuid::from_slice(id).map_err(|_| CursorError::Malformed)?;
        let micros = u64::try_from(micros).map_err(|_| CursorError::Malformed)?;
        Ok(Self {
            created_at: SystemTime::UNIX_EPOCH + Duration::from_micros(micros),
            id,
        })
    }
}

/// Where a page of projects starts: after the project with this `(name, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectCursor {
    /// Name of the last project of the page before.
    pub name: String,
    /// Its id (two owners may name projects alike).
    pub id: Uuid,
}

impl ProjectCursor {
    /// The cursor's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(17 + self.name.len());
        bytes.push(PROJECT_KIND);
        bytes.extend_from_slice(self.id.as_bytes());
        bytes.extend_from_slice(self.name.as_bytes());
        bytes
    }

    /// The cursor in `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CursorError> {
        let (&kind, rest) = bytes.split_first().ok_or(CursorError::Malformed)?;
        if kind != PROJECT_KIND || rest.len() <= 16 {
            return Err(CursorError::Malformed);
        }
        let (id, name) = rest.split_at(16);
        let id = Uuid::from_slice(id).map_err(|_| CursorError::Malformed)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| CursorError::Malformed)?;
        Ok(Self { name, id })
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
    fn task_cursors_round_trip() {
        let cursor = TaskCursor {
            created_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_714_557_600_123_456),
            id: Uuid::new_v4(),
        };
        assert_eq!(TaskCursor::from_bytes(&cursor.to_bytes()), Ok(cursor));
    }

    #[test]
    fn project_cursors_round_trip() {
        let cursor = ProjectCursor {
            name: "ünïcode name / with ? symbols".into(),
            id: Uuid::new_v4(),
        };
        assert_eq!(ProjectCursor::from_bytes(&cursor.to_bytes()), Ok(cursor));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert_eq!(TaskCursor::from_bytes(b""), Err(CursorError::Malformed));
        assert_eq!(
            TaskCursor::from_bytes(&[1u8, 2, 3]),
            Err(CursorError::Malformed)
        );
        let project = ProjectCursor {
            name: "x".into(),
            id: Uuid::nil(),
        }
        .to_bytes();
        assert_eq!(
            TaskCursor::from_bytes(&project),
            Err(CursorError::Malformed)
        );
        let task = TaskCursor {
            created_at: SystemTime::UNIX_EPOCH,
            id: Uuid::nil(),
        }
        .to_bytes();
        assert_eq!(
            ProjectCursor::from_bytes(&task),
            Err(CursorError::Malformed)
        );
        let mut negative = vec![TASK_KIND];
        negative.extend_from_slice(&(-1i64).to_be_bytes());
        negative.extend_from_slice(&[0; 16]);
        assert_eq!(
            TaskCursor::from_bytes(&negative),
            Err(CursorError::Malformed)
        );
    }
}
