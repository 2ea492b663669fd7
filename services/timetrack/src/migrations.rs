//! The schema of the timetrack service, as migration steps for [`protomesh_data::migrate`]. A
//! step that was released is never edited: add a new one.

use protomesh_data::outbox::OUTBOX_DDL;
use protomesh_data::page_token::PAGE_TOKEN_KEY_DDL;

/// Time entries, with the one-running-timer-per-user rule and the indexes of the listings.
///
/// Entries are listed newest first by `(started_at DESC, id DESC)`: a total order (the id breaks
/// ties between entries started in the same microsecond), so a cursor on it never repeats or
/// skips a row. The partial unique index lets the database itself refuse a second running timer
/// of a user, whatever the handler does.
pub const ENTRIES: &str = "
CREATE TABLE entries (
    id uuid PRIMARY KEY,
    user_id text NOT NULL
        CONSTRAINT entries_user_id_length CHECK (char_length(user_id) BETWEEN 1 AND 200),
    task_id uuid NOT NULL,
    started_at timestamptz NOT NULL,
    -- NULL while the timer runs.
    stopped_at timestamptz,
    note text NOT NULL DEFAULT ''
        CONSTRAINT entries_note_length CHECK (char_length(note) <= 1000),
    CONSTRAINT entries_stopped_after_started CHECK (stopped_at >= started_at)
);

CREATE UNIQUE INDEX entries_one_running_per_user ON entries (user_id) WHERE stopped_at IS NULL;
CREATE INDEX entries_user_newest ON entries (user_id, started_at DESC, id DESC);
CREATE INDEX entries_task_newest ON entries (task_id, started_at DESC, id DESC);
CREATE INDEX entries_newest ON entries (started_at DESC, id DESC);
";

/// Every step, in order: pass to `migrate(&pool, "timetrack", MIGRATIONS)`. Step 3 holds the key
/// that signs page tokens ([`protomesh_data::page_token`]).
pub const MIGRATIONS: &[(i64, &str)] = &[(1, OUTBOX_DDL), (2, ENTRIES), (3, PAGE_TOKEN_KEY_DDL)];
