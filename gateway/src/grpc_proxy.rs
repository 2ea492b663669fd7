//! Native gRPC through the gateway, so that one address serves grpcurl and gRPC clients too.
//!
//! A request whose `content-type` is `application/grpc` (or `application/grpc+…`; see
//! [`is_grpc`]) is not transcoded: [`forward`] reads the gRPC service from its path
//! (`/pkg.Service/Method`), finds the Consul service serving it in
//! [`GatewayState::grpc_services`], and sends the request as it came — headers (`grpc-timeout`,
//! metadata) and a streaming body — through the mesh client's channel to that service. The
//! answer goes back as it came too: headers, streaming body, trailers. Nothing is buffered, so
//! unary, client-, server- and bidirectional-streaming calls all work, and a caller that goes
//! away cancels the upstream call. What the mesh client adds applies: discovery, balancing,
//! the service's circuit breaker, retries of unary calls to methods the gateway knows to be
//! safe, and a deadline (the caller's `grpc-timeout`, or the mesh channel's 10 s default,
//! which bounds the wait for the answer's headers).
//!
//! The gateway answers server reflection itself ([`REFLECTION_SERVICES`], v1 and v1alpha): one
//! combined view of every service of the mesh, built from the descriptors discovery fetched
//! (each file once, with its options such as `google.api.http` kept), so that
//! `grpcurl -plaintext GATEWAY list` lists them all and grpcurl can call any of them. The
//! reflection service is built once per set of descriptors and kept in a [`ReflectionCache`].
//!
//! Every answer's `grpc-message` is capped at [`MAX_GRPC_MESSAGE`] bytes, as the services'
//! runtime caps theirs ([`protomesh::server::message_limit`]), and the client input a message
//! quotes is shortened ([`protomesh::status::echo`]).
//!
//! Errors are gRPC answers, never HTTP errors: trailers-only responses (HTTP 200, `grpc-status`
//! and a percent-encoded `grpc-message` in the headers), made by [`status_response`]. An unknown
//! service is `UNIMPLEMENTED` naming it; a service without a reachable instance, or an open
//! circuit breaker, is the mesh client's status (`UNAVAILABLE`); a connection failure is
//! `UNAVAILABLE` naming the Consul service.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use protomesh::client::{BoxError, Mesh};
use protomesh::server::message_limit::{limit_response, MAX_GRPC_MESSAGE};
use protomesh::status::echo;
use tonic::service::Routes;
use tonic::Status;
use tower::ServiceExt;

use crate::discovery::GatewayState;
use crate::reflection::ServiceDescriptors;

/// The server reflection services the gateway answers itself (never forwarded).
pub const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Request headers that describe one hop of the connection and are not forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Whether a request is native gRPC, by its `content-type`: `application/grpc`, optionally
/// followed by `+codec` or parameters. gRPC-Web (`application/grpc-web…`) is not.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

/// The gRPC service of a method path: `pkg.Service` for `/pkg.Service/Method`; `None` when the
/// path is not of that form.
pub fn grpc_service_of(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

/// A trailers-only gRPC answer carrying `status`: HTTP 200, `content-type: application/grpc`,
/// `grpc-status`, and `grpc-message` percent-encoded as the gRPC spec asks (plus the status's
/// details and metadata, if any).
pub fn status_response(status: &Status) -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if status.add_header(headers).is_err() {
        // Only metadata with bytes no header may carry can fail; answer with the code alone.
        headers.insert(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(status.code() as i32),
        );
    }
    protomesh::server::message_limit::cap_grpc_message(headers, MAX_GRPC_MESSAGE);
    response
}

/// Why the combined reflection service could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the gateway's server reflection: {0}")]
pub struct ReflectionBuildError(#[from] tonic_reflection::server::Error);

/// The reflection services (v1 and v1alpha) over every service of `state`: each file of every
/// service's descriptor pool once (the first pool to have a file name wins), listing every gRPC
/// service of [`GatewayState::grpc_services`] whose descriptor is known, sorted, then the two
/// reflection services. Serve the returned routes, or call them as a tower service.
pub fn reflection_routes(state: &GatewayState) -> Result<Routes, ReflectionBuildError> {
    let (files, listed) = combined_files(state);
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(&files)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for name in listed.iter().map(String::as_str).chain(REFLECTION_SERVICES) {
            builder = builder.with_service_name(name);
        }
        builder
    };
    Ok(Routes::new(builder().build_v1()?).add_service(builder().build_v1alpha()?))
}

