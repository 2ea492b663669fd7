//! The membership check of `GetProjectReport`: a report answers only to those who may see the
//! project, and the tasks service, which owns projects and their members, decides. It is asked
//! through the mesh (`GetProject`, a safe call the mesh may retry on another instance) with the
//! caller's credential, which the mesh client forwards from the call being handled: a member or
//! an admin gets the project, anyone else `NOT_FOUND`, the same as for a project that does not
//! exist. Nothing is reported for a project nobody confirmed: the check is bounded by
//! [`CHECK_TIMEOUT`] (or the caller's own deadline when sooner), so a tasks service that is down
//! or stuck makes the call fail in time instead of hanging.
//!
//! | tasks answers | `GetProjectReport` answers |
//! |---|---|
//! | the project | goes on |
//! | `NOT_FOUND` (no such project, or the caller is not a member) | `NOT_FOUND`: project … not found |
//! | `INVALID_ARGUMENT` (the two services disagree on what a project id is) | `INTERNAL` |
//! | anything else: down, unregistered, out of time, failing | `UNAVAILABLE`: the tasks service could not confirm the project |

use std::time::Duration;

use crate::proto::protomesh::tasks::v1::{
    tasks_service_client::TasksServiceClient, GetProjectRequest, Project,
};
use protomesh::client::Mesh;
use tonic::{Code, Status};
use uuid::Uuid;

/// The Consul name of the tasks service.
pub const TASKS_SERVICE: &str = "tasks";

/// Longest wait for the tasks service's answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the tasks service, through `mesh` and as the caller of the call being handled, whether
/// the caller may see project `project_id`; see the module's table for the answers.
pub async fn confirm_member(mesh: &Mesh, project_id: Uuid) -> Result<(), Status> {
    let mut tasks = TasksServiceClient::new(mesh.channel(TASKS_SERVICE));
    let mut request = tonic::Request::new(GetProjectRequest {
        id: project_id.to_string(),
    });
    request.set_timeout(CHECK_TIMEOUT);
    let answer = tasks
        .get_project(request)
        .await
        .map(tonic::Response::into_inner);
    verdict(project_id, answer)
}

/// What the tasks service's `answer` about `project_id` means for `GetProjectReport`.
pub fn verdict(project_id: Uuid, answer: Result<Project, Status>) -> Result<(), Status> {
    let Err(status) = answer else {
        return Ok(());
    };
    match status.code() {
        Code::NotFound => Err(Status::not_found(format!("project {project_id} not found"))),
        Code::InvalidArgument => {
            tracing::error!(%status, project = %project_id, "tasks service refused a checked project id");
            Err(Status::internal(format!(
                "tasks service refused project_id {project_id}: {}",
                status.message()
            )))
        }
        _ => {
            tracing::warn!(%status, project = %project_id, "tasks service could not confirm the project");
            Err(Status::unavailable(format!(
                "the tasks service could not confirm project {project_id} (project_id): {}",
                status.message()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_visible_project_is_confirmed() {
        assert!(verdict(Uuid::new_v4(), Ok(Project::default())).is_ok());
    }

    #[test]
    fn a_project_the_caller_cannot_see_is_not_found() {
        let id = Uuid::new_v4();
        let refused = verdict(id, Err(Status::not_found("project x not found"))).unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);
        assert_eq!(refused.message(), format!("project {id} not found"));
    }

    #[test]
    fn an_unconfirmed_project_is_unavailable() {
        let id = Uuid::new_v4();
        for status in [
            Status::unavailable("no healthy instance"),
            Status::deadline_exceeded("too slow"),
            Status::internal("boom"),
        ] {
            let refused = verdict(id, Err(status)).unwrap_err();
            assert_eq!(refused.code(), Code::Unavailable);
            assert!(
                refused
                    .message()
                    .contains("tasks service could not confirm"),
                "{}",
                refused.message()
            );
        }
        let disagreement = verdict(id, Err(Status::invalid_argument("id: bad"))).unwrap_err();
        assert_eq!(disagreement.code(), Code::Internal);
    }
}
