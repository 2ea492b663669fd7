//! HTTP helpers of the cross-process tests: requests with curl (the client a user would run),
//! JSON fields of the answers, service processes started with an environment, and callers
//! scoring under load through a gateway.

use std::collections::HashMap;
use std::process::Command;

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use protomesh_mesh::ServiceProcess;

use super::{binary, tempdir, unique, Load};

/// An HTTP answer: status, headers (lower-case names) and body.
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// The JSON body of a `Score` call through the gateway (scores 72).
pub const SCORE_JSON: &str = r#"{"title":"t","urgency":9,"impact":8}"#;

/// One HTTP request with curl (no shell), `-i` to read the status line and headers.
pub async fn http(method: &str, url: String, headers: Vec<String>, body: Option<String>) -> Answer {
    let method = method.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new("curl");
        command.args(["-s", "-i", "--max-time", "10", "-X", &method, &url]);
        for header in &headers {
            command.args(["-H", header]);
        }
        if let Some(body) = &body {
            command.args(["-d", body]);
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line from {url}: {text}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    })
    .await
    .unwrap()
}

pub fn bearer(token: &str) -> Vec<String> {
    vec![format!("authorization: Bearer {token}")]
}

/// A JSON string field of an answer body.
pub fn field(answer: &Answer, name: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.body));
    json[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {}", answer.body))
        .to_owned()
}

/// A JSON number field of an answer body.
pub fn field_number(answer: &Answer, name: &str) -> i64 {
    let json: serde_json::Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.body));
    json[name]
        .as_i64()
        .unwrap_or_else(|| panic!("no number {name} in {}", answer.body))
}

/// Starts binary `name` on a free port with `env`.
pub fn spawn(name: &str, env: &[(&str, String)], args: &[&str]) -> ServiceProcess {
    let mut all_args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    all_args.extend(args.iter().map(|a| (*a).to_owned()));
    let log = tempdir().join(format!("{name}.log"));
    eprintln!("{name} log: {}", log.display());
    ServiceProcess::spawn(
        unique(name),
        &binary(name),
        &all_args,
        &env.iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<Vec<_>>(),
        log,
    )
    .unwrap()
}

/// `workers` HTTP callers scoring through the JSON route of the gateway at `gateway`
/// (`host:port`); anything but a 200 with a JSON body within 10 s is a failure.
pub fn score_load(gateway: &str, workers: usize) -> Load {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{gateway}/v1/priority:score");
    Load::run(workers, || {
        let (client, url) = (client.clone(), url.clone());
        move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let request = hyper::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(SCORE_JSON.as_bytes())))
                    .unwrap();
                let answer = tokio::time::timeout(Duration::from_secs(10), async {
                    let response = client.request(request).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
                })
                .await;
                match answer {
                    Ok(Ok((status, body))) if status == 200 && body.starts_with(b"{") => Ok(()),
                    other => Err(format!("HTTP: {other:?}")),
                }
            }
        }
    })
}

/// Both kinds of callers at once: HTTP scoring through a gateway's JSON route, gRPC scoring
/// through a mesh channel.
pub struct Callers {
    pub http: Load,
    pub grpc: Load,
}

impl Callers {
    /// `workers` of each kind.
    pub fn start(channel: &protomesh::client::MeshChannel, gateway: &str, workers: usize) -> Self {
        Self {
            grpc: Load::start(channel, workers),
            http: score_load(gateway, workers),
        }
    }

    /// Calls made so far, both kinds.
    pub fn calls(&self) -> usize {
        use std::sync::atomic::Ordering;
        self.http.calls.load(Ordering::Relaxed) + self.grpc.calls.load(Ordering::Relaxed)
    }

    /// Stops both; prints the figures under `label` and asserts that no call failed.
    pub async fn finish(self, label: &str) {
        let (http_calls, http_failures) = self.http.finish().await;
        let (grpc_calls, grpc_failures) = self.grpc.finish().await;
        eprintln!(
            "{label}: through the gateway {http_calls} calls, {http_failures} failed; \
             through the mesh client {grpc_calls} calls, {grpc_failures} failed"
        );
        assert_eq!(
            http_failures, 0,
            "{label}: failed calls through the gateway"
        );
        assert_eq!(
            grpc_failures, 0,
            "{label}: failed calls through the mesh client"
        );
    }
}
