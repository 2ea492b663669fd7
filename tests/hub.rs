//! The collaboration hub end to end, across real processes: `tasks`, `priority` and two `hub`
//! instances registered in a private Consul dev agent, on a database and key prefix of the test's
//! own (Postgres and Redis of the machine); callers hold test tokens.
//!
//! - A scripted series of task changes and messages reaches a native gRPC subscriber and one on a
//!   WebSocket through the `gateway` exactly, in order; one that leaves and resumes with its last
//!   cursor misses nothing and sees nothing twice.
//! - A gRPC-Web subscriber (binary framing, as a browser's gRPC-Web client frames it) through the
//!   gateway sees the same series.
//! - A stranger is refused the project's topic (over gRPC and over the WebSocket), another user's
//!   topic, publishing, presence and the stats; a WebSocket without a credential is refused at the
//!   handshake.
//! - A subscriber that stops reading is dropped with `RESOURCE_EXHAUSTED` and its cursor, while
//!   another on the same topic gets every message; resuming from that cursor, it gets the rest.
//! - A hub instance killed under its subscribers: they resume on the other one without a gap.
//! - A member removed from the project loses the subscription (`NOT_FOUND`) at its next check.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use protomesh::auth::testing::token;
use protomesh_hub::proto::protomesh::hub::v1::{
    hub_service_client::HubServiceClient, Event, PresenceRequest, PublishRequest, StatsRequest,
    SubscribeRequest,
};
use protomesh_tasks::proto::protomesh::tasks::v1::{
    tasks_service_client::TasksServiceClient, AddProjectMemberRequest, CompleteTaskRequest,
    CreateProjectRequest, CreateTaskRequest, DeleteTaskRequest, Project,
    RemoveProjectMemberRequest, Task, UpdateTaskRequest,
};
use support::http::spawn;
use support::mesh::wait_routes;
use support::mesh::{wait_passing, TestMesh};
use support::{eventually, gateway_addr, test_secret_file, with_token, Consul};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

/// Longest wait for one event.
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Channels to every passing instance of `service`, by address.
async fn instances(consul: &Consul, service: &str) -> Vec<String> {
    let mut addrs: Vec<String> = consul
        .instances(service, true)
        .await
        .into_iter()
        .map(|e| format!("http://{}:{}", e.service.address, e.service.port))
        .collect();
    addrs.sort();
    addrs
}

/// A channel to `addr` with large flow-control windows (the slow subscriber's is small).
async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .connect()
        .await
        .unwrap()
}

