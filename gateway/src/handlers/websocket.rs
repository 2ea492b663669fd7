//! The WebSocket bridge (RFC 6455): a WebSocket opened on the path of any streaming route —
//! server, client or bidirectional — is one gRPC call to its method, with the edge's
//! authentication, authorization and rate limits applied to the handshake as to any request of
//! the route.
//!
//! **Handshake.** `GET <the route's path>` with `Upgrade: websocket`, whatever the route's HTTP
//! verb, offering the subprotocol [`PROTOCOL`](crate::upgrade::PROTOCOL) (`Sec-WebSocket-Protocol`), which the answer
//! selects. Browsers cannot set headers on a WebSocket, so a credential may come as a second
//! offered subprotocol `bearer.<token>` ([`credential_from_protocols`](crate::upgrade::credential_from_protocols), applied before the edge;
//! never selected, so never echoed back). Not in the query string: URLs are written to access
//! logs, proxies' logs and browser history, and leak through `Referer`.
//!
//! **Frames.** Every text frame from the client is one request message in proto3 JSON, merged
//! with the path's bindings and query as the route's body rule says. An empty text frame ends the
//! client's stream (a half-close: answers keep coming). A method taking one request message
//! whose route takes no body is called from the URL alone, before the handshake is answered, so
//! the socket opens once the service has taken the call (a hub subscriber is subscribed by
//! then); with a body, it starts with the first text frame, and its stream then ends by itself. Every answer message is one
//! text frame of proto3 JSON. Binary frames are refused (close 1003).
//!
//! **Close codes.** The call's end closes the socket: `1000` when it ended with `OK`; else first a
//! text frame `{"error": {"code", "message", "details"}}` (the JSON error of any route), then
//! close code `4000 + the gRPC code` (`4003` invalid argument, `4004` deadline exceeded, `4005`
//! not found, `4007` permission denied, `4008` resource exhausted, `4014` unavailable, `4016`
//! unauthenticated, …) with the status message, shortened to fit, as the reason. `1001` when the
//! client sent nothing, not even a pong, for [`WebSocketOptions::idle_timeout`](crate::gateway::WebSocketOptions::idle_timeout); `1003` for a
//! binary frame; `1009` for a message over the gateway's body limit.
//!
//! **Keep-alive and limits.** The gateway pings every [`WebSocketOptions::ping_interval`](crate::gateway::WebSocketOptions::ping_interval)
//! (browsers answer by themselves). A call's deadline is its method's default timeout when its
//! policy states one, else [`WebSocketOptions::max_duration`](crate::gateway::WebSocketOptions::max_duration); subscribers then resume (the hub's
//! cursors). Messages are capped at the body limit; the client's messages are read only as fast
//! as the service takes them.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::Method;
use prost_reflect::DescriptorPool;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::codec::BytesCodec;
use crate::errors::HttpError;
use crate::gateway::Gateway;
use crate::resolve::Resolved;
use crate::routes::Route;
use crate::template::Binding;
use crate::transcode::BodyRule;
use crate::upgrade::{offered_protocols, PROTOCOL};

use super::messages::{answer_json, copy_metadata, request_bytes};

/// Request messages waiting for the service.
const REQUEST_BUFFER: usize = 16;

/// Answer messages waiting for the socket.
const ANSWER_BUFFER: usize = 16;

/// Longest wait for a call started before the socket opens to be taken by its service.
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// Longest close reason (a close frame's payload is at most 125 bytes, 2 of them the code).
const MAX_CLOSE_REASON: usize = 123;

