//! The collaboration hub: live events of projects, tasks and users pushed to subscribers over a
//! gRPC server stream (and, through the gateway, WebSocket and SSE), collaboration messages,
//! presence and subscription stats.
//!
//! Every instance is a fan-out point ([`fanout`]): it follows the tasks and timetrack event
//! streams and its own stream of messages ([`messages`]) in Redis, and hands each event to the
//! subscribers of its topics ([`topic`]: which events belong where, who may see them). Events
//! carry a cursor ([`cursor`]); a subscriber that comes back with it, to any instance, gets
//! exactly what it missed. Presence and stats are shared through Redis ([`presence`]).

#![forbid(unsafe_code)]

/// Rust code generated from the service's protos (and the tasks service's, for its client) by
/// `build.rs` (`protomesh_build`), and `FILE_DESCRIPTOR_SET`, their encoded descriptor set.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    ::protomesh::include_protos!();
}

mod cursor;
pub mod fanout;
mod json;
mod messages;
pub mod presence;
mod topic;

use std::sync::Arc;

use protomesh::client::Mesh;
use protomesh::identity;
use protomesh::status::{bad_request, FieldViolation};
use tonic::{Request, Response, Status};

use crate::cursor::Cursor;
use crate::fanout::{EventStream, Hub};
use crate::proto::protomesh::hub::v1::{
    hub_service_server::HubService, PresenceRequest, PresenceResponse, PublishRequest,
    PublishResponse, StatsRequest, StatsResponse, SubscribeRequest,
};
use crate::topic::Topic;

pub use crate::proto::protomesh::hub::v1::hub_service_server::HubServiceServer;

/// The service's name in Consul and in logs.
pub const SERVICE: &str = "hub";

/// The tasks service's event stream (`task.*`, `project.*`).
pub const TASKS_STREAM: &str = "tasks";
/// The timetrack service's event stream (`time.started`, `time.stopped`).
pub const TIMETRACK_STREAM: &str = "timetrack";
/// The hub's own stream: messages and presence.
pub const HUB_STREAM: &str = "hub";
/// Every stream the hub follows, in the order cursors name them.
pub const STREAMS: [&str; 3] = [TASKS_STREAM, TIMETRACK_STREAM, HUB_STREAM];

/// Longest message body, as JSON text.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The gRPC handler of `protomesh.hub.v1.HubService`.
#[derive(Clone)]
pub struct HubHandler {
    hub: Hub,
    mesh: Mesh,
}

impl HubHandler {
    /// A handler serving `hub`, asking the tasks service through `mesh` who may see a topic.
    pub fn new(hub: Hub, mesh: Mesh) -> Self {
        Self { hub, mesh }
    }

    /// The topic `text` of field `field`, once the caller of `metadata` may see it.
    async fn visible_topic(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        field: &str,
        text: &str,
    ) -> Result<(identity::Identity, Topic), Status> {
        let caller = identity::caller(metadata)?;
        let topic = Topic::parse(field, text).map_err(|v| bad_request(vec![v]))?;
        topic.check_visible(&self.mesh, &caller).await?;
        Ok((caller, topic))
    }
}

/// The request's topics, checked and without repeats (first place kept).
fn parse_topics(texts: &[String]) -> Result<Vec<Topic>, Status> {
    let mut topics: Vec<Topic> = Vec::with_capacity(texts.len());
    let mut violations = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match Topic::parse(&format!("topics[{i}]"), text) {
            Ok(topic) if !topics.contains(&topic) => topics.push(topic),
            Ok(_) => {}
            Err(violation) => violations.push(violation),
        }
    }
    if topics.is_empty() && violations.is_empty() {
        violations.push(FieldViolation::new("topics", "name at least one topic"));
    }
    if violations.is_empty() {
        Ok(topics)
    } else {
        Err(bad_request(violations))
    }
}

/// Passes when `caller` may see every one of `topics`.
async fn all_visible(
    mesh: &Mesh,
    caller: &identity::Identity,
    topics: &[Topic],
) -> Result<(), Status> {
    futures::future::try_join_all(topics.iter().map(|topic| topic.check_visible(mesh, caller)))
        .await
        .map(drop)
}

