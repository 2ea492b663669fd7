//! The probe service: a diagnostics service that answers after a chosen delay or with a chosen
//! status, counts its calls per method, and reports the deadline (`grpc-timeout`) its callers
//! sent. Tests and benchmarks use it to exercise mesh clients, deadlines, retries and gateways
//! against a real server; operators can use it to check a path through the mesh.

#![forbid(unsafe_code)]

/// Rust code generated from the service's protos by `build.rs` (`protomesh_build`), and
/// `FILE_DESCRIPTOR_SET`, their encoded descriptor set (served over reflection).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    ::protomesh::include_protos!();
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::proto::protomesh::probe::v1::{
    probe_service_server::ProbeService, CollectResponse, EchoRequest, EchoResponse,
    GetStatsRequest, GetStatsResponse,
};
use protomesh::client::grpc_timeout;
use protomesh::status::invalid_argument;
use tonic::{Code, Request, Response, Status};

pub use crate::proto::protomesh::probe::v1::probe_service_server::ProbeServiceServer;

/// Longest delay a call may ask for.
pub const MAX_DELAY_MS: u32 = 60_000;

/// No deadline seen (the stored value when a call had no `grpc-timeout`).
const NO_TIMEOUT: i64 = -1;

/// The gRPC handler of `protomesh.probe.v1.ProbeService`; clones share the counters.
#[derive(Debug, Clone)]
pub struct ProbeHandler {
    instance: Arc<str>,
    echo_calls: Arc<AtomicU64>,
    record_calls: Arc<AtomicU64>,
    last_timeout_us: Arc<AtomicI64>,
}

impl Default for ProbeHandler {
    fn default() -> Self {
        Self {
            instance: Arc::from(std::process::id().to_string()),
            echo_calls: Arc::default(),
            record_calls: Arc::default(),
            last_timeout_us: Arc::new(AtomicI64::new(NO_TIMEOUT)),
        }
    }
}

impl ProbeHandler {
    /// A handler that names itself `instance` in its answers.
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: Arc::from(instance.into()),
            ..Self::default()
        }
    }

    async fn answer(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        let timeout_us = request
            .metadata()
            .get(grpc_timeout::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout::parse)
            .map(|t| i64::try_from(t.as_micros()).unwrap_or(i64::MAX));
        self.last_timeout_us
            .store(timeout_us.unwrap_or(NO_TIMEOUT), Ordering::Relaxed);
        let request = request.into_inner();
        if request.delay_ms > MAX_DELAY_MS {
            return Err(invalid_argument(
                "delay_ms",
                format!("must be at most {MAX_DELAY_MS}, got {}", request.delay_ms),
            ));
        }
        let fail = asked_failure(&request)?;
        if request.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(request.delay_ms))).await;
        }
        if let Some(status) = fail {
            return Err(status);
        }
        Ok(Response::new(EchoResponse {
            message: request.message,
            instance: self.instance.to_string(),
            grpc_timeout_us: timeout_us,
        }))
    }
}

/// The status a request's `fail_code` asks for (`None` for 0), or why it is not one.
fn asked_failure(request: &EchoRequest) -> Result<Option<Status>, Status> {
    match request.fail_code {
        0 => Ok(None),
        code @ 1..=16 => Ok(Some(Status::new(
            Code::from_i32(code),
            format!("failing as asked (fail_code {code})"),
        ))),
        other => Err(invalid_argument(
            "fail_code",
            format!("must be a gRPC status code 0..16, got {other}"),
        )),
    }
}

