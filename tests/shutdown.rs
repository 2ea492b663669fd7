//! Lame-duck shutdown of an in-process mesh server: NOT_SERVING at once, in-flight calls finish,
//! calls still running after the drain timeout are cut, and the server returns `Ok`.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protomesh::config::ServeConfig;
use protomesh::server::MeshServer;
use protomesh_priority::proto::protomesh::priority::v1::{
    priority_service_client::PriorityServiceClient,
    priority_service_server::{PriorityService, PriorityServiceServer},
    PrioritizeRequest, PrioritizeResponse, ScoreRequest, ScoreResponse,
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// A priority service whose `Score` takes `delay`, counting calls that started.
#[derive(Clone)]
struct SlowPriority {
    delay: Duration,
    started: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl PriorityService for SlowPriority {
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let r = request.into_inner();
        Ok(Response::new(ScoreResponse {
            title: r.title,
            score: r.urgency * r.impact,
            level: 0,
        }))
    }

    async fn prioritize(
        &self,
        _: Request<PrioritizeRequest>,
    ) -> Result<Response<PrioritizeResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

struct Running {
    addr: String,
    started: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), protomesh::server::ServeError>>,
}

async fn start(delay: Duration, lame_duck: Duration, drain: Duration) -> Running {
    let mut config = ServeConfig::with_listen("127.0.0.1:0".parse().unwrap());
    config.no_register = true;
    config.lame_duck = lame_duck;
    config.drain_timeout = drain;
    let started = Arc::new(AtomicUsize::new(0));
    let service = SlowPriority {
        delay,
        started: started.clone(),
    };
    let bound = MeshServer::new("slow-priority", config)
        .descriptor_set(protomesh_priority::proto::FILE_DESCRIPTOR_SET)
        .add_service(PriorityServiceServer::new(service))
        .bind()
        .await
        .unwrap();
    let addr = format!("http://{}", bound.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(bound.run_until(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        started,
        stop,
        server,
    }
}

async fn wait_for_start(started: &AtomicUsize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while started.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn score_request() -> ScoreRequest {
    ScoreRequest {
        title: "t".into(),
        urgency: 3,
        impact: 4,
    }
}

#[tokio::test]
async fn in_flight_calls_finish_and_health_turns_not_serving_first() {
    let running = start(
        Duration::from_millis(800),
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .await;
    let mut client = PriorityServiceClient::connect(running.addr.clone())
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(running.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let in_flight = tokio::spawn(async move { client.score(score_request()).await });
    wait_for_start(&running.started).await;

    running.stop.send(()).unwrap();
    // During the lame-duck period the server still answers, and says NOT_SERVING.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "protomesh.priority.v1.PriorityService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == ServingStatus::NotServing {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(answer.into_inner().score, 12);
    let outcome = tokio::time::timeout(Duration::from_secs(15), running.server)
        .await
        .expect("server stops");
    outcome.unwrap().expect("graceful shutdown returns Ok");

    let after = PriorityServiceClient::connect(running.addr.clone()).await;
    assert!(after.is_err(), "the listener is closed after shutdown");
}

#[tokio::test]
async fn calls_longer_than_the_drain_timeout_are_cut() {
    let running = start(
        Duration::from_secs(60),
        Duration::from_millis(50),
        Duration::from_millis(300),
    )
    .await;
    let mut client = PriorityServiceClient::connect(running.addr.clone())
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move { client.score(score_request()).await });
    wait_for_start(&running.started).await;

    running.stop.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), running.server)
        .await
        .expect("the drain timeout bounds the shutdown");
    outcome.unwrap().expect("a cut drain still returns Ok");
    let call = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the cut call ends")
        .unwrap();
    assert!(call.is_err(), "the 60 s call cannot have finished");
}
