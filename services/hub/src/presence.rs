//! Presence and stats, shared by every hub instance through Redis.
//!
//! - **Presence**: each instance keeps, per topic, a hash `{prefix}hub:presence:<topic>` whose
//!   fields are `<subject>\t<instance>` and whose values are when the field expires (Unix ms).
//!   It writes a field when a subject's first subscription to the topic opens on it, removes it
//!   when the last closes, and renews its fields every [`HEARTBEAT`]; a field not renewed for
//!   [`EXPIRY`] (its instance died) is left out and removed when read, and a hash not written for
//!   [`EXPIRY`] expires. Joins and leaves are also
//!   `presence.joined` and `presence.left` events of the topic in the hub's stream.
//! - **Stats**: every [`HEARTBEAT`], each instance writes its counts to the hash
//!   `{prefix}hub:instances` under its name; instances not heard from for [`EXPIRY`] are left out.
//!
//! The changes come from the fan-out through a bounded channel to one task ([`run`]), which
//! writes them in order; Redis errors are logged and the next heartbeat writes the state again.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protomesh_data::fred;
use protomesh_data::fred::prelude::{Client, HashesInterface, KeysInterface};
use serde_json::json;
use tokio::sync::mpsc;

use crate::fanout::{Change, Hub};
use crate::messages;
use crate::proto::protomesh::hub::v1::InstanceStats;

/// How often an instance renews its presence fields and its stats.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// How long presence fields and stats last without renewal.
pub const EXPIRY: Duration = Duration::from_secs(30);

/// Changes the channel to [`run`] holds before new ones are skipped.
pub const CHANGES_BUFFER: usize = 4096;

/// Unix milliseconds of `time`.
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn presence_key(hub: &Hub, topic: &str) -> String {
    hub.key(&format!("hub:presence:{topic}"))
}

fn instances_key(hub: &Hub) -> String {
    hub.key("hub:instances")
}

fn field(subject: &str, instance: &str) -> String {
    format!("{subject}\t{instance}")
}

/// Writes the changes `changes` brings, and the heartbeat, until the channel closes.
pub async fn run(hub: Hub, mut changes: mpsc::Receiver<Change>) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => apply(&hub, change).await,
                None => return,
            },
            _ = heartbeat.tick() => renew(&hub).await,
        }
    }
}

/// Writes one change: the presence field, and the event in the hub's stream.
async fn apply(hub: &Hub, change: Change) {
    let redis = hub.redis();
    let instance = &hub.options().instance;
    let (event_type, topic, subject, written) = match &change {
        Change::Joined { topic, subject } => {
            let expires = unix_ms(SystemTime::now() + EXPIRY);
            let key = presence_key(hub, topic);
            let written: Result<(), _> =
                redis.hset(&key, (field(subject, instance), expires)).await;
            let written = match written {
                Ok(()) => expire(redis, &key).await,
                Err(err) => Err(err),
            };
            ("presence.joined", topic, subject, written)
        }
        Change::Left { topic, subject } => {
            let written: Result<(), _> = redis
                .hdel(presence_key(hub, topic), field(subject, instance))
                .await;
            ("presence.left", topic, subject, written)
        }
    };
    let mut payload = serde_json::Map::new();
    payload.insert("subject".to_owned(), json!(subject));
    if let Err(err) = written {
        tracing::warn!(error = %err, ?change, "a presence field was not written");
    }
    let appended = messages::append(
        redis,
        &hub.key(crate::HUB_STREAM),
        event_type,
        topic,
        payload,
    )
    .await;
    if let Err(err) = appended {
        tracing::warn!(error = %err, ?change, "a presence event was not written");
    }
}

