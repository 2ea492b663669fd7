//! Rows of the tasks service as Rust values: read from Postgres, cached in Redis and published in
//! events as JSON, answered as protobuf.
//!
//! The JSON form (cache entries and event payloads) uses the proto field names, enum values by
//! name (`"TASK_STATUS_OPEN"`, `"LEVEL_HIGH"`) and timestamps in RFC 3339 (UTC, microseconds):
//!
//! ```json
//! {"id":"…","project_id":"…","title":"ship","description":"","urgency":9,"impact":8,
//!  "assignee":"ada","status":"TASK_STATUS_OPEN","created_at":"2024-05-01T10:00:00.123456Z",
//!  "updated_at":"…","completed_at":null,"priority_score":72,"priority_level":"LEVEL_HIGH",
//!  "priority_fallback":false}
//! ```

use std::time::SystemTime;

use crate::proto::protomesh::tasks::v1::{Project, Task, TaskStatus};
use protomesh_data::tokio_postgres::Row;
use protomesh_priority::proto::protomesh::priority::v1::Level;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The columns of `tasks` in the order [`TaskRecord::from_row`] reads them, as a literal for
/// `concat!`.
macro_rules! task_columns {
    () => {
        "id, project_id, title, description, urgency, impact, assignee, status, created_at, \
         updated_at, completed_at, priority_score, priority_level, priority_fallback"
    };
}
pub(crate) use task_columns;

/// The columns of `projects` in the order [`ProjectRecord::from_row`] reads them, as a literal
/// for `concat!`.
macro_rules! project_columns {
    () => {
        "id, name, description, created_at, owner_id"
    };
}
pub(crate) use project_columns;

/// The columns of `tasks` in the order [`TaskRecord::from_row`] reads them.
pub const TASK_COLUMNS: &str = task_columns!();

/// The columns of `projects` in the order [`ProjectRecord::from_row`] reads them.
pub const PROJECT_COLUMNS: &str = project_columns!();

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its id.
    pub id: Uuid,
    /// The project it belongs to.
    pub project_id: Uuid,
    /// 1..200 characters.
    pub title: String,
    /// Free text.
    pub description: String,
    /// 1..10.
    pub urgency: i32,
    /// 1..10.
    pub impact: i32,
    /// A user id, or empty.
    pub assignee: String,
    /// Where it stands (never `Unspecified`).
    #[serde(with = "status_name")]
    pub status: TaskStatus,
    /// When it was created.
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    /// When it last changed.
    #[serde(with = "rfc3339")]
    pub updated_at: SystemTime,
    /// When it was done; set exactly when the status is done.
    #[serde(with = "rfc3339_option")]
    pub completed_at: Option<SystemTime>,
    /// urgency × impact, as the priority service (or the local fallback) computed it.
    pub priority_score: i32,
    /// The level of the score.
    #[serde(with = "level_name")]
    pub priority_level: Level,
    /// The priority service was unavailable and the score was computed locally.
    pub priority_fallback: bool,
}

impl TaskRecord {
    /// The task in a row selected with [`TASK_COLUMNS`].
    pub fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            project_id: row.get(1),
            title: row.get(2),
            description: row.get(3),
            urgency: row.get(4),
            impact: row.get(5),
            assignee: row.get(6),
            status: status_from_db(row.get(7)),
            created_at: row.get(8),
            updated_at: row.get(9),
            completed_at: row.get(10),
            priority_score: row.get(11),
            priority_level: level_from_db(row.get(12)),
            priority_fallback: row.get(13),
        }
    }

    /// The JSON of events and cache entries.
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing this struct cannot fail (string keys, no maps of other keys).
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The protobuf message.
    pub fn to_proto(&self) -> Task {
        Task {
            id: self.id.to_string(),
            project_id: self.project_id.to_string(),
            title: self.title.clone(),
            description: self.description.clone(),
            urgency: self.urgency,
            impact: self.impact,
            assignee: self.assignee.clone(),
            status: self.status as i32,
            created_at: Some(self.created_at.into()),
            updated_at: Some(self.updated_at.into()),
            completed_at: self.completed_at.map(Into::into),
            priority_score: self.priority_score,
            priority_level: self.priority_level as i32,
            priority_fallback: self.priority_fallback,
        }
    }
}

/// One project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectRecord {
    /// Its id.
    pub id: Uuid,
    /// 1..200 characters, unique per owner.
    pub name: String,
    /// Free text.
    pub description: String,
    /// When it was created.
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    /// The user who created it (its owner).
    #[serde(default)]
    pub owner_id: String,
}

