//! The gateway's WebSocket bridge against the real `probe` service and `gateway` binaries in a
//! private Consul dev agent: a client-streaming and a bidirectional method, message by message;
//! the close codes of a failed call, a bad message, a binary frame, a message over the body limit,
//! a half-closed stream, a silent client (idle timeout) and a call past its deadline; the
//! handshake's subprotocol and origin; and a streaming route's ordinary HTTP request still
//! answered as before.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use support::http::{http, spawn};
use support::mesh::wait_routes;
use support::{gateway_addr, Consul};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for one frame.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Opens a WebSocket to `path` offering `protocols`.
async fn open(
    addr: SocketAddr,
    path: &str,
    protocols: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    open_from(addr, path, protocols, None).await
}

/// Opens a WebSocket to `path` offering `protocols`, as a page of `origin` would.
async fn open_from(
    addr: SocketAddr,
    path: &str,
    protocols: &str,
    origin: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
    }
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    let (socket, response) = tokio_tungstenite::connect_async(request).await?;
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "protomesh.json",
        "the bridge selects its subprotocol"
    );
    Ok(socket)
}

/// The next frame that is not a ping or pong.
async fn next(socket: &mut Socket) -> Message {
    loop {
        let frame = tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .expect("no frame within the wait")
            .expect("the socket ended")
            .unwrap();
        if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
            return frame;
        }
    }
}

async fn next_json(socket: &mut Socket) -> serde_json::Value {
    match next(socket).await {
        Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("not a text frame: {other:?}"),
    }
}

/// The close frame's code and reason.
async fn closed(socket: &mut Socket) -> (u16, String) {
    match next(socket).await {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("not a close frame: {other:?}"),
    }
}

/// Reads the server's frames as raw bytes (answering nothing) until the connection ends, and
/// returns the close frame's code and reason.
async fn raw_close_frame(socket: &mut Socket) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let MaybeTlsStream::Plain(tcp) = socket.get_mut() else {
        panic!("not a plain TCP socket")
    };
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut bytes))
        .await
        .expect("the gateway did not end the connection")
        .unwrap();
    // Server frames are unmasked: opcode byte, a length under 126 here, the payload.
    let mut rest = bytes.as_slice();
    while rest.len() >= 2 {
        let (opcode, length) = (rest[0] & 0x0f, usize::from(rest[1] & 0x7f));
        let payload = &rest[2..2 + length];
        if opcode == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
        }
        rest = &rest[2 + length..];
    }
    panic!("no close frame in {bytes:?}")
}