/// Renews this instance's presence fields and writes its stats.
async fn renew(hub: &Hub) {
    let redis = hub.redis();
    let snapshot = hub.snapshot();
    let instance = &hub.options().instance;
    let expires = unix_ms(SystemTime::now() + EXPIRY);
    let mut by_topic: HashMap<&str, Vec<(String, u64)>> = HashMap::new();
    for (topic, subject) in &snapshot.present {
        by_topic
            .entry(topic)
            .or_default()
            .push((field(subject, instance), expires));
    }
    for (topic, fields) in by_topic {
        let key = presence_key(hub, topic);
        let written: Result<(), _> = redis.hset(&key, fields).await;
        if let Err(err) = written.and(expire(redis, &key).await) {
            tracing::warn!(error = %err, topic, "presence was not renewed");
        }
    }
    let stats = json!({
        "subscriptions": snapshot.subscriptions,
        "topics": snapshot.topics,
        "dropped": snapshot.dropped,
        "reported_at_ms": unix_ms(SystemTime::now()),
    });
    let written: Result<(), _> = redis
        .hset(instances_key(hub), (instance.as_str(), stats.to_string()))
        .await;
    if let Err(err) = written {
        tracing::warn!(error = %err, "stats were not written");
    }
}

/// Lets a presence hash go [`EXPIRY`] after its last write (a topic nobody reads again).
async fn expire(redis: &Client, key: &str) -> Result<(), fred::error::Error> {
    let expiry = i64::try_from(EXPIRY.as_millis()).unwrap_or(i64::MAX);
    redis.pexpire(key, expiry, None).await
}

/// Takes this instance out of the stats (at shutdown; its presence fields expire).
pub async fn retire(hub: &Hub) {
    let written: Result<(), _> = hub
        .redis()
        .hdel(instances_key(hub), hub.options().instance.as_str())
        .await;
    if let Err(err) = written {
        tracing::debug!(error = %err, "the instance's stats were not removed");
    }
}

/// The subjects subscribed to `topic` on any live instance, sorted; expired fields are removed.
pub async fn present(hub: &Hub, topic: &str) -> Result<Vec<String>, fred::error::Error> {
    let key = presence_key(hub, topic);
    let fields: HashMap<String, u64> = hub.redis().hgetall(&key).await?;
    let now = unix_ms(SystemTime::now());
    let mut subjects = BTreeSet::new();
    let mut expired = Vec::new();
    for (field, expires) in fields {
        if expires <= now {
            expired.push(field);
        } else if let Some((subject, _)) = field.rsplit_once('\t') {
            subjects.insert(subject.to_owned());
        }
    }
    remove_fields(hub.redis(), &key, expired).await;
    Ok(subjects.into_iter().collect())
}

/// Every live instance's stats, by name; stale ones are removed.
pub async fn stats(hub: &Hub) -> Result<Vec<InstanceStats>, fred::error::Error> {
    let key = instances_key(hub);
    let reports: HashMap<String, String> = hub.redis().hgetall(&key).await?;
    let oldest = unix_ms(SystemTime::now()).saturating_sub(unix_ms(UNIX_EPOCH + EXPIRY));
    let mut instances = Vec::new();
    let mut stale = Vec::new();
    for (instance, report) in reports {
        let report: serde_json::Value = serde_json::from_str(&report).unwrap_or_default();
        let reported = report["reported_at_ms"].as_u64().unwrap_or(0);
        if reported < oldest {
            stale.push(instance);
            continue;
        }
        let topics = report["topics"]
            .as_object()
            .map(|topics| {
                topics
                    .iter()
                    .map(|(topic, n)| (topic.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        instances.push(InstanceStats {
            instance,
            subscriptions: report["subscriptions"].as_u64().unwrap_or(0),
            topics,
            dropped: report["dropped"].as_u64().unwrap_or(0),
            reported_at: Some(prost_types::Timestamp::from(
                UNIX_EPOCH + Duration::from_millis(reported),
            )),
        });
    }
    remove_fields(hub.redis(), &key, stale).await;
    instances.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(instances)
}

async fn remove_fields(redis: &Client, key: &str, fields: Vec<String>) {
    if fields.is_empty() {
        return;
    }
    let removed: Result<(), _> = redis.hdel(key, fields).await;
    if let Err(err) = removed {
        tracing::debug!(error = %err, key, "expired fields were not removed");
    }
}
