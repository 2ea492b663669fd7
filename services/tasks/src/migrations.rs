//! The schema of the tasks service, as migration steps for [`protomesh::data::migrate`]. A step
//! that was released is never edited: add a new one.

use protomesh::data::outbox::OUTBOX_DDL;
use protomesh::data::page_token::PAGE_TOKEN_KEY_DDL;

/// Projects and tasks, with the indexes the list filters and the cursor pagination use.
///
/// Tasks are listed newest first by `(created_at DESC, id DESC)`: a total order (the id breaks
/// ties between tasks created in the same microsecond), so a cursor on it never repeats or skips
/// a row. Every filter of `ListTasks` has an index that also serves that order.
pub const PROJECTS_AND_TASKS: &str = "
CREATE TABLE projects (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE
        CONSTRAINT projects_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT ''
        CONSTRAINT projects_description_length CHECK (char_length(description) <= 10000),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE tasks (
    id uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    title text NOT NULL
        CONSTRAINT tasks_title_length CHECK (char_length(title) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT ''
        CONSTRAINT tasks_description_length CHECK (char_length(description) <= 10000),
    urgency integer NOT NULL CONSTRAINT tasks_urgency_range CHECK (urgency BETWEEN 1 AND 10),
    impact integer NOT NULL CONSTRAINT tasks_impact_range CHECK (impact BETWEEN 1 AND 10),
    assignee text NOT NULL DEFAULT ''
        CONSTRAINT tasks_assignee_length CHECK (char_length(assignee) <= 200),
    -- protomesh.tasks.v1.TaskStatus: 1 open, 2 in progress, 3 done.
    status smallint NOT NULL DEFAULT 1 CONSTRAINT tasks_status_known CHECK (status BETWEEN 1 AND 3),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at timestamptz,
    priority_score integer NOT NULL
        CONSTRAINT tasks_priority_score_range CHECK (priority_score BETWEEN 1 AND 100),
    -- protomesh.priority.v1.Level: 1 low, 2 medium, 3 high, 4 critical.
    priority_level smallint NOT NULL
        CONSTRAINT tasks_priority_level_known CHECK (priority_level BETWEEN 1 AND 4),
    priority_fallback boolean NOT NULL DEFAULT false,
    CONSTRAINT tasks_completed_iff_done CHECK ((status = 3) = (completed_at IS NOT NULL))
);

CREATE INDEX tasks_newest ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_project_newest ON tasks (project_id, created_at DESC, id DESC);
CREATE INDEX tasks_assignee_newest ON tasks (assignee, created_at DESC, id DESC);
CREATE INDEX tasks_status_newest ON tasks (status, created_at DESC, id DESC);
CREATE INDEX tasks_level_newest ON tasks (priority_level, created_at DESC, id DESC);
";

/// Every step, in order: pass to `migrate(&pool, "tasks", MIGRATIONS)`. Step 3 holds the key
/// that signs page tokens ([`protomesh::data::page_token`]).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, OUTBOX_DDL),
    (2, PROJECTS_AND_TASKS),
    (3, PAGE_TOKEN_KEY_DDL),
];
