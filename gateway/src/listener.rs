//! The gateway's listener: accepts connections and serves HTTP/1.1 and h2c on each under the
//! limits a public edge needs — the kind nginx and Envoy ship, with safe defaults, each one a flag
//! ([`ConnectionLimits`]):
//!
//! - **open connections** are capped: above the cap a new connection is closed at once and the
//!   others are served on (the cap is lowered to fit the process's file-descriptor limit, which
//!   is raised to its hard limit first, so the process never runs out of descriptors);
//! - a new connection has a **request-head timeout** to send its first request head (slowloris:
//!   a header line every few seconds), protocol detection included;
//! - a keep-alive connection with no request in flight closes after the **idle timeout** (the
//!   next request's head must arrive within it too);
//! - a request **body** must arrive whole within the body timeout (enforced where bodies are read,
//!   [`crate::server`]: 408);
//! - a request URI longer than the limit gets **414**, request headers larger than
//!   [`MAX_REQUEST_HEAD`] **431**;
//! - HTTP/2: concurrent streams per connection and the header list size are capped, and
//!   keep-alive pings find a silent peer;
//! - an HTTP/1 connection is closed only after a response that says `Connection: close`: a
//!   response given without reading the request's body (401, 413, 429 …) says so, since the
//!   unread body makes the connection unusable.
//!
//! On shutdown every connection is asked to finish (HTTP/1 after the response in flight, HTTP/2
//! with GOAWAY) and the listener waits for them up to the drain time.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use clap::Args;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

/// Largest request headers (names and values, all lines) accepted; larger get 431.
pub const MAX_REQUEST_HEAD: usize = 8192;

/// The connection's read buffer bound: room for the longest URI and the largest headers a request
/// may have, so that each is refused with its own status (414, 431) rather than hyper's 431 for a
/// head that overflows the buffer. The buffer starts at 8 KiB and only grows for such heads.
fn read_buffer_bound(limits: &ConnectionLimits) -> usize {
    (limits.max_uri_length + MAX_REQUEST_HEAD + 1024).max(8192)
}

/// File descriptors kept free below the process limit for everything but client connections
/// (connections to the services, Consul, Redis, log files).
const RESERVED_DESCRIPTORS: u64 = 256;

/// Time an idle connection that was asked to close gets to do so before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the gateway's listeners did, for the metrics (per process: a process has one public
/// listener).
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounters {
    open: AtomicUsize,
    refused: AtomicU64,
    timed_out: AtomicU64,
}

impl ConnectionCounters {
    /// Client connections open now.
    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed) as u64
    }

    /// Connections closed at once because the open-connection cap was reached.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed by the request-head or idle timeout.
    pub(crate) fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// This process's connection counters.
pub(crate) static COUNTERS: ConnectionCounters = ConnectionCounters {
    open: AtomicUsize::new(0),
    refused: AtomicU64::new(0),
    timed_out: AtomicU64::new(0),
};

/// Counts a connection open while it lives.
#[derive(Debug)]
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        COUNTERS.open.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        COUNTERS.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gateway's connection limits (flags and environment variables).
#[derive(Debug, Clone, Args)]
pub struct ConnectionLimits {
    /// Open client connections at most; a new one above it is closed at once (lowered to fit the
    /// file-descriptor limit).
    #[arg(
        long = "max-connections",
        env = "PROTOMESH_GATEWAY_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_connections: usize,
    /// Time a new connection has to send its first complete request head.
    #[arg(long = "request-head-timeout", env = "PROTOMESH_GATEWAY_REQUEST_HEAD_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_head_timeout: Duration,
    /// Time a keep-alive connection may stay idle (no request in flight) before it is closed.
    #[arg(long = "idle-timeout", env = "PROTOMESH_GATEWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Time a request body has to arrive whole (408 after it).
    #[arg(long = "body-timeout", env = "PROTOMESH_GATEWAY_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Longest request URI (path and query), in bytes; longer ones get 414.
    #[arg(
        long = "max-uri-length",
        env = "PROTOMESH_GATEWAY_MAX_URI_LENGTH",
        default_value_t = 8192
    )]
    pub max_uri_length: usize,
    /// HTTP/2: concurrent streams per connection.
    #[arg(
        long = "h2-max-concurrent-streams",
        env = "PROTOMESH_GATEWAY_H2_MAX_CONCURRENT_STREAMS",
        default_value_t = 200
    )]
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: largest request header list, in bytes.
    #[arg(
        long = "h2-max-header-list-size",
        env = "PROTOMESH_GATEWAY_H2_MAX_HEADER_LIST_SIZE",
        default_value_t = 16 * 1024
    )]
    pub h2_max_header_list_size: u32,
    /// HTTP/2: interval of keep-alive pings (a peer that does not answer one within 20 s is
    /// dropped).
    #[arg(long = "h2-keep-alive-interval", env = "PROTOMESH_GATEWAY_H2_KEEP_ALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub h2_keep_alive_interval: Duration,
}

