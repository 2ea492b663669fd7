//! The WebSocket bridge (RFC 6455): a WebSocket opened on the path of any streaming route —
//! server, client or bidirectional — is one gRPC call to its method, with the edge's
//! authentication, authorization and rate limits applied to the handshake as to any request of
//! the route.
//!
//! **Handshake.** `GET <the route's path>` with `Upgrade: websocket`, whatever the route's HTTP
//! verb, offering the subprotocol `protomesh.json` ([`PROTOCOL`]), which the answer selects.
//! Browsers cannot set headers on a WebSocket, so a credential may come as a second offered
//! subprotocol `bearer.<token>` (turned into `Authorization` before the edge by
//! [`crate::upgrade`]; never selected, so never echoed back). Not in the query string: URLs are
//! written to access logs, proxies' logs and browser history, and leak through `Referer`.
//! Browsers apply no CORS to WebSockets, so a handshake whose `Origin` is neither the gateway's
//! own nor one `--cors-origin` allows is refused (403).
//!
//! **Frames.** Every text frame from the client is one request message in proto3 JSON, merged
//! with the path's bindings and query as the route's body rule says. An empty text frame ends the
//! client's stream (a half-close: answers keep coming). A method taking one request message whose
//! route takes no body is called from the URL alone, before the handshake is answered, so the
//! socket opens once the service has taken the call (a hub subscriber is subscribed by then);
//! with a body, it starts with the first text frame, and its stream then ends by itself. Every
//! answer message is one text frame of proto3 JSON. Binary frames are refused (close 1003).
//!
//! **Close codes.** The call's end closes the socket: `1000` when it ended with `OK`; else first
//! a text frame `{"error": {"code", "message", "details"}}` (the JSON error of any route), then
//! close code `4000 + the gRPC code` (`4003` invalid argument, `4004` deadline exceeded, `4005`
//! not found, `4007` permission denied, `4008` resource exhausted, `4011` out of range, `4014`
//! unavailable, `4016` unauthenticated, …) with the status message, shortened to fit, as the
//! reason. `1001`: the client sent nothing, not even a pong, for the idle timeout, or the gateway
//! is shutting down; `1003`: a binary frame; `1009`: a message over the gateway's body limit.
//!
//! **Keep-alive and limits** ([`WebSocketOptions`](crate::gateway::WebSocketOptions)): the
//! gateway pings every `ping_interval` (browsers answer by themselves); a socket whose client sent
//! nothing for `idle_timeout` while the gateway was reading, or that does not take a frame within
//! it, is closed. A call's deadline is its method's default timeout when its policy states one,
//! else `max_duration`; at the deadline the socket closes with `4004` (subscribers resume with the
//! hub's cursors). Messages are capped at the body limit, and the client's messages are read only
//! as fast as the service takes them. An open socket keeps its place under the listener's
//! connection cap ([`crate::listener::ConnectionHold`]) until it closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::Either;
use http::header;
use http::{Method, StatusCode};
use prost_reflect::DescriptorPool;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::codec::BytesCodec;
use crate::errors::HttpError;
use crate::gateway::Gateway;
use crate::listener::ConnectionHold;
use crate::resolve::Resolved;
use crate::routes::Route;
use crate::template::Binding;
use crate::transcode::BodyRule;
use crate::upgrade::{offered_protocols, PROTOCOL};

use super::messages::{answer_json, copy_metadata, request_bytes, route_pool};

/// Request messages waiting for the service.
const REQUEST_BUFFER: usize = 16;

