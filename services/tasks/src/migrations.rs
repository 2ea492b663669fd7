//! The schema of the tasks service, as migration steps for [`protomesh_data::migrate`]. A step
//! that was released is never edited: add a new one.

use protomesh_data::outbox::OUTBOX_DDL;
use protomesh_data::page_token::PAGE_TOKEN_KEY_DDL;

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

/// Owners and members: a project's creator owns it; its members (the owner included, as a
/// `project_members` row with role 1) see it and its tasks.
///
/// Projects created before owners existed are owned by the reserved subject `unowned` (no user
/// has it, so only admins manage such a project until they add members). An assignee, free text
/// that anyone could have written, is never made an owner: assignees that look like user ids
/// (UUIDs, as the users service hands out) become plain members.
pub const OWNERS_AND_MEMBERS: &str = "
ALTER TABLE projects ADD COLUMN owner_id text;
UPDATE projects SET owner_id = 'unowned';
ALTER TABLE projects ALTER COLUMN owner_id SET NOT NULL;

CREATE TABLE project_members (
    project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id text NOT NULL
        CONSTRAINT project_members_user_id_length CHECK (char_length(user_id) BETWEEN 1 AND 200),
    -- protomesh.tasks.v1.ProjectRole: 1 owner, 2 member.
    role smallint NOT NULL CONSTRAINT project_members_role_known CHECK (role BETWEEN 1 AND 2),
    added_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (project_id, user_id)
);
-- A caller's projects (ListProjects, ListTasks without a project).
CREATE INDEX project_members_by_user ON project_members (user_id, project_id);

INSERT INTO project_members (project_id, user_id, role)
    SELECT id, owner_id, 1 FROM projects;
INSERT INTO project_members (project_id, user_id, role)
    SELECT DISTINCT project_id, assignee, 2 FROM tasks
    WHERE assignee ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
    ON CONFLICT DO NOTHING;
";

/// Project names unique per owner, not across the deployment: a global rule let anyone learn
/// that a name was taken by someone else's project (`ALREADY_EXISTS`). Listing by name pages on
/// `(name, id)`.
pub const NAMES_PER_OWNER: &str = "
ALTER TABLE projects DROP CONSTRAINT projects_name_key;
ALTER TABLE projects ADD CONSTRAINT projects_owner_name_key UNIQUE (owner_id, name);
CREATE INDEX projects_by_name ON projects (name, id);
";

/// Every step, in order: pass to `migrate(&pool, "tasks", MIGRATIONS)`. Step 4 holds the key
/// that signs page tokens ([`protomesh_data::page_token`]).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, OUTBOX_DDL),
    (2, PROJECTS_AND_TASKS),
    (3, OWNERS_AND_MEMBERS),
    (4, PAGE_TOKEN_KEY_DDL),
    (5, NAMES_PER_OWNER),
];