/// The encoded `FileDescriptorSet` of every file of every pool of `state` (each name once, as
/// the pool encodes it, so options are kept), and the gRPC services to list.
fn combined_files(state: &GatewayState) -> (Vec<u8>, BTreeSet<String>) {
    let mut seen = HashSet::new();
    let mut set = Vec::new();
    for pool in state.pools() {
        for file in pool.files() {
            if seen.insert(file.name().to_owned()) {
                // `FileDescriptorSet.file` is field 1.
                prost::encoding::bytes::encode(1, &file.encode_to_vec(), &mut set);
            }
        }
    }
    let listed = state
        .grpc_services
        .keys()
        .filter(|name| state.pools().any(|p| p.get_service_by_name(name).is_some()))
        .cloned()
        .collect();
    (set, listed)
}

/// What a built reflection service was built from: the descriptors (held, so that their
/// addresses cannot be reused by others while the entry lives) and the gRPC service names.
struct CacheKey {
    services: Vec<(String, Arc<ServiceDescriptors>)>,
    grpc: BTreeSet<String>,
}

impl CacheKey {
    fn of(state: &GatewayState) -> Self {
        Self {
            services: state
                .services
                .iter()
                .map(|(name, descriptors)| (name.clone(), Arc::clone(descriptors)))
                .collect(),
            grpc: state.grpc_services.keys().cloned().collect(),
        }
    }

    fn matches(&self, state: &GatewayState) -> bool {
        self.services.len() == state.services.len()
            && self
                .services
                .iter()
                .zip(&state.services)
                .all(|((name, held), (other, current))| name == other && Arc::ptr_eq(held, current))
            && self.grpc.len() == state.grpc_services.len()
            && state.grpc_services.keys().all(|k| self.grpc.contains(k))
    }
}

/// The last reflection service built, and what it was built from. States that share their
/// descriptors (the same `Arc<ServiceDescriptors>` values and gRPC service names) share the
/// build; any other state builds anew and replaces it.
#[derive(Default)]
pub struct ReflectionCache {
    entry: Mutex<Option<(CacheKey, Routes)>>,
}

impl std::fmt::Debug for ReflectionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services = match self.entry.lock() {
            Ok(entry) => entry.as_ref().map(|(key, _)| key.grpc.len()),
            Err(poisoned) => poisoned.get_ref().as_ref().map(|(key, _)| key.grpc.len()),
        };
        f.debug_struct("ReflectionCache")
            .field("grpc_services", &services)
            .finish()
    }
}

impl ReflectionCache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            entry: Mutex::new(None),
        }
    }

    /// The cache [`forward`] uses, shared by the whole process.
    pub fn global() -> &'static ReflectionCache {
        static GLOBAL: ReflectionCache = ReflectionCache::new();
        &GLOBAL
    }

    /// The reflection routes of `state` ([`reflection_routes`]), built at the first call for its
    /// descriptors and cloned from the cache afterwards.
    pub fn get(&self, state: &GatewayState) -> Result<Routes, ReflectionBuildError> {
        let mut entry = match self.entry.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((key, routes)) = entry.as_ref() {
            if key.matches(state) {
                return Ok(routes.clone());
            }
        }
        let routes = reflection_routes(state)?;
        *entry = Some((CacheKey::of(state), routes.clone()));
        Ok(routes)
    }
}

/// Forwards one native gRPC call by its path, answering reflection from the process-wide
/// [`ReflectionCache::global`]. See [`forward_with`].
pub async fn forward(mesh: &Mesh, state: &GatewayState, request: http::Request<Body>) -> Response {
    forward_with(mesh, state, ReflectionCache::global(), request).await
}

