//! Applying the events of the `tasks` and `timetrack` streams to the read model: each event in one
//! Postgres transaction together with its `applied_events` row, so an event is applied once
//! however often it is delivered, and every change tolerates events arriving out of order.
//!
//! | event | change |
//! |---|---|
//! | `project.created` | upsert the project's name |
//! | `task.created`, `task.updated`, `task.completed` | upsert the task, only over a stored state with an older `updated_at` (a retried old update cannot undo a newer one) |
//! | `task.deleted` | the same upsert, then `deleted = true` for good (a late update cannot bring the task back) |
//! | `time.started`, `time.stopped` | upsert the entry; `stopped_at`, once set, stays |
//! | any other type | nothing (recorded as applied) |
//!
//! Event payloads are the JSON the producers write (see the tasks service's `model` and the
//! timetrack service's entries); only the fields used here are read, the rest is ignored.

use std::time::SystemTime;

use crate::proto::protomesh::priority::v1::Level;
use crate::proto::protomesh::tasks::v1::TaskStatus;
use protomesh_data::deadpool_postgres::{Pool, Transaction};
use protomesh_data::stream::{self, Event};
use protomesh_data::tokio_postgres;
use protomesh_data::DataError;
use serde::Deserialize;
use uuid::Uuid;

const UPSERT_PROJECT: &str = "INSERT INTO projects (id, name) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name";

/// `$7` (deleted) only counts for a task not seen before; [`MARK_DELETED`] does the rest.
const UPSERT_TASK: &str = "INSERT INTO tasks
    (id, project_id, assignee, status, level, updated_at, deleted)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET project_id = EXCLUDED.project_id, assignee = EXCLUDED.assignee,
    status = EXCLUDED.status, level = EXCLUDED.level, updated_at = EXCLUDED.updated_at
WHERE tasks.updated_at < EXCLUDED.updated_at";

const MARK_DELETED: &str = "UPDATE tasks SET deleted = true WHERE id = $1";

const UPSERT_ENTRY: &str = "INSERT INTO entries (id, user_id, task_id, started_at, stopped_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET stopped_at = EXCLUDED.stopped_at
WHERE entries.stopped_at IS NULL AND EXCLUDED.stopped_at IS NOT NULL";

/// What became of one event in [`apply_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Its change is in the read model now.
    Changed,
    /// It had been applied before (a re-delivery): nothing changed.
    Duplicate,
    /// Its payload does not fit its type: logged at WARN and recorded as applied, no change.
    Malformed,
    /// A type analytics has no use for: recorded as applied, no change.
    Ignored,
}

