//! The tasks service: projects and the tasks in them, on Postgres (schema `tasks`), with a Redis
//! read-through cache of single tasks and `task.*` events published through a transactional
//! outbox to the Redis Stream `tasks`. Every task carries a priority obtained from the priority
//! service through the mesh, or computed locally (urgency × impact) when that service is
//! unavailable — then `priority_fallback` is set.
//!
//! | call | reads / writes | event (stream `tasks`) |
//! |---|---|---|
//! | `CreateProject` | insert (`ALREADY_EXISTS` for a name the caller already gave a project) | `project.created` |
//! | `GetProject`, `ListProjects` | select (by name, cursor pages) | |
//! | `CreateTask` | priority, insert (`NOT_FOUND` for an unknown project) | `task.created` |
//! | `GetTask` | cache `task:{id}` (TTL 60 s), else select and fill the cache | |
//! | `UpdateTask` | select, priority if urgency or impact change, update guarded by `updated_at`; cache entry deleted | `task.updated` (`task.completed` when it sets the status to done) |
//! | `CompleteTask` | update (`FAILED_PRECONDITION` when already done); cache entry deleted | `task.completed` |
//! | `DeleteTask` | delete; cache entry deleted | `task.deleted` |
//! | `ListTasks` | select by filters, newest first, cursor pages | |
//!
//! `ListTasks` pages by a cursor on `(created_at, id)`, newest first: a task that existed when
//! the listing began is on exactly one page whatever is inserted meanwhile (inserts are newer, so
//! they land before the cursor). `created_at` is `clock_timestamp()` at the insert, a few
//! statements before the commit, so only a task committed in that instant can be behind a cursor
//! handed out just before: such a task was not there when the listing began.
//!
//! The cache is a hint with a short TTL: a `GetTask` that read the row just before an update
//! committed may put the old copy back after the update deleted it, for at most the TTL.
//!
//! Who may touch what ([`access`]): a project's members see it, its tasks and its members, and
//! change its tasks; its owner (its creator) also manages its members; admins see and manage every
//! project. A project or task the caller cannot see is `NOT_FOUND`, exactly like one that does not
//! exist; `ListProjects` and `ListTasks` list only the caller's projects (every one for admins).
//! `DeleteTask` is for admins (its proto policy, checked by the runtime).
//!
//! | call | who |
//! |---|---|
//! | `CreateProject` | any signed-in caller, who becomes the owner |
//! | `GetProject`, `ListProjectMembers`, task calls | the project's members |
//! | `AddProjectMember`, `RemoveProjectMember` | the owner (a member may remove itself) |
//!
//! Every write and its event commit in one transaction. Event payloads are the task's JSON
//! ([`model`]). Requests are checked before anything else, and a bad one is `INVALID_ARGUMENT`
//! naming each field at fault (`task.title`, `task.urgency`, `page_size`, `update_mask`…).
#![forbid(unsafe_code)]

/// Rust code generated from the service's protos by `build.rs` (`protomesh_build`), and
/// `FILE_DESCRIPTOR_SET`, their encoded descriptor set (served over reflection).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    ::protomesh::include_protos!();
}

pub mod access;
pub mod cursor;
pub mod migrations;
pub mod model;
pub mod priority;
pub mod validate;

use std::time::Duration;

use crate::proto::protomesh::tasks::v1::{
    tasks_service_server::TasksService, AddProjectMemberRequest, CompleteTaskRequest,
    CreateProjectRequest, CreateTaskRequest, DeleteTaskRequest, GetProjectRequest, GetTaskRequest,
    ListProjectMembersRequest, ListProjectMembersResponse, ListProjectsRequest,
    ListProjectsResponse, ListTasksRequest, ListTasksResponse, Project, ProjectMember, ProjectRole,
    RemoveProjectMemberRequest, Task, TaskStatus, UpdateTaskRequest,
};
use protomesh::client::Mesh;
use protomesh::identity::{self, Identity};
use protomesh::status::{echo, invalid_argument};
use protomesh::telemetry::spans;
use protomesh_data::deadpool_postgres::{Object, Pool};
use protomesh_data::keyset::{self, PageQuery};
use protomesh_data::page_token::{PageFilter, PageTokens};
use protomesh_data::tokio_postgres::types::ToSql;
use protomesh_data::{db_error, outbox, Cache};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use access::{project_not_found, require_member, require_owner, role_from_db, role_to_db};
use cursor::{ProjectCursor, TimeCursor, TASK_KIND};
use model::{level_to_db, project_columns, status_to_db, task_columns, ProjectRecord, TaskRecord};
use priority::Priority;
use validate::Violations;

pub use crate::proto::protomesh::tasks::v1::tasks_service_server::TasksServiceServer;
pub use migrations::MIGRATIONS;