impl ProjectRecord {
    /// The project in a row selected with [`PROJECT_COLUMNS`].
    pub fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            name: row.get(1),
            description: row.get(2),
            created_at: row.get(3),
            owner_id: row.get(4),
        }
    }

    /// The JSON of events.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The protobuf message.
    pub fn to_proto(&self) -> Project {
        Project {
            id: self.id.to_string(),
            name: self.name.clone(),
            description: self.description.clone(),
            created_at: Some(self.created_at.into()),
            owner_id: self.owner_id.clone(),
        }
    }
}

/// The `status` column of a status.
pub fn status_to_db(status: TaskStatus) -> i16 {
    // The enum's values are 0..=3.
    status as i16
}

/// The status of a `status` column (the table's check keeps it known).
pub fn status_from_db(value: i16) -> TaskStatus {
    TaskStatus::try_from(i32::from(value)).unwrap_or(TaskStatus::Unspecified)
}

/// The `priority_level` column of a level.
pub fn level_to_db(level: Level) -> i16 {
    // The enum's values are 0..=4.
    level as i16
}

/// The level of a `priority_level` column (the table's check keeps it known).
pub fn level_from_db(value: i16) -> Level {
    Level::try_from(i32::from(value)).unwrap_or(Level::Unspecified)
}

/// `SystemTime` as RFC 3339 text (UTC, microseconds).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_micros(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// `Option<SystemTime>` as RFC 3339 text or `null`.
mod rfc3339_option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.collect_str(&humantime::format_rfc3339_micros(*time)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => humantime::parse_rfc3339(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// `TaskStatus` by its proto name.
mod status_name {
    use crate::proto::protomesh::tasks::v1::TaskStatus;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(status: &TaskStatus, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(status.as_str_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<TaskStatus, D::Error> {
        let text = String::deserialize(deserializer)?;
        TaskStatus::from_str_name(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown task status {text:?}")))
    }
}

/// `Level` by its proto name.
mod level_name {
    use protomesh_priority::proto::protomesh::priority::v1::Level;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(level: &Level, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(level.as_str_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Level, D::Error> {
        let text = String::deserialize(deserializer)?;
        Level::from_str_name(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown level {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> TaskRecord {
        let created = SystemTime::UNIX_EPOCH + Duration::from_micros(1_714_557_600_123_456);
        TaskRecord {
            id: Uuid::new_v4(),
            project_id: Uuid::new_v4(),
            title: "ship".into(),
            description: "it".into(),
            urgency: 9,
            impact: 8,
            assignee: "ada".into(),
            status: TaskStatus::Done,
            created_at: created,
            updated_at: created + Duration::from_micros(1),
            completed_at: Some(created + Duration::from_secs(1)),
            priority_score: 72,
            priority_level: Level::High,
            priority_fallback: true,
        }
    }

    #[test]
    fn json_round_trips_with_names_and_rfc3339() {
        let task = sample();
        let json = task.to_json();
        assert_eq!(json["status"], "TASK_STATUS_DONE");
        assert_eq!(json["priority_level"], "LEVEL_HIGH");
        assert_eq!(json["created_at"], "2024-05-01T10:00:00.123456Z");
        assert_eq!(json["project_id"], task.project_id.to_string());
        assert_eq!(json["assignee"], "ada");
        let back: TaskRecord = serde_json::from_value(json).expect("decodes");
        assert_eq!(back, task);

        let open = TaskRecord {
            completed_at: None,
            status: TaskStatus::Open,
            ..sample()
        };
        let back: TaskRecord = serde_json::from_value(open.to_json()).expect("decodes");
        assert_eq!(back, open);
    }

    #[test]
    fn proto_carries_every_field() {
        let task = sample();
        let proto = task.to_proto();
        assert_eq!(proto.id, task.id.to_string());
        assert_eq!(proto.status(), TaskStatus::Done);
        assert_eq!(proto.priority_level, Level::High as i32);
        assert!(proto.priority_fallback);
        let created = proto.created_at.expect("created_at");
        assert_eq!(created.seconds, 1_714_557_600);
        assert_eq!(created.nanos, 123_456_000);
        assert!(proto.completed_at.is_some());
    }

    #[test]
    fn enum_columns_round_trip() {
        for status in [TaskStatus::Open, TaskStatus::InProgress, TaskStatus::Done] {
            assert_eq!(status_from_db(status_to_db(status)), status);
        }
        for level in [Level::Low, Level::Medium, Level::High, Level::Critical] {
            assert_eq!(level_from_db(level_to_db(level)), level);
        }
    }
}