async fn subscribe(
    channel: &Channel,
    token: &str,
    topics: &[String],
    after: &str,
) -> Result<Streaming<Event>, tonic::Status> {
    HubServiceClient::new(channel.clone())
        .subscribe(with_token(
            SubscribeRequest {
                topics: topics.to_vec(),
                after: after.to_owned(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The next event that is not a presence change.
async fn next_event(stream: &mut Streaming<Event>) -> Result<Event, tonic::Status> {
    loop {
        let event = tokio::time::timeout(EVENT_WAIT, stream.message())
            .await
            .expect("no event within the wait")?
            .expect("the stream ended");
        if !event.r#type.starts_with("presence.") {
            return Ok(event);
        }
    }
}

/// Nothing but presence changes arrives on `stream` for a second.
async fn assert_nothing_more(stream: &mut Streaming<Event>) {
    let more = tokio::time::timeout(Duration::from_secs(1), next_event(stream)).await;
    assert!(more.is_err(), "an event too many: {more:?}");
}

/// Subscribes, retrying while the instance has not reached its streams yet (`UNAVAILABLE`).
async fn subscribe_when_ready(
    channel: &Channel,
    token: &str,
    topics: &[String],
) -> Streaming<Event> {
    eventually(
        Duration::from_secs(30),
        "a hub reading its streams",
        || async { subscribe(channel, token, topics, "").await.ok() },
    )
    .await
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket subscription to `topic` through the gateway, the token as a subprotocol.
async fn ws_subscribe(
    gateway: SocketAddr,
    token: &str,
    topic: &str,
    after: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{gateway}/v1/hub/events?topics={topic}&after={after}")
        .into_client_request()
        .unwrap();
    let protocols = if token.is_empty() {
        "protomesh.json".to_owned()
    } else {
        format!("protomesh.json, bearer.{token}")
    };
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next frame of a WebSocket subscription that is not a ping, pong or presence change.
async fn ws_next(socket: &mut Socket) -> WsMessage {
    loop {
        let frame = tokio::time::timeout(EVENT_WAIT, socket.next())
            .await
            .expect("no frame within the wait")
            .expect("the socket ended")
            .unwrap();
        match &frame {
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            WsMessage::Text(text) => {
                let json: serde_json::Value = serde_json::from_str(text).unwrap();
                if json["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("presence."))
                {
                    continue;
                }
                return frame;
            }
            _ => return frame,
        }
    }
}

/// A WebSocket subscriber as a client would write one: when the call ends with `UNAVAILABLE`
/// (close 4014: its hub instance went away), it opens a new socket with its last cursor.
struct WsSubscriber {
    gateway: SocketAddr,
    token: String,
    topic: String,
    socket: Socket,
    cursor: String,
    resumed: usize,
}

impl WsSubscriber {
    async fn open(gateway: SocketAddr, token: &str, topic: &str) -> Self {
        Self {
            gateway,
            token: token.to_owned(),
            topic: topic.to_owned(),
            socket: ws_subscribe(gateway, token, topic, "").await.unwrap(),
            cursor: String::new(),
            resumed: 0,
        }
    }

    /// The next event (presence changes left out), resuming as needed.
    async fn next(&mut self) -> (String, String) {
        loop {
            let frame = ws_next(&mut self.socket).await;
            match &frame {
                WsMessage::Text(text) => {
                    let json: serde_json::Value = serde_json::from_str(text).unwrap();
                    if json.get("error").is_some() {
                        assert_eq!(json["error"]["code"], 14, "{json}");
                        continue;
                    }
                    self.cursor = json["cursor"].as_str().unwrap().to_owned();
                    return ws_what(&frame);
                }
                WsMessage::Close(Some(close)) if u16::from(close.code) == 4014 => {
                    self.resumed += 1;
                    self.socket =
                        ws_subscribe(self.gateway, &self.token, &self.topic, &self.cursor)
                            .await
                            .unwrap();
                }
                other => panic!("not an event: {other:?}"),
            }
        }
    }
}

/// A gRPC-Web subscriber that resumes with its last cursor when its answer ends early.
struct GrpcWebSubscriber {
    gateway: SocketAddr,
    token: String,
    topic: String,
    body: Incoming,
    buffer: Vec<u8>,
    cursor: String,
    resumed: usize,
}

impl GrpcWebSubscriber {
    async fn open(gateway: SocketAddr, token: &str, topic: &str) -> Self {
        Self {
            gateway,
            token: token.to_owned(),
            topic: topic.to_owned(),
            body: grpc_web_subscribe(gateway, token, topic, "").await,
            buffer: Vec::new(),
            cursor: String::new(),
            resumed: 0,
        }
    }

    async fn next(&mut self) -> (String, String) {
        loop {
            match grpc_web_next(&mut self.body, &mut self.buffer).await {
                Ok(event) => {
                    self.cursor.clone_from(&event.cursor);
                    return what(&event);
                }
                Err(ended) => {
                    assert!(
                        ended.contains("grpc-status:14") || ended.is_empty(),
                        "{ended}"
                    );
                    self.resumed += 1;
                    self.buffer.clear();
                    self.body =
                        grpc_web_subscribe(self.gateway, &self.token, &self.topic, &self.cursor)
                            .await;
                }
            }
        }
    }
}

/// What a WebSocket event (proto3 JSON) stands for in [`Script::expected`].
fn ws_what(frame: &WsMessage) -> (String, String) {
    let WsMessage::Text(text) = frame else {
        panic!("not an event: {frame:?}")
    };
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    let kind = json["type"]
        .as_str()
        .unwrap_or_else(|| panic!("not an event: {json}"))
        .to_owned();
    let what = if kind == "message" {
        json["data"]["body"].as_str().unwrap().to_owned()
    } else {
        json["data"]["id"].as_str().unwrap().to_owned()
    };
    (kind, what)
}

/// A gRPC-Web (`application/grpc-web+proto`) subscription to `topic` through the gateway: the
/// answer's body, whose frames are the events.
async fn grpc_web_subscribe(
    gateway: SocketAddr,
    token: &str,
    topic: &str,
    after: &str,
) -> Incoming {
    use prost::Message;
    let request = SubscribeRequest {
        topics: vec![topic.to_owned()],
        after: after.to_owned(),
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(request.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&request);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = http::Request::post(format!(
        "http://{gateway}/protomesh.hub.v1.HubService/Subscribe"
    ))
    .header("content-type", "application/grpc-web+proto")
    .header("x-grpc-web", "1")
    .header("authorization", format!("Bearer {token}"))
    .body(Full::new(Bytes::from(body)))
    .unwrap();
    let response = tokio::time::timeout(EVENT_WAIT, client.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web+proto"
    );
    response.into_body()
}

/// The next event of a gRPC-Web answer that is not a presence change (`buffer` keeps the bytes
/// of frames not read yet); at the end of the answer, its trailers (empty when it broke off).
async fn grpc_web_next(body: &mut Incoming, buffer: &mut Vec<u8>) -> Result<Event, String> {
    use http_body_util::BodyExt;
    use prost::Message;
    loop {
        if buffer.len() >= 5 {
            let length = u32::from_be_bytes(buffer[1..5].try_into().unwrap()) as usize;
            if buffer.len() >= 5 + length {
                let frame: Vec<u8> = buffer.drain(..5 + length).collect();
                if frame[0] & 0x80 != 0 {
                    return Err(String::from_utf8_lossy(&frame[5..]).into_owned());
                }
                let event = Event::decode(&frame[5..]).unwrap();
                if event.r#type.starts_with("presence.") {
                    continue;
                }
                return Ok(event);
            }
        }
        let frame = tokio::time::timeout(EVENT_WAIT, body.frame())
            .await
            .expect("no gRPC-Web frame within the wait");
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
            }
            // The answer broke off or ended without trailers.
            Some(Err(_)) | None => return Err(String::new()),
        }
    }
}

/// What identifies an event in the comparisons: its stream, id, type and event id.
fn key(event: &Event) -> (String, String, String, String) {
    (
        event.stream.clone(),
        event.stream_id.clone(),
        event.r#type.clone(),
        event.event_id.clone(),
    )
}

/// The task id an event's data names.
fn task_id(event: &Event) -> String {
    let data = event.data.as_ref().unwrap();
    match data.fields.get("id").and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(id)) => id,
        other => panic!("no task id in {event:?}: {other:?}"),
    }
}

struct Script {
    tasks: TasksServiceClient<Channel>,
    hub: HubServiceClient<Channel>,
    project: String,
    alice: String,
    admin: String,
    /// Events the script caused, in the order it caused them: (type, task id or message text).
    expected: Vec<(String, String)>,
}

impl Script {
    async fn create(&mut self, title: &str) -> String {
        let task = self
            .tasks
            .create_task(with_token(
                CreateTaskRequest {
                    project_id: self.project.clone(),
                    task: Some(Task {
                        title: title.to_owned(),
                        urgency: 5,
                        impact: 5,
                        ..Default::default()
                    }),
                },
                &self.alice,
            ))
            .await
            .unwrap()
            .into_inner();
        self.expected.push(("task.created".into(), task.id.clone()));
        task.id
    }

    async fn update(&mut self, id: &str, title: &str) {
        self.tasks
            .update_task(with_token(
                UpdateTaskRequest {
                    task: Some(Task {
                        id: id.to_owned(),
                        title: title.to_owned(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["title".into()],
                    }),
                },
                &self.alice,
            ))
            .await
            .unwrap();
        self.expected.push(("task.updated".into(), id.to_owned()));
    }

    async fn complete(&mut self, id: &str) {
        self.tasks
            .complete_task(with_token(
                CompleteTaskRequest { id: id.to_owned() },
                &self.alice,
            ))
            .await
            .unwrap();
        self.expected.push(("task.completed".into(), id.to_owned()));
    }

    async fn delete(&mut self, id: &str) {
        self.tasks
            .delete_task(with_token(
                DeleteTaskRequest { id: id.to_owned() },
                &self.admin,
            ))
            .await
            .unwrap();
        self.expected.push(("task.deleted".into(), id.to_owned()));
    }

    async fn say(&mut self, text: &str) {
        self.hub
            .publish(with_token(
                PublishRequest {
                    topic: format!("project/{}", self.project),
                    body: Some(prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
                    }),
                },
                &self.alice,
            ))
            .await
            .unwrap();
        self.expected.push(("message".into(), text.to_owned()));
    }
}

/// What an event stands for in [`Script::expected`].
fn what(event: &Event) -> (String, String) {
    if event.r#type == "message" {
        let body = event.data.as_ref().unwrap().fields.get("body").cloned();
        let Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(text)),
        }) = body
        else {
            panic!("a message without a text body: {event:?}")
        };
        return (event.r#type.clone(), text);
    }
    (event.r#type.clone(), task_id(event))
}

/// Reads `count` events (presence changes left out) from `stream`.
async fn read(stream: &mut Streaming<Event>, count: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(next_event(stream).await.unwrap());
    }
    events
}