/// The service's name in Consul, its Postgres schema and its migrations' name.
pub const SERVICE: &str = "tasks";

/// The Redis Stream (under the key prefix) the events go to.
pub const EVENT_STREAM: &str = "tasks";

/// How long a task stays in the cache unless `--cache-ttl` says otherwise.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

/// How often `UpdateTask` reads the task again when another write changed it in between, before
/// it gives up with `ABORTED`.
const UPDATE_ATTEMPTS: usize = 3;

/// The cache key of task `id` (under the key prefix): `task:{id}`.
pub fn cache_key(id: Uuid) -> String {
    format!("task:{id}")
}

const SELECT_PROJECT: &str = concat!(
    "SELECT ",
    project_columns!(),
    " FROM projects WHERE id = $1"
);

const INSERT_PROJECT: &str = concat!(
    "INSERT INTO projects (id, name, description, owner_id) VALUES ($1, $2, $3, $4) RETURNING ",
    project_columns!()
);

/// `$2`: an admin's call (every project), else only the projects `$3` is a member of; by
/// `(name, id)` (names are unique per owner only).
const LIST_PROJECTS_FIRST: &str = concat!(
    "SELECT ",
    project_columns!(),
    " FROM projects WHERE ($2 OR id IN (SELECT project_id FROM project_members WHERE user_id = $3))
    ORDER BY name, id LIMIT $1"
);

/// As [`LIST_PROJECTS_FIRST`], after the project `($1, $5)`.
const LIST_PROJECTS_AFTER: &str = concat!(
    "SELECT ",
    project_columns!(),
    " FROM projects WHERE (name, id) > ($1, $5)
        AND ($3 OR id IN (SELECT project_id FROM project_members WHERE user_id = $4))
    ORDER BY name, id LIMIT $2"
);

const INSERT_MEMBER: &str = "INSERT INTO project_members (project_id, user_id, role)
    VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
    RETURNING project_id, user_id, role, added_at";

/// Never the owner's row (`role` 1).
const DELETE_MEMBER: &str =
    "DELETE FROM project_members WHERE project_id = $1 AND user_id = $2 AND role <> 1
    RETURNING user_id";

const MEMBER_IS_OWNER: &str =
    "SELECT 1 FROM project_members WHERE project_id = $1 AND user_id = $2 AND role = 1";

const LIST_MEMBERS: &str = "SELECT project_id, user_id, role, added_at FROM project_members
    WHERE project_id = $1 ORDER BY role, added_at, user_id";

const SELECT_TASK: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1");

/// `$8` is the status: a task created done is completed at once.
const INSERT_TASK: &str = concat!(
    "WITH clock AS (SELECT clock_timestamp() AS now)
    INSERT INTO tasks (id, project_id, title, description, urgency, impact, assignee, status,
        created_at, updated_at, completed_at, priority_score, priority_level, priority_fallback)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, clock.now, clock.now,
        CASE WHEN $8::smallint = 3 THEN clock.now END, $9, $10, $11
    FROM clock
    RETURNING ",
    task_columns!()
);

/// Writes every mutable column, if the row is still the one read (`updated_at = $11`); the new
/// `updated_at` is later than the old one even within one microsecond.
const UPDATE_TASK: &str = concat!(
    "WITH clock AS (SELECT clock_timestamp() AS now)
    UPDATE tasks SET title = $2, description = $3, urgency = $4, impact = $5, assignee = $6,
        status = $7,
        completed_at = CASE WHEN $7::smallint = 3 THEN coalesce(tasks.completed_at, clock.now) END,
        priority_score = $8, priority_level = $9, priority_fallback = $10,
        updated_at = greatest(clock.now, tasks.updated_at + interval '1 microsecond')
    FROM clock
    WHERE tasks.id = $1 AND tasks.updated_at = $11
    RETURNING ",
    task_columns!()
);

const COMPLETE_TASK: &str = concat!(
    "WITH clock AS (SELECT clock_timestamp() AS now)
    UPDATE tasks SET status = 3, completed_at = clock.now,
        updated_at = greatest(clock.now, tasks.updated_at + interval '1 microsecond')
    FROM clock
    WHERE tasks.id = $1 AND tasks.status <> 3
    RETURNING ",
    task_columns!()
);

const TASK_STATUS: &str = "SELECT status FROM tasks WHERE id = $1";

const DELETE_TASK: &str = concat!(
    "DELETE FROM tasks WHERE id = $1 RETURNING ",
    task_columns!()
);

/// The gRPC handler of `protomesh.tasks.v1.TasksService`. Cheap to clone.
#[derive(Clone)]
pub struct TasksHandler {
    pool: Pool,
    cache: Cache,
    mesh: Mesh,
    cache_ttl: Duration,
    page_tokens: PageTokens,
}

