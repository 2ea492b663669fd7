//! The priority service: scores a task as urgency × impact and orders batches of tasks by score.
//!
//! Stateless, so any instance answers any call; that makes it the mesh's reference workload for
//! balancing and resilience benchmarks.

#![forbid(unsafe_code)]

/// Rust code generated from the service's protos by `build.rs` (`protomesh_build`), and
/// `FILE_DESCRIPTOR_SET`, their encoded descriptor set (served over reflection).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    ::protomesh::include_protos!();
}

pub mod scoring;

use crate::proto::protomesh::priority::v1::{
    priority_service_server::PriorityService, PrioritizeRequest, PrioritizeResponse,
    PrioritizedTask, ScoreRequest, ScoreResponse,
};
use protomesh::status::{bad_request, FieldViolation};
use tonic::{Request, Response, Status};

use scoring::{Scored, ScoringError};

pub use crate::proto::protomesh::priority::v1::priority_service_server::PriorityServiceServer;

/// The gRPC handler of `protomesh.priority.v1.PriorityService`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PriorityHandler;

impl From<ScoringError> for FieldViolation {
    fn from(err: ScoringError) -> Self {
        FieldViolation::new(err.field(), err.to_string())
    }
}

#[tonic::async_trait]
impl PriorityService for PriorityHandler {
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let request = request.into_inner();
        let scored = Scored::new(request.urgency, request.impact).map_err(|errors| {
            bad_request(errors.into_iter().map(FieldViolation::from).collect())
        })?;
        Ok(Response::new(ScoreResponse {
            title: request.title,
            score: scored.score,
            level: scored.level as i32,
        }))
    }

    async fn prioritize(
        &self,
        request: Request<PrioritizeRequest>,
    ) -> Result<Response<PrioritizeResponse>, Status> {
        let tasks = request.into_inner().tasks;
        let mut violations = Vec::new();
        let mut scored = Vec::with_capacity(tasks.len());
        for (index, task) in tasks.into_iter().enumerate() {
            match Scored::new(task.urgency, task.impact) {
                Ok(s) => scored.push(PrioritizedTask {
                    reason: s.reason(),
                    score: s.score,
                    level: s.level as i32,
                    id: task.id,
                    title: task.title,
                    urgency: task.urgency,
                    impact: task.impact,
                    // At most 10,000 tasks (the request's declared `max_items`), so it fits.
                    input_index: u32::try_from(index).unwrap_or(u32::MAX),
                }),
                Err(errors) => violations.extend(errors.into_iter().map(|e| {
                    FieldViolation::new(format!("tasks[{index}].{}", e.field()), e.to_string())
                })),
            }
        }
        if !violations.is_empty() {
            return Err(bad_request(violations));
        }
        scored.sort_by(|a, b| {
            b.score
                .cmp(&a.score)
                .then(b.urgency.cmp(&a.urgency))
                .then(a.input_index.cmp(&b.input_index))
        });
        Ok(Response::new(PrioritizeResponse { tasks: scored }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::protomesh::priority::v1::{Level, TaskToScore};

    fn task(id: &str, urgency: i32, impact: i32) -> TaskToScore {
        TaskToScore {
            id: id.into(),
            title: format!("task {id}"),
            urgency,
            impact,
        }
    }

    #[tokio::test]
    async fn score_multiplies_and_levels() {
        let response = PriorityHandler
            .score(Request::new(ScoreRequest {
                title: "ship".into(),
                urgency: 9,
                impact: 8,
            }))
            .await
            .expect("valid request")
            .into_inner();
        assert_eq!(response.score, 72);
        assert_eq!(response.level(), Level::High);
        assert_eq!(response.title, "ship");
    }

    #[tokio::test]
    async fn score_rejects_out_of_range_urgency_naming_the_field() {
        let status = PriorityHandler
            .score(Request::new(ScoreRequest {
                title: String::new(),
                urgency: 11,
                impact: 5,
            }))
            .await
            .expect_err("urgency 11 is invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("urgency:"),
            "{}",
            status.message()
        );
        let fields: Vec<_> = protomesh::status::field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["urgency"]);
    }

    #[tokio::test]
    async fn score_names_both_fields_when_both_are_wrong() {
        let status = PriorityHandler
            .score(Request::new(ScoreRequest {
                title: String::new(),
                urgency: 0,
                impact: -3,
            }))
            .await
            .expect_err("both invalid");
        let fields: Vec<_> = protomesh::status::field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["urgency", "impact"]);
    }

    #[tokio::test]
    async fn prioritize_sorts_by_score_then_urgency_then_input_order() {
        let response = PriorityHandler
            .prioritize(Request::new(PrioritizeRequest {
                tasks: vec![
                    task("a", 2, 2),
                    task("b", 4, 10),
                    task("c", 10, 4),
                    task("d", 9, 9),
                    task("e", 2, 2),
                ],
            }))
            .await
            .expect("valid batch")
            .into_inner();
        let order: Vec<_> = response.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(order, vec!["d", "c", "b", "a", "e"]);
        assert_eq!(response.tasks[0].level(), Level::Critical);
        assert_eq!(
            response.tasks[0].reason,
            "urgency 9 × impact 9 = 81 → CRITICAL (≥ 80)"
        );
        assert_eq!(response.tasks[4].input_index, 4);
    }

    #[tokio::test]
    async fn prioritize_names_the_bad_task_by_index() {
        let status = PriorityHandler
            .prioritize(Request::new(PrioritizeRequest {
                tasks: vec![task("a", 1, 1), task("b", 1, 12)],
            }))
            .await
            .expect_err("impact 12 is invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let fields: Vec<_> = protomesh::status::field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, vec!["tasks[1].impact"]);
    }

    #[tokio::test]
    async fn prioritize_of_nothing_is_nothing() {
        let response = PriorityHandler
            .prioritize(Request::new(PrioritizeRequest { tasks: vec![] }))
            .await
            .expect("empty batch is fine")
            .into_inner();
        assert!(response.tasks.is_empty());
    }
}
