//! The request rules declared in the proto ([`crate::rules`]) enforced by the runtime, before the
//! handler runs: [`ValidationLayer`] checks the request of each method that has rules (a flat
//! message on its wire bytes, [`MessageRules::passes_on_wire`]; any other, and every refusal,
//! decoded), and answers `INVALID_ARGUMENT` with every violation in one `google.rpc.BadRequest`
//! ([`crate::status::bad_request`]). Calls to methods without rules pass untouched (one map
//! lookup).
//!
//! The request body of a method with rules is read whole first (at most tonic's default limit on
//! a decoded message, 4 MiB, plus the frame header; more is `RESOURCE_EXHAUSTED`), then handed to
//! the handler as it came (a body that came in one piece is not copied). A body that is not
//! exactly one uncompressed gRPC frame holding a message that decodes is `INVALID_ARGUMENT`: what
//! cannot be checked never reaches the handler (tonic would take the first of several messages
//! of a unary call and drop the rest).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::future::Either;
use http_body_util::{BodyExt, Full};
use prost_reflect::DynamicMessage;
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

use crate::rules::{MessageRules, MethodRules};

/// Largest request message read for checking: tonic's default decoding limit.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// A gRPC frame's header: the compressed flag and the length.
const FRAME_HEADER: usize = 5;

/// Server layer: checks each request against its method's rules (module docs).
#[derive(Debug, Clone)]
pub struct ValidationLayer {
    rules: Arc<MethodRules>,
}

impl ValidationLayer {
    /// Checks calls against `rules`.
    pub fn new(rules: MethodRules) -> Self {
        Self {
            rules: Arc::new(rules),
        }
    }
}

impl<S> Layer<S> for ValidationLayer {
    type Service = Validation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Validation {
            inner,
            rules: Arc::clone(&self.rules),
        }
    }
}

/// See [`ValidationLayer`].
#[derive(Debug, Clone)]
pub struct Validation<S> {
    inner: S,
    rules: Arc<MethodRules>,
}

type Checked<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Validation<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Checked<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(rules) = self.rules.of(request.uri().path()).cloned() else {
            return Either::Left(self.inner.call(request));
        };
        // The service that was polled ready handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match read_body(body, MAX_MESSAGE + FRAME_HEADER).await {
                Ok(bytes) => bytes,
                Err(ReadError::TooLarge) => {
                    return Ok(Status::resource_exhausted(format!(
                        "the request message is larger than {MAX_MESSAGE} bytes"
                    ))
                    .into_http());
                }
                Err(ReadError::Body(err)) => {
                    return Ok(Status::cancelled(format!(
                        "the request body could not be read: {}",
                        crate::status::echo(&err.to_string())
                    ))
                    .into_http());
                }
            };
            // Fail closed: what cannot be checked is not handed on. (tonic would take the first
            // of several messages of a unary call and drop the rest unchecked.)
            let Some(message) = sole_frame(&bytes) else {
                return Ok(Status::invalid_argument(
                    "the request must be exactly one uncompressed gRPC message",
                )
                .into_http());
            };
            // A flat message is checked on its bytes; the others, and every refusal (worded by
            // the full check), are decoded first.
            if !rules.passes_on_wire(&message) {
                if let Err(refusal) = decode_and_check(&rules, message) {
                    return Ok(refusal.into_http());
                }
            }
            inner
                .call(http::Request::from_parts(
                    parts,
                    Body::new(Full::new(bytes)),
                ))
                .await
        }))
    }
}

/// Decodes `message` and checks it against `rules`: the refusal to answer, if any.
fn decode_and_check(rules: &MessageRules, message: Bytes) -> Result<(), Status> {
    let decoded = DynamicMessage::decode(rules.descriptor().clone(), message).map_err(|err| {
        Status::invalid_argument(format!(
            "the request message cannot be decoded: {}",
            crate::status::echo(&err.to_string())
        ))
    })?;
    let violations = rules.check(&decoded);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(crate::status::bad_request(violations))
    }
}

/// Why a request body could not be read.
enum ReadError {
    /// It holds more than the limit.
    TooLarge,
    /// The stream failed (the caller went away, say).
    Body(tonic::Status),
}

