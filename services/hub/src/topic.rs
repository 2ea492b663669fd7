//! Topics, which events belong to them, and who may see them.
//!
//! | topic | its events | who may see it |
//! |---|---|---|
//! | `project/<project id>` | the project's and its tasks' events, messages to it | its members (tasks service: `GetProject`) |
//! | `task/<task id>` | the task's events, messages to it | members of its project (tasks service: `GetTask`) |
//! | `user/<user id>` | the user's timers (started, stopped), messages to them | the user |
//!
//! Timers go to their user's topic alone: a time entry (its note, its hours) is its user's, as
//! the timetrack service has it.
//!
//! Admins see every topic. A topic the caller may not see answers `NOT_FOUND`, as one that does
//! not exist. Projects and tasks belong to the tasks service, so it decides, asked through the
//! mesh with the caller's credential (the mesh client forwards it from the call being handled),
//! within [`CHECK_TIMEOUT`]: anything but its answer is `UNAVAILABLE`.

use std::fmt;
use std::time::Duration;

use protomesh::client::Mesh;
use protomesh::identity::Identity;
use protomesh::status::FieldViolation;
use protomesh_data::stream::Event;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::proto::protomesh::tasks::v1::{
    tasks_service_client::TasksServiceClient, GetProjectRequest, GetTaskRequest,
};

/// The Consul name of the tasks service.
pub const TASKS_SERVICE: &str = "tasks";

/// Longest wait for the tasks service's answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A topic (see the [module](self)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// `project/<id>`.
    Project(Uuid),
    /// `task/<id>`.
    Task(Uuid),
    /// `user/<id>`.
    User(String),
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Project(id) => write!(f, "project/{id}"),
            Self::Task(id) => write!(f, "task/{id}"),
            Self::User(id) => write!(f, "user/{id}"),
        }
    }
}

impl Topic {
    /// Reads the topic `text` of the request field `field`.
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldViolation> {
        let invalid = |why: &str| FieldViolation::new(field, format!("topic {text:?}: {why}"));
        let (kind, id) = text
            .split_once('/')
            .ok_or_else(|| invalid("use project/<id>, task/<id> or user/<id>"))?;
        let uuid =
            |id: &str| Uuid::parse_str(id).map_err(|_| invalid(&format!("{kind} ids are UUIDs")));
        match kind {
            "project" => Ok(Self::Project(uuid(id)?)),
            "task" => Ok(Self::Task(uuid(id)?)),
            "user" if !id.is_empty() && !id.chars().any(char::is_control) => {
                Ok(Self::User(id.to_owned()))
            }
            "user" => Err(invalid(
                "a user id is not empty and has no control characters",
            )),
            _ => Err(invalid("use project/<id>, task/<id> or user/<id>")),
        }
    }

    /// Passes when `caller` may see this topic; see the [module](self) for who may.
    pub async fn check_visible(&self, mesh: &Mesh, caller: &Identity) -> Result<(), Status> {
        if caller.is_admin() {
            return Ok(());
        }
        let mut tasks = TasksServiceClient::new(mesh.channel(TASKS_SERVICE));
        let answer = match self {
            Self::User(id) if *id == caller.subject => return Ok(()),
            Self::User(_) => return Err(self.not_found()),
            Self::Project(id) => {
                let mut request = tonic::Request::new(GetProjectRequest { id: id.to_string() });
                request.set_timeout(CHECK_TIMEOUT);
                tasks.get_project(request).await.map(drop)
            }
            Self::Task(id) => {
                let mut request = tonic::Request::new(GetTaskRequest { id: id.to_string() });
                request.set_timeout(CHECK_TIMEOUT);
                tasks.get_task(request).await.map(drop)
            }
        };
        self.verdict(answer)
    }

    /// What the tasks service's `answer` about this topic means for the caller.
    fn verdict(&self, answer: Result<(), Status>) -> Result<(), Status> {
        let Err(status) = answer else {
            return Ok(());
        };
        match status.code() {
            Code::NotFound => Err(self.not_found()),
            _ => {
                tracing::warn!(%status, topic = %self, "tasks service could not confirm the topic");
                Err(Status::unavailable(format!(
                    "the tasks service could not confirm topic {self}: {}",
                    status.message()
                )))
            }
        }
    }