/// Answers a WebSocket handshake on a streaming `route` and bridges the socket to its method.
pub(crate) async fn bridge(
    gateway: &Gateway,
    resolved: &Resolved,
    route: &Arc<Route>,
    bindings: &[Binding],
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    if !offered_protocols(&parts.headers).any(|p| p == PROTOCOL) {
        return HttpError::bad_request(format!(
            "offer the WebSocket subprotocol {PROTOCOL} (Sec-WebSocket-Protocol)"
        ))
        .into_response();
    }
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let state = &resolved.state;
    let pool = state
        .services
        .get(&route.service)
        .map(|s| s.pool.clone())
        .unwrap_or_else(|| route.method.parent_pool().clone());
    let options = &gateway.options;
    let mut metadata = tonic::metadata::MetadataMap::new();
    copy_metadata(&parts.headers, &resolved.request_id, options, &mut metadata);
    let deadline = parts
        .extensions
        .get::<Arc<protomesh::policy::ResolvedPolicy>>()
        .and_then(|policy| policy.default_timeout)
        .unwrap_or(options.websocket.max_duration);
    let call = Call {
        gateway: gateway.clone(),
        route: Arc::clone(route),
        bindings: bindings.to_vec(),
        parts: Arc::new(parts_without_body(&parts)),
        pool,
        metadata,
        deadline,
    };
    // A call whose one request message the URL makes starts now, and the socket opens once the
    // service has taken it: a subscriber is subscribed when its socket opens.
    let (opened, call_opened) = oneshot::channel();
    let mut running = call.start(opened);
    let mut refused = None;
    if !route.method.is_client_streaming() && matches!(route.body, BodyRule::None) {
        match call.request(None) {
            Ok(message) => {
                let _ = running.requests.take().map(|tx| tx.try_send(message));
                let _ = tokio::time::timeout(OPEN_WAIT.min(deadline), call_opened).await;
            }
            Err(error) => refused = Some(error),
        }
    }
    upgrade
        .protocols([PROTOCOL])
        .max_message_size(options.body_limit)
        .max_frame_size(options.body_limit)
        .on_failed_upgrade(|err| tracing::debug!(error = %err, "a WebSocket upgrade failed"))
        .on_upgrade(move |socket| call.serve(socket, running, refused))
}

/// The request's head, for building each request message.
fn parts_without_body(parts: &http::request::Parts) -> http::request::Parts {
    let mut request = http::Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = parts.uri.clone();
    request.into_parts().0
}

/// One bridged call.
struct Call {
    gateway: Gateway,
    route: Arc<Route>,
    bindings: Vec<Binding>,
    parts: Arc<http::request::Parts>,
    pool: DescriptorPool,
    metadata: tonic::metadata::MetadataMap,
    deadline: Duration,
}

/// What the call task hands the socket.
enum Answer {
    Message(Bytes),
    End(Result<(), tonic::Status>),
}

/// A started call: where its request messages go (until the client's stream ends), where its
/// answers come from, and its task.
struct Running {
    requests: Option<mpsc::Sender<Bytes>>,
    answers: mpsc::Receiver<Answer>,
    _task: AbortOnDrop,
}

/// Aborts a task when dropped (the socket went away: the call is cancelled).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Call {
    /// The request message of a text frame (or, for `None`, of the path and query alone).
    fn request(&self, text: Option<&str>) -> Result<Bytes, HttpError> {
        let body = text.unwrap_or_default().as_bytes();
        request_bytes(
            &self.route,
            &self.bindings,
            &self.parts,
            body,
            &self.gateway.options,
        )
    }

    /// Starts the call; `opened` fires once the service has answered its opening (or refused).
    fn start(&self, opened: oneshot::Sender<()>) -> Running {
        let (requests, request_stream) = mpsc::channel::<Bytes>(REQUEST_BUFFER);
        let (answers, answer_stream) = mpsc::channel::<Answer>(ANSWER_BUFFER);
        let task = tokio::spawn(call(
            self.gateway.mesh.channel(&self.route.service),
            self.route.grpc_path.clone(),
            self.metadata.clone(),
            self.deadline,
            request_stream,
            answers,
            opened,
        ));
        Running {
            requests: Some(requests),
            answers: answer_stream,
            _task: AbortOnDrop(task),
        }
    }

    /// Bridges the open `socket` and the running call (or tells why it was refused).
    async fn serve(self, mut socket: WebSocket, running: Running, refused: Option<HttpError>) {
        if let Some(error) = refused {
            return close_with_error(&mut socket, error).await;
        }
        let Running {
            mut requests,
            answers: mut answer_stream,
            _task,
        } = running;
        let one_request = !self.route.method.is_client_streaming();
        let options = &self.gateway.options.websocket;
        let mut ping = tokio::time::interval(options.ping_interval);
        ping.reset();
        let idle = tokio::time::sleep(options.idle_timeout);
        tokio::pin!(idle);
        loop {
            let can_read = requests.as_ref().is_none_or(|tx| tx.capacity() > 0);
            tokio::select! {
                frame = socket.recv(), if can_read => {
                    idle.as_mut().reset(tokio::time::Instant::now() + options.idle_timeout);
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(_))) => {
                            return close(&mut socket, 1003, "send request messages as text frames of JSON").await;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        // The client closed or went away: the call is cancelled.
                        Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    };
                    let Some(sender) = &requests else {
                        let error = HttpError::bad_request("the request stream has ended: no more messages are taken");
                        return close_with_error(&mut socket, error).await;
                    };
                    if text.is_empty() {
                        requests = None;
                        continue;
                    }
                    match self.request(Some(text.as_str())) {
                        // There is room: checked before reading.
                        Ok(message) => {
                            let _ = sender.try_send(message);
                        }
                        Err(error) => return close_with_error(&mut socket, error).await,
                    }
                    if one_request {
                        requests = None;
                    }
                }
                answer = answer_stream.recv() => match answer {
                    Some(Answer::Message(message)) => {
                        let json = answer_json(&self.route, &message, &self.gateway.options.json, &self.pool);
                        let sent = match json {
                            Ok(json) => match String::from_utf8(json) {
                                Ok(text) => socket.send(Message::Text(text.into())).await,
                                Err(_) => return close(&mut socket, 1011, "an answer is not UTF-8 JSON").await,
                            },
                            Err(error) => return close_with_error(&mut socket, error).await,
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    Some(Answer::End(Ok(()))) | None => return close(&mut socket, 1000, "OK").await,
                    Some(Answer::End(Err(status))) => {
                        let error = HttpError::from_status(&status, &self.pool);
                        return close_with_error(&mut socket, error).await;
                    }
                },
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                        return;
                    }
                }
                () = &mut idle => {
                    let reason = format!("idle for {}", humantime::format_duration(options.idle_timeout));
                    return close(&mut socket, 1001, &reason).await;
                }
            }
        }
    }
}

