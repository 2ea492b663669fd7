//! Keyset pages of a newest-first list: one implementation for every list of every service that
//! pages its rows by `(time, id)`, newest first (tasks by `created_at`, time entries by
//! `started_at`).
//!
//! | piece | its job |
//! |---|---|
//! | [`page_size`] | a request's `page_size`: 0 is [`DEFAULT_PAGE_SIZE`] |
//! | [`PageQuery`] | the `SELECT` of one page: only the filters given, after the cursor, newest first, one row more than the page |
//! | [`TimeCursor`] | where a page starts: the `(time, id)` of the last row of the page before, as bytes behind a kind byte |
//! | [`open_cursor`] | the cursor in a request's `page_token`, or a violation of `page_token` |
//! | [`next_page_token`] | cuts the rows read to the page and seals the cursor of the next page |
//!
//! A cursor's bytes: the list's kind byte, the microseconds since the epoch (i64, big-endian),
//! the UUID (16 bytes). Anything else (another kind, another length, a time before the epoch) is
//! [`CursorError::Malformed`]. The bytes travel sealed in a [`page_token`](super::page_token),
//! which refuses altered or foreign tokens before they are read.

use std::time::{Duration, SystemTime};

use tokio_postgres::types::ToSql;
use tonic::Status;
use uuid::Uuid;

use super::page_token::{PageFilter, PageTokens};
use protomesh::status::Violations;

/// Page size when the request asks for 0 (the declared rules bound `page_size` to 0..=1000).
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// Length of a [`TimeCursor`]'s bytes after its kind byte: the microseconds and the UUID.
const TIME_CURSOR_LEN: usize = 8 + 16;

/// A request's `page_size`: 0 (or a negative number, which the declared rules refuse) is
/// [`DEFAULT_PAGE_SIZE`].
pub fn page_size(value: i32) -> usize {
    match usize::try_from(value) {
        Ok(0) | Err(_) => DEFAULT_PAGE_SIZE,
        Ok(size) => size,
    }
}

/// Why a cursor was refused (shown to the caller as the description of `page_token`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Decodes, but is not a cursor of this list.
    #[error("not a page token of this list")]
    Malformed,
}

/// Where a page of a newest-first list starts: after the row with this `(time, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeCursor {
    /// The sort time of the last row of the page before (`created_at`, `started_at`).
    pub time: SystemTime,
    /// Its id.
    pub id: Uuid,
}

impl TimeCursor {
    /// The cursor's bytes behind the list's `kind` byte.
    pub fn to_bytes(&self, kind: u8) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1 + TIME_CURSOR_LEN);
        bytes.push(kind);
        bytes.extend_from_slice(&micros_since_epoch(self.time).to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        bytes
    }

    /// The cursor in `bytes`, which must start with the list's `kind` byte.
    pub fn from_bytes(kind: u8, bytes: &[u8]) -> Result<Self, CursorError> {
        let (&found, rest) = bytes.split_first().ok_or(CursorError::Malformed)?;
        if found != kind || rest.len() != TIME_CURSOR_LEN {
            return Err(CursorError::Malformed);
        }
        let (micros, id) = rest.split_at(8);
        let micros = i64::from_be_bytes(micros.try_into().map_err(|_| CursorError::Malformed)?);
        let id = Uuid::from_slice(id).map_err(|_| CursorError::Malformed)?;
        let micros = u64::try_from(micros).map_err(|_| CursorError::Malformed)?;
        Ok(Self {
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(micros),
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

/// The `SELECT` of one page of a newest-first list and its parameters. Only the filters given
/// appear in the SQL, so each combination is its own cached statement whose plan can use the
/// matching index.
///
/// ```
/// # use protomesh_data::keyset::PageQuery;
/// let user = "ada".to_owned();
/// let limit = 51i64;
/// let (sql, params) = PageQuery::new("SELECT id FROM entries", "started_at")
///     .filter(Some(&user), |n| format!("user_id = ${n}"))
///     .filter(None::<&String>, |n| format!("task_id = ${n}"))
///     .finish(None, &limit);
/// assert_eq!(sql, "SELECT id FROM entries WHERE user_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2");
/// assert_eq!(params.len(), 2);
/// ```
pub struct PageQuery<'a> {
    sql: String,
    time_column: &'static str,
    params: Vec<&'a (dyn ToSql + Sync)>,
    conditions: Vec<String>,
}

impl std::fmt::Debug for PageQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageQuery")
            .field("sql", &self.sql)
            .field("time_column", &self.time_column)
            .field("conditions", &self.conditions)
            .finish_non_exhaustive()
    }
}

impl<'a> PageQuery<'a> {
    /// A page of `select` (`SELECT … FROM table`, no `WHERE`), newest first by
    /// `(time_column, id)`.
    pub fn new(select: &str, time_column: &'static str) -> Self {
        Self {
            sql: select.to_owned(),
            time_column,
            params: Vec::new(),
            conditions: Vec::new(),
        }
    }

    /// With a `value` given: `value` as the next parameter and the condition `condition(n)`
    /// makes of its number `n` (`format!("user_id = ${n}")`). Without one, nothing.
    pub fn filter<T: ToSql + Sync>(
        mut self,
        value: Option<&'a T>,
        condition: impl FnOnce(usize) -> String,
    ) -> Self {
        if let Some(value) = value {
            self.params.push(value);
            self.conditions.push(condition(self.params.len()));
        }
        self
    }

