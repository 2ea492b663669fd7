//! Reading a unary answer whole within its attempt: the balancer does it for calls the retry layer
//! marks ([`super::attempt::Attempts::reads_whole`]: retryable unary methods), while the call is
//! still counted on its endpoint. A connection lost after the answer's headers but before its
//! message (an instance killed in the middle of answering) then fails the attempt — a failure of
//! the endpoint, retried like a connection error — instead of failing the call after it was
//! handed back. Up to [`MAX_REPLAYED_BODY`] of data is read; the rest of a larger answer is
//! handed on as it comes.

use bytes::Bytes;
use http_body_util::BodyExt;

use super::options::{BoxError, MAX_REPLAYED_BODY};

/// The answer with its body read whole (up to [`MAX_REPLAYED_BODY`] of data: past it, what was
/// read and the rest as it comes), to be handed on as it came; a body that fails midway fails the
/// attempt.
pub(crate) async fn read_whole(
    response: http::Response<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, BoxError> {
    use futures::StreamExt;
    let (parts, mut body) = response.into_parts();
    // A unary answer is one message and the trailers (or the trailers alone).
    let mut frames = Vec::with_capacity(2);
    let mut data = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|status| {
            Box::new(BodyFailed(tonic::Status::unavailable(format!(
                "the answer broke off: {}",
                status.message()
            )))) as BoxError
        })?;
        data += frame.data_ref().map_or(0, Bytes::len);
        frames.push(Ok::<_, tonic::Status>(frame));
        if data > MAX_REPLAYED_BODY {
            let rest = http_body_util::BodyStream::new(body);
            let replay = http_body_util::StreamBody::new(futures::stream::iter(frames).chain(rest));
            return Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(replay),
            ));
        }
    }
    let replay = http_body_util::StreamBody::new(futures::stream::iter(frames));
    Ok(http::Response::from_parts(
        parts,
        tonic::body::Body::new(replay),
    ))
}

/// An answer's body that failed after its headers (the connection was lost): a failure of the
/// attempt, retried like a connection error (a bare [`tonic::Status`] would not be); the caller
/// of the last attempt gets its `UNAVAILABLE` (tonic finds it as the error's source).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyFailed(#[source] tonic::Status);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_unary_answer_is_read_whole_and_one_that_breaks_off_is_a_retryable_unavailable() {
        use futures::stream;
        let answer = |frames: Vec<Result<http_body::Frame<Bytes>, tonic::Status>>| {
            http::Response::new(tonic::body::Body::new(http_body_util::StreamBody::new(
                stream::iter(frames),
            )))
        };
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let whole = read_whole(answer(vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))),
            Ok(http_body::Frame::trailers(trailers)),
        ]))
        .await
        .unwrap();
        let collected = whole.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes().as_ref(), b"\0\0\0\0\x01x");

        let broken = read_whole(answer(vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"\0\0"))),
            Err(tonic::Status::unknown("connection reset")),
        ]))
        .await;
        assert!(
            !broken.as_ref().unwrap_err().is::<tonic::Status>(),
            "not a bare status: retried like a connection error"
        );
        let status = tonic::Status::from_error(broken.unwrap_err());
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("connection reset"), "{status:?}");
    }
}