async fn send(socket: &mut Socket, text: &str) {
    socket.send(Message::Text(text.into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_methods_work_message_by_message_over_a_websocket() {
    let consul = Consul::start().await;
    let env = vec![
        ("CONSUL_HTTP_ADDR", consul.addr()),
        ("PROTOMESH_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    let _probe = spawn("probe", &env, &[]);
    let gateway = spawn(
        "gateway",
        &env,
        &[
            "--ws-ping-interval",
            "1s",
            "--ws-idle-timeout",
            "3s",
            "--ws-max-duration",
            "6s",
            "--body-limit",
            "65536",
        ],
    );
    let addr = gateway_addr(&gateway).await;
    wait_routes(addr, &["ProbeService.Chat"]).await;

    // Client streaming: every message, then the end of the stream, then the one answer.
    let mut collect = open(addr, "/v1/probe:collect", "protomesh.json")
        .await
        .unwrap();
    for word in ["one", "two", "three"] {
        send(&mut collect, &format!(r#"{{"message":"{word}"}}"#)).await;
    }
    send(&mut collect, "").await;
    let answer = next_json(&mut collect).await;
    assert_eq!(
        answer["messages"],
        serde_json::json!(["one", "two", "three"])
    );
    assert_eq!(closed(&mut collect).await, (1000, "OK".to_owned()));

    // Bidirectional: each answer comes before the next request is sent; the gateway pings.
    let mut chat = open(addr, "/v1/probe:chat", "protomesh.json")
        .await
        .unwrap();
    for word in ["ping", "pong", "done"] {
        send(&mut chat, &format!(r#"{{"message":"{word}"}}"#)).await;
        assert_eq!(next_json(&mut chat).await["message"], word);
    }
    let pinged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = chat.next().await {
                return;
            }
        }
    })
    .await;
    assert!(pinged.is_ok(), "no ping within 5 s");
    // A request asking for NOT_FOUND ends the call: the error as JSON, then close 4005.
    send(&mut chat, r#"{"message":"x","failCode":5}"#).await;
    let error = next_json(&mut chat).await;
    assert_eq!(error["error"]["code"], 5, "{error}");
    let (code, reason) = closed(&mut chat).await;
    assert_eq!(code, 4005);
    assert!(reason.contains("failing as asked"), "{reason}");

    // A message that is not the request's JSON: the field named, close 4003.
    let mut bad = open(addr, "/v1/probe:chat", "protomesh.json")
        .await
        .unwrap();
    send(&mut bad, r#"{"delayMs":"soon"}"#).await;
    let error = next_json(&mut bad).await;
    assert_eq!(error["error"]["code"], 3, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delay"),
        "{error}"
    );
    assert_eq!(closed(&mut bad).await.0, 4003);

    // A binary frame: close 1003.
    let mut binary = open(addr, "/v1/probe:chat", "protomesh.json")
        .await
        .unwrap();
    binary
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        closed(&mut binary).await.0,
        u16::from(CloseCode::Unsupported)
    );

    // A message after the client ended its stream (while the answer is still on its way):
    // refused, close 4003.
    let mut late = open(addr, "/v1/probe:chat", "protomesh.json")
        .await
        .unwrap();
    send(&mut late, r#"{"message":"slow","delayMs":1000}"#).await;
    send(&mut late, "").await;
    send(&mut late, r#"{"message":"late"}"#).await;
    let error = next_json(&mut late).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request stream has ended"),
        "{error}"
    );
    assert_eq!(closed(&mut late).await.0, 4003);

    // A message over the body limit: close 1009.
    let mut big = open(addr, "/v1/probe:chat", "protomesh.json")
        .await
        .unwrap();
    let message = format!(r#"{{"message":"{}"}}"#, "x".repeat(100_000));
    send(&mut big, &message).await;
    assert_eq!(closed(&mut big).await.0, 1009);

    // A client that sends nothing, not even a pong, for the idle timeout: close 1001. It reads the
    // raw bytes (a WebSocket client would answer the pings as it reads), until the gateway ends
    // the connection.
    let mut silent = open(addr, "/v1/probe:chat", "protomesh.json")
        .await
        .unwrap();
    let (code, reason) = raw_close_frame(&mut silent).await;
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("idle"), "{reason}");

    // A call past its deadline (--ws-max-duration, the probe stating none): 4004, while the client
    // keeps answering pings.
    let mut long = open(addr, "/v1/probe:chat", "protomesh.json")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = next_json(&mut long).await;
    assert_eq!(error["error"]["code"], 4, "{error}");
    assert_eq!(closed(&mut long).await.0, 4004);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Browsers apply no CORS to WebSockets: a page of another origin is refused (403), the
    // gateway's own origin is served.
    let refused = open_from(
        addr,
        "/v1/probe:chat",
        "protomesh.json",
        Some("https://evil.example"),
    )
    .await
    .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = refused else {
        panic!("not an HTTP refusal: {refused:?}")
    };
    assert_eq!(response.status(), 403);
    let mut own = open_from(
        addr,
        "/v1/probe:chat",
        "protomesh.json",
        Some(&format!("http://{addr}")),
    )
    .await
    .unwrap();
    send(&mut own, r#"{"message":"same origin"}"#).await;
    assert_eq!(next_json(&mut own).await["message"], "same origin");

    // No subprotocol offered: refused before the upgrade, with the reason.
    let refused = open(addr, "/v1/probe:chat", "").await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = refused else {
        panic!("not an HTTP refusal: {refused:?}")
    };
    assert_eq!(response.status(), 400);
    let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
    assert!(body.contains("protomesh.json"), "{body}");

    // The route's plain HTTP request still works (one request message).
    let answer = http(
        "POST",
        format!("http://{addr}/v1/probe:chat"),
        vec!["content-type: application/json".into()],
        Some(r#"{"message":"plain"}"#.into()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("plain"), "{}", answer.body);
}