/// Why an event's payload cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The payload lacks a field or has one of the wrong JSON type.
    #[error("payload of {event_type}: {source}")]
    Shape {
        /// The event's type.
        event_type: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A field has the right JSON type but a value that means nothing.
    #[error("payload of {event_type}: field {field}: {reason}")]
    Value {
        /// The event's type.
        event_type: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Applies `event` to the read model in one transaction with its
/// [`mark_applied`](stream::mark_applied) row, and commits.
///
/// A malformed event — its payload does not fit its type — is logged at WARN with its event id
/// and recorded as applied (committed, so the consumer acknowledges it) without changing the read
/// model. Retrying cannot help it: the same bytes would fail the same way on every delivery, so
/// leaving it pending would only have it claimed and failed again every claim pass, for ever,
/// while its pending entry grows old and hides real failures. The log line and the
/// `applied_events` row say what was skipped.
///
/// A database error is returned as `Err` (nothing of the event is committed): the consumer leaves
/// the message pending, and it is handled again later, by this consumer or by another that claims
/// it.
pub async fn apply_event(pool: &Pool, event: &Event) -> Result<Applied, DataError> {
    let change = Change::from_event(event);
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if !stream::mark_applied(&tx, event.event_id).await? {
        tx.commit().await?;
        tracing::debug!(event_id = %event.event_id, event_type = %event.event_type, "event already applied");
        return Ok(Applied::Duplicate);
    }
    let applied = match change {
        Ok(Some(change)) => {
            change.write(&tx).await?;
            Applied::Changed
        }
        Ok(None) => {
            tracing::debug!(event_id = %event.event_id, event_type = %event.event_type, "event type not used; skipped");
            Applied::Ignored
        }
        Err(err) => {
            tracing::warn!(
                event_id = %event.event_id,
                event_type = %event.event_type,
                stream = %event.stream,
                message_id = %event.message_id,
                error = %err,
                "malformed event skipped (recorded as applied)"
            );
            Applied::Malformed
        }
    };
    tx.commit().await?;
    Ok(applied)
}

/// The change one event makes to the read model.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    Project { id: Uuid, name: String },
    Task { task: TaskState, deleted: bool },
    Entry(EntryState),
}

/// What the read model keeps of a task.
#[derive(Debug, Clone, PartialEq)]
struct TaskState {
    id: Uuid,
    project_id: Uuid,
    assignee: String,
    status: TaskStatus,
    level: Level,
    updated_at: SystemTime,
}

/// What the read model keeps of a time entry.
#[derive(Debug, Clone, PartialEq)]
struct EntryState {
    id: Uuid,
    user_id: String,
    task_id: Uuid,
    started_at: SystemTime,
    stopped_at: Option<SystemTime>,
}

/// The fields of a `project.created` payload analytics reads.
#[derive(Debug, Deserialize)]
struct ProjectPayload {
    id: Uuid,
    name: String,
}

/// The fields of a task payload analytics reads.
#[derive(Debug, Deserialize)]
struct TaskPayload {
    id: Uuid,
    project_id: Uuid,
    assignee: String,
    status: String,
    priority_level: String,
    updated_at: String,
}

/// The fields of a time entry payload analytics reads.
#[derive(Debug, Deserialize)]
struct EntryPayload {
    id: Uuid,
    user_id: String,
    task_id: Uuid,
    started_at: String,
    stopped_at: Option<String>,
}

impl Change {
    /// The change `event` makes; `None` for a type analytics does not use.
    fn from_event(event: &Event) -> Result<Option<Self>, PayloadError> {
        let event_type = event.event_type.as_str();
        let shape = |source| PayloadError::Shape {
            event_type: event_type.to_owned(),
            source,
        };
        let change = match event_type {
            "project.created" => {
                let payload: ProjectPayload =
                    serde_json::from_value(event.payload.clone()).map_err(shape)?;
                Change::Project {
                    id: payload.id,
                    name: payload.name,
                }
            }
            "task.created" | "task.updated" | "task.completed" | "task.deleted" => {
                let payload: TaskPayload =
                    serde_json::from_value(event.payload.clone()).map_err(shape)?;
                Change::Task {
                    task: TaskState::from_payload(event_type, payload)?,
                    deleted: event_type == "task.deleted",
                }
            }
            "time.started" | "time.stopped" => {
                let payload: EntryPayload =
                    serde_json::from_value(event.payload.clone()).map_err(shape)?;
                Change::Entry(EntryState::from_payload(event_type, payload)?)
            }
            _ => return Ok(None),
        };
        Ok(Some(change))
    }

    /// Writes the change in `tx`.
    async fn write(&self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        match self {
            Change::Project { id, name } => {
                let statement = tx.prepare_cached(UPSERT_PROJECT).await?;
                tx.execute(&statement, &[id, name]).await?;
            }
            Change::Task { task, deleted } => {
                let statement = tx.prepare_cached(UPSERT_TASK).await?;
                // The enums' values are 1..=3 and 1..=4 (checked when parsed).
                let status = task.status as i16;
                let level = task.level as i16;
                tx.execute(
                    &statement,
                    &[
                        &task.id,
                        &task.project_id,
                        &task.assignee,
                        &status,
                        &level,
                        &task.updated_at,
                        deleted,
                    ],
                )
                .await?;
                if *deleted {
                    let statement = tx.prepare_cached(MARK_DELETED).await?;
                    tx.execute(&statement, &[&task.id]).await?;
                }
            }
            Change::Entry(entry) => {
                let statement = tx.prepare_cached(UPSERT_ENTRY).await?;
                tx.execute(
                    &statement,
                    &[
                        &entry.id,
                        &entry.user_id,
                        &entry.task_id,
                        &entry.started_at,
                        &entry.stopped_at,
                    ],
                )
                .await?;
            }
        }
        Ok(())
    }
}

impl TaskState {
    fn from_payload(event_type: &str, payload: TaskPayload) -> Result<Self, PayloadError> {
        let invalid = |field: &'static str, reason: String| PayloadError::Value {
            event_type: event_type.to_owned(),
            field,
            reason,
        };
        let status = TaskStatus::from_str_name(&payload.status)
            .filter(|status| *status != TaskStatus::Unspecified)
            .ok_or_else(|| {
                invalid(
                    "status",
                    format!("unknown task status {:?}", payload.status),
                )
            })?;
        let level = Level::from_str_name(&payload.priority_level)
            .filter(|level| *level != Level::Unspecified)
            .ok_or_else(|| {
                invalid(
                    "priority_level",
                    format!("unknown level {:?}", payload.priority_level),
                )
            })?;
        let updated_at = humantime::parse_rfc3339(&payload.updated_at)
            .map_err(|err| invalid("updated_at", err.to_string()))?;
        Ok(Self {
            id: payload.id,
            project_id: payload.project_id,
            assignee: payload.assignee,
            status,
            level,
            updated_at,
        })
    }
}

