//! Mutual TLS between mesh processes, end to end: a priority process started with the TLS flags
//! passes in Consul through its TTL check, serves a mesh client that presents a certificate of the
//! mesh CA, refuses clients without a certificate, with another CA's certificate or in plaintext,
//! and answers through a gateway that calls it over mutual TLS. A missing key file stops the
//! process at start-up with exit code 1 and a message naming the flag.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use protomesh::client::Mesh;
use protomesh::consul::CheckStatus;
use protomesh::tls::TlsConfig;
use protomesh_priority::proto::protomesh::priority::v1::priority_service_client::PriorityServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use support::{
    eventually, free_port, score_request, spawn_priority, tempdir, test_secret_file, Consul,
};

/// Certificate and key files of one identity.
struct KeyFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// A test PKI in a temporary folder: the mesh CA, a server and a client identity it signed (both
/// for 127.0.0.1), and an identity signed by another CA.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    server: KeyFiles,
    client: KeyFiles,
    other_ca: PathBuf,
    other: KeyFiles,
}

impl Pki {
    fn generate() -> Self {
        let dir = tempdir();
        let (ca, ca_issuer) = certificate_authority(&dir, "mesh-ca", "protomesh test CA");
        let (other_ca, other_issuer) =
            certificate_authority(&dir, "other-ca", "some other test CA");
        let server = leaf(&dir, "server", "priority", &ca_issuer);
        let client = leaf(&dir, "client", "test client", &ca_issuer);
        let other = leaf(&dir, "other", "stranger", &other_issuer);
        Self {
            dir,
            ca,
            server,
            client,
            other_ca,
            other,
        }
    }

    /// The `--tls-*` flags of `identity`.
    fn flags(&self, identity: &KeyFiles) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            path_text(&identity.cert),
            "--tls-key".into(),
            path_text(&identity.key),
            "--tls-ca".into(),
            path_text(&self.ca),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// A self-signed CA; writes `<name>.pem` and returns its path and issuer.
fn certificate_authority(
    dir: &Path,
    name: &str,
    common_name: &str,
) -> (PathBuf, CertifiedIssuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, issuer.pem()).unwrap();
    (path, issuer)
}

/// A server-and-client certificate for 127.0.0.1 (an IP SAN) signed by `issuer`.
fn leaf(
    dir: &Path,
    name: &str,
    common_name: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> KeyFiles {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let files = KeyFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

/// Builds `name` now, so that the test runs the binary of this tree (the support helper builds
/// only missing binaries, and an older one would not know the TLS flags).
fn build_binary(name: &str) {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(support::repo_root())
        .args(["build", "-p", &format!("protomesh-{name}"), "--bin", name])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --bin {name} failed");
}

/// One Score call to `https://127.0.0.1:port` (or `http://` without TLS), or why it failed.
async fn score_directly(port: u16, tls: Option<ClientTlsConfig>) -> Result<i32, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|err| err.to_string())?;
    }
    let mut client = PriorityServiceClient::new(endpoint.connect_lazy());
    client
        .score(score_request())
        .await
        .map(|response| response.into_inner().score)
        .map_err(|status| format!("{status:?}"))
}

fn ca_certificate(path: &Path) -> Certificate {
    Certificate::from_pem(std::fs::read(path).unwrap())
}

fn identity(files: &KeyFiles) -> Identity {
    Identity::from_pem(
        std::fs::read(&files.cert).unwrap(),
        std::fs::read(&files.key).unwrap(),
    )
}

