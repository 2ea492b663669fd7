//! `docker-compose.yml` checked without a Docker engine: the file is parsed as YAML (anchors and
//! `<<` merge keys resolved the way Compose resolves them) and its services are compared with what
//! the workspace builds: every service binary runs in it with Consul, the data services reach
//! Postgres and Redis and wait for them, traces go to Jaeger's OTLP port, priority runs 3
//! replicas, and every reference (depends_on, URLs) names a service of the file.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlLoader};

/// The repository root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Resolves `<<` merge keys everywhere below `node` (YAML merge type: the mapping's own keys win,
/// then the merged mappings in the order listed).
fn merge_keys(node: Yaml) -> Yaml {
    match node {
        Yaml::Hash(hash) => {
            let merge_key = Yaml::String("<<".into());
            let mut own = Hash::new();
            let mut merged_in = Vec::new();
            for (key, value) in hash {
                let value = merge_keys(value);
                if key == merge_key {
                    match value {
                        Yaml::Array(items) => merged_in.extend(items),
                        other => merged_in.push(other),
                    }
                } else {
                    own.insert(key, value);
                }
            }
            for source in merged_in {
                let Yaml::Hash(source) = source else {
                    panic!("a `<<` merge key must name mappings, got {source:?}");
                };
                for (key, value) in source {
                    own.entry(key).or_insert(value);
                }
            }
            Yaml::Hash(own)
        }
        Yaml::Array(items) => Yaml::Array(items.into_iter().map(merge_keys).collect()),
        other => other,
    }
}

/// The compose file, merged.
fn compose() -> Yaml {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let mut docs = YamlLoader::load_from_str(&text).unwrap();
    assert_eq!(docs.len(), 1, "one YAML document");
    merge_keys(docs.remove(0))
}

/// The services of the compose file by name.
fn services(compose: &Yaml) -> BTreeMap<String, Yaml> {
    compose["services"]
        .as_hash()
        .expect("a services mapping")
        .iter()
        .map(|(name, service)| (name.as_str().unwrap().to_owned(), service.clone()))
        .collect()
}

/// The names of the `[[bin]]` targets of the workspace's service crates and the gateway.
fn service_binaries() -> BTreeSet<String> {
    let mut manifests = vec![root().join("gateway/Cargo.toml")];
    for entry in std::fs::read_dir(root().join("services")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        if manifest.exists() {
            manifests.push(manifest);
        }
    }
    let mut binaries = BTreeSet::new();
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest).unwrap();
        // `[[bin]]` tables each carry `name = "…"` on a line of their own.
        for section in text.split("[[bin]]").skip(1) {
            let name = section
                .lines()
                .find_map(|line| line.trim().strip_prefix("name = "))
                .unwrap_or_else(|| panic!("a [[bin]] without a name in {}", manifest.display()));
            binaries.insert(name.trim_matches('"').to_owned());
        }
    }
    binaries
}

/// The string value of an environment variable of a service (a mapping in this file).
fn env<'a>(service: &'a Yaml, name: &str) -> Option<&'a str> {
    service["environment"][name].as_str()
}