impl Default for ConnectionLimits {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            request_head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_uri_length: 8192,
            h2_max_concurrent_streams: 200,
            h2_max_header_list_size: 16 * 1024,
            h2_keep_alive_interval: Duration::from_secs(30),
        }
    }
}

/// Raises the soft file-descriptor limit to the hard one, and returns how many client
/// connections fit under it (`wanted` or fewer).
fn fit_to_descriptor_limit(wanted: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let room = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            wanted,
            allowed = room,
            descriptor_limit = soft,
            "gateway: --max-connections lowered to fit the file-descriptor limit"
        );
    }
    wanted.min(room).max(1)
}

/// Serves `app` on `listener` (HTTP/1.1 and h2c) under `limits` until `shutdown` completes, then
/// lets open connections finish (at most `drain`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let limits = Arc::new(ConnectionLimits {
        max_connections: fit_to_descriptor_limit(limits.max_connections).min(u32::MAX as usize),
        ..limits.clone()
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().max_buf_size(read_buffer_bound(&limits));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list_size)
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(Duration::from_secs(20));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors, say: wait a little instead of spinning.
                        tracing::warn!(error = %err, "gateway: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    // Over the cap: closed at once, so the connections already open are served.
                    refused += 1;
                    COUNTERS.refused.fetch_add(1, Ordering::Relaxed);
                    if refused.is_power_of_two() {
                        tracing::warn!(refused, max = limits.max_connections, "gateway: connection refused, at the open-connection cap");
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let activity = Arc::new(Activity::new());
                // The peer address, for the edge policies (`x-protomesh-client-ip`, rate limits).
                let with_peer = tower::Layer::layer(&axum::Extension(ConnectInfo(peer)), app.clone());
                let hold = Arc::new(ConnectionHold {
                    _slot: slot,
                    _open: OpenConnection::new(),
                    stopping: stopping.clone(),
                });
                let service = hyper_util::service::TowerToHyperService::new(RequestLimits {
                    inner: with_peer,
                    activity: Arc::clone(&activity),
                    max_uri_length: limits.max_uri_length,
                    hold: Arc::clone(&hold),
                });
                let connection = builder
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                    .into_owned();
                tokio::spawn(watch_connection(
                    connection,
                    |connection| connection.graceful_shutdown(),
                    activity,
                    Arc::clone(&limits),
                    stopping.clone(),
                    hold,
                ));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it ends: all slots back means all connections ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "gateway: connections still open after the drain time; closing"
        );
    }
}

/// A connection's place under the cap and in the open-connection count, and the server's shutdown
/// signal: held by the connection's task and handed to every request (in its extensions), so a
/// WebSocket, which outlives the HTTP connection it was upgraded from, keeps the place until it
/// closes, and closes when the server shuts down.
#[derive(Debug)]
pub(crate) struct ConnectionHold {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _open: OpenConnection,
    stopping: watch::Receiver<bool>,
}

impl ConnectionHold {
    /// Becomes `true` when the server shuts down.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.clone()
    }
}

/// Drives one connection to its end, closing it when it stays too long without a request in
/// flight (no first head yet: the request-head timeout; after a response: the idle timeout) or
/// when the server shuts down (`shut_down`: HTTP/1 closes after the response in flight, at once
/// when idle; HTTP/2 sends GOAWAY). `_hold` is its place under the connection cap, shared with a
/// WebSocket upgraded from it.
async fn watch_connection<C>(
    connection: C,
    shut_down: impl Fn(Pin<&mut C>),
    activity: Arc<Activity>,
    limits: Arc<ConnectionLimits>,
    mut stopping: watch::Receiver<bool>,
    _hold: Arc<ConnectionHold>,
) where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    tokio::pin!(connection);
    // When the connection, asked to close, is dropped if it has not closed by itself.
    let mut drop_at: Option<Instant> = None;
    let mut shutting_down = false;
    loop {
        let wake_at = drop_at.or_else(|| activity.expires_at(&limits));
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!(error = %err, "gateway: connection ended with an error");
                }
                return;
            }
            changed = stopping.changed(), if drop_at.is_none() && !shutting_down => {
                // Shutting down (or `serve` gone): finish what is in flight; `serve` bounds the
                // wait. Either way this branch is done, so it cannot spin.
                shutting_down = true;
                if changed.is_ok() {
                    shut_down(connection.as_mut());
                }
            }
            () = activity.changed.notified() => {}
            () = sleep_until_or_forever(wake_at) => {
                if drop_at.is_some() {
                    return;
                }
                if activity.expires_at(&limits).is_some_and(|at| at <= Instant::now()) {
                    COUNTERS.timed_out.fetch_add(1, Ordering::Relaxed);
                    if !activity.served.load(Ordering::Acquire) {
                        // No complete head yet: nothing to finish or say goodbye to.
                        return;
                    }
                    shut_down(connection.as_mut());
                    drop_at = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing: requests in flight, and since when it has had none.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// At least one request was received (the request-head timeout is over).
    served: AtomicBool,
    /// When the last request in flight ended (the connection's start before any).
    idle_since: Mutex<Instant>,
    /// Woken whenever a request starts or ends.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
        }
    }

    /// When the connection is to be closed if nothing happens; `None` while a request is in
    /// flight.
    fn expires_at(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let timeout = if self.served.load(Ordering::Acquire) {
            limits.idle_timeout
        } else {
            limits.request_head_timeout
        };
        Some(since + timeout)
    }

    /// A request starts; the guard ends it when dropped (with its response body).
    fn begin(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }
}

