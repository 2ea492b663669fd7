//! Who may see and change what in the tasks service: a project's members (its owner is one) see
//! it, its tasks and its members, and change its tasks; its owner also adds and removes members;
//! admins act as the owner of every project. A project the caller is not a member of does not
//! exist for it (`NOT_FOUND`, the answer for a project that does not exist either); a visible
//! project the caller may not manage is `PERMISSION_DENIED`.

use crate::proto::protomesh::tasks::v1::ProjectRole;
use protomesh::identity::Identity;
use protomesh::telemetry::spans;
use protomesh_data::db_error;
use protomesh_data::deadpool_postgres::Pool;
use tonic::Status;
use uuid::Uuid;

const MEMBER_ROLE: &str = "SELECT role FROM project_members WHERE project_id = $1 AND user_id = $2";

const PROJECT_EXISTS: &str = "SELECT 1 FROM projects WHERE id = $1";

/// The `role` column of a role.
pub fn role_to_db(role: ProjectRole) -> i16 {
    // The enum's values are 0..=2.
    role as i16
}

/// The role of a `role` column (the table's check keeps it known).
pub fn role_from_db(value: i16) -> ProjectRole {
    ProjectRole::try_from(i32::from(value)).unwrap_or(ProjectRole::Unspecified)
}

/// `NOT_FOUND` for project `id` (whether it does not exist or the caller may not see it).
pub fn project_not_found(id: Uuid) -> Status {
    Status::not_found(format!("project {id} not found"))
}

/// The caller's role in `project`: an admin's is owner; `None` when the project does not exist
/// or the caller is not a member.
pub async fn role_in(
    pool: &Pool,
    project: Uuid,
    caller: &Identity,
) -> Result<Option<ProjectRole>, Status> {
    let select = async {
        let client = pool.get().await.map_err(db_error("project"))?;
        if caller.is_admin() {
            let statement = client
                .prepare_cached(PROJECT_EXISTS)
                .await
                .map_err(db_error("project"))?;
            let row = client
                .query_opt(&statement, &[&project])
                .await
                .map_err(db_error("project"))?;
            return Ok(row.map(|_| ProjectRole::Owner));
        }
        let statement = client
            .prepare_cached(MEMBER_ROLE)
            .await
            .map_err(db_error("project"))?;
        let row = client
            .query_opt(&statement, &[&project, &caller.subject])
            .await
            .map_err(db_error("project"))?;
        Ok(row.map(|row| role_from_db(row.get(0))))
    };
    spans::in_span(spans::postgres("SELECT", "project_members"), select).await
}

/// The caller's role in `project`, or `NOT_FOUND` when it is not a member.
pub async fn require_member(
    pool: &Pool,
    project: Uuid,
    caller: &Identity,
) -> Result<ProjectRole, Status> {
    role_in(pool, project, caller)
        .await?
        .ok_or_else(|| project_not_found(project))
}

/// Passes when the caller owns `project` (or is an admin): `NOT_FOUND` for a non-member,
/// `PERMISSION_DENIED` for a member.
pub async fn require_owner(pool: &Pool, project: Uuid, caller: &Identity) -> Result<(), Status> {
    match require_member(pool, project, caller).await? {
        ProjectRole::Owner => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "only the owner of project {project} manages its members"
        ))),
    }
}