/// The answers of a `Chat` call, as its server stream.
pub type ChatStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ProbeService for ProbeHandler {
    type ChatStream = ChatStream;

    async fn collect(
        &self,
        request: Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<Response<CollectResponse>, Status> {
        let mut requests = request.into_inner();
        let mut messages = Vec::new();
        while let Some(request) = requests.message().await? {
            if let Some(status) = asked_failure(&request)? {
                return Err(status);
            }
            messages.push(request.message);
        }
        Ok(Response::new(CollectResponse {
            messages,
            instance: self.instance.to_string(),
        }))
    }

    async fn chat(
        &self,
        request: Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<Response<ChatStream>, Status> {
        let instance = self.instance.to_string();
        let answers = futures::stream::unfold(Some(request.into_inner()), move |requests| {
            let instance = instance.clone();
            async move {
                let mut requests = requests?;
                let request = match requests.message().await {
                    Ok(Some(request)) => request,
                    Ok(None) => return None,
                    Err(status) => return Some((Err(status), None)),
                };
                let failure = match asked_failure(&request) {
                    Ok(failure) => failure,
                    Err(status) => Some(status),
                };
                if let Some(status) = failure {
                    return Some((Err(status), None));
                }
                let delay = request.delay_ms.min(MAX_DELAY_MS);
                tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
                let answer = EchoResponse {
                    message: request.message,
                    instance,
                    grpc_timeout_us: None,
                };
                Some((Ok(answer), Some(requests)))
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.echo_calls.fetch_add(1, Ordering::Relaxed);
        self.answer(request).await
    }

    async fn record(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.record_calls.fetch_add(1, Ordering::Relaxed);
        self.answer(request).await
    }

    async fn get_stats(
        &self,
        _request: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        let last = self.last_timeout_us.load(Ordering::Relaxed);
        Ok(Response::new(GetStatsResponse {
            instance: self.instance.to_string(),
            calls: HashMap::from([
                ("Echo".to_owned(), self.echo_calls.load(Ordering::Relaxed)),
                (
                    "Record".to_owned(),
                    self.record_calls.load(Ordering::Relaxed),
                ),
            ]),
            last_grpc_timeout_us: (last != NO_TIMEOUT).then_some(last),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(delay_ms: u32, fail_code: i32) -> Request<EchoRequest> {
        Request::new(EchoRequest {
            message: "hi".into(),
            delay_ms,
            fail_code,
        })
    }

    #[tokio::test]
    async fn echoes_and_counts_per_method() {
        let probe = ProbeHandler::new("p1");
        let answer = probe.echo(echo(0, 0)).await.expect("echo").into_inner();
        assert_eq!(answer.message, "hi");
        assert_eq!(answer.instance, "p1");
        assert_eq!(answer.grpc_timeout_us, None);
        probe.record(echo(0, 14)).await.expect_err("fails as asked");
        let stats = probe
            .get_stats(Request::new(GetStatsRequest {}))
            .await
            .expect("stats")
            .into_inner();
        assert_eq!(stats.calls["Echo"], 1);
        assert_eq!(stats.calls["Record"], 1);
    }

    #[tokio::test]
    async fn fails_with_the_code_asked_for_and_rejects_bad_codes_naming_the_field() {
        let probe = ProbeHandler::default();
        let status = probe.echo(echo(0, 14)).await.expect_err("unavailable");
        assert_eq!(status.code(), Code::Unavailable);
        let status = probe.echo(echo(0, 17)).await.expect_err("bad code");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("fail_code"), "{status:?}");
        let status = probe
            .echo(echo(MAX_DELAY_MS + 1, 0))
            .await
            .expect_err("too long");
        assert!(status.message().contains("delay_ms"), "{status:?}");
    }

    #[tokio::test]
    async fn reports_the_callers_deadline() {
        let probe = ProbeHandler::default();
        let mut request = echo(0, 0);
        request
            .metadata_mut()
            .insert("grpc-timeout", "40m".parse().expect("ascii"));
        let answer = probe.echo(request).await.expect("echo").into_inner();
        assert_eq!(answer.grpc_timeout_us, Some(40_000));
        let stats = probe
            .get_stats(Request::new(GetStatsRequest {}))
            .await
            .expect("stats")
            .into_inner();
        assert_eq!(stats.last_grpc_timeout_us, Some(40_000));
    }
}