/// One request in flight on a connection, until its response body is done or dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        *activity
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.changed.notify_one();
    }
}

/// The per-request part of the limits, in front of the app on one connection: counts the request
/// in flight (until its response body ends), refuses long URIs (414) and large headers (431),
/// and marks a response `Connection: close` when the request's body was not read.
#[derive(Clone)]
struct RequestLimits<S> {
    inner: S,
    activity: Arc<Activity>,
    max_uri_length: usize,
    hold: Arc<ConnectionHold>,
}

impl<S> tower::Service<Request<Incoming>> for RequestLimits<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(Arc::clone(&self.hold));
        let in_flight = self.activity.begin();
        let http1 = request.version() <= Version::HTTP_11;
        if let Some(refusal) = refuse_head(&request, self.max_uri_length) {
            let mut response = refusal;
            if http1 {
                close_after(&mut response);
            }
            return Box::pin(async move {
                drop(in_flight);
                Ok(response)
            });
        }
        let has_body = request_has_body(&request);
        let body_read = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            Body::new(ReadToEnd {
                inner: body,
                read: Arc::clone(&body_read),
            })
        });
        let call = self.inner.call(request);
        Box::pin(async move {
            let Ok(mut response) = call.await;
            if http1 && has_body && !body_read.load(Ordering::Acquire) {
                // hyper closes a connection whose request body was left unread: say so.
                close_after(&mut response);
            }
            Ok(response.map(|body| {
                Body::new(InFlightBody {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// 414 for a URI over the limit, 431 for headers over [`MAX_REQUEST_HEAD`].
fn refuse_head<B>(request: &Request<B>, max_uri_length: usize) -> Option<Response> {
    let uri_length = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_length > max_uri_length {
        return Some(
            (
                StatusCode::URI_TOO_LONG,
                format!("request URI of {uri_length} bytes, longer than the limit of {max_uri_length}\n"),
            )
                .into_response(),
        );
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_REQUEST_HEAD {
        return Some(
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request headers of {header_bytes} bytes, larger than the limit of {MAX_REQUEST_HEAD}\n"),
            )
                .into_response(),
        );
    }
    None
}

/// Whether the request says a body follows (a non-zero `Content-Length`, or chunked).
fn request_has_body<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn close_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

pin_project_lite::pin_project! {
    /// A request body that notes when it has been read to its end.
    struct ReadToEnd {
        #[pin]
        inner: Incoming,
        read: Arc<AtomicBool>,
    }
}

impl HttpBody for ReadToEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let ended = self.inner.is_end_stream();
        if ended {
            self.read.store(true, Ordering::Release);
        }
        ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until it ends.
    struct InFlightBody {
        #[pin]
        inner: Body,
        _in_flight: InFlight,
    }
}

impl HttpBody for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: ConnectionLimits,
    }

    #[test]
    fn the_flags_defaults_are_the_default_limits() {
        let parsed = Cli::try_parse_from(["gateway"]).unwrap().limits;
        let default = ConnectionLimits::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn long_uris_get_414_and_large_headers_431() {
        let long = Request::get(format!("/v1/x?q={}", "a".repeat(9000)))
            .body(())
            .unwrap();
        assert_eq!(
            refuse_head(&long, 8192).unwrap().status(),
            StatusCode::URI_TOO_LONG
        );
        let big = Request::get("/v1/x")
            .header("x-big", "b".repeat(MAX_REQUEST_HEAD))
            .body(())
            .unwrap();
        assert_eq!(
            refuse_head(&big, 8192).unwrap().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let fine = Request::get("/v1/x").header("x-a", "b").body(()).unwrap();
        assert!(refuse_head(&fine, 8192).is_none());
    }

    #[test]
    fn a_body_is_announced_by_length_or_chunking() {
        let with =
            |name: &str, value: &str| Request::post("/").header(name, value).body(()).unwrap();
        assert!(request_has_body(&with("content-length", "12")));
        assert!(!request_has_body(&with("content-length", "0")));
        assert!(request_has_body(&with("transfer-encoding", "chunked")));
        assert!(!request_has_body(&Request::get("/").body(()).unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_expires_after_the_head_timeout_then_the_idle_timeout() {
        let limits = ConnectionLimits {
            request_head_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(7),
            ..ConnectionLimits::default()
        };
        let activity = Arc::new(Activity::new());
        let start = Instant::now();
        assert_eq!(
            activity.expires_at(&limits),
            Some(start + Duration::from_secs(2))
        );
        let request = activity.begin();
        assert_eq!(activity.expires_at(&limits), None, "busy");
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(request);
        assert_eq!(
            activity.expires_at(&limits),
            Some(start + Duration::from_secs(37))
        );
    }
}