/// The services a service waits for.
fn depends_on(service: &Yaml) -> BTreeMap<String, String> {
    match &service["depends_on"] {
        Yaml::Hash(hash) => hash
            .iter()
            .map(|(name, how)| {
                (
                    name.as_str().unwrap().to_owned(),
                    how["condition"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        Yaml::BadValue => BTreeMap::new(),
        other => panic!("depends_on should be a mapping, got {other:?}"),
    }
}

/// The host of a `scheme://[user@]host:port/…` URL or a `host:port`.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port.split(':').next().unwrap()
}

#[test]
fn every_service_binary_runs_in_compose_with_its_dependencies() {
    let compose = compose();
    let services = services(&compose);
    let binaries = service_binaries();
    // The probe is a test and diagnostics service, not part of the product's mesh.
    let expected: BTreeSet<String> = binaries.into_iter().filter(|b| b != "probe").collect();
    for name in ["priority", "tasks", "timetrack", "analytics", "gateway"] {
        assert!(
            expected.contains(name),
            "the workspace should build `{name}`; binaries: {expected:?}"
        );
    }

    let mut run: BTreeSet<String> = BTreeSet::new();
    for (name, service) in &services {
        let Some(command) = service["command"].as_vec() else {
            continue;
        };
        let binary = command[0].as_str().unwrap().to_owned();
        assert_eq!(
            &binary, name,
            "compose service `{name}` runs `{binary}`: name them the same (Consul name = binary)"
        );
        assert_eq!(
            service["image"].as_str(),
            Some("protomesh:dev"),
            "{name} image"
        );
        assert_eq!(
            env(service, "CONSUL_HTTP_ADDR"),
            Some("consul:8500"),
            "{name}"
        );
        assert_eq!(
            env(service, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            Some("http://jaeger:4317"),
            "{name} sends traces to Jaeger's OTLP gRPC port"
        );
        assert_eq!(
            depends_on(service).get("consul").map(String::as_str),
            Some("service_healthy"),
            "{name} waits for Consul"
        );
        run.insert(binary);
    }
    assert_eq!(run, expected, "every service binary runs in compose, once");

    for data_service in ["tasks", "timetrack", "analytics"] {
        let service = &services[data_service];
        let database = env(service, "DATABASE_URL").expect("DATABASE_URL");
        let redis = env(service, "REDIS_URL").expect("REDIS_URL");
        assert_eq!(url_host(database), "postgres", "{data_service}: {database}");
        assert_eq!(url_host(redis), "redis", "{data_service}: {redis}");
        let waits = depends_on(service);
        for dependency in ["consul", "postgres", "redis"] {
            assert_eq!(
                waits.get(dependency).map(String::as_str),
                Some("service_healthy"),
                "{data_service} waits for {dependency} to be healthy: {waits:?}"
            );
        }
    }

    assert_eq!(
        services["priority"]["deploy"]["replicas"].as_i64(),
        Some(3),
        "priority is scaled to 3"
    );
    let jaeger = &services["jaeger"];
    assert_eq!(env(jaeger, "COLLECTOR_OTLP_ENABLED"), Some("true"));
    let jaeger_ports: Vec<&str> = jaeger["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(jaeger_ports.contains(&"4317:4317"), "{jaeger_ports:?}");
}

#[test]
fn every_reference_names_a_service_and_healthchecks_exist_where_waited_for() {
    let compose = compose();
    let services = services(&compose);
    let mut host_ports = BTreeSet::new();
    for (name, service) in &services {
        for (dependency, condition) in depends_on(service) {
            let target = services
                .get(&dependency)
                .unwrap_or_else(|| panic!("{name} depends on unknown service {dependency}"));
            if condition == "service_healthy" {
                assert!(
                    !target["healthcheck"].is_badvalue(),
                    "{name} waits for {dependency} to be healthy, which has no healthcheck"
                );
            }
        }
        for variable in ["DATABASE_URL", "REDIS_URL", "CONSUL_HTTP_ADDR"] {
            if let Some(url) = env(service, variable) {
                let host = url_host(url);
                assert!(
                    services.contains_key(host),
                    "{name}: {variable}={url} names no service"
                );
            }
        }
        if let Some(ports) = service["ports"].as_vec() {
            for port in ports {
                let published = port.as_str().unwrap().split(':').next().unwrap().to_owned();
                assert!(
                    host_ports.insert(published.clone()),
                    "host port(s) {published} published twice"
                );
            }
        }
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("--workspace --bins"),
        "the image builds every binary of the workspace"
    );
}

#[test]
fn merge_keys_follow_the_yaml_merge_type() {
    let text = "a: &a {x: 1, y: 1}\nb: &b {x: 2, z: 2}\nc:\n  <<: [*a, *b]\n  y: 3\n";
    let doc = merge_keys(YamlLoader::load_from_str(text).unwrap().remove(0));
    let c = &doc["c"];
    assert_eq!(c["x"].as_i64(), Some(1), "earlier merged mapping wins");
    assert_eq!(c["y"].as_i64(), Some(3), "own key wins");
    assert_eq!(c["z"].as_i64(), Some(2), "later mapping fills the rest");
    assert!(c["<<"].is_badvalue());
}
