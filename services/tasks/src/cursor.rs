//! The cursors inside page tokens: a kind byte and the sort key of the last item of the page
//! before. The handler seals them into tokens signed and bound to the request's filter with
//! [`protomesh_data::page_token`], which refuses altered or foreign tokens before these bytes
//! are read.
//!
//! | kind | list | sort key | bytes after the kind |
//! |---|---|---|---|
//! | 1 | tasks, newest first | `(created_at, id)` | a [`TimeCursor`]: microseconds since the epoch (i64, big-endian), the UUID (16) |
//! | 2 | projects, by name | `(name, id)` (names are unique per owner only) | the UUID (16), the name (UTF-8) |
//!
//! Anything else — another kind, a wrong length — is malformed, which the handler answers with
//! `INVALID_ARGUMENT` naming `page_token`.

pub use protomesh_data::keyset::{CursorError, TimeCursor};
use uuid::Uuid;

/// The kind byte of a [`TimeCursor`] of the task list.
pub const TASK_KIND: u8 = 1;
const PROJECT_KIND: u8 = 2;

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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn project_cursors_round_trip() {
        let cursor = ProjectCursor {
            name: "ünïcode name / with ? symbols".into(),
            id: Uuid::new_v4(),
        };
        assert_eq!(ProjectCursor::from_bytes(&cursor.to_bytes()), Ok(cursor));
    }

    #[test]
    fn the_two_lists_refuse_each_other_s_cursors() {
        let project = ProjectCursor {
            name: "x".into(),
            id: Uuid::nil(),
        }
        .to_bytes();
        assert_eq!(
            TimeCursor::from_bytes(TASK_KIND, &project),
            Err(CursorError::Malformed)
        );
        let task = TimeCursor {
            time: SystemTime::UNIX_EPOCH,
            id: Uuid::nil(),
        }
        .to_bytes(TASK_KIND);
        assert_eq!(
            ProjectCursor::from_bytes(&task),
            Err(CursorError::Malformed)
        );
        assert_eq!(ProjectCursor::from_bytes(b""), Err(CursorError::Malformed));
    }
}
