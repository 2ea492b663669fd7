//! A bound on what a gRPC answer's `grpc-message` may carry: [`MessageLimitLayer`] shortens it,
//! in the response headers (trailers-only answers) and in the trailers of streamed ones, to at
//! most [`MAX_GRPC_MESSAGE`] bytes as sent, so no answer of a service — its own handlers',
//! tonic's, or a library's such as server reflection repeating a 4 MB symbol name — echoes
//! megabytes of what a caller sent. The gateway applies the same cap to what it forwards
//! ([`limit_response`], [`cap_grpc_message`]).
//!
//! The message is percent-encoded (gRPC: bytes outside `0x20..=0x7E`, and `%`, as `%XX` of the
//! UTF-8 text). A long one is decoded, cut on a character boundary, ended with `…` and encoded
//! again, so that what the caller decodes is valid UTF-8 (tonic answers a message that is not
//! with `UNKNOWN`, losing the real code). Messages within the bound pass untouched.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};
use tower::{Layer, Service};

/// Most bytes of a `grpc-message` as sent (percent-encoded): 1 KiB.
pub const MAX_GRPC_MESSAGE: usize = 1024;

/// The header (or trailer) holding a gRPC answer's message (named once: a name given as text
/// is parsed on every lookup).
const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// What gRPC percent-encodes in `grpc-message`: controls, `%` and (as UTF-8 bytes) everything
/// beyond ASCII; `0x7F` is a control.
const GRPC_MESSAGE_ENCODE: &AsciiSet = &CONTROLS.add(b'%');

/// The end of a shortened message.
const ELLIPSIS: char = '…';

/// Caps `grpc-message` in the answers of the service it wraps (see the [module](self)).
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    max: usize,
}

impl MessageLimitLayer {
    /// Caps at `max` bytes as sent (at least room for the `…`).
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl Default for MessageLimitLayer {
    /// Caps at [`MAX_GRPC_MESSAGE`].
    fn default() -> Self {
        Self::new(MAX_GRPC_MESSAGE)
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            max: self.max,
        }
    }
}

/// The service of [`MessageLimitLayer`].
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    max: usize,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MessageLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<LimitedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
            max: self.max,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`MessageLimit`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        max: usize,
    }
}

impl<F, B, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<LimitedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(limit_response(response, *this.max)))
    }
}

/// `response` with its `grpc-message` capped at `max` bytes, in its headers now and in its
/// trailers when they come.
pub fn limit_response<B>(
    mut response: http::Response<B>,
    max: usize,
) -> http::Response<LimitedBody<B>> {
    cap_grpc_message(response.headers_mut(), max);
    response.map(|inner| LimitedBody { inner, max })
}

pin_project_lite::pin_project! {
    /// A response body whose trailers' `grpc-message` is capped (see [`limit_response`]).
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        max: usize,
    }
}

impl<B: Body> Body for LimitedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut polled = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &mut polled {
            if let Some(trailers) = frame.trailers_mut() {
                cap_grpc_message(trailers, *this.max);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Shortens the `grpc-message` of `headers` to at most `max` bytes as sent, if it is longer.
pub fn cap_grpc_message(headers: &mut HeaderMap, max: usize) {
    let Some(value) = headers.get(GRPC_MESSAGE) else {
        return;
    };
    if value.len() <= max {
        return;
    }
    let decoded = percent_decode(value.as_bytes()).decode_utf8_lossy();
    let ellipsis = encoded_len(ELLIPSIS);
    let mut shortened = String::new();
    let mut len = 0;
    for c in decoded.chars() {
        let next = encoded_len(c);
        if len + next + ellipsis > max {
            break;
        }
        shortened.push(c);
        len += next;
    }
    shortened.push(ELLIPSIS);
    let encoded = utf8_percent_encode(&shortened, GRPC_MESSAGE_ENCODE).to_string();
    match HeaderValue::from_str(&encoded) {
        Ok(value) => {
            headers.insert(GRPC_MESSAGE, value);
        }
        // Cannot happen (the encoding leaves visible ASCII only); never send the long one.
        Err(_) => {
            headers.remove(GRPC_MESSAGE);
        }
    }
}

/// Bytes of `c` in a percent-encoded `grpc-message`.
fn encoded_len(c: char) -> usize {
    let mut buf = [0; 4];
    utf8_percent_encode(c.encode_utf8(&mut buf), GRPC_MESSAGE_ENCODE)
        .map(str::len)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tonic::Status;

    fn headers_of(status: &Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).expect("status headers");
        headers
    }

    #[test]
    fn short_messages_pass_untouched() {
        let mut headers = headers_of(&Status::not_found("symbol 'a.B' not found: 100% ü"));
        let before = headers.clone();
        cap_grpc_message(&mut headers, MAX_GRPC_MESSAGE);
        assert_eq!(headers, before);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        for text in ["x".repeat(4 << 20), "ü%".repeat(10_000), "€".repeat(5000)] {
            let mut headers = headers_of(&Status::not_found(format!("symbol '{text}' not found")));
            cap_grpc_message(&mut headers, MAX_GRPC_MESSAGE);
            let sent = headers.get(GRPC_MESSAGE).expect("a message").len();
            assert!(sent <= MAX_GRPC_MESSAGE, "{sent}");
            assert!(sent > MAX_GRPC_MESSAGE - 16, "{sent}");
            let status = Status::from_header_map(&headers).expect("a status");
            assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
            assert!(status.message().starts_with("symbol '"), "{status:?}");
            assert!(status.message().ends_with('…'), "{status:?}");
        }
    }

    #[tokio::test]
    async fn trailers_are_capped_too() {
        let mut trailers = headers_of(&Status::not_found("y".repeat(100_000)));
        trailers.insert("x-other", HeaderValue::from_static("kept"));
        let body = http_body_util::StreamBody::new(futures::stream::iter([
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(b"data"))),
            Ok(Frame::trailers(trailers)),
        ]));
        let response = limit_response(http::Response::new(body), MAX_GRPC_MESSAGE);
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().expect("trailers").clone();
        assert!(trailers.get(GRPC_MESSAGE).expect("message").len() <= MAX_GRPC_MESSAGE);
        assert_eq!(trailers.get("x-other").expect("kept"), "kept");
    }
}