/// Longest wait for a call started before the socket opens to be taken by its service.
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// Longest wait for the client's side of the closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The socket's read buffer (it grows for a larger message, up to the body limit).
const READ_BUFFER: usize = 1024;

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
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        if !same_origin(origin, &parts.headers) && !gateway.edge.allows_origin(origin) {
            return HttpError::new(
                StatusCode::FORBIDDEN,
                tonic::Code::PermissionDenied,
                format!(
                    "a WebSocket from origin {} is not allowed (--cors-origin)",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            )
            .into_response();
        }
    }
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let pool = route_pool(&resolved.state, route);
    let options = &gateway.options;
    let mut metadata = tonic::metadata::MetadataMap::new();
    copy_metadata(&parts.headers, &resolved.request_id, options, &mut metadata);
    let deadline = parts
        .extensions
        .get::<Arc<protomesh::policy::ResolvedPolicy>>()
        .and_then(|policy| policy.default_timeout)
        .unwrap_or(options.websocket.max_duration);
    let hold = parts.extensions.get::<Arc<ConnectionHold>>().cloned();
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
    // service has taken it: a subscriber is subscribed when its socket opens. A bad URL is told
    // on the socket (a browser sees nothing of a refused handshake).
    let mut opening = Opening::AfterUpgrade;
    if !route.method.is_client_streaming() && matches!(route.body, BodyRule::None) {
        opening = match call.request(None) {
            Ok(message) => {
                let mut running = call.start(Some(message));
                running.answers.opened(OPEN_WAIT.min(deadline)).await;
                Opening::Started(running)
            }
            Err(error) => Opening::Refused(error),
        };
    }
    upgrade
        .protocols([PROTOCOL])
        // Small buffers (tungstenite's defaults are 128 KiB each): thousands of sockets stay
        // open, and a frame is written as soon as it is sent.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(options.body_limit)
        .max_frame_size(options.body_limit)
        .on_failed_upgrade(|err| tracing::debug!(error = %err, "a WebSocket upgrade failed"))
        .on_upgrade(move |socket| call.serve(socket, opening, hold))
}

