//! A task's priority: asked of the priority service through the mesh, or — when that service is
//! down, out of reach or its circuit is open — computed here by the same rule (urgency × impact,
//! the priority service's own level thresholds) and marked as a fallback.

use protomesh::client::{with_fallback, Mesh};
use protomesh_priority::proto::protomesh::priority::v1::{
    priority_service_client::PriorityServiceClient, Level, ScoreRequest,
};
use protomesh_priority::scoring::level_of;
use tonic::Status;

/// The Consul name of the priority service.
pub const PRIORITY_SERVICE: &str = "priority";

/// A task's priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    /// urgency × impact, 1..100.
    pub score: i32,
    /// The level of the score.
    pub level: Level,
    /// Computed here because the priority service was unavailable.
    pub fallback: bool,
}

impl Priority {
    /// The local computation: urgency × impact, leveled as the priority service does, marked as
    /// a fallback.
    pub fn local(urgency: i32, impact: i32) -> Self {
        let score = urgency * impact;
        Self {
            score,
            level: level_of(score),
            fallback: true,
        }
    }
}

/// The priority of a task with `title`, `urgency` and `impact` (already checked to be 1..10),
/// from the priority service, or [`Priority::local`] when it is unavailable (logged at warn).
/// Any other error of the priority service (it refusing the request) is `INTERNAL`: this service
/// checked the request, so the two disagree.
pub async fn score(
    mesh: &Mesh,
    title: &str,
    urgency: i32,
    impact: i32,
) -> Result<Priority, Status> {
    let mut client = PriorityServiceClient::new(mesh.channel(PRIORITY_SERVICE));
    let request = ScoreRequest {
        title: title.to_owned(),
        urgency,
        impact,
    };
    let scored = with_fallback(
        async {
            client.score(request).await.map(|response| {
                response.map(|scored| {
                    let level = scored.level();
                    Priority {
                        score: scored.score,
                        level,
                        fallback: false,
                    }
                })
            })
        },
        |status| {
            let local = Priority::local(urgency, impact);
            tracing::warn!(
                %status,
                urgency,
                impact,
                score = local.score,
                level = local.level.as_str_name(),
                "priority unavailable: scored locally as urgency × impact (priority_fallback = true)"
            );
            local
        },
    )
    .await;
    match scored {
        Ok(priority) if valid(&priority) => Ok(priority),
        Ok(priority) => {
            tracing::error!(
                ?priority,
                urgency,
                impact,
                "priority service answered an impossible score"
            );
            Err(Status::internal(
                "priority service answered an impossible score",
            ))
        }
        Err(status) => {
            tracing::error!(%status, urgency, impact, "priority service refused a checked request");
            Err(Status::internal(format!(
                "priority service refused the task: {}",
                status.message()
            )))
        }
    }
}

/// Whether the table can store `priority` (score 1..100, a known level).
fn valid(priority: &Priority) -> bool {
    (1..=100).contains(&priority.score) && priority.level != Level::Unspecified
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_scores_use_the_priority_thresholds() {
        assert_eq!(
            Priority::local(9, 9),
            Priority {
                score: 81,
                level: Level::Critical,
                fallback: true
            }
        );
        assert_eq!(Priority::local(8, 10).level, Level::Critical);
        assert_eq!(Priority::local(7, 7).level, Level::Medium);
        assert_eq!(Priority::local(5, 10).level, Level::High);
        assert_eq!(Priority::local(4, 5).level, Level::Medium);
        assert_eq!(Priority::local(3, 6).level, Level::Low);
        assert_eq!(Priority::local(1, 1).score, 1);
    }
}