impl std::fmt::Debug for TasksHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TasksHandler")
            .field("cache", &self.cache)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

fn task_not_found(id: Uuid) -> Status {
    Status::not_found(format!("task {id} not found"))
}

impl TasksHandler {
    /// A handler on `pool` (migrated with [`MIGRATIONS`]), caching tasks in `cache` for
    /// [`DEFAULT_CACHE_TTL`], asking `mesh` for priorities.
    /// Page tokens are signed with the key stored in the pool's schema (see
    /// [`TasksHandler::with_page_tokens`]).
    pub fn new(pool: Pool, cache: Cache, mesh: Mesh) -> Self {
        Self {
            page_tokens: PageTokens::stored(pool.clone()),
            pool,
            cache,
            mesh,
            cache_ttl: DEFAULT_CACHE_TTL,
        }
    }

    /// The same handler signing and checking page tokens with `tokens`
    /// ([`protomesh_data::page_token`]).
    pub fn with_page_tokens(mut self, tokens: PageTokens) -> Self {
        self.page_tokens = tokens;
        self
    }

    /// The same handler keeping tasks in the cache for `ttl`; zero turns the read cache off
    /// (GetTask always reads Postgres; writes still invalidate, so turning it back on is safe).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// A connection from the pool (`UNAVAILABLE` within `--db-timeout` when the database is down).
    async fn connection(&self, what: &'static str) -> Result<Object, Status> {
        self.pool.get().await.map_err(db_error(what))
    }

    /// Task `id` as the database has it now (not the cache).
    async fn load_task(&self, id: Uuid) -> Result<TaskRecord, Status> {
        let select = async {
            let client = self.connection("task").await?;
            let statement = client
                .prepare_cached(SELECT_TASK)
                .await
                .map_err(db_error("task"))?;
            client
                .query_opt(&statement, &[&id])
                .await
                .map_err(db_error("task"))
        };
        let row = spans::in_span(spans::postgres("SELECT", "tasks"), select).await?;
        row.as_ref()
            .map(TaskRecord::from_row)
            .ok_or_else(|| task_not_found(id))
    }

    /// Task `id` if the caller may see it (a member of its project), else `NOT_FOUND`.
    async fn visible_task(&self, id: Uuid, caller: &Identity) -> Result<TaskRecord, Status> {
        let task = self.load_task(id).await?;
        self.require_visible(&task, caller).await?;
        Ok(task)
    }

    /// Passes when the caller may see `task`; `NOT_FOUND` for the task otherwise.
    async fn require_visible(&self, task: &TaskRecord, caller: &Identity) -> Result<(), Status> {
        match access::role_in(&self.pool, task.project_id, caller).await? {
            Some(_) => Ok(()),
            None => Err(task_not_found(task.id)),
        }
    }

    /// Runs one write of a task and its event in a transaction: `sql` (returning the task's
    /// columns, an `operation` such as `INSERT`) with `params`, then the outbox row of
    /// `event_type` (the task's JSON), then the commit. `None` when `sql` touched no row (nothing
    /// is written then).
    async fn write_task(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        event_type: &str,
    ) -> Result<Option<TaskRecord>, Status> {
        let write = self.write_task_in_transaction(sql, params, event_type);
        spans::in_span(spans::postgres(operation, "tasks"), write).await
    }

    /// The transaction of [`TasksHandler::write_task`].
    async fn write_task_in_transaction(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        event_type: &str,
    ) -> Result<Option<TaskRecord>, Status> {
        let mut client = self.connection("task").await?;
        let tx = client.transaction().await.map_err(db_error("task"))?;
        let statement = tx.prepare_cached(sql).await.map_err(db_error("task"))?;
        let Some(row) = tx
            .query_opt(&statement, params)
            .await
            .map_err(db_error("task"))?
        else {
            return Ok(None);
        };
        let task = TaskRecord::from_row(&row);
        outbox::insert(
            &tx,
            EVENT_STREAM,
            event_type,
            &task.id.to_string(),
            &task.to_json(),
        )
        .await
        .map_err(db_error("task"))?;
        tx.commit().await.map_err(db_error("task"))?;
        tracing::debug!(task = %task.id, event = event_type, "task written");
        Ok(Some(task))
    }

    /// Drops the cached copy of task `id` (after its write committed).
    async fn forget(&self, id: Uuid) {
        self.cache.del(&cache_key(id)).await;
    }
}

/// Which fields an `UpdateTask` mask names.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct UpdateFields {
    title: bool,
    description: bool,
    urgency: bool,
    impact: bool,
    assignee: bool,
    status: bool,
}