    fn not_found(&self) -> Status {
        Status::not_found(format!("topic {self} not found"))
    }
}

/// The topics `event` belongs to (none for an event the hub does not route).
pub fn topics_of(event: &Event) -> Vec<String> {
    let text = |name: &str| event.payload.get(name).and_then(|v| v.as_str());
    let mut topics = Vec::with_capacity(2);
    match event.stream.as_str() {
        crate::TASKS_STREAM => {
            if let Some(project) = text("project_id") {
                topics.push(format!("project/{project}"));
                topics.push(format!("task/{}", event.aggregate_id));
            } else if event.event_type.starts_with("project.") {
                topics.push(format!("project/{}", event.aggregate_id));
            }
        }
        crate::TIMETRACK_STREAM => {
            if let Some(user) = text("user_id") {
                topics.push(format!("user/{user}"));
            }
        }
        crate::HUB_STREAM => {
            if let Some(topic) = text("topic") {
                topics.push(topic.to_owned());
            }
        }
        _ => {}
    }
    topics
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn event(stream: &str, event_type: &str, aggregate: &str, payload: serde_json::Value) -> Event {
        Event {
            event_id: Uuid::new_v4(),
            event_type: event_type.to_owned(),
            aggregate_id: aggregate.to_owned(),
            payload,
            created_at: None,
            stream: stream.to_owned(),
            message_id: "1-0".to_owned(),
        }
    }

    #[test]
    fn topics_read_back_what_they_write() {
        let id = Uuid::new_v4();
        for text in [
            format!("project/{id}"),
            format!("task/{id}"),
            "user/ada".to_owned(),
        ] {
            assert_eq!(Topic::parse("topics[0]", &text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_topics_name_the_field_and_say_why() {
        for (text, why) in [
            ("project", "use project/<id>"),
            ("project/12", "project ids are UUIDs"),
            ("task/x", "task ids are UUIDs"),
            ("user/", "not empty"),
            ("user/a\nb", "control characters"),
            ("team/1", "use project/<id>"),
        ] {
            let violation = Topic::parse("topics[2]", text).unwrap_err();
            assert_eq!(violation.field, "topics[2]");
            assert!(violation.description.contains(why), "{text}: {violation:?}");
        }
    }

    #[test]
    fn task_events_go_to_their_project_and_task() {
        let task = event(
            crate::TASKS_STREAM,
            "task.updated",
            "t1",
            json!({"id": "t1", "project_id": "p1"}),
        );
        assert_eq!(topics_of(&task), ["project/p1", "task/t1"]);
        let project = event(
            crate::TASKS_STREAM,
            "project.created",
            "p2",
            json!({"id": "p2"}),
        );
        assert_eq!(topics_of(&project), ["project/p2"]);
    }

    #[test]
    fn timer_events_go_to_their_user_alone() {
        let timer = event(
            crate::TIMETRACK_STREAM,
            "time.started",
            "e1",
            json!({"user_id": "ada", "task_id": "t1"}),
        );
        assert_eq!(topics_of(&timer), ["user/ada"]);
    }

    #[test]
    fn messages_go_to_their_topic_and_unknown_streams_nowhere() {
        let message = event(
            crate::HUB_STREAM,
            "message",
            "m",
            json!({"topic": "user/bob"}),
        );
        assert_eq!(topics_of(&message), ["user/bob"]);
        assert!(topics_of(&event("orders", "x", "1", json!({}))).is_empty());
    }

    #[test]
    fn only_the_tasks_service_not_found_is_not_found() {
        let topic = Topic::Project(Uuid::new_v4());
        assert!(topic.verdict(Ok(())).is_ok());
        let refused = topic.verdict(Err(Status::not_found("x"))).unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);
        assert_eq!(refused.message(), format!("topic {topic} not found"));
        let down = topic
            .verdict(Err(Status::deadline_exceeded("slow")))
            .unwrap_err();
        assert_eq!(down.code(), Code::Unavailable);
    }
}