    /// The statement and its parameters: the rows after `after` (all with none), newest first,
    /// at most `limit` of them.
    pub fn finish(
        mut self,
        after: Option<&'a TimeCursor>,
        limit: &'a i64,
    ) -> (String, Vec<&'a (dyn ToSql + Sync)>) {
        let time = self.time_column;
        if let Some(after) = after {
            self.params.push(&after.time);
            self.params.push(&after.id);
            let n = self.params.len();
            self.conditions
                .push(format!("({time}, id) < (${}, ${n})", n - 1));
        }
        if !self.conditions.is_empty() {
            self.sql.push_str(" WHERE ");
            self.sql.push_str(&self.conditions.join(" AND "));
        }
        self.params.push(limit);
        let n = self.params.len();
        self.sql
            .push_str(&format!(" ORDER BY {time} DESC, id DESC LIMIT ${n}"));
        (self.sql, self.params)
    }
}

/// A page size as a SQL `LIMIT` asking for one row more (to know whether another page follows).
pub fn limit_plus_one(page_size: usize) -> i64 {
    i64::try_from(page_size.saturating_add(1)).unwrap_or(i64::MAX)
}

/// The cursor in a request's `page_token` (none when empty) if this deployment signed it for
/// `filter`, read by `decode`; a malformed, altered or foreign token is a violation of
/// `page_token` (whose description never repeats the token). Fails only when the key cannot be
/// read.
pub async fn open_cursor<C, E: std::fmt::Display>(
    tokens: &PageTokens,
    filter: &PageFilter,
    violations: &mut Violations,
    token: &str,
    decode: impl FnOnce(&[u8]) -> Result<C, E>,
) -> Result<Option<C>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let cursor = match tokens.open(filter, token).await? {
        Ok(bytes) => decode(&bytes).map_err(|err| err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    Ok(cursor
        .map_err(|description| violations.add("page_token", description))
        .ok())
}

/// Cuts `rows` (read with [`limit_plus_one`]) to `page_size` and returns the token of the next
/// page, sealed for `filter`, starting after the last row kept (`cursor` makes its bytes): empty
/// when no row follows.
pub async fn next_page_token<T>(
    tokens: &PageTokens,
    filter: &PageFilter,
    rows: &mut Vec<T>,
    page_size: usize,
    cursor: impl FnOnce(&T) -> Vec<u8>,
) -> Result<String, Status> {
    if rows.len() <= page_size {
        return Ok(String::new());
    }
    rows.truncate(page_size);
    match rows.last() {
        Some(last) => tokens.seal(filter, &cursor(last)).await,
        None => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: u8 = 1;

    #[test]
    fn cursors_round_trip() {
        let cursor = TimeCursor {
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(1_714_557_600_123_456),
            id: Uuid::new_v4(),
        };
        assert_eq!(
            TimeCursor::from_bytes(KIND, &cursor.to_bytes(KIND)),
            Ok(cursor)
        );
    }

    #[test]
    fn malformed_cursors_are_refused() {
        assert_eq!(
            TimeCursor::from_bytes(KIND, b""),
            Err(CursorError::Malformed)
        );
        assert_eq!(
            TimeCursor::from_bytes(KIND, &[KIND, 2, 3]),
            Err(CursorError::Malformed)
        );
        // Right length, another kind.
        let other_kind = TimeCursor {
            time: SystemTime::UNIX_EPOCH,
            id: Uuid::nil(),
        }
        .to_bytes(2);
        assert_eq!(
            TimeCursor::from_bytes(KIND, &other_kind),
            Err(CursorError::Malformed)
        );
        // Right kind, one byte too many.
        let mut too_long = vec![KIND];
        too_long.extend_from_slice(&[0; TIME_CURSOR_LEN + 1]);
        assert_eq!(
            TimeCursor::from_bytes(KIND, &too_long),
            Err(CursorError::Malformed)
        );
        // Before the epoch.
        let mut negative = vec![KIND];
        negative.extend_from_slice(&(-1i64).to_be_bytes());
        negative.extend_from_slice(&[0; 16]);
        assert_eq!(
            TimeCursor::from_bytes(KIND, &negative),
            Err(CursorError::Malformed)
        );
    }

    #[test]
    fn page_sizes_default_when_zero() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(-1), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(1), 1);
        assert_eq!(page_size(1000), 1000);
        assert_eq!(limit_plus_one(50), 51);
    }

    #[test]
    fn queries_have_only_the_filters_given() {
        let limit = 51i64;
        let (sql, params) = PageQuery::new("SELECT id FROM tasks", "created_at")
            .filter(None::<&String>, |n| format!("assignee = ${n}"))
            .finish(None, &limit);
        assert_eq!(
            sql,
            "SELECT id FROM tasks ORDER BY created_at DESC, id DESC LIMIT $1"
        );
        assert_eq!(params.len(), 1);

        let from = SystemTime::UNIX_EPOCH;
        let assignee = "ada".to_owned();
        let after = TimeCursor {
            time: SystemTime::UNIX_EPOCH,
            id: Uuid::nil(),
        };
        let (sql, params) = PageQuery::new("SELECT id FROM entries", "started_at")
            .filter(Some(&from), |n| {
                format!("(stopped_at > ${n} OR started_at >= ${n})")
            })
            .filter(Some(&assignee), |n| format!("assignee = ${n}"))
            .finish(Some(&after), &limit);
        assert_eq!(
            sql,
            "SELECT id FROM entries WHERE (stopped_at > $1 OR started_at >= $1) AND assignee = $2 \
             AND (started_at, id) < ($3, $4) ORDER BY started_at DESC, id DESC LIMIT $5"
        );
        assert_eq!(params.len(), 5);
    }
}
