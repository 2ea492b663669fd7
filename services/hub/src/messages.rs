//! The hub's own stream: collaboration messages and presence changes, written as the outbox
//! writes domain events (`event_id`, `type`, `aggregate_id`, `payload`, `created_at`), so every
//! hub instance's reader delivers them like any other event and a late subscriber resumes to
//! them. The stream is capped near [`RETAINED`] entries (`MAXLEN ~`); a cursor from before the
//! cap answers `OUT_OF_RANGE`.

use std::time::{Duration, SystemTime};

use protomesh_data::fred;
use protomesh_data::fred::prelude::{Client, ClientLike, StreamsInterface};
use serde_json::json;
use uuid::Uuid;

use crate::cursor::StreamId;

/// Entries the hub's stream keeps, about (Redis trims whole nodes).
pub const RETAINED: i64 = 100_000;

/// Bound on one write to the stream.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an entry was not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Redis refused or did not answer.
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    /// Redis answered an entry id that is not one.
    #[error("Redis answered an entry id that is not one: {0}")]
    Id(#[from] crate::cursor::CursorError),
}

/// A new entry of the hub's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Its event id.
    pub event_id: Uuid,
    /// Its id in the stream.
    pub stream_id: StreamId,
}

/// Appends an event of `event_type` for `topic` with `payload` (its `topic` field is set here) to
/// the hub's stream at `key`.
pub async fn append(
    redis: &Client,
    key: &str,
    event_type: &str,
    topic: &str,
    mut payload: serde_json::Map<String, serde_json::Value>,
) -> Result<Written, AppendError> {
    payload.insert("topic".to_owned(), json!(topic));
    let event_id = Uuid::new_v4();
    let created_at = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let fields = vec![
        ("event_id", event_id.to_string()),
        ("type", event_type.to_owned()),
        ("aggregate_id", topic.to_owned()),
        ("payload", serde_json::Value::Object(payload).to_string()),
        ("created_at", created_at),
    ];
    let id: String = redis
        .with_options(&fred::prelude::Options {
            timeout: Some(WRITE_TIMEOUT),
            ..Default::default()
        })
        .xadd(key, false, ("MAXLEN", "~", RETAINED), "*", fields)
        .await?;
    let stream_id = id.parse()?;
    Ok(Written {
        event_id,
        stream_id,
    })
}