/// The gRPC call: the request messages as they come, every answer and the end handed on.
async fn call(
    channel: protomesh::client::MeshChannel,
    path: http::uri::PathAndQuery,
    metadata: tonic::metadata::MetadataMap,
    deadline: Duration,
    requests: mpsc::Receiver<Bytes>,
    answers: mpsc::Sender<Answer>,
    opened: oneshot::Sender<()>,
) {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(err) = grpc.ready().await {
        let _ = opened.send(());
        let _ = answers
            .send(Answer::End(Err(tonic::Status::unavailable(
                err.to_string(),
            ))))
            .await;
        return;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(requests));
    *request.metadata_mut() = metadata;
    request.set_timeout(deadline);
    let opening = grpc.streaming(request, path, BytesCodec).await;
    let _ = opened.send(());
    let mut stream = match opening {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let _ = answers.send(Answer::End(Err(status))).await;
            return;
        }
    };
    loop {
        let answer = match stream.message().await {
            Ok(Some(message)) => Answer::Message(message),
            Ok(None) => Answer::End(Ok(())),
            Err(status) => Answer::End(Err(lost_connection_unavailable(status))),
        };
        let end = matches!(answer, Answer::End(_));
        if answers.send(answer).await.is_err() || end {
            return;
        }
    }
}

/// A status tonic made of a broken connection (`UNKNOWN`, with the transport's error as its
/// source; a service's own statuses have none) as `UNAVAILABLE`: the service instance went away,
/// and the client may try again or resume elsewhere.
fn lost_connection_unavailable(status: tonic::Status) -> tonic::Status {
    use std::error::Error;
    if status.code() == tonic::Code::Unknown && status.source().is_some() {
        tonic::Status::unavailable(format!(
            "the connection to the service was lost: {}",
            status.message()
        ))
    } else {
        status
    }
}

/// Sends `error` as a text frame, then closes with `4000 +` its gRPC code.
async fn close_with_error(socket: &mut WebSocket, error: HttpError) {
    let frame = serde_json::json!({ "error": error.body }).to_string();
    if socket.send(Message::Text(frame.into())).await.is_err() {
        return;
    }
    let code = 4000 + u16::try_from(error.body.code).unwrap_or(2);
    close(socket, code, &error.body.message).await;
}

/// Closes with `code` and `reason` (shortened to fit a close frame).
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_unavailable_and_a_service_s_unknown_stays_unknown() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let lost = tonic::Status::from_error(Box::new(io));
        assert_eq!(lost.code(), tonic::Code::Unknown);
        assert_eq!(
            lost_connection_unavailable(lost).code(),
            tonic::Code::Unavailable
        );
        let own = tonic::Status::unknown("the service's own");
        assert_eq!(
            lost_connection_unavailable(own).code(),
            tonic::Code::Unknown
        );
    }
}
