//! What enforcing the request rules costs on the hot path: a `Score` call of the priority service
//! (whose `ScoreRequest` declares `urgency` and `impact` 1..10) served in-process, from the
//! gRPC-framed request to the encoded answer — tonic's generated server decoding the request,
//! a scoring handler, tonic encoding the answer — (plain) as before, and (checked) behind the
//! runtime's [`ValidationLayer`], which reads the body, decodes it as a `DynamicMessage` and
//! checks it against the compiled rules before handing it on. No network and no other layer: the
//! difference is the layer's own cost.
//!
//! `cargo bench --bench rules` prints ns per call of both (closed loop on one thread, after a
//! warm-up). For instruction counts, run one variant under callgrind and subtract:
//! `RULES_BENCH_ONLY=plain|checked RULES_BENCH_CALLS=20000 valgrind --tool=callgrind
//! target/release/deps/rules-<hash>` (see BENCHMARKS.md); both variants compile the rules, so
//! setup cancels out.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use protomesh::rules::MethodRules;
use protomesh::server::validate::ValidationLayer;
use protomesh_priority::proto::protomesh::priority::v1::priority_service_server::{
    PriorityService, PriorityServiceServer,
};
use protomesh_priority::proto::protomesh::priority::v1::{
    PrioritizeRequest, PrioritizeResponse, ScoreRequest, ScoreResponse,
};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

const SCORE: &str = "/protomesh.priority.v1.PriorityService/Score";

/// urgency × impact, as the priority service scores.
#[derive(Clone, Copy)]
struct Scorer;

#[tonic::async_trait]
impl PriorityService for Scorer {
    async fn score(
        &self,
        request: tonic::Request<ScoreRequest>,
    ) -> Result<tonic::Response<ScoreResponse>, tonic::Status> {
        let request = request.into_inner();
        Ok(tonic::Response::new(ScoreResponse {
            title: request.title,
            score: request.urgency * request.impact,
            level: 3,
        }))
    }

    async fn prioritize(
        &self,
        _: tonic::Request<PrioritizeRequest>,
    ) -> Result<tonic::Response<PrioritizeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("unused"))
    }
}

/// The gRPC frame of a valid `Score` request.
fn score_frame() -> Bytes {
    let message = ScoreRequest {
        title: "ship it".into(),
        urgency: 9,
        impact: 8,
    }
    .encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap());
    frame.put_slice(&message);
    frame.freeze()
}

fn request(frame: &Bytes) -> http::Request<Body> {
    http::Request::builder()
        .method("POST")
        .uri(SCORE)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::new(http_body_util::Full::new(frame.clone())))
        .unwrap()
}

/// One call through `service`, its answer read to the end; panics unless it scored 72.
async fn call<S>(service: &mut S, frame: &Bytes)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(frame))
        .await
        .unwrap();
    let collected = response.into_body().collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status.as_deref(), Some("0"));
    let body = collected.to_bytes();
    let answer = ScoreResponse::decode(&body[5..]).unwrap();
    assert_eq!(answer.score, 72);
}

/// `calls` calls through `service`; ns per call.
async fn run<S>(mut service: S, frame: &Bytes, calls: u64) -> f64
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let start = Instant::now();
    for _ in 0..calls {
        call(&mut service, frame).await;
    }
    start.elapsed().as_nanos() as f64 / calls.max(1) as f64
}

fn main() {
    let calls: u64 = std::env::var("RULES_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let only = std::env::var("RULES_BENCH_ONLY").ok();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let frame = score_frame();
    let rules = MethodRules::from_descriptor_sets(
        &[protomesh_priority::proto::FILE_DESCRIPTOR_SET],
        &["protomesh.priority.v1.PriorityService"],
    )
    .unwrap();
    assert!(rules.of(SCORE).is_some(), "Score declares rules");
    let layer = ValidationLayer::new(rules);
    let plain = PriorityServiceServer::new(Scorer);
    let checked = layer.layer(PriorityServiceServer::new(Scorer));
    runtime.block_on(async {
        match only.as_deref() {
            Some("plain") => {
                run(plain, &frame, calls).await;
            }
            Some("checked") => {
                run(checked, &frame, calls).await;
            }
            _ => {
                // Warm-up, then both, twice, alternating.
                run(plain.clone(), &frame, calls / 10).await;
                run(checked.clone(), &frame, calls / 10).await;
                let mut rows = Vec::new();
                for _ in 0..2 {
                    rows.push(("plain", run(plain.clone(), &frame, calls).await));
                    rows.push(("checked", run(checked.clone(), &frame, calls).await));
                }
                println!("| variant | calls | ns/call |");
                println!("|---|---|---|");
                for (name, ns) in &rows {
                    println!("| {name} | {calls} | {ns:.0} |");
                }
            }
        }
    });
}