impl UpdateFields {
    /// The fields of `paths`, or `INVALID_ARGUMENT` naming `update_mask`. `id` is the task's
    /// identifier and ignored (the gateway fills a mask from the JSON keys present).
    fn parse(paths: &[String]) -> Result<Self, Status> {
        let mut fields = Self::default();
        let mut any = false;
        for path in paths {
            let flag = match path.as_str() {
                "title" => &mut fields.title,
                "description" => &mut fields.description,
                "urgency" => &mut fields.urgency,
                "impact" => &mut fields.impact,
                "assignee" => &mut fields.assignee,
                "status" => &mut fields.status,
                "id" => continue,
                "project_id" | "created_at" | "updated_at" | "completed_at" | "priority_score"
                | "priority_level" | "priority_fallback" => {
                    return Err(invalid_argument(
                        "update_mask",
                        format!(
                            "{path} cannot be updated (updatable: title, description, urgency, impact, assignee, status)"
                        ),
                    ))
                }
                _ => {
                    return Err(invalid_argument(
                        "update_mask",
                        format!(
                            "unknown field {:?} (updatable: title, description, urgency, impact, assignee, status)",
                            echo(path)
                        ),
                    ))
                }
            };
            *flag = true;
            any = true;
        }
        if !any {
            return Err(invalid_argument(
                "update_mask",
                "must name at least one field to update (title, description, urgency, impact, assignee, status)",
            ));
        }
        Ok(fields)
    }

    /// Checks what the declared rules cannot: a named status must be set (on create an unset
    /// one means open). The other named fields were checked against their rules before the
    /// handler ran (the rules of an update apply to the fields its mask names).
    fn check(&self, task: &Task, violations: &mut Violations) {
        if self.status {
            violations.check(validate::status("task.status", task.status));
        }
    }

    /// `current` with the named fields taken from `task` (already checked).
    fn apply(&self, current: &TaskRecord, task: &Task) -> TaskRecord {
        let mut next = current.clone();
        if self.title {
            next.title.clone_from(&task.title);
        }
        if self.description {
            next.description.clone_from(&task.description);
        }
        if self.urgency {
            next.urgency = task.urgency;
        }
        if self.impact {
            next.impact = task.impact;
        }
        if self.assignee {
            next.assignee.clone_from(&task.assignee);
        }
        if self.status {
            next.status = TaskStatus::try_from(task.status).unwrap_or(current.status);
        }
        next
    }
}

#[tonic::async_trait]
impl TasksService for TasksHandler {
    async fn create_project(
        &self,
        request: Request<CreateProjectRequest>,
    ) -> Result<Response<Project>, Status> {
        let caller = identity::caller(request.metadata())?;
        let Some(project) = request.into_inner().project else {
            return Err(invalid_argument("project", "is required"));
        };

        let id = Uuid::new_v4();
        let insert = async {
            let mut client = self.connection("project").await?;
            let tx = client.transaction().await.map_err(db_error("project"))?;
            let statement = tx
                .prepare_cached(INSERT_PROJECT)
                .await
                .map_err(db_error("project"))?;
            let row = tx
                .query_one(
                    &statement,
                    &[&id, &project.name, &project.description, &caller.subject],
                )
                .await
                .map_err(db_error("project"))?;
            let created = ProjectRecord::from_row(&row);
            let owner = role_to_db(ProjectRole::Owner);
            let member = tx
                .prepare_cached(INSERT_MEMBER)
                .await
                .map_err(db_error("project"))?;
            tx.execute(&member, &[&id, &caller.subject, &owner])
                .await
                .map_err(db_error("project"))?;
            outbox::insert(
                &tx,
                EVENT_STREAM,
                "project.created",
                &id.to_string(),
                &created.to_json(),
            )
            .await
            .map_err(db_error("project"))?;
            tx.commit().await.map_err(db_error("project"))?;
            Ok::<_, Status>(created)
        };
        let created = spans::in_span(spans::postgres("INSERT", "projects"), insert).await?;
        Ok(Response::new(created.to_proto()))
    }

    async fn get_project(
        &self,
        request: Request<GetProjectRequest>,
    ) -> Result<Response<Project>, Status> {
        let caller = identity::caller(request.metadata())?;
        let id = validate::uuid("id", &request.get_ref().id).map_err(one_violation)?;
        require_member(&self.pool, id, &caller).await?;
        let select = async {
            let client = self.connection("project").await?;
            let statement = client
                .prepare_cached(SELECT_PROJECT)
                .await
                .map_err(db_error("project"))?;
            client
                .query_opt(&statement, &[&id])
                .await
                .map_err(db_error("project"))
        };
        let row = spans::in_span(spans::postgres("SELECT", "projects"), select).await?;
        let project = row
            .as_ref()
            .map(ProjectRecord::from_row)
            .ok_or_else(|| project_not_found(id))?;
        Ok(Response::new(project.to_proto()))
    }

