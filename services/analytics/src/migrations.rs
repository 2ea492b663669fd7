//! The schema of the analytics service, as migration steps for [`protomesh_data::migrate`]. A
//! step that was released is never edited: add a new one.

use protomesh_data::stream::APPLIED_EVENTS_DDL;

/// The read model: what the events said about projects, tasks and time entries.
///
/// There are no foreign keys: events of different streams (and retried ones) arrive in any
/// order, so a task may come before its project and an entry before its task. Every read joins
/// what is there at the time.
///
/// `overlap_micros(started, stopped, period_start, period_end)` is how much of the time from
/// `started` to `stopped` falls within `[period_start, period_end)`, in microseconds (0 when none).
pub const READ_MODEL: &str = "
CREATE TABLE projects (
    id uuid PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE tasks (
    id uuid PRIMARY KEY,
    project_id uuid NOT NULL,
    assignee text NOT NULL,
    -- protomesh.tasks.v1.TaskStatus: 1 open, 2 in progress, 3 done.
    status smallint NOT NULL CONSTRAINT tasks_status_known CHECK (status BETWEEN 1 AND 3),
    -- protomesh.priority.v1.Level: 1 low, 2 medium, 3 high, 4 critical.
    level smallint NOT NULL CONSTRAINT tasks_level_known CHECK (level BETWEEN 1 AND 4),
    -- The task's own updated_at of the state stored: an event with an older one changes nothing.
    updated_at timestamptz NOT NULL,
    -- Set by task.deleted, never cleared.
    deleted boolean NOT NULL DEFAULT false
);

CREATE INDEX tasks_assignee ON tasks (assignee) WHERE NOT deleted;
CREATE INDEX tasks_project ON tasks (project_id);

CREATE TABLE entries (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    task_id uuid NOT NULL,
    started_at timestamptz NOT NULL,
    -- NULL while the timer runs; once set, it stays.
    stopped_at timestamptz
);

CREATE INDEX entries_user_started ON entries (user_id, started_at);
CREATE INDEX entries_task ON entries (task_id);

CREATE FUNCTION overlap_micros(
    started timestamptz, stopped timestamptz, period_start timestamptz, period_end timestamptz
) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN greatest(
    0,
    (extract(epoch FROM least(stopped, period_end) - greatest(started, period_start))
        * 1000000)::bigint
);
";

/// Every step, in order: pass to `migrate(&pool, "analytics", MIGRATIONS)`.
pub const MIGRATIONS: &[(i64, &str)] = &[(1, APPLIED_EVENTS_DDL), (2, READ_MODEL)];
