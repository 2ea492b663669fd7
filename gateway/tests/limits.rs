//! The gateway under hostile clients, over raw sockets: slow request heads (slowloris), more
//! connections than its cap, idle keep-alive connections, slow bodies, long URIs, oversized
//! bodies announced with `Expect: 100-continue`, responses given without reading the body, a
//! `Grpc-Timeout` too short to meet, and a native gRPC frame announcing 4 GiB. A well-behaved
//! client is served throughout. Every loop is bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use protomesh_gateway::discovery::DiscoveryOptions;
use protomesh_gateway::listener::ConnectionLimits;
use support::{http, wait_for_route, Consul, EchoServer, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with `limits` routing the echo service, ready.
async fn gateway(consul: &Consul, limits: ConnectionLimits) -> TestGateway {
    let mut options = support::public_options();
    options.body_timeout = limits.body_timeout;
    let gateway = TestGateway::start_with_limits(
        &consul.client,
        options,
        DiscoveryOptions::default(),
        limits,
    )
    .await;
    wait_for_route(&gateway, "GET", "/v1/items/x", Duration::from_secs(15)).await;
    gateway
}

/// Whether the server closed `stream` (end of stream or reset), waiting at most `within`;
/// whatever the server sends before closing is read and dropped.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `request` on `stream` and reads one response head (and what came with it) as text.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    read_response(stream).await
}

/// Reads until a whole response head and its `Content-Length` body have arrived; `None` when
/// the connection ends (refused, reset) first.
async fn try_read_response(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if seen.len() >= head_end + 4 + length {
                return Some(text);
            }
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
}

/// [`try_read_response`] within 10 s, which must answer.
async fn read_response(stream: &mut TcpStream) -> String {
    tokio::time::timeout(Duration::from_secs(10), try_read_response(stream))
        .await
        .expect("a response within 10 s")
        .expect("a response before the connection ended")
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"))
}

fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