/// Forwards one native gRPC call: reflection is answered from `reflection` (built over
/// `state`); a call to a service of [`GatewayState::grpc_services`] goes as it is through
/// `mesh.channel(consul_name)`, and its answer comes back as it is (headers, streaming body,
/// trailers). Every failure is a trailers-only gRPC answer ([`status_response`]): an unknown
/// service or a malformed path is `UNIMPLEMENTED`, a mesh failure is its status, a transport
/// failure `UNAVAILABLE`. The caller checks [`is_grpc`] first.
pub async fn forward_with(
    mesh: &Mesh,
    state: &GatewayState,
    reflection: &ReflectionCache,
    request: http::Request<Body>,
) -> Response {
    let path = request.uri().path();
    let Some(service) = grpc_service_of(path) else {
        return status_response(&Status::unimplemented(format!(
            "malformed method name: {:?}",
            echo(path)
        )));
    };
    if REFLECTION_SERVICES.contains(&service) {
        return reflect(state, reflection, request).await;
    }
    let Some(consul) = state.grpc_services.get(service) else {
        tracing::debug!(%service, "gateway: native gRPC call to an unknown service");
        return status_response(&Status::unimplemented(format!(
            "unknown service {}: no service in the mesh serves it",
            echo(service)
        )));
    };

    let (parts, body) = request.into_parts();
    let body = MessageSizeLimit::new(body, MAX_FORWARDED_MESSAGE);
    let refused = Arc::clone(&body.refused);
    let mut upstream = http::Request::new(tonic::body::Body::new(body));
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = parts.uri;
    *upstream.version_mut() = http::Version::HTTP_2;
    *upstream.headers_mut() = forwarded_headers(parts.headers);

    let answer = mesh.channel(consul).oneshot(upstream).await;
    // A message over the limit ended the call (the upstream stream was reset): say why.
    if let Some(status) = refused.get() {
        return status_response(status);
    }
    match answer {
        // The service's own runtime caps its messages; a service on another runtime may not.
        Ok(response) => limit_response(response, MAX_GRPC_MESSAGE).map(Body::new),
        Err(err) => {
            let status = mesh_status(consul, err);
            tracing::debug!(%consul, %status, "gateway: native gRPC call failed");
            status_response(&status)
        }
    }
}

/// Largest request message forwarded: tonic's default decoding limit, which the services' runtime
/// keeps. A frame that announces more is refused as soon as its 5-byte header arrives (the
/// mesh client may otherwise wait for the whole of it, to be able to retry the call).
pub const MAX_FORWARDED_MESSAGE: usize = 4 * 1024 * 1024;

pin_project_lite::pin_project! {
    /// A gRPC request body passed through as it is, failing with `RESOURCE_EXHAUSTED` as soon as a
    /// frame header announces a message over the limit.
    struct MessageSizeLimit {
        #[pin]
        inner: Body,
        limit: usize,
        frames: FrameReader,
        // Why the body was refused, for the answer.
        refused: Arc<std::sync::OnceLock<Status>>,
    }
}

impl MessageSizeLimit {
    fn new(inner: Body, limit: usize) -> Self {
        Self {
            inner,
            limit,
            frames: FrameReader::default(),
            refused: Arc::default(),
        }
    }
}

