//! A forwarded gRPC request body, refused (`RESOURCE_EXHAUSTED`) as soon as a frame header
//! announces a message over the limit, without waiting for the message.

use std::sync::Arc;

use axum::body::Body;
use tonic::Status;

/// Largest request message forwarded: tonic's default decoding limit, which the services' runtime
/// keeps. A frame that announces more is refused as soon as its 5-byte header arrives (the
/// mesh client may otherwise wait for the whole of it, to be able to retry the call).
pub(super) const MAX_FORWARDED_MESSAGE: usize = 4 * 1024 * 1024;

pin_project_lite::pin_project! {
    /// A gRPC request body passed through as it is, failing with `RESOURCE_EXHAUSTED` as soon as a
    /// frame header announces a message over the limit.
    pub(super) struct MessageSizeLimit {
        #[pin]
        inner: Body,
        limit: usize,
        frames: FrameReader,
        // Why the body was refused, for the answer.
        pub(super) refused: Arc<std::sync::OnceLock<Status>>,
    }
}

impl MessageSizeLimit {
    pub(super) fn new(inner: Body, limit: usize) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