    async fn list_projects(
        &self,
        request: Request<ListProjectsRequest>,
    ) -> Result<Response<ListProjectsResponse>, Status> {
        let caller = identity::caller(request.metadata())?;
        let every_project = caller.is_admin();
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page_size = keyset::page_size(request.page_size);
        // A token is the caller's own: the list it pages is the caller's projects.
        let filter = PageFilter::new("tasks.ListProjects").field("caller", &caller.subject);
        let after = keyset::open_cursor(
            &self.page_tokens,
            &filter,
            &mut violations,
            &request.page_token,
            ProjectCursor::from_bytes,
        )
        .await?;
        violations.into_result()?;
        let limit = keyset::limit_plus_one(page_size);

        let select = async {
            let client = self.connection("project").await?;
            match &after {
                None => {
                    let statement = client
                        .prepare_cached(LIST_PROJECTS_FIRST)
                        .await
                        .map_err(db_error("project"))?;
                    client
                        .query(&statement, &[&limit, &every_project, &caller.subject])
                        .await
                }
                Some(cursor) => {
                    let statement = client
                        .prepare_cached(LIST_PROJECTS_AFTER)
                        .await
                        .map_err(db_error("project"))?;
                    client
                        .query(
                            &statement,
                            &[
                                &cursor.name,
                                &limit,
                                &every_project,
                                &caller.subject,
                                &cursor.id,
                            ],
                        )
                        .await
                }
            }
            .map_err(db_error("project"))
        };
        let rows = spans::in_span(spans::postgres("SELECT", "projects"), select).await?;
        let mut projects: Vec<ProjectRecord> = rows.iter().map(ProjectRecord::from_row).collect();
        let next_page_token = keyset::next_page_token(
            &self.page_tokens,
            &filter,
            &mut projects,
            page_size,
            |last| {
                ProjectCursor {
                    name: last.name.clone(),
                    id: last.id,
                }
                .to_bytes()
            },
        )
        .await?;
        Ok(Response::new(ListProjectsResponse {
            projects: projects.iter().map(ProjectRecord::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn create_task(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let caller = identity::caller(request.metadata())?;
        let request = request.into_inner();
        let Some(task) = request.task else {
            return Err(invalid_argument("task", "is required"));
        };
        let mut violations = Violations::new();
        // The project comes from the request (the HTTP path) or, failing that, from the task.
        let project_text = if request.project_id.is_empty() {
            task.project_id.as_str()
        } else {
            if !task.project_id.is_empty() && task.project_id != request.project_id {
                violations.add(
                    "task.project_id",
                    format!(
                        "must be empty or equal project_id {:?}, got {:?}",
                        echo(&request.project_id),
                        echo(&task.project_id)
                    ),
                );
            }
            request.project_id.as_str()
        };
        // The task's own fields were checked against their declared rules already.
        let project_id = violations.check(validate::uuid("project_id", project_text));
        let status = if task.status == TaskStatus::Unspecified as i32 {
            Some(TaskStatus::Open)
        } else {
            violations.check(validate::status("task.status", task.status))
        };
        violations.into_result()?;
        let (Some(project_id), Some(status)) = (project_id, status) else {
            return Err(Status::internal("request check incomplete"));
        };

        // Before asking priority: a project the caller cannot see is NOT_FOUND at once. (The
        // foreign key still catches a project deleted in between, also as NOT_FOUND.)
        require_member(&self.pool, project_id, &caller).await?;
        let priority = priority::score(&self.mesh, &task.title, task.urgency, task.impact).await?;

        let id = Uuid::new_v4();
        let status_db = status_to_db(status);
        let level_db = level_to_db(priority.level);
        let created = self
            .write_task(
                "INSERT",
                INSERT_TASK,
                &[
                    &id,
                    &project_id,
                    &task.title,
                    &task.description,
                    &task.urgency,
                    &task.impact,
                    &task.assignee,
                    &status_db,
                    &priority.score,
                    &level_db,
                    &priority.fallback,
                ],
                "task.created",
            )
            .await?
            .ok_or_else(|| Status::internal("task insert returned no row"))?;
        Ok(Response::new(created.to_proto()))
    }

    async fn get_task(&self, request: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        let caller = identity::caller(request.metadata())?;
        let id = validate::uuid("id", &request.get_ref().id).map_err(one_violation)?;
        if self.cache_ttl.is_zero() {
            return Ok(Response::new(
                self.visible_task(id, &caller).await?.to_proto(),
            ));
        }
        let key = cache_key(id);
        let task = match self.cache.get::<TaskRecord>(&key).await {
            Some(task) if task.id == id => task,
            _ => {
                let task = self.load_task(id).await?;
                self.cache.set(&key, &task, self.cache_ttl).await;
                task
            }
        };
        // Membership is checked on every read, cached or not: a member removed loses access at
        // once.
        self.require_visible(&task, &caller).await?;
        Ok(Response::new(task.to_proto()))
    }

    async fn update_task(
        &self,
        request: Request<UpdateTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let caller = identity::caller(request.metadata())?;
        let request = request.into_inner();
        let Some(task) = request.task else {
            return Err(invalid_argument("task", "is required"));
        };
        let id = validate::uuid("task.id", &task.id).map_err(one_violation)?;
        let paths = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        let fields = UpdateFields::parse(&paths)?;
        let mut violations = Violations::new();
        fields.check(&task, &mut violations);
        violations.into_result()?;

        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.visible_task(id, &caller).await?;
            let next = fields.apply(&current, &task);
            let priority = if next.urgency != current.urgency || next.impact != current.impact {
                priority::score(&self.mesh, &next.title, next.urgency, next.impact).await?
            } else {
                Priority {
                    score: current.priority_score,
                    level: current.priority_level,
                    fallback: current.priority_fallback,
                }
            };
            let event = if next.status == TaskStatus::Done && current.status != TaskStatus::Done {
                "task.completed"
            } else {
                "task.updated"
            };
            let status_db = status_to_db(next.status);
            let level_db = level_to_db(priority.level);
            let written = self
                .write_task(
                    "UPDATE",
                    UPDATE_TASK,
                    &[
                        &id,
                        &next.title,
                        &next.description,
                        &next.urgency,
                        &next.impact,
                        &next.assignee,
                        &status_db,
                        &priority.score,
                        &level_db,
                        &priority.fallback,
                        &current.updated_at,
                    ],
                    event,
                )
                .await?;
            if let Some(updated) = written {
                self.forget(id).await;
                return Ok(Response::new(updated.to_proto()));
            }
            // Changed (or deleted) since it was read: read it again.
            tracing::debug!(task = %id, "task changed during update; retrying");
        }
        Err(Status::aborted(format!(
            "task {id} kept changing during the update; try again"
        )))
    }

    async fn complete_task(
        &self,
        request: Request<CompleteTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let caller = identity::caller(request.metadata())?;
        let id = validate::uuid("id", &request.get_ref().id).map_err(one_violation)?;
        // A task's project never changes, so a task seen here stays the caller's to complete.
        self.visible_task(id, &caller).await?;
        if let Some(completed) = self
            .write_task("UPDATE", COMPLETE_TASK, &[&id], "task.completed")
            .await?
        {
            self.forget(id).await;
            return Ok(Response::new(completed.to_proto()));
        }
        // No open task with that id: tell which.
        let select = async {
            let client = self.connection("task").await?;
            let statement = client
                .prepare_cached(TASK_STATUS)
                .await
                .map_err(db_error("task"))?;
            client
                .query_opt(&statement, &[&id])
                .await
                .map_err(db_error("task"))
        };
        match spans::in_span(spans::postgres("SELECT", "tasks"), select).await? {
            None => Err(task_not_found(id)),
            Some(_) => Err(Status::failed_precondition(format!(
                "task {id} is already done"
            ))),
        }
    }

    async fn delete_task(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        let id = validate::uuid("id", &request.get_ref().id).map_err(one_violation)?;
        let deleted = self
            .write_task("DELETE", DELETE_TASK, &[&id], "task.deleted")
            .await?;
        self.forget(id).await;
        match deleted {
            Some(_) => Ok(Response::new(())),
            None => Err(task_not_found(id)),
        }
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let caller = identity::caller(request.metadata())?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let project_id = violations
            .check(validate::optional_uuid("project_id", &request.project_id))
            .flatten();
        let status = validate::status_filter(request.status);
        let min_level = validate::level_filter(request.min_level);
        let page_size = keyset::page_size(request.page_size);
        // The token is good only with the filters it was handed out with.
        let filter = PageFilter::new("tasks.ListTasks")
            .field("caller", &caller.subject)
            .field(
                "project_id",
                project_id.map(|id| id.to_string()).unwrap_or_default(),
            )
            .field("assignee", &request.assignee)
            .field("status", request.status.to_be_bytes())
            .field("min_level", request.min_level.to_be_bytes());
        let after = keyset::open_cursor(
            &self.page_tokens,
            &filter,
            &mut violations,
            &request.page_token,
            |bytes| TimeCursor::from_bytes(TASK_KIND, bytes),
        )
        .await?;
        violations.into_result()?;
        if let Some(project_id) = project_id {
            require_member(&self.pool, project_id, &caller).await?;
        }

        let filters = TaskFilters {
            // Without a project: only the caller's projects, unless it is an admin.
            member: (project_id.is_none() && !caller.is_admin()).then(|| caller.subject.clone()),
            project_id,
            assignee: (!request.assignee.is_empty()).then_some(request.assignee),
            status: status.map(status_to_db),
            min_level: min_level.map(level_to_db),
            after,
            limit: keyset::limit_plus_one(page_size),
        };
        let (sql, params) = filters.query();
        let select = async {
            let client = self.connection("task").await?;
            let statement = client
                .prepare_cached(&sql)
                .await
                .map_err(db_error("task"))?;
            client
                .query(&statement, &params)
                .await
                .map_err(db_error("task"))
        };
        let rows = spans::in_span(spans::postgres("SELECT", "tasks"), select).await?;
        let mut tasks: Vec<TaskRecord> = rows.iter().map(TaskRecord::from_row).collect();
        let next_page_token =
            keyset::next_page_token(&self.page_tokens, &filter, &mut tasks, page_size, |last| {
                TimeCursor {
                    time: last.created_at,
                    id: last.id,
                }
                .to_bytes(TASK_KIND)
            })
            .await?;
        Ok(Response::new(ListTasksResponse {
            tasks: tasks.iter().map(TaskRecord::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn add_project_member(
        &self,
        request: Request<AddProjectMemberRequest>,
    ) -> Result<Response<ProjectMember>, Status> {
        let caller = identity::caller(request.metadata())?;
        let request = request.into_inner();
        let (project_id, user_id) = member_target(&request.project_id, &request.user_id)?;
        require_owner(&self.pool, project_id, &caller).await?;
        let insert = async {
            let client = self.connection("project").await?;
            let statement = client
                .prepare_cached(INSERT_MEMBER)
                .await
                .map_err(db_error("project"))?;
            client
                .query_opt(
                    &statement,
                    &[&project_id, &user_id, &role_to_db(ProjectRole::Member)],
                )
                .await
                .map_err(db_error("project"))
        };
        match spans::in_span(spans::postgres("INSERT", "project_members"), insert).await? {
            Some(row) => Ok(Response::new(member_of_row(&row))),
            None => Err(Status::already_exists(format!(
                "user_id: {} is already a member of project {project_id}",
                protomesh::status::echo(&user_id)
            ))),
        }
    }

    async fn remove_project_member(
        &self,
        request: Request<RemoveProjectMemberRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = identity::caller(request.metadata())?;
        let request = request.into_inner();
        let (project_id, user_id) = member_target(&request.project_id, &request.user_id)?;
        if user_id == caller.subject && !caller.is_admin() {
            // Leaving a project needs only membership.
            require_member(&self.pool, project_id, &caller).await?;
        } else {
            require_owner(&self.pool, project_id, &caller).await?;
        }
        let remove = async {
            let client = self.connection("project").await?;
            let delete = client
                .prepare_cached(DELETE_MEMBER)
                .await
                .map_err(db_error("project"))?;
            if client
                .query_opt(&delete, &[&project_id, &user_id])
                .await
                .map_err(db_error("project"))?
                .is_some()
            {
                return Ok(());
            }
            let owner = client
                .prepare_cached(MEMBER_IS_OWNER)
                .await
                .map_err(db_error("project"))?;
            let is_owner = client
                .query_opt(&owner, &[&project_id, &user_id])
                .await
                .map_err(db_error("project"))?
                .is_some();
            Err(if is_owner {
                Status::failed_precondition(format!(
                    "user_id: the owner of project {project_id} cannot be removed"
                ))
            } else {
                Status::not_found(format!(
                    "user_id: {} is not a member of project {project_id}",
                    protomesh::status::echo(&user_id)
                ))
            })
        };
        spans::in_span(spans::postgres("DELETE", "project_members"), remove).await?;
        Ok(Response::new(()))
    }

    async fn list_project_members(
        &self,
        request: Request<ListProjectMembersRequest>,
    ) -> Result<Response<ListProjectMembersResponse>, Status> {
        let caller = identity::caller(request.metadata())?;
        let project_id =
            validate::uuid("project_id", &request.get_ref().project_id).map_err(one_violation)?;
        require_member(&self.pool, project_id, &caller).await?;
        let select = async {
            let client = self.connection("project").await?;
            let statement = client
                .prepare_cached(LIST_MEMBERS)
                .await
                .map_err(db_error("project"))?;
            client
                .query(&statement, &[&project_id])
                .await
                .map_err(db_error("project"))
        };
        let rows = spans::in_span(spans::postgres("SELECT", "project_members"), select).await?;
        Ok(Response::new(ListProjectMembersResponse {
            members: rows.iter().map(member_of_row).collect(),
        }))
    }
}

/// The project and user a membership call names (checked against their declared rules).
fn member_target(project: &str, user: &str) -> Result<(Uuid, String), Status> {
    let project_id = validate::uuid("project_id", project).map_err(one_violation)?;
    Ok((project_id, user.to_owned()))
}

/// A member as selected by [`INSERT_MEMBER`] and [`LIST_MEMBERS`]: `project_id, user_id, role,
/// added_at`.
fn member_of_row(row: &protomesh_data::tokio_postgres::Row) -> ProjectMember {
    let added_at: std::time::SystemTime = row.get(3);
    ProjectMember {
        project_id: row.get::<_, Uuid>(0).to_string(),
        user_id: row.get(1),
        role: role_from_db(row.get(2)) as i32,
        added_at: Some(added_at.into()),
    }
}

/// A single violation as `INVALID_ARGUMENT`.
fn one_violation(violation: protomesh::status::FieldViolation) -> Status {
    protomesh::status::bad_request(vec![violation])
}

/// The checked filters of a `ListTasks` call.
#[derive(Debug)]
struct TaskFilters {
    /// Only tasks of the projects this user is a member of.
    member: Option<String>,
    project_id: Option<Uuid>,
    assignee: Option<String>,
    status: Option<i16>,
    min_level: Option<i16>,
    after: Option<TimeCursor>,
    limit: i64,
}

impl TaskFilters {
    /// The statement and its parameters ([`PageQuery`]): only the filters given, newest first by
    /// `(created_at, id)`, after the cursor if any.
    fn query(&self) -> (String, Vec<&(dyn ToSql + Sync)>) {
        PageQuery::new(
            concat!("SELECT ", task_columns!(), " FROM tasks"),
            "created_at",
        )
        .filter(self.member.as_ref(), |n| {
            format!("project_id IN (SELECT project_id FROM project_members WHERE user_id = ${n})")
        })
        .filter(self.project_id.as_ref(), |n| format!("project_id = ${n}"))
        .filter(self.assignee.as_ref(), |n| format!("assignee = ${n}"))
        .filter(self.status.as_ref(), |n| format!("status = ${n}"))
        .filter(self.min_level.as_ref(), |n| {
            format!("priority_level >= ${n}")
        })
        .finish(self.after.as_ref(), &self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn violation_fields(status: &Status) -> Vec<String> {
        protomesh::status::field_violations(status)
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn masks_name_updatable_fields_only() {
        let fields = UpdateFields::parse(&paths(&["title", "status", "id"])).expect("valid");
        assert!(fields.title && fields.status && !fields.urgency);
        for bad in [
            vec![],
            vec!["id"],
            vec!["title", "nope"],
            vec!["priority_score"],
            vec!["*"],
        ] {
            let status = UpdateFields::parse(&paths(&bad)).expect_err("invalid mask");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert_eq!(violation_fields(&status), vec!["update_mask"], "{bad:?}");
        }
    }

    #[test]
    fn masked_fields_are_checked_and_applied() {
        let fields = UpdateFields::parse(&paths(&["urgency", "status"])).expect("valid");
        let mut violations = Violations::new();
        let task = Task {
            urgency: 11,
            title: String::new(),
            status: 0,
            ..Default::default()
        };
        fields.check(&task, &mut violations);
        let status = violations.into_result().expect_err("bad values");
        // The urgency is the declared rules' (checked before the handler runs).
        assert_eq!(violation_fields(&status), vec!["task.status"]);
    }

    #[test]
    fn list_queries_have_only_the_filters_given() {
        let filters = TaskFilters {
            member: None,
            project_id: None,
            assignee: None,
            status: None,
            min_level: None,
            after: None,
            limit: 51,
        };
        let (sql, params) = filters.query();
        assert!(
            sql.ends_with("FROM tasks ORDER BY created_at DESC, id DESC LIMIT $1"),
            "{sql}"
        );
        assert_eq!(params.len(), 1);

        let filters = TaskFilters {
            member: None,
            project_id: Some(Uuid::nil()),
            assignee: Some("ada".into()),
            status: Some(1),
            min_level: Some(3),
            after: Some(TimeCursor {
                time: std::time::SystemTime::UNIX_EPOCH,
                id: Uuid::nil(),
            }),
            limit: 51,
        };
        let (sql, params) = filters.query();
        assert!(
            sql.ends_with(
                "WHERE project_id = $1 AND assignee = $2 AND status = $3 AND priority_level >= $4 \
                 AND (created_at, id) < ($5, $6) ORDER BY created_at DESC, id DESC LIMIT $7"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 7);

        let filters = TaskFilters {
            member: Some("alice".into()),
            project_id: None,
            assignee: None,
            status: Some(1),
            min_level: None,
            after: None,
            limit: 51,
        };
        let (sql, params) = filters.query();
        assert!(
            sql.ends_with(
                "WHERE project_id IN (SELECT project_id FROM project_members WHERE user_id = $1) \
                 AND status = $2 ORDER BY created_at DESC, id DESC LIMIT $3"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 3);
    }
}