impl http_body::Body for MessageSizeLimit {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        std::task::Poll::Ready(polled.map(|frame| {
            let frame = frame.map_err(|err| Status::cancelled(format!("request body: {err}")))?;
            if let Some(data) = frame.data_ref() {
                if let Some(announced) = this.frames.read(data) {
                    if announced > *this.limit as u64 {
                        let status = Status::resource_exhausted(format!(
                            "request message of {announced} bytes is larger than the limit of {} bytes",
                            this.limit
                        ));
                        let _ = this.refused.set(status.clone());
                        return Err(status);
                    }
                }
            }
            Ok(frame)
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Follows the gRPC framing of a body (1 flag byte, 4 length bytes, the message) across chunks.
#[derive(Debug, Default)]
struct FrameReader {
    header: [u8; 5],
    header_len: usize,
    payload_left: u64,
}

impl FrameReader {
    /// Reads one chunk; returns the largest message length announced by a header completed in it.
    fn read(&mut self, mut chunk: &[u8]) -> Option<u64> {
        let mut largest = None;
        while !chunk.is_empty() {
            if self.payload_left > 0 {
                let take = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.payload_left -= take as u64;
                chunk = &chunk[take..];
                continue;
            }
            let take = (5 - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[..take]);
            self.header_len += take;
            chunk = &chunk[take..];
            if self.header_len == 5 {
                let length = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                largest = largest.max(Some(length));
                self.payload_left = length;
                self.header_len = 0;
            }
        }
        largest
    }
}

/// The caller's headers without those of its connection (`te` only as `trailers`).
fn forwarded_headers(mut headers: HeaderMap) -> HeaderMap {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers
}

/// A mesh channel's error as a status: the status it carries (no instance, open breaker,
/// deadline), what tonic makes of a transport error, or `UNAVAILABLE` naming the service.
fn mesh_status(consul: &str, err: BoxError) -> Status {
    match Status::try_from_error(err) {
        Ok(status) => status,
        Err(err) => Status::unavailable(format!("cannot reach service \"{consul}\": {err}")),
    }
}

/// Answers a reflection call with the combined reflection service.
async fn reflect(
    state: &GatewayState,
    reflection: &ReflectionCache,
    request: http::Request<Body>,
) -> Response {
    let routes = match reflection.get(state) {
        Ok(routes) => routes,
        Err(err) => {
            tracing::warn!(error = %err, "gateway: server reflection unavailable");
            return status_response(&Status::internal(err.to_string()));
        }
    };
    match routes.oneshot(request).await {
        // Reflection's NOT_FOUND repeats the symbol asked for, whatever its length.
        Ok(response) => limit_response(response, MAX_GRPC_MESSAGE).map(Body::new),
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use prost::Message;
    use prost_reflect::DescriptorPool;
    use protomesh_consul::{ConsulClient, ConsulConfig};

    use super::*;
    use crate::reflection::{DescriptorSource, ReflectionVersion};

    const PRIORITY: &str = "protomesh.priority.v1.PriorityService";

    #[test]
    fn frames_are_followed_across_chunks() {
        let mut frames = FrameReader::default();
        // A 3-byte message, then a header split over two chunks announcing 4 GiB - 1.
        assert_eq!(frames.read(&[0, 0, 0, 0, 3, b'a', b'b']), Some(3));
        assert_eq!(frames.read(&[b'c', 0, 0xff]), None);
        assert_eq!(frames.read(&[0xff, 0xff, 0xff]), Some(u64::from(u32::MAX)));
        // Inside that message's payload: no header is read.
        assert_eq!(frames.read(&[0, 0, 0, 0, 9]), None);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_as_soon_as_its_header_arrives() {
        use futures::StreamExt;
        use http_body_util::BodyExt;
        // A frame header announcing 256 MiB, and a stream that stays open: the refusal must not
        // wait for the rest.
        let chunks =
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(&[
                0, 0x10, 0, 0, 0,
            ]))])
            .chain(futures::stream::pending());
        let mut limited = MessageSizeLimit::new(Body::from_stream(chunks), 1024);
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), limited.frame())
            .await
            .expect("refused at once")
            .unwrap();
        let status = frame.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("268435456"),
            "{}",
            status.message()
        );
    }

    fn priority_descriptors() -> Arc<ServiceDescriptors> {
        Arc::new(ServiceDescriptors {
            services: vec![PRIORITY.to_owned()],
            pool: crate::test_protos::pool(),
            source: DescriptorSource::Reflection(ReflectionVersion::V1),
        })
    }

    fn state_with(services: &[(&str, Arc<ServiceDescriptors>)]) -> GatewayState {
        let mut grpc_services = HashMap::new();
        for (name, descriptors) in services {
            for grpc in &descriptors.services {
                grpc_services
                    .entry(grpc.clone())
                    .or_insert_with(|| (*name).to_owned());
            }
        }
        GatewayState {
            services: services
                .iter()
                .map(|(name, d)| ((*name).to_owned(), Arc::clone(d)))
                .collect::<BTreeMap<_, _>>(),
            grpc_services,
            ready: true,
            ..GatewayState::default()
        }
    }

    /// A mesh whose Consul is never reached (no channel is made in these tests).
    fn mesh() -> Mesh {
        let consul = ConsulClient::new(ConsulConfig::new("127.0.0.1:1").unwrap()).unwrap();
        Mesh::from_consul(consul, &[]).unwrap()
    }