/// Task changes come in the order they were made; messages, in the order they were sent (the
/// two are in different streams, whose entries may interleave differently for two readers).
fn assert_same_per_stream(seen: &[(String, String)], expected: &[(String, String)]) {
    for message in [true, false] {
        let pick = |list: &[(String, String)]| -> Vec<(String, String)> {
            list.iter()
                .filter(|(kind, _)| (kind == "message") == message)
                .cloned()
                .collect()
        };
        assert_eq!(pick(seen), pick(expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_change_once_and_strangers_see_none() {
    let mesh = TestMesh::start().await;
    let consul = &mesh.consul;
    let mut env = mesh.env();
    env.push(("PROTOMESH_JWT_SECRET_FILE", test_secret_file()));
    let _priority = spawn("priority", &env, &[]);
    let _tasks = spawn("tasks", &env, &[]);
    let hub_flags = ["--subscriber-buffer", "4", "--recheck-interval", "1s"];
    let hub1 = spawn("hub", &env, &hub_flags);
    wait_passing(consul, &["priority", "tasks", "hub"]).await;
    let first_hub = instances(consul, "hub").await.remove(0);
    let _hub2 = spawn("hub", &env, &hub_flags);
    let second_hub = eventually(Duration::from_secs(60), "a second hub", || async {
        instances(consul, "hub")
            .await
            .into_iter()
            .find(|addr| *addr != first_hub)
    })
    .await;
    let (on_first, on_second) = (channel(&first_hub).await, channel(&second_hub).await);
    let gateway_process = spawn("gateway", &env, &[]);
    let gateway = gateway_addr(&gateway_process).await;
    wait_routes(gateway, &["HubService", "TasksService"]).await;

    let alice = token("alice", &[]);
    let bob = token("bob", &[]);
    let admin = token("root", &["admin"]);
    let tasks_channel = channel(&instances(consul, "tasks").await.remove(0)).await;
    let mut tasks = TasksServiceClient::new(tasks_channel);
    let project = tasks
        .create_project(with_token(
            CreateProjectRequest {
                project: Some(Project {
                    name: "hub test".into(),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let topic = vec![format!("project/{}", project.id)];

    // A reference subscriber on the second instance, another on the first that will be killed
    // under it, and one that leaves and comes back.
    let mut reference = subscribe_when_ready(&on_second, &alice, &topic).await;
    let mut survivor = subscribe_when_ready(&on_first, &alice, &topic).await;
    let mut leaver = subscribe(&on_second, &alice, &topic, "").await.unwrap();
    // And one on a WebSocket through the gateway; the WebSocket has been answered (101) once the
    // hub's stream is open, so the subscription is registered.
    let mut socket = WsSubscriber::open(gateway, &alice, &topic[0]).await;
    // And one with gRPC-Web. Either may be on the instance that will be killed: they resume.
    let mut grpc_web = GrpcWebSubscriber::open(gateway, &alice, &topic[0]).await;

    let mut script = Script {
        tasks,
        hub: HubServiceClient::new(on_second.clone()),
        project: project.id.clone(),
        alice: alice.clone(),
        admin: admin.clone(),
        expected: Vec::new(),
    };
    let a = script.create("a").await;
    let b = script.create("b").await;
    script.say("hello").await;
    script.update(&a, "a, renamed").await;

    let seen = read(&mut reference, 4).await;
    let seen_keys: Vec<(String, String)> = seen.iter().map(what).collect();
    assert_same_per_stream(&seen_keys, &script.expected);
    for event in &seen {
        assert_eq!(event.topic, topic[0]);
        assert!(!event.cursor.is_empty() && !event.event_id.is_empty());
    }

    // The leaver reads two events and goes away.
    let left_with = read(&mut leaver, 2).await;
    let cursor = left_with[1].cursor.clone();
    drop(leaver);

    // Strangers: Bob sees none of Alice's topics and may not read the stats.
    let refused = subscribe(&on_first, &bob, &topic, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(refused.message().contains("not found"), "{refused:?}");
    let refused = subscribe(&on_first, &bob, &["user/alice".into()], "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let mut bobs_hub = HubServiceClient::new(on_first.clone());
    let refused = bobs_hub
        .publish(with_token(
            PublishRequest {
                topic: topic[0].clone(),
                body: Some(prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("hi".into())),
                }),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    let refused = bobs_hub
        .stats(with_token(StatsRequest {}, &bob))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = bobs_hub
        .presence(with_token(
            PresenceRequest {
                topic: topic[0].clone(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    // Bad input names its field.
    let refused = subscribe(&on_first, &alice, &["project/12".into()], "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("topics[0]"), "{refused:?}");
    let refused = subscribe(&on_first, &alice, &topic, "tasks:nope")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("after"), "{refused:?}");

    // More changes while the leaver is away; the survivor's instance is killed halfway.
    script.complete(&b).await;
    let survivor_seen = read(&mut survivor, 5).await;
    let survivor_cursor = survivor_seen[4].cursor.clone();
    hub1.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    script.say("while one hub is down").await;
    let c = script.create("c").await;
    script.delete(&c).await;

    // The leaver resumes after its second event, on the same instance.
    let mut resumed = subscribe(&on_second, &alice, &topic, &cursor)
        .await
        .unwrap();
    let rest = read(&mut resumed, script.expected.len() - 2).await;
    let mut leaver_seen: Vec<(String, String)> = left_with.iter().map(what).collect();
    leaver_seen.extend(rest.iter().map(what));
    assert_same_per_stream(&leaver_seen, &script.expected);

    // The survivor's stream broke; it resumes on the other instance.
    let broken = tokio::time::timeout(EVENT_WAIT, survivor.message())
        .await
        .unwrap();
    assert!(broken.is_err(), "{broken:?}");
    let mut survivor_again = subscribe(&on_second, &alice, &topic, &survivor_cursor)
        .await
        .unwrap();
    let rest = read(&mut survivor_again, script.expected.len() - 5).await;
    let mut survivor_all: Vec<(String, String)> = survivor_seen.iter().map(what).collect();
    survivor_all.extend(rest.iter().map(what));
    assert_same_per_stream(&survivor_all, &script.expected);

    // The reference saw the same, and nothing more is pending anywhere.
    let reference_rest = read(&mut reference, script.expected.len() - 4).await;
    let mut reference_all = seen_keys;
    reference_all.extend(reference_rest.iter().map(what));
    assert_same_per_stream(&reference_all, &script.expected);
    // Nothing more reaches any of them.
    assert_nothing_more(&mut resumed).await;
    assert_nothing_more(&mut survivor_again).await;
    assert_nothing_more(&mut reference).await;

    // The WebSocket subscriber saw the same series, as proto3 JSON.
    let mut ws_seen = Vec::new();
    for _ in 0..script.expected.len() {
        ws_seen.push(socket.next().await);
    }
    assert_same_per_stream(&ws_seen, &script.expected);

    // So did the gRPC-Web subscriber.
    let mut grpc_web_seen = Vec::new();
    for _ in 0..script.expected.len() {
        grpc_web_seen.push(grpc_web.next().await);
    }
    assert_same_per_stream(&grpc_web_seen, &script.expected);
    eprintln!(
        "the WebSocket subscriber resumed {} times, the gRPC-Web one {}",
        socket.resumed, grpc_web.resumed
    );

    // Over the WebSocket, a stranger's subscription fails as the call does (close 4005), and one
    // without a credential is refused at the handshake (401).
    let mut stranger = ws_subscribe(gateway, &bob, &topic[0], "").await.unwrap();
    let WsMessage::Text(error) = ws_next(&mut stranger).await else {
        panic!("no error frame")
    };
    assert!(error.contains("not found"), "{error}");
    let WsMessage::Close(Some(close)) = ws_next(&mut stranger).await else {
        panic!("no close frame")
    };
    assert_eq!(u16::from(close.code), 4005);
    let refused = ws_subscribe(gateway, "", &topic[0], "").await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = refused else {
        panic!("not an HTTP refusal: {refused:?}")
    };
    assert_eq!(response.status(), 401);

    // Resumed and live copies of an event are the same entry.
    let live: Vec<_> = reference_rest.iter().map(key).collect();
    for event in &rest {
        assert!(live.contains(&key(event)), "{event:?} not among {live:?}");
    }

    // Presence: Alice is on the topic.
    let present = HubServiceClient::new(on_second.clone())
        .presence(with_token(
            PresenceRequest {
                topic: topic[0].clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(present.subjects, ["alice"]);

    // A subscriber that stops reading is dropped; the one reading gets every message.
    let slow_channel = Endpoint::from_shared(second_hub.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut slow = subscribe(&slow_channel, &alice, &topic, "").await.unwrap();
    let big = "x".repeat(12 * 1024);
    for n in 0..60 {
        script.say(&format!("{n} {big}")).await;
    }
    let mut count = 0;
    while count < 60 {
        let event = next_event(&mut reference).await.unwrap();
        if event.r#type == "message" {
            count += 1;
        }
    }
    let mut ended = None;
    let mut numbers = Vec::new();
    for _ in 0..200 {
        match tokio::time::timeout(EVENT_WAIT, slow.message())
            .await
            .unwrap()
        {
            Ok(Some(event)) if event.r#type == "message" => {
                let (_, text) = what(&event);
                numbers.push(text.split(' ').next().unwrap().parse::<u32>().unwrap());
            }
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(status) => {
                ended = Some(status);
                break;
            }
        }
    }
    let ended = ended.expect("the slow subscriber was not dropped");
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    // It resumes from the cursor in the message and gets the messages it had not read.
    let cursor = ended.message().split("after=").nth(1).unwrap().to_owned();
    assert!(cursor.starts_with("tasks:"), "{ended:?}");
    let mut resumed = subscribe(&on_second, &alice, &topic, &cursor)
        .await
        .unwrap();
    assert!(numbers.len() < 60, "the slow subscriber was not behind");
    while numbers.last() != Some(&59) {
        let event = next_event(&mut resumed).await.unwrap();
        let (_, text) = what(&event);
        numbers.push(text.split(' ').next().unwrap().parse::<u32>().unwrap());
    }
    assert_nothing_more(&mut resumed).await;
    assert_eq!(numbers, (0..60).collect::<Vec<_>>());

    // Carol, a member, follows the project until Alice removes her: her subscription ends with
    // NOT_FOUND at its next check (every second here), while it lasted she saw the project's events.
    let carol = token("carol", &[]);
    script
        .tasks
        .add_project_member(with_token(
            AddProjectMemberRequest {
                project_id: project.id.clone(),
                user_id: "carol".into(),
            },
            &alice,
        ))
        .await
        .unwrap();
    let mut carols = subscribe(&on_second, &carol, &topic, "").await.unwrap();
    script.say("for the members").await;
    let seen = next_event(&mut carols).await.unwrap();
    assert_eq!(what(&seen).1, "for the members");
    script
        .tasks
        .remove_project_member(with_token(
            RemoveProjectMemberRequest {
                project_id: project.id.clone(),
                user_id: "carol".into(),
            },
            &alice,
        ))
        .await
        .unwrap();
    let ended = tokio::time::timeout(EVENT_WAIT, next_event(&mut carols))
        .await
        .expect("the removed member's subscription did not end")
        .unwrap_err();
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    let refused = subscribe(&on_second, &carol, &topic, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);

    // The admin reads the stats: the dropped subscriber is counted, and the reference's topic is
    // served (instances report every 10 s).
    eventually(Duration::from_secs(25), "stats with the drop", || async {
        let stats = HubServiceClient::new(on_second.clone())
            .stats(with_token(StatsRequest {}, &admin))
            .await
            .unwrap()
            .into_inner();
        stats
            .instances
            .iter()
            .any(|i| i.dropped >= 1 && i.topics.get(&topic[0]).copied().unwrap_or(0) >= 1)
            .then_some(())
    })
    .await;
}
