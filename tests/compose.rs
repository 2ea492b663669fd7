//! `docker-compose.yml` checked without a Docker engine: the file is parsed as YAML (anchors and
//! `<<` merge keys resolved the way Compose resolves them) and its services are compared with what
//! the workspace builds: every service binary runs in it with Consul, the data services reach
//! Postgres and Redis and wait for them, traces go to Jaeger's OTLP port, priority runs 3
//! replicas, and every reference (depends_on, URLs) names a service of the file. Metrics: every
//! binary opens its admin listener, and Prometheus runs with deploy/prometheus.yml, which finds the
//! instances through the compose file's Consul (and which `promtool check config` accepts).
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

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

/// deploy/prometheus.yml, parsed.
fn prometheus_config() -> Yaml {
    let text = std::fs::read_to_string(root().join("deploy/prometheus.yml")).unwrap();
    let mut docs = YamlLoader::load_from_str(&text).unwrap();
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

/// The port of a `host:port` listen address.
fn port(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

#[test]
fn every_binary_opens_its_admin_listener_and_prometheus_scrapes_them_through_consul() {
    let compose = compose();
    let services = services(&compose);

    // Every service binary listens on an admin address (the gateway has its own variable);
    // all containers may use the same port.
    let mut admin_ports = BTreeSet::new();
    for (name, service) in &services {
        if service["command"].as_vec().is_none() {
            continue;
        }
        let variable = if name == "gateway" {
            "PROTOMESH_GATEWAY_ADMIN"
        } else {
            "PROTOMESH_ADMIN"
        };
        let admin = env(service, variable)
            .unwrap_or_else(|| panic!("{name} sets no {variable}: its /metrics would be off"));
        assert!(
            admin.starts_with("0.0.0.0:"),
            "{name}: {variable}={admin} must be reachable from the prometheus container"
        );
        admin_ports.insert(port(admin).to_owned());
    }
    assert_eq!(admin_ports.len(), 1, "{admin_ports:?}");

    // Prometheus runs with the config file mounted where the image reads it, after Consul.
    let prometheus = &services["prometheus"];
    assert!(
        prometheus["image"]
            .as_str()
            .unwrap()
            .starts_with("prom/prometheus"),
        "{prometheus:?}"
    );
    let mounts: Vec<&str> = prometheus["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml")),
        "{mounts:?}"
    );
    assert_eq!(
        depends_on(prometheus).get("consul").map(String::as_str),
        Some("service_healthy")
    );

    // The config finds the instances through the compose file's Consul, keeps those with a
    // `metrics_port` meta, and scrapes that port; the gateway (not in Consul) by name.
    let config = prometheus_config();
    let jobs = config["scrape_configs"].as_vec().unwrap();
    let consul_addr = env(&services["priority"], "CONSUL_HTTP_ADDR").unwrap();
    let mesh = jobs
        .iter()
        .find(|job| !job["consul_sd_configs"].is_badvalue())
        .expect("a scrape job with consul_sd_configs");
    let servers: Vec<&str> = mesh["consul_sd_configs"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|sd| sd["server"].as_str().unwrap())
        .collect();
    assert_eq!(servers, [consul_addr], "the compose file's Consul");
    assert!(services.contains_key(url_host(consul_addr)));
    let rules = mesh["relabel_configs"].as_vec().unwrap();
    let sources = |rule: &Yaml| -> Vec<String> {
        rule["source_labels"]
            .as_vec()
            .map(|labels| {
                labels
                    .iter()
                    .map(|l| l.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let meta = "__meta_consul_service_metadata_metrics_port".to_owned();
    assert!(
        rules
            .iter()
            .any(|rule| rule["action"].as_str() == Some("keep") && sources(rule) == [meta.clone()]),
        "keeps only instances with a metrics_port: {rules:?}"
    );
    let address = rules
        .iter()
        .find(|rule| rule["target_label"].as_str() == Some("__address__"))
        .expect("a rule setting __address__");
    assert_eq!(
        sources(address),
        ["__meta_consul_service_address".to_owned(), meta]
    );
    assert_eq!(address["separator"].as_str(), Some(":"));
    let admin_port = admin_ports.into_iter().next().unwrap();
    let static_targets: Vec<&str> = jobs
        .iter()
        .filter_map(|job| job["static_configs"].as_vec())
        .flatten()
        .filter_map(|config| config["targets"].as_vec())
        .flatten()
        .map(|target| target.as_str().unwrap())
        .collect();
    assert_eq!(static_targets, [format!("gateway:{admin_port}")]);
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let path = root().join("deploy/prometheus.yml");
    let check = |path: &Path| {
        std::process::Command::new(support::tool("promtool"))
            .args(["check", "config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = check(&path);
    if out.status.success() {
        return;
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Debian's promtool is built without Consul discovery: check the same config with the
    // Consul servers as static targets, so everything else (relabelling included) is checked.
    assert!(
        said.contains("field consul_sd_configs not found"),
        "promtool check config: {said}"
    );
    let Yaml::Hash(mut config) = prometheus_config() else {
        panic!("a mapping");
    };
    let jobs_key = Yaml::String("scrape_configs".into());
    let Some(Yaml::Array(jobs)) = config.get_mut(&jobs_key) else {
        panic!("scrape_configs");
    };
    for job in jobs.iter_mut() {
        let Yaml::Hash(job) = job else {
            panic!("a job mapping")
        };
        let Some(Yaml::Array(sd)) = job.remove(&Yaml::String("consul_sd_configs".into())) else {
            continue;
        };
        let mut targets = Hash::new();
        targets.insert(
            Yaml::String("targets".into()),
            Yaml::Array(sd.iter().map(|s| s["server"].clone()).collect()),
        );
        job.insert(
            Yaml::String("static_configs".into()),
            Yaml::Array(vec![Yaml::Hash(targets)]),
        );
    }
    let mut text = String::new();
    YamlEmitter::new(&mut text)
        .dump(&Yaml::Hash(config))
        .unwrap();
    let static_path = support::tempdir().join("prometheus-static.yml");
    std::fs::write(&static_path, text).unwrap();
    let out = check(&static_path);
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