/// `POST path` with a JSON body over plain HTTP/1.1; the status code and body.
async fn post_json(addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .ok()?
        .ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_of_the_mesh_ca() {
    build_binary("priority");
    build_binary("gateway");
    let pki = Pki::generate();
    let consul = Consul::start().await;
    let server_flags = pki.flags(&pki.server);
    let server_flags: Vec<&str> = server_flags.iter().map(String::as_str).collect();
    let priority = spawn_priority(&consul.addr(), &server_flags);

    // Consul cannot run a gRPC check through mutual TLS: the instance reports a TTL check.
    let entry = eventually(
        Duration::from_secs(15),
        "the TLS priority instance to pass in Consul",
        || async { consul.instances("priority", true).await.into_iter().next() },
    )
    .await;
    let ttl = entry
        .checks
        .iter()
        .find(|check| check.type_ == "ttl")
        .unwrap_or_else(|| panic!("a TTL check is registered: {:?}", entry.checks));
    assert_eq!(ttl.status, CheckStatus::Passing, "{ttl:?}");
    assert!(
        entry.checks.iter().all(|check| check.type_ != "grpc"),
        "no gRPC check under mutual TLS: {:?}",
        entry.checks
    );
    let port = entry.service.port;

    // The mesh client with a certificate of the mesh CA is served.
    let client_tls = TlsConfig {
        cert: Some(pki.client.cert.clone()),
        key: Some(pki.client.key.clone()),
        ca: Some(pki.ca.clone()),
        server_name: None,
    }
    .load()
    .unwrap()
    .unwrap();
    let mesh = Mesh::from_consul(consul.client.clone(), support::DESCRIPTORS).unwrap();
    mesh.use_tls(client_tls);
    let mut client = PriorityServiceClient::new(mesh.channel("priority"));
    let scored = client.score(score_request()).await.unwrap().into_inner();
    assert_eq!(scored.score, 72);

    // A client that trusts the CA but has no certificate is refused.
    let no_certificate = ClientTlsConfig::new().ca_certificate(ca_certificate(&pki.ca));
    let refused = score_directly(port, Some(no_certificate)).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");

    // A client whose certificate another CA signed is refused.
    let other_ca_client = ClientTlsConfig::new()
        .ca_certificate(ca_certificate(&pki.ca))
        .identity(identity(&pki.other));
    let refused = score_directly(port, Some(other_ca_client)).await;
    assert!(refused.is_err(), "another CA's certificate: {refused:?}");

    // A client that trusts only the other CA does not accept the server either.
    let distrustful = ClientTlsConfig::new()
        .ca_certificate(ca_certificate(&pki.other_ca))
        .identity(identity(&pki.other));
    let refused = score_directly(port, Some(distrustful)).await;
    assert!(refused.is_err(), "server of an untrusted CA: {refused:?}");

    // Plaintext gRPC is refused.
    let refused = score_directly(port, None).await;
    assert!(refused.is_err(), "plaintext: {refused:?}");

    // The same direct call with the right certificate works: the refusals were about the peer.
    let trusted = ClientTlsConfig::new()
        .ca_certificate(ca_certificate(&pki.ca))
        .identity(identity(&pki.client));
    assert_eq!(score_directly(port, Some(trusted)).await, Ok(72));

    // The gateway (plain HTTP in front) reaches the TLS priority over mutual TLS: reflection
    // and the call itself.
    let gateway_addr = format!("127.0.0.1:{}", free_port());
    let mut gateway_args = vec!["--listen".to_owned(), gateway_addr.clone()];
    gateway_args.extend(pki.flags(&pki.client));
    let gateway = protomesh_mesh::ServiceProcess::spawn(
        "gateway",
        &support::binary("gateway"),
        &gateway_args,
        &[
            ("CONSUL_HTTP_ADDR".into(), consul.addr()),
            ("PROTOMESH_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "info".into()),
        ],
        tempdir().join("gateway.log"),
    )
    .unwrap();
    let (status, body) = eventually(
        Duration::from_secs(20),
        "the gateway to answer POST /v1/priority:score",
        || async {
            post_json(
                &gateway_addr,
                "/v1/priority:score",
                support::http::SCORE_JSON,
            )
            .await
            .filter(|(status, _)| *status != 404)
        },
    )
    .await;
    assert_eq!(
        status,
        200,
        "{body}\ngateway log:\n{}\npriority log:\n{}",
        gateway.log_tail(30),
        priority.log_tail(30)
    );
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["score"], 72, "{body}");
}

#[tokio::test]
async fn a_missing_key_file_stops_the_process_with_exit_code_1_naming_the_flag() {
    build_binary("priority");
    let pki = Pki::generate();
    let missing_key = pki.dir.join("absent-key.pem");
    let flags = [
        "--tls-cert",
        pki.server.cert.to_str().unwrap(),
        "--tls-key",
        missing_key.to_str().unwrap(),
        "--tls-ca",
        pki.ca.to_str().unwrap(),
        "--no-register",
    ];
    let mut priority = spawn_priority("127.0.0.1:1", &flags);
    let status = tokio::time::timeout(Duration::from_secs(10), priority.wait())
        .await
        .expect("the process exits at start-up")
        .unwrap();
    assert_eq!(status.code(), Some(1), "{}", priority.log_tail(20));
    let log = priority.log_tail(20);
    assert!(log.contains("--tls-key"), "{log}");
    assert!(log.contains("absent-key.pem"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A mesh peer is not a user: with mutual TLS on, a client holding a certificate of the mesh CA
/// reaches the timetrack service, but without a user's valid credential (none, or identity
/// metadata set by hand) it is refused with `UNAUTHENTICATED`; with one, it is served.
#[tokio::test]
async fn a_mesh_certificate_does_not_let_a_peer_act_as_a_user() {
    use protomesh_data::testing::{redis_url, TestDatabase, TestKeys};
    use protomesh_timetrack::proto::protomesh::timetrack::v1::{
        timetrack_service_client::TimetrackServiceClient, ListEntriesRequest,
    };

    build_binary("timetrack");
    let pki = Pki::generate();
    let consul = Consul::start().await;
    let database = TestDatabase::create().await.unwrap();
    let keys = TestKeys::new();
    let mut args = pki.flags(&pki.server);
    args.extend(["--jwt-hs256-secret-file".to_owned(), test_secret_file()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _timetrack = support::http::spawn(
        "timetrack",
        &[
            ("CONSUL_HTTP_ADDR", consul.addr()),
            ("DATABASE_URL", database.url().to_owned()),
            ("REDIS_URL", redis_url()),
            ("PROTOMESH_KEY_PREFIX", keys.prefix().to_owned()),
        ],
        &args,
    );
    let entry = eventually(
        Duration::from_secs(30),
        "a TLS timetrack passing",
        || async { consul.instances("timetrack", true).await.into_iter().next() },
    )
    .await;
    let peer = ClientTlsConfig::new()
        .ca_certificate(ca_certificate(&pki.ca))
        .identity(identity(&pki.client));
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", entry.service.port))
        .unwrap()
        .tls_config(peer)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = TimetrackServiceClient::new(channel);
    let call = |metadata: &[(&'static str, String)]| {
        let mut request = tonic::Request::new(ListEntriesRequest::default());
        for (key, value) in metadata {
            request.metadata_mut().insert(*key, value.parse().unwrap());
        }
        request
    };
    let refused = client.list_entries(call(&[])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let spoofed = [
        ("x-protomesh-subject", "alice".to_owned()),
        ("x-protomesh-roles", "admin".to_owned()),
        ("x-protomesh-auth", "jwt".to_owned()),
    ];
    let refused = client.list_entries(call(&spoofed)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let token = protomesh::auth::testing::token("alice", &["user"]);
    let served = client
        .list_entries(call(&[("authorization", format!("Bearer {token}"))]))
        .await
        .unwrap()
        .into_inner();
    assert!(served.entries.is_empty(), "{served:?}");
}
