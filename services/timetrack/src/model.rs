//! Time entries as Rust values: read from Postgres, published in events as JSON, answered as
//! protobuf.
//!
//! The JSON form (event payloads of the stream `timetrack`) uses the proto field names and
//! timestamps in RFC 3339 (UTC, microseconds); a running entry has `"stopped_at":null`. The
//! duration is not part of it (consumers compute it from the two timestamps):
//!
//! ```json
//! {"id":"…","user_id":"ada","task_id":"…","started_at":"2024-05-01T10:00:00.123456Z",
//!  "stopped_at":null,"note":""}
//! ```

use std::time::SystemTime;

use crate::proto::protomesh::timetrack::v1::TimeEntry;
use protomesh_data::tokio_postgres::Row;
use serde::Serialize;
use uuid::Uuid;

/// The columns of `entries` in the order [`EntryRecord::from_row`] reads them, as a literal for
/// `concat!`. The last one is the duration in microseconds: up to the stop, or up to the
/// statement's clock for a running entry (never negative).
macro_rules! entry_columns {
    () => {
        "id, user_id, task_id, started_at, stopped_at, note, \
         (extract(epoch FROM coalesce(stopped_at, greatest(clock_timestamp(), started_at)) \
         - started_at) * 1000000)::bigint"
    };
}
pub(crate) use entry_columns;

/// The columns of `entries` in the order [`EntryRecord::from_row`] reads them.
pub const ENTRY_COLUMNS: &str = entry_columns!();

/// One stretch of time a user spent on a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryRecord {
    /// Its id.
    pub id: Uuid,
    /// Who spent the time (1..200 characters).
    pub user_id: String,
    /// On which task.
    pub task_id: Uuid,
    /// When the timer started.
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    /// When it stopped; `None` while it runs.
    #[serde(with = "rfc3339_option")]
    pub stopped_at: Option<SystemTime>,
    /// Free text, at most 1000 characters.
    pub note: String,
    /// Microseconds from the start to the stop (or to the read, while running).
    #[serde(skip)]
    pub duration_micros: i64,
}

impl EntryRecord {
    /// The entry in a row selected with [`ENTRY_COLUMNS`].
    pub fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            user_id: row.get(1),
            task_id: row.get(2),
            started_at: row.get(3),
            stopped_at: row.get(4),
            note: row.get(5),
            duration_micros: row.get(6),
        }
    }

    /// The JSON of events.
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing this struct cannot fail (string keys, no maps of other keys).
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The protobuf message.
    pub fn to_proto(&self) -> TimeEntry {
        TimeEntry {
            id: self.id.to_string(),
            user_id: self.user_id.clone(),
            task_id: self.task_id.to_string(),
            started_at: Some(self.started_at.into()),
            stopped_at: self.stopped_at.map(Into::into),
            duration: Some(duration_from_micros(self.duration_micros)),
            note: self.note.clone(),
        }
    }
}

/// A non-negative number of microseconds as a `google.protobuf.Duration` (negative is zero).
pub fn duration_from_micros(micros: i64) -> prost_types::Duration {
    let micros = micros.max(0);
    prost_types::Duration {
        seconds: micros / 1_000_000,
        // Below 1e9: fits an i32.
        nanos: i32::try_from((micros % 1_000_000) * 1_000).unwrap_or(0),
    }
}

/// `SystemTime` as RFC 3339 text (UTC, microseconds).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_micros(*time))
    }
}

/// `Option<SystemTime>` as RFC 3339 text or `null`.
mod rfc3339_option {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.collect_str(&humantime::format_rfc3339_micros(*time)),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> EntryRecord {
        let started = SystemTime::UNIX_EPOCH + Duration::from_micros(1_714_557_600_123_456);
        EntryRecord {
            id: Uuid::new_v4(),
            user_id: "ada".into(),
            task_id: Uuid::new_v4(),
            started_at: started,
            stopped_at: Some(started + Duration::from_micros(90_500_000)),
            note: "notes".into(),
            duration_micros: 90_500_000,
        }
    }

    #[test]
    fn json_is_the_event_contract() {
        let entry = sample();
        let json = entry.to_json();
        assert_eq!(
            json,
            serde_json::json!({
                "id": entry.id.to_string(),
                "user_id": "ada",
                "task_id": entry.task_id.to_string(),
                "started_at": "2024-05-01T10:00:00.123456Z",
                "stopped_at": "2024-05-01T10:01:30.623456Z",
                "note": "notes",
            })
        );
        let running = EntryRecord {
            stopped_at: None,
            ..sample()
        };
        assert!(running.to_json()["stopped_at"].is_null());
    }

    #[test]
    fn proto_carries_every_field() {
        let entry = sample();
        let proto = entry.to_proto();
        assert_eq!(proto.id, entry.id.to_string());
        assert_eq!(proto.task_id, entry.task_id.to_string());
        assert_eq!(proto.user_id, "ada");
        assert_eq!(proto.note, "notes");
        let started = proto.started_at.expect("started_at");
        assert_eq!(
            (started.seconds, started.nanos),
            (1_714_557_600, 123_456_000)
        );
        assert!(proto.stopped_at.is_some());
        assert_eq!(
            proto.duration,
            Some(prost_types::Duration {
                seconds: 90,
                nanos: 500_000_000
            })
        );
    }

    #[test]
    fn durations_are_never_negative() {
        assert_eq!(duration_from_micros(-5), prost_types::Duration::default());
        assert_eq!(
            duration_from_micros(1_000_001),
            prost_types::Duration {
                seconds: 1,
                nanos: 1_000
            }
        );
    }
}
