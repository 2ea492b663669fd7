//! A service built outside this workspace works like one inside it: `examples/greeter` (its own
//! workspace, a path dependency on protomesh, protos compiled by its `build.rs` with
//! `protomesh_build`) is copied out of the tree and built there; the gateway learns its route and
//! transcodes JSON to it, its request rules hold, and grpcurl describes it over reflection.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use protomesh_mesh::ServiceProcess;
use support::http::{field, http, spawn};
use support::{eventually, gateway_addr, grpcurl, repo_root, target_dir, tempdir, unique, Consul};

/// The longest the outside crate may take to build (its dependencies are compiled afresh, in a
/// target folder of its own: the workspace's is locked while its tests run).
const BUILD_TIMEOUT: Duration = Duration::from_secs(1500);

/// Copies the folder `from` to `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `examples/greeter` copied to a folder outside the repository, its path dependencies pointing
/// at this checkout, and this workspace's lock file (so the build resolves offline to the same
/// versions).
fn greeter_outside() -> PathBuf {
    let crate_dir = tempdir().join("greeter");
    copy_tree(&repo_root().join("examples/greeter"), &crate_dir);
    let manifest = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let root = repo_root().display().to_string();
    let text = text.replace("path = \"../..", &format!("path = \"{root}"));
    assert!(text.contains(&root), "{text}");
    std::fs::write(&manifest, text).unwrap();
    std::fs::copy(repo_root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    crate_dir
}

/// Builds the crate in `dir`; the path of its `greeter` binary.
async fn build(dir: &Path) -> PathBuf {
    let target = target_dir().parent().unwrap().join("outside-service");
    let mut command =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
    command
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_INCREMENTAL", "0")
        .args(["build", "--offline", "--bin", "greeter"])
        .kill_on_drop(true);
    let output = tokio::time::timeout(BUILD_TIMEOUT, command.output())
        .await
        .expect("the outside crate built in time")
        .unwrap();
    assert!(
        output.status.success(),
        "cargo build of the outside crate failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target.join("debug/greeter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_built_in_its_own_repository_is_routed_and_described() {
    let crate_dir = greeter_outside();
    assert!(!crate_dir.starts_with(repo_root()));
    let binary = build(&crate_dir).await;

    let consul = Consul::start().await;
    let env = vec![
        ("CONSUL_HTTP_ADDR".to_owned(), consul.addr()),
        ("PROTOMESH_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    let _greeter = ServiceProcess::spawn(
        unique("greeter"),
        &binary,
        &["--listen".to_owned(), "127.0.0.1:0".to_owned()],
        &env,
        tempdir().join("greeter.log"),
    )
    .unwrap();
    let entry = eventually(Duration::from_secs(30), "a passing greeter", || async {
        consul.instances("greeter", true).await.into_iter().next()
    })
    .await;
    assert_eq!(
        entry.service.meta.get("version").map(String::as_str),
        Some("0.3.0")
    );
    let greeter_addr = format!("{}:{}", entry.service.address, entry.service.port);

    let mut gateway_env: Vec<(&str, String)> =
        env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    gateway_env.push(("PROTOMESH_KEY_PREFIX", format!("{}:", unique("outside"))));
    let gateway = spawn("gateway", &gateway_env, &[]);
    let addr = gateway_addr(&gateway).await;
    let url = format!("http://{addr}/v1/greeter:sayHello");
    let hello = eventually(Duration::from_secs(30), "the greeter's route", || async {
        let answer = http(
            "POST",
            url.clone(),
            vec!["content-type: application/json".into()],
            Some(r#"{"name":"Ada"}"#.into()),
        )
        .await;
        (answer.status == 200).then_some(answer)
    })
    .await;
    assert_eq!(field(&hello, "message"), "Hello, Ada!");

    // The rules declared in the outside proto are enforced, naming the field.
    let refused = http(
        "POST",
        url,
        vec!["content-type: application/json".into()],
        Some(r#"{"name":""}"#.into()),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("name"), "{}", refused.body);

    let described = grpcurl(&[
        "-plaintext",
        &greeter_addr,
        "describe",
        "acme.greeter.v1.GreeterService",
    ]);
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.status.success(),
        "{}",
        String::from_utf8_lossy(&described.stderr)
    );
    assert!(text.contains("rpc SayHello"), "{text}");
    let listed = grpcurl(&["-plaintext", &greeter_addr, "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("acme.greeter.v1.GreeterService"), "{text}");
    assert!(text.contains("grpc.health.v1.Health"), "{text}");
}