/// Whether `origin` is the gateway's own (the request's `Host`, over HTTP or HTTPS).
fn same_origin(origin: &http::HeaderValue, headers: &http::HeaderMap) -> bool {
    let (Ok(origin), Some(host)) = (
        origin.to_str(),
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// The request's head, for building each request message. The URI is copied, not cloned: hyper
/// parses a request's head without copying, so a clone would keep the connection's whole read
/// buffer (16 KiB) alive for as long as the socket is open.
fn parts_without_body(parts: &http::request::Parts) -> http::request::Parts {
    let mut request = http::Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = http::Uri::try_from(parts.uri.to_string()).unwrap_or_default();
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

/// How the call of a socket starts.
enum Opening {
    /// Before the handshake was answered, from the URL alone.
    Started(Running),
    /// Its URL makes no request: the socket only tells why.
    Refused(HttpError),
    /// Once the socket is open, with the client's first messages.
    AfterUpgrade,
}

/// A started call: where its request messages go (until the client's stream ends), and its
/// answers. The socket's task drives both: a call has no task or channel of its own (with
/// thousands of sockets open, each would cost memory, and each hop CPU on every answer).
struct Running {
    requests: Option<mpsc::Sender<Bytes>>,
    answers: Answers,
}

/// The future of a call's opening: the service's answer stream, or the status refusing it.
type OpeningCall =
    Pin<Box<dyn Future<Output = Result<tonic::Streaming<Bytes>, tonic::Status>> + Send>>;

/// A call's answers: its opening, then the service's stream.
#[allow(
    clippy::large_enum_variant,
    reason = "the stream is the state a call spends its life in: boxing it would only add an allocation"
)]
enum Answers {
    /// Until the service takes the call (or refuses it).
    Opening(OpeningCall),
    /// The service refused the call before the socket opened.
    Refused(tonic::Status),
    /// The service's answers.
    Open(tonic::Streaming<Bytes>),
    /// The call's end was handed on.
    Ended,
}

/// What the call hands the socket.
enum Answer {
    Message(Bytes),
    End(Result<(), tonic::Status>),
}

impl Answers {
    /// The call's next answer, then its end; pending for ever after the end. Cancel-safe: the
    /// opening and the stream keep their place in `self`.
    async fn next(&mut self) -> Answer {
        loop {
            match self {
                Answers::Opening(opening) => match opening.as_mut().await {
                    Ok(stream) => *self = Answers::Open(stream),
                    Err(status) => {
                        *self = Answers::Ended;
                        return Answer::End(Err(status));
                    }
                },
                Answers::Refused(status) => {
                    let status = status.clone();
                    *self = Answers::Ended;
                    return Answer::End(Err(status));
                }
                Answers::Open(stream) => {
                    let end = match stream.message().await {
                        Ok(Some(message)) => return Answer::Message(message),
                        Ok(None) => Ok(()),
                        Err(status) => Err(lost_connection_unavailable(status)),
                    };
                    *self = Answers::Ended;
                    return Answer::End(end);
                }
                Answers::Ended => std::future::pending::<()>().await,
            }
        }
    }

    /// Waits, `wait` at most, for the service to take the call or refuse it.
    async fn opened(&mut self, wait: Duration) {
        if let Answers::Opening(opening) = self {
            if let Ok(opened) = tokio::time::timeout(wait, opening.as_mut()).await {
                *self = match opened {
                    Ok(stream) => Answers::Open(stream),
                    Err(status) => Answers::Refused(status),
                };
            }
        }
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

    /// Starts the call: with its only request message (`only`), or taking the client's as they
    /// come.
    fn start(&self, only: Option<Bytes>) -> Running {
        let (requests, request_stream) = match only {
            Some(message) => (None, Either::Left(tokio_stream::once(message))),
            None => {
                let (requests, request_stream) = mpsc::channel::<Bytes>(REQUEST_BUFFER);
                (
                    Some(requests),
                    Either::Right(ReceiverStream::new(request_stream)),
                )
            }
        };
        let channel = self.gateway.mesh.channel(&self.route.service);
        let path = self.route.grpc_path.clone();
        let mut request = tonic::Request::new(request_stream);
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(self.deadline);
        let opening: OpeningCall = Box::pin(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
            let response = grpc.streaming(request, path, BytesCodec).await?;
            Ok(response.into_inner())
        });
        Running {
            requests,
            answers: Answers::Opening(opening),
        }
    }

    /// An answer message as the text of its frame: the last answer's text again when the same
    /// bytes come for the same route (every subscriber of a topic gets the same event).
    fn answer_text(&self, message: Bytes) -> Result<Utf8Bytes, HttpError> {
        if let Some(text) = LAST_ANSWER.get(&self.route, &message) {
            return Ok(text);
        }
        let json = answer_json(
            &self.route,
            &message,
            &self.gateway.options.json,
            &self.pool,
        )?;
        let text = Utf8Bytes::try_from(json).map_err(|_| {
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                tonic::Code::Internal,
                "an answer is not UTF-8 JSON",
            )
        })?;
        LAST_ANSWER.put(&self.route, message, text.clone());
        Ok(text)
    }

    /// Bridges the open `socket` and the call until either ends.
    async fn serve(self, socket: WebSocket, opening: Opening, hold: Option<Arc<ConnectionHold>>) {
        let options = &self.gateway.options.websocket;
        let mut socket = Socket {
            inner: socket,
            send_timeout: options.idle_timeout,
        };
        let running = match opening {
            Opening::Refused(error) => return socket.close_with_error(error).await,
            Opening::Started(running) => running,
            Opening::AfterUpgrade => self.start(None),
        };
        let Running {
            mut requests,
            mut answers,
        } = running;
        let one_request = !self.route.method.is_client_streaming();
        // The server's shutdown (a socket outlives the connection it came from).
        let (_never, never) = watch::channel(false);
        let mut stopping = hold.as_ref().map_or(never, |hold| hold.stopping());
        let mut room: Option<mpsc::OwnedPermit<Bytes>> = None;
        let mut ping = tokio::time::interval(options.ping_interval);
        ping.reset();
        let idle = tokio::time::sleep(options.idle_timeout);
        let deadline = tokio::time::sleep(self.deadline);
        tokio::pin!(idle, deadline);
        loop {
            // The client is read while its messages have room, or once its stream ended; the
            // idle timer runs only while it is read.
            let reading = requests.is_none() || room.is_some();
            tokio::select! {
                reserved = reserve(requests.as_ref()), if !reading => match reserved {
                    Some(permit) => {
                        room = Some(permit);
                        idle.as_mut().reset(tokio::time::Instant::now() + options.idle_timeout);
                    }
                    // The call no longer takes messages: it is ending, its answer follows.
                    None => requests = None,
                },
                frame = socket.inner.recv(), if reading => {
                    idle.as_mut().reset(tokio::time::Instant::now() + options.idle_timeout);
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(_))) => {
                            return socket.close(1003, "send request messages as text frames of JSON").await;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        // The client closed: answer its close, and the call is cancelled.
                        Some(Ok(Message::Close(_))) => return socket.finish().await,
                        Some(Err(err)) if too_large(&err) => {
                            return socket.close(1009, "a message is over the gateway's body limit").await;
                        }
                        // The client went away: the call is cancelled.
                        Some(Err(_)) | None => return,
                    };
                    if text.is_empty() {
                        // The end of the client's stream (again, if it had ended).
                        requests = None;
                        room = None;
                        continue;
                    }
                    let Some(permit) = room.take() else {
                        let error = HttpError::bad_request(
                            "the request stream has ended: no more messages are taken",
                        );
                        return socket.close_with_error(error).await;
                    };
                    match self.request(Some(text.as_str())) {
                        Ok(message) => {
                            permit.send(message);
                        }
                        Err(error) => return socket.close_with_error(error).await,
                    }
                    if one_request {
                        requests = None;
                    }
                }
                answer = answers.next() => match answer {
                    Answer::Message(message) => {
                        let text = match self.answer_text(message) {
                            Ok(text) => text,
                            Err(error) => return socket.close_with_error(error).await,
                        };
                        if !socket.send(Message::Text(text)).await {
                            return;
                        }
                    }
                    Answer::End(Ok(())) => return socket.close(1000, "OK").await,
                    Answer::End(Err(status)) => {
                        let error = HttpError::from_status(&status, &self.pool);
                        return socket.close_with_error(error).await;
                    }
                },
                _ = ping.tick() => {
                    if !socket.send(Message::Ping(Bytes::new())).await {
                        return;
                    }
                }
                () = &mut idle, if reading => {
                    let reason = format!("idle for {}", humantime::format_duration(options.idle_timeout));
                    return socket.close(1001, &reason).await;
                }
                () = &mut deadline => {
                    let status = tonic::Status::deadline_exceeded(format!(
                        "the call reached its deadline ({})",
                        humantime::format_duration(self.deadline)
                    ));
                    return socket.close_with_error(HttpError::from_status(&status, &self.pool)).await;
                }
                Ok(()) = stopping.changed() => {
                    return socket.close(1001, "the gateway is shutting down").await;
                }
            }
        }
    }
}