    fn grpc_request(path: &str) -> http::Request<Body> {
        http::Request::builder()
            .method(http::Method::POST)
            .uri(path)
            .version(http::Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn grpc_content_types_are_recognised_and_grpc_web_is_not() {
        let with = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc(&headers)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("application/grpc;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/grpc-web+proto"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn the_service_is_read_from_the_method_path() {
        assert_eq!(
            grpc_service_of("/protomesh.priority.v1.PriorityService/Score"),
            Some(PRIORITY)
        );
        assert_eq!(grpc_service_of("/Bare/Method"), Some("Bare"));
        for bad in ["", "/", "/pkg.S", "/pkg.S/", "//M", "pkg.S/M", "/pkg.S/M/x"] {
            assert_eq!(grpc_service_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn status_responses_are_trailers_only_with_a_percent_encoded_message() {
        let response = status_response(&Status::unimplemented("unknown service a.B: 100% ünknown"));
        assert_eq!(response.status(), http::StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "12");
        // tonic encodes spaces too, which the spec allows (receivers decode any `%XX`).
        assert_eq!(
            headers["grpc-message"],
            "unknown%20service%20a.B:%20100%25%20%C3%BCnknown"
        );
        let status = Status::from_header_map(headers).unwrap();
        assert_eq!(status.message(), "unknown service a.B: 100% ünknown");
    }

    #[tokio::test]
    async fn an_unknown_service_is_unimplemented_naming_it() {
        let state = state_with(&[("priority", priority_descriptors())]);
        let response = forward_with(
            &mesh(),
            &state,
            &ReflectionCache::new(),
            grpc_request("/acme.Nope/Call"),
        )
        .await;
        assert_eq!(response.status(), http::StatusCode::OK);
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("acme.Nope"), "{status:?}");

        let response = forward_with(
            &mesh(),
            &state,
            &ReflectionCache::new(),
            grpc_request("/not-a-method"),
        )
        .await;
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("malformed"), "{status:?}");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_metadata_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("host", HeaderValue::from_static("gateway:8080"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("grpc-timeout", HeaderValue::from_static("5S"));
        headers.insert("x-custom", HeaderValue::from_static("kept"));
        let forwarded = forwarded_headers(headers);
        assert!(forwarded.get("connection").is_none());
        assert!(forwarded.get("host").is_none());
        assert_eq!(forwarded["te"], "trailers");
        assert_eq!(forwarded["grpc-timeout"], "5S");
        assert_eq!(forwarded["x-custom"], "kept");
    }

    #[test]
    fn combined_files_hold_each_file_once_with_its_options() {
        // Two services with the same descriptors: every file appears once.
        let descriptors = priority_descriptors();
        let state = state_with(&[
            ("priority", Arc::clone(&descriptors)),
            ("priority-copy", Arc::clone(&descriptors)),
        ]);
        let (encoded, listed) = combined_files(&state);
        let set = prost_types::FileDescriptorSet::decode(encoded.as_slice()).unwrap();
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len(), "{names:?}");
        assert_eq!(names.len(), descriptors.pool.files().count());
        assert_eq!(listed.into_iter().collect::<Vec<_>>(), vec![PRIORITY]);

        // `google.api.http` survives: the transcoding routes can be rebuilt from the set.
        let pool = DescriptorPool::decode(encoded.as_slice()).unwrap();
        let score = pool
            .get_service_by_name(PRIORITY)
            .and_then(|s| s.methods().find(|m| m.name() == "Score"))
            .unwrap();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        assert!(score.options().has_extension(&http));
    }

    #[test]
    fn reflection_is_built_once_per_set_of_descriptors() {
        let cache = ReflectionCache::new();
        let descriptors = priority_descriptors();
        let first = state_with(&[("priority", Arc::clone(&descriptors))]);
        cache.get(&first).unwrap();
        let key = |cache: &ReflectionCache| {
            cache
                .entry
                .lock()
                .unwrap()
                .as_ref()
                .map(|(k, _)| (k.services.len(), k.grpc.len()))
        };
        assert_eq!(key(&cache), Some((1, 1)));

        // Another state over the same descriptors matches; new descriptors or names do not.
        let same = state_with(&[("priority", Arc::clone(&descriptors))]);
        let guard = cache.entry.lock().unwrap();
        let (held, _) = guard.as_ref().unwrap();
        assert!(held.matches(&same));
        assert!(!held.matches(&state_with(&[("priority", priority_descriptors())])));
        assert!(!held.matches(&state_with(&[("other", Arc::clone(&descriptors))])));
        assert!(!held.matches(&GatewayState::default()));
        let mut renamed = state_with(&[("priority", Arc::clone(&descriptors))]);
        renamed
            .grpc_services
            .insert("acme.Extra".to_owned(), "priority".to_owned());
        assert!(!held.matches(&renamed));
        drop(guard);

        cache.get(&GatewayState::default()).unwrap();
        assert_eq!(key(&cache), Some((0, 0)));
    }
}