const GET_ITEM: &[u8] = b"GET /v1/items/a HTTP/1.1\r\nHost: gw\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_closed_after_the_head_timeout_while_others_are_served() {
    const SLOW: usize = 1000;
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    let head_timeout = Duration::from_secs(2);
    let gateway = gateway(
        &consul,
        ConnectionLimits {
            request_head_timeout: head_timeout,
            ..ConnectionLimits::default()
        },
    )
    .await;
    let addr = gateway.addr;

    // 1,000 connections that send a request line and then a header line now and then; each
    // reports how long after its connect it was closed.
    let started = Instant::now();
    let slow: Vec<_> = (0..SLOW)
        .map(|i| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let started = Instant::now();
                stream
                    .write_all(b"GET /v1/items/a HTTP/1.1\r\nHost: gw\r\n")
                    .await
                    .unwrap();
                // At most 20 header lines, one every 500 ms; the server must close first.
                for line in 0..20 {
                    if closed_within(&mut stream, Duration::from_millis(500)).await {
                        return Some(started.elapsed());
                    }
                    if stream
                        .write_all(format!("X-Slow-{i}-{line}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return Some(started.elapsed());
                    }
                }
                None
            })
        })
        .collect();

    // A well-behaved client is served the whole time, on fresh connections.
    let mut served = 0;
    while started.elapsed() < head_timeout + Duration::from_secs(2) {
        let asked = Instant::now();
        let answer = http("GET", &gateway.url("/v1/items/a"), &[], Bytes::new()).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "a fresh client waited {:?}",
            asked.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut closed_after = Vec::new();
    for task in slow {
        closed_after.push(
            task.await
                .unwrap()
                .expect("a slow connection was never closed"),
        );
    }
    closed_after.sort();
    let slowest = *closed_after.last().unwrap();
    eprintln!(
        "{SLOW} slow-head connections closed {:?} (first) to {slowest:?} (last) after their \
         connect; {served} requests served meanwhile",
        closed_after[0]
    );
    assert!(closed_after[0] >= head_timeout - Duration::from_millis(300));
    // The head timeout, and the client's 500 ms polling on a loaded machine.
    assert!(
        slowest < head_timeout + Duration::from_secs(2),
        "{slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_cap_new_connections_are_refused_and_the_rest_served() {
    const CAP: usize = 20;
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    let gateway = gateway(
        &consul,
        ConnectionLimits {
            max_connections: CAP,
            ..ConnectionLimits::default()
        },
    )
    .await;
    // CAP keep-alive connections, each served once: they hold every slot. (The route check's
    // connections may hold a slot for a moment after they closed: a refused one is tried again.)
    let mut open = Vec::new();
    let filling = Instant::now();
    while open.len() < CAP {
        assert!(
            filling.elapsed() < Duration::from_secs(10),
            "only {} connections served",
            open.len()
        );
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        if stream.write_all(GET_ITEM).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(5), try_read_response(&mut stream)).await {
            Ok(Some(answer)) if answer.starts_with("HTTP/1.1 200") => open.push(stream),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // One more is closed at once, without an answer.
    let mut extra = TcpStream::connect(gateway.addr).await.unwrap();
    let _ = extra.write_all(GET_ITEM).await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "a connection above the cap was kept"
    );
    // The open ones are still served.
    for stream in open.iter_mut().take(3) {
        let answer = exchange(stream, GET_ITEM).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
    }
    // Once some close, new connections are taken again.
    open.truncate(CAP - 5);
    protomesh::testing::eventually(Duration::from_secs(5), "a slot free again", || async {
        let mut stream = TcpStream::connect(gateway.addr).await.ok()?;
        stream.write_all(GET_ITEM).await.ok()?;
        let answer = tokio::time::timeout(Duration::from_secs(2), try_read_response(&mut stream))
            .await
            .ok()??;
        (answer.starts_with("HTTP/1.1 200")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_the_idle_timeout() {
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    let idle = Duration::from_secs(1);
    let gateway = gateway(
        &consul,
        ConnectionLimits {
            idle_timeout: idle,
            ..ConnectionLimits::default()
        },
    )
    .await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let answer = exchange(&mut stream, GET_ITEM).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let answered = Instant::now();
    // Still open a little before the timeout: a second request is served.
    tokio::time::sleep(idle / 2).await;
    let answer = exchange(&mut stream, GET_ITEM).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let answered_again = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
    let after = answered_again.elapsed();
    eprintln!(
        "idle connection closed {after:?} after its last response ({:?} after the first)",
        answered.elapsed()
    );
    assert!(after >= idle - Duration::from_millis(100), "{after:?}");
    assert!(after < idle + Duration::from_secs(2), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smaller_edge_cases() {
    let consul = Consul::start().await;
    let echo = EchoServer::start(&consul.addr()).await;
    let gateway = gateway(
        &consul,
        ConnectionLimits {
            body_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        },
    )
    .await;
    let addr = gateway.addr;

    // A body that is read: the connection stays usable, with no `Connection: close`.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let create = b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"id\":\"ab1\"}\n";
    let answer = exchange(&mut stream, create).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(header_of(&answer, "connection"), None, "{answer}");
    let answer = exchange(&mut stream, GET_ITEM).await;
    assert_eq!(status_of(&answer), 200, "{answer}");

    // An answer given without reading the body (no such route) says `Connection: close`, and
    // only then is the connection closed.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(
        &mut stream,
        b"POST /v1/nowhere HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&answer), 404, "{answer}");
    assert_eq!(header_of(&answer, "connection"), Some("close"), "{answer}");
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);

    // `Expect: 100-continue` with 100 MB announced: 413 at once, never `100 Continue`.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(
        &mut stream,
        b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 104857600\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert_eq!(header_of(&answer, "connection"), Some("close"), "{answer}");

    // A URI over 8 KiB: 414 (not 431).
    let long = format!("/v1/items/a?q={}", "x".repeat(9000));
    let answer = http("GET", &gateway.url(&long), &[], Bytes::new()).await;
    assert_eq!(answer.status, StatusCode::URI_TOO_LONG, "{}", answer.body);

    // A body that stops arriving: 408 after the body timeout.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let sent = Instant::now();
    let answer = exchange(
        &mut stream,
        b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":",
    )
    .await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "{:?}",
        sent.elapsed()
    );

    // `Grpc-Timeout: 1n` cannot be met: 504, however fast the service.
    for _ in 0..5 {
        let answer = http(
            "GET",
            &gateway.url("/v1/items/a"),
            &[("grpc-timeout", "1n")],
            Bytes::new(),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            answer.body
        );
    }

    // Native gRPC: a frame announcing 4 GiB, the stream left open: RESOURCE_EXHAUSTED at once.
    // The `1n` calls above were answered at the gateway's deadline and may still reach the
    // service afterwards: let them land before watching what the frame brings.
    settle(&echo).await;
    let status = oversized_frame(addr).await;
    assert_eq!(status.as_deref(), Some("8"), "grpc-status");
    let reached = echo.take();
    assert!(
        reached.is_empty(),
        "nothing reached the service: {reached:?}"
    );
}

/// Waits (at most 3 s) until the echo service has received nothing new for 200 ms, and forgets
/// what it received.
async fn settle(echo: &EchoServer) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut quiet_since = Instant::now();
    echo.take();
    while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(200) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !echo.take().is_empty() {
            quiet_since = Instant::now();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_and_header_lists_are_capped() {
    let consul = Consul::start().await;
    let _echo = EchoServer::start(&consul.addr()).await;
    let gateway = gateway(
        &consul,
        ConnectionLimits {
            h2_max_concurrent_streams: 7,
            ..ConnectionLimits::default()
        },
    )
    .await;
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let ask = |client: h2::client::SendRequest<Bytes>, header: usize| async move {
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("http://{}/v1/items/a", gateway.addr))
            .header("x-padding", "p".repeat(header))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        response.await.map(|r| r.status())
    };
    let small = tokio::select! {
        answer = ask(client.clone(), 10) => answer.unwrap(),
        _ = &mut connection => panic!("connection ended"),
    };
    assert_eq!(small, StatusCode::OK);
    assert_eq!(connection.max_concurrent_send_streams(), 7);
    // A header list over 16 KiB is refused (431 or a reset stream), never served.
    let large = tokio::select! {
        answer = ask(client, 20 * 1024) => answer,
        _ = &mut connection => panic!("connection ended"),
    };
    assert!(
        !matches!(large, Ok(StatusCode::OK)),
        "a 20 KiB header list was served: {large:?}"
    );
}

/// Sends a native gRPC call to the echo service whose only frame announces 4 GiB - 1 and never
/// comes; returns the answer's `grpc-status` (headers or trailers), within 5 s.
async fn oversized_frame(addr: SocketAddr) -> Option<String> {
    use futures::StreamExt;
    use http_body_util::BodyExt;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let chunks = futures::stream::iter([Ok::<_, std::io::Error>(http_body::Frame::data(
        Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]),
    ))])
    .chain(futures::stream::pending());
    let request = http::Request::post(format!("http://{addr}/{}/Get", support::ECHO_SERVICE))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let response = sender.send_request(request).await.unwrap();
        if let Some(status) = response.headers().get("grpc-status") {
            return Some(status.to_str().unwrap().to_owned());
        }
        let collected = response.into_body().collect().await.ok()?;
        let trailers = collected.trailers()?;
        Some(trailers.get("grpc-status")?.to_str().ok()?.to_owned())
    })
    .await;
    answer.expect("an answer within 5 s, not at the deadline")
}