/// The last answer written as a frame's text, with the route and the bytes it was written from:
/// when one event goes to thousands of sockets, it is turned into JSON once and the text is
/// shared (one entry: answers of different streams that interleave are written each time).
struct LastAnswer(std::sync::Mutex<Option<(Arc<Route>, Bytes, Utf8Bytes)>>);

static LAST_ANSWER: LastAnswer = LastAnswer(std::sync::Mutex::new(None));

impl LastAnswer {
    /// The text of `message` when it is the last answer of `route`.
    fn get(&self, route: &Arc<Route>, message: &Bytes) -> Option<Utf8Bytes> {
        let last = self.0.lock().ok()?;
        let (last_route, bytes, text) = last.as_ref()?;
        (Arc::ptr_eq(last_route, route) && bytes == message).then(|| text.clone())
    }

    /// Keeps `text`, written from `message` of `route`, as the last answer.
    fn put(&self, route: &Arc<Route>, message: Bytes, text: Utf8Bytes) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some((Arc::clone(route), message, text));
        }
    }
}

/// Room for one more request message (`None` once the call takes no more, or without a stream).
async fn reserve(requests: Option<&mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    requests?.clone().reserve_owned().await.ok()
}

/// Whether a read failed on a message over the size limit.
fn too_large(err: &axum::Error) -> bool {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = err.source();
    while let Some(cause) = source {
        if let Some(tungstenite::Error::Capacity(_)) = cause.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The socket, each send bounded (a client that does not read is let go).
struct Socket {
    inner: WebSocket,
    send_timeout: Duration,
}

impl Socket {
    /// Sends `message`; `false` when the client is gone or did not take it in time.
    async fn send(&mut self, message: Message) -> bool {
        matches!(
            tokio::time::timeout(self.send_timeout, self.inner.send(message)).await,
            Ok(Ok(()))
        )
    }

    /// Sends `error` as a text frame, then closes with `4000 +` its gRPC code.
    async fn close_with_error(&mut self, error: HttpError) {
        let frame = serde_json::json!({ "error": error.body }).to_string();
        if !self.send(Message::Text(frame.into())).await {
            return;
        }
        let code = 4000 + u16::try_from(error.body.code).unwrap_or(2);
        self.close(code, &error.body.message).await;
    }

    /// Closes with `code` and `reason` (shortened to fit a close frame), then waits a little
    /// for the client's close, so nothing sent is lost to a reset.
    async fn close(&mut self, code: u16, reason: &str) {
        let mut end = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame {
            code,
            reason: reason[..end].into(),
        };
        if self.send(Message::Close(Some(frame))).await {
            self.finish().await;
        }
    }

    /// Reads until the closing handshake ends (answering the client's close), for a moment at
    /// most.
    async fn finish(&mut self) {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = self.inner.recv().await {}
        })
        .await;
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