/// The whole of `body`, at most `limit` bytes: the one data frame as it came (no copy) when it
/// came in one, as a unary request usually does.
async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(ReadError::Body)?.into_data() else {
            continue;
        };
        let total = first.as_ref().map_or(0, Bytes::len)
            + joined.as_ref().map_or(0, BytesMut::len)
            + data.len();
        if total > limit {
            return Err(ReadError::TooLarge);
        }
        match (&mut joined, first.take()) {
            (Some(buffer), _) => buffer.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut buffer = BytesMut::with_capacity(total);
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
    }
    Ok(match joined {
        Some(buffer) => buffer.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// The message of a body that is exactly one uncompressed gRPC frame.
fn sole_frame(body: &Bytes) -> Option<Bytes> {
    let mut header = body.get(..FRAME_HEADER)?;
    let compressed = header.get_u8();
    let length = usize::try_from(header.get_u32()).ok()?;
    (compressed == 0 && body.len() == FRAME_HEADER + length).then(|| body.slice(FRAME_HEADER..))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tonic-like service named `t.Bad` that answers every call with an empty 200.
    #[derive(Clone)]
    struct Bad;

    impl tonic::server::NamedService for Bad {
        const NAME: &'static str = "t.Bad";
    }

    impl Service<http::Request<Body>> for Bad {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, std::convert::Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Body::empty())))
        }
    }

    #[tokio::test]
    async fn a_rule_the_runtime_cannot_enforce_stops_the_start_naming_it() {
        let dir = std::env::temp_dir().join(format!("protomesh-bad-rule-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("bad.proto"),
            r#"syntax = "proto3";
package t;
import "buf/validate/validate.proto";
service Bad { rpc Call(Req) returns (Req); }
message Req { string a = 1 [(buf.validate.field).string.contains = "x"]; }
"#,
        )
        .unwrap();
        let mut compiler =
            protox::Compiler::new([dir.as_path(), std::path::Path::new("proto")]).unwrap();
        compiler.include_imports(true);
        compiler.open_file("bad.proto").unwrap();
        let set: &'static [u8] =
            Box::leak(compiler.encode_file_descriptor_set().into_boxed_slice());
        let _ = std::fs::remove_dir_all(&dir);

        let server =
            crate::server::MeshServer::new("bad", crate::server::testing::quick_config(None))
                .descriptor_set(set)
                .add_service(Bad);
        let bound = server.bind().await.unwrap();
        let err = bound
            .run_until(std::future::pending())
            .await
            .expect_err("a rule it cannot enforce");
        assert!(
            matches!(err, crate::server::ServeError::Rules(_)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "unsupported request rule: t.Req.a: rule `string.contains` is not supported"
        );
    }

    #[tokio::test]
    async fn bodies_are_read_whole_and_bounded() {
        let chunks = |parts: &[&'static [u8]]| {
            let frames: Vec<Result<http_body::Frame<Bytes>, tonic::Status>> = parts
                .iter()
                .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p))))
                .collect();
            Body::new(http_body_util::StreamBody::new(futures::stream::iter(
                frames,
            )))
        };
        let read = |body| async move { read_body(body, 6).await.ok() };
        assert_eq!(
            read(chunks(&[b"abc"])).await,
            Some(Bytes::from_static(b"abc"))
        );
        assert_eq!(
            read(chunks(&[b"ab", b"", b"cd", b"ef"])).await,
            Some(Bytes::from_static(b"abcdef"))
        );
        assert_eq!(read(chunks(&[])).await, Some(Bytes::new()));
        assert!(matches!(
            read_body(chunks(&[b"abcd", b"efg"]), 6).await,
            Err(ReadError::TooLarge)
        ));
    }

    #[test]
    fn only_one_whole_uncompressed_frame_is_checked() {
        let frame = |flag: u8, len: u32, payload: &[u8]| {
            let mut body = vec![flag];
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(payload);
            Bytes::from(body)
        };
        assert_eq!(
            sole_frame(&frame(0, 3, b"abc")),
            Some(Bytes::from_static(b"abc"))
        );
        assert_eq!(sole_frame(&frame(0, 0, b"")), Some(Bytes::new()));
        assert_eq!(sole_frame(&frame(1, 3, b"abc")), None);
        assert_eq!(sole_frame(&frame(0, 4, b"abc")), None);
        assert_eq!(sole_frame(&frame(0, 2, b"abc")), None);
        assert_eq!(sole_frame(&Bytes::from_static(b"\0\0")), None);
    }

    /// A `Score` call through the layer with `body`; the answer's gRPC status code.
    async fn score_through_layer(body: Bytes) -> tonic::Code {
        let rules = MethodRules::from_descriptor_sets(
            crate::test_protos::SETS,
            &["protomesh.priority.v1.PriorityService"],
        )
        .unwrap();
        let mut service = ValidationLayer::new(rules).layer(Bad);
        let request = http::Request::post("/protomesh.priority.v1.PriorityService/Score")
            .body(Body::new(Full::new(body)))
            .unwrap();
        let response = service.call(request).await.unwrap();
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map_or(tonic::Code::Ok, tonic::Code::from)
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut body = vec![0];
        body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        body.extend_from_slice(message);
        body
    }

    #[tokio::test]
    async fn what_cannot_be_checked_never_reaches_the_handler() {
        use prost::Message;
        let request = |urgency| protomesh_priority::proto::protomesh::priority::v1::ScoreRequest {
            title: "ship it".to_owned(),
            urgency,
            impact: 5,
        };
        let good = framed(&request(5).encode_to_vec());
        let bad = framed(&request(11).encode_to_vec());
        assert_eq!(
            score_through_layer(Bytes::from(good.clone())).await,
            tonic::Code::Ok
        );
        assert_eq!(
            score_through_layer(Bytes::from(bad.clone())).await,
            tonic::Code::InvalidArgument
        );
        // A bad message followed by another frame: refused, not handed on unchecked.
        let mut two = bad.clone();
        two.extend_from_slice(&framed(b""));
        assert_eq!(
            score_through_layer(Bytes::from(two)).await,
            tonic::Code::InvalidArgument
        );
        let mut two = good;
        two.extend_from_slice(&bad);
        assert_eq!(
            score_through_layer(Bytes::from(two)).await,
            tonic::Code::InvalidArgument
        );
        // Compressed, or not a message of that type at all.
        let mut compressed = bad;
        compressed[0] = 1;
        assert_eq!(
            score_through_layer(Bytes::from(compressed)).await,
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            score_through_layer(Bytes::from(framed(&[0xff, 0xff, 0xff]))).await,
            tonic::Code::InvalidArgument
        );
    }
}
