//! The task check of `StartTimer`: time is recorded only against a task the tasks service
//! confirms, asked through the mesh (`GetTask`, a safe call the mesh may retry on another
//! instance). Nothing is recorded against a task nobody confirmed: when the tasks service cannot
//! be reached, the timer does not start.
//!
//! The call carries the credential of the `StartTimer` call being handled (the mesh client
//! forwards it), so the tasks service answers for the end user: a task in a project the caller is
//! not a member of is `NOT_FOUND` there, and so here.
//!
//! | tasks answers | `StartTimer` answers |
//! |---|---|
//! | the task, not done | goes on |
//! | the task, done | `FAILED_PRECONDITION` naming `task_id` |
//! | `NOT_FOUND` (no such task, or not visible to the caller) | `NOT_FOUND` naming `task_id` |
//! | `INVALID_ARGUMENT` (the two services disagree on what a task id is) | `INTERNAL` |
//! | anything else: down, unregistered, out of time, failing | `UNAVAILABLE`: the tasks service could not confirm the task |

use crate::proto::protomesh::tasks::v1::{
    tasks_service_client::TasksServiceClient, GetTaskRequest, Task, TaskStatus,
};
use protomesh::client::Mesh;
use tonic::{Code, Status};
use uuid::Uuid;

/// The Consul name of the tasks service.
pub const TASKS_SERVICE: &str = "tasks";

/// Asks the tasks service, through `mesh`, whether time may be recorded against `task_id`; see
/// the module's table for the answers.
pub async fn confirm_task(mesh: &Mesh, task_id: Uuid) -> Result<(), Status> {
    let mut tasks = TasksServiceClient::new(mesh.channel(TASKS_SERVICE));
    let answer = tasks
        .get_task(GetTaskRequest {
            id: task_id.to_string(),
        })
        .await
        .map(tonic::Response::into_inner);
    verdict(task_id, answer)
}

/// What the tasks service's `answer` about `task_id` means for `StartTimer`.
pub fn verdict(task_id: Uuid, answer: Result<Task, Status>) -> Result<(), Status> {
    match answer {
        Ok(task) if task.status() == TaskStatus::Done => Err(Status::failed_precondition(format!(
            "task_id: task {task_id} is done; time cannot be recorded against it"
        ))),
        Ok(_) => Ok(()),
        Err(status) => match status.code() {
            Code::NotFound => Err(Status::not_found(format!(
                "task_id: task {task_id} not found"
            ))),
            Code::InvalidArgument => {
                tracing::error!(%status, task = %task_id, "tasks service refused a checked task id");
                Err(Status::internal(format!(
                    "tasks service refused task_id {task_id}: {}",
                    status.message()
                )))
            }
            _ => {
                tracing::warn!(%status, task = %task_id, "tasks service could not confirm the task");
                Err(Status::unavailable(format!(
                    "the tasks service could not confirm task {task_id} (task_id), so no time \
                     was recorded: {}",
                    status.message()
                )))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(status: TaskStatus) -> Task {
        Task {
            status: status as i32,
            ..Default::default()
        }
    }

    #[test]
    fn open_and_in_progress_tasks_are_confirmed() {
        let id = Uuid::new_v4();
        assert!(verdict(id, Ok(task(TaskStatus::Open))).is_ok());
        assert!(verdict(id, Ok(task(TaskStatus::InProgress))).is_ok());
    }

    #[test]
    fn refusals_name_the_task_id() {
        let id = Uuid::new_v4();
        let done = verdict(id, Ok(task(TaskStatus::Done))).expect_err("done");
        assert_eq!(done.code(), Code::FailedPrecondition);
        assert!(
            done.message().starts_with("task_id: "),
            "{}",
            done.message()
        );
        let missing = verdict(id, Err(Status::not_found("task x not found"))).expect_err("missing");
        assert_eq!(missing.code(), Code::NotFound);
        assert!(
            missing.message().starts_with("task_id: "),
            "{}",
            missing.message()
        );
        assert!(missing.message().contains(&id.to_string()));
    }

    #[test]
    fn an_unconfirmed_task_is_unavailable() {
        let id = Uuid::new_v4();
        for status in [
            Status::unavailable("no healthy instance"),
            Status::deadline_exceeded("too slow"),
            Status::internal("boom"),
        ] {
            let refused = verdict(id, Err(status)).expect_err("unconfirmed");
            assert_eq!(refused.code(), Code::Unavailable);
            assert!(
                refused
                    .message()
                    .contains("tasks service could not confirm"),
                "{}",
                refused.message()
            );
        }
        let disagreement =
            verdict(id, Err(Status::invalid_argument("id: bad"))).expect_err("disagreement");
        assert_eq!(disagreement.code(), Code::Internal);
    }
}