impl EntryState {
    fn from_payload(event_type: &str, payload: EntryPayload) -> Result<Self, PayloadError> {
        let invalid = |field: &'static str, reason: String| PayloadError::Value {
            event_type: event_type.to_owned(),
            field,
            reason,
        };
        let started_at = humantime::parse_rfc3339(&payload.started_at)
            .map_err(|err| invalid("started_at", err.to_string()))?;
        let stopped_at = payload
            .stopped_at
            .map(|text| humantime::parse_rfc3339(&text))
            .transpose()
            .map_err(|err| invalid("stopped_at", err.to_string()))?;
        Ok(Self {
            id: payload.id,
            user_id: payload.user_id,
            task_id: payload.task_id,
            started_at,
            stopped_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event(event_type: &str, payload: serde_json::Value) -> Event {
        Event {
            event_id: Uuid::new_v4(),
            event_type: event_type.to_owned(),
            aggregate_id: String::new(),
            payload,
            created_at: None,
            stream: "tasks".to_owned(),
            message_id: "1-0".to_owned(),
        }
    }

    fn task_json() -> serde_json::Value {
        serde_json::json!({
            "id": "6f1f6c1e-8d5a-4c55-9d1e-2b9c3f6b8a01",
            "project_id": "0d3b1a7e-2f4c-4b8e-9a6d-5c7e8f9a0b12",
            "title": "ship", "description": "", "urgency": 9, "impact": 8,
            "assignee": "ada", "status": "TASK_STATUS_DONE",
            "created_at": "2024-05-01T10:00:00.123456Z",
            "updated_at": "2024-05-01T10:00:01.000001Z",
            "completed_at": "2024-05-01T10:00:01.000001Z",
            "priority_score": 72, "priority_level": "LEVEL_HIGH", "priority_fallback": false
        })
    }

    #[test]
    fn task_events_parse_into_task_changes() {
        let change = Change::from_event(&event("task.deleted", task_json()))
            .expect("parses")
            .expect("used");
        let Change::Task { task, deleted } = change else {
            panic!("not a task change: {change:?}");
        };
        assert!(deleted);
        assert_eq!(task.assignee, "ada");
        assert_eq!(task.status, TaskStatus::Done);
        assert_eq!(task.level, Level::High);
        assert_eq!(
            task.updated_at,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_714_557_601_000_001)
        );
    }

    #[test]
    fn entry_events_parse_with_or_without_a_stop() {
        let mut payload = serde_json::json!({
            "id": "6f1f6c1e-8d5a-4c55-9d1e-2b9c3f6b8a01",
            "user_id": "ada",
            "task_id": "0d3b1a7e-2f4c-4b8e-9a6d-5c7e8f9a0b12",
            "started_at": "2024-05-01T10:00:00.000000Z",
            "stopped_at": null,
            "note": ""
        });
        let Some(Change::Entry(entry)) =
            Change::from_event(&event("time.started", payload.clone())).expect("parses")
        else {
            panic!("not an entry change");
        };
        assert_eq!(entry.stopped_at, None);
        payload["stopped_at"] = "2024-05-01T11:00:00.000000Z".into();
        let Some(Change::Entry(entry)) =
            Change::from_event(&event("time.stopped", payload)).expect("parses")
        else {
            panic!("not an entry change");
        };
        assert_eq!(
            entry
                .stopped_at
                .and_then(|s| s.duration_since(entry.started_at).ok()),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn malformed_payloads_say_which_field() {
        let mut payload = task_json();
        payload["status"] = "TASK_STATUS_UNSPECIFIED".into();
        let err = Change::from_event(&event("task.updated", payload)).expect_err("bad status");
        assert!(
            matches!(
                err,
                PayloadError::Value {
                    field: "status",
                    ..
                }
            ),
            "{err}"
        );

        let mut payload = task_json();
        payload["updated_at"] = "yesterday".into();
        let err = Change::from_event(&event("task.updated", payload)).expect_err("bad time");
        assert!(
            matches!(
                err,
                PayloadError::Value {
                    field: "updated_at",
                    ..
                }
            ),
            "{err}"
        );

        let err = Change::from_event(&event("task.created", serde_json::json!({"id": "x"})))
            .expect_err("bad shape");
        assert!(matches!(err, PayloadError::Shape { .. }), "{err}");
        assert!(
            err.to_string().starts_with("payload of task.created"),
            "{err}"
        );
    }

    #[test]
    fn other_types_are_not_used() {
        let change = Change::from_event(&event("task.archived", serde_json::json!("anything")));
        assert!(matches!(change, Ok(None)));
    }
}