/// A subscription's later check of its topics, made with the credential of the call that opened
/// it: a topic no longer visible ends it (`NOT_FOUND`); a check nobody could answer lets it go on.
fn recheck(mesh: Mesh, caller: identity::Identity, topics: Vec<Topic>) -> fanout::Recheck {
    let credential = protomesh::credential::caller_credential();
    let shared = Arc::new((mesh, caller, topics));
    Arc::new(move || {
        let credential = credential.clone();
        let shared = Arc::clone(&shared);
        Box::pin(async move {
            let (mesh, caller, topics) = &*shared;
            let checked = protomesh::credential::with_caller_credential(
                credential,
                all_visible(mesh, caller, topics),
            )
            .await;
            match checked {
                Err(status) if status.code() == tonic::Code::NotFound => Err(Status::not_found(
                    format!("{}: the subscription ends", status.message()),
                )),
                _ => Ok(()),
            }
        })
    })
}

fn unavailable(err: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %err, "a Redis command of the hub failed");
    Status::unavailable(format!("the hub's store is unavailable: {err}"))
}

#[tonic::async_trait]
impl HubService for HubHandler {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = identity::caller(request.metadata())?;
        let request = request.into_inner();
        let topics = parse_topics(&request.topics)?;
        let after =
            if request.after.is_empty() {
                None
            } else {
                Some(Cursor::parse(&STREAMS, &request.after).map_err(|err| {
                    bad_request(vec![FieldViolation::new("after", err.to_string())])
                })?)
            };
        all_visible(&self.mesh, &caller, &topics).await?;
        let names = topics.iter().map(ToString::to_string).collect();
        let recheck = recheck(self.mesh.clone(), caller.clone(), topics);
        let stream = self
            .hub
            .subscribe(names, caller.subject, after, recheck)
            .await?;
        Ok(Response::new(stream))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let (caller, topic) = self
            .visible_topic(request.metadata(), "topic", &request.get_ref().topic)
            .await?;
        let body = request
            .into_inner()
            .body
            .map(json::from_value)
            .unwrap_or_default();
        let size = body.to_string().len();
        if size > MAX_BODY_BYTES {
            return Err(bad_request(vec![FieldViolation::new(
                "body",
                format!("{size} bytes as JSON, over the {MAX_BODY_BYTES} allowed"),
            )]));
        }
        let mut payload = serde_json::Map::new();
        payload.insert(
            "sender".to_owned(),
            serde_json::Value::String(caller.subject),
        );
        payload.insert("body".to_owned(), body);
        let written = messages::append(
            self.hub.redis(),
            &self.hub.key(HUB_STREAM),
            "message",
            &topic.to_string(),
            payload,
        )
        .await
        .map_err(unavailable)?;
        Ok(Response::new(PublishResponse {
            event_id: written.event_id.to_string(),
            stream_id: written.stream_id.to_string(),
        }))
    }

    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        let (_, topic) = self
            .visible_topic(request.metadata(), "topic", &request.get_ref().topic)
            .await?;
        let subjects = presence::present(&self.hub, &topic.to_string())
            .await
            .map_err(unavailable)?;
        Ok(Response::new(PresenceResponse { subjects }))
    }

    async fn stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let instances = presence::stats(&self.hub).await.map_err(unavailable)?;
        Ok(Response::new(StatsResponse { instances }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn topics_are_checked_each_by_its_place_and_repeats_dropped() {
        let id = uuid::Uuid::new_v4();
        let topics = parse_topics(&[
            format!("project/{id}"),
            "user/ada".into(),
            format!("project/{id}"),
        ])
        .unwrap();
        assert_eq!(topics, [Topic::Project(id), Topic::User("ada".into())]);
        let refused = parse_topics(&["user/ada".into(), "task/1".into(), "x".into()]).unwrap_err();
        let fields: Vec<String> = protomesh::status::field_violations(&refused)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["topics[1]", "topics[2]"]);
        assert!(parse_topics(&[]).is_err());
    }
}
