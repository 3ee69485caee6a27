//! The compose file, the systemd unit and the Dockerfile, and every
//! `TENANTD_*` variable any file under deploy/ names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_norway::Value;

use super::{DEPLOY, Server, at, documents, files, opt, read, rel, seq, str_at, string_map};

#[test]
fn compose_runs_the_server_on_its_ports() {
    let server = Server::load();
    let path = Path::new(DEPLOY).join("compose.yaml");
    let file = rel(&path);
    let compose = documents(&path).remove(0);
    let services = at(&compose, "services", &file)
        .as_mapping()
        .expect("services is a mapping");
    let mut replicas = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let is_tenantd = service.get("build").is_some()
            || opt(service, "image")
                .and_then(Value::as_str)
                .is_some_and(|i| i.starts_with("tenantd"));
        let what = format!("{file} service {name}");
        let Some(environment) = service.get("environment") else {
            assert!(!is_tenantd, "{what}: no environment");
            continue;
        };
        let env = string_map(environment, &what);
        if !is_tenantd {
            server.check_names(&what, env.keys(), false);
            continue;
        }
        replicas += 1;
        server.check_names(&what, env.keys(), true);
        let effective = server.accept(&what, &env);
        server.check_reachable(&what, &effective);
        let published: BTreeSet<u16> = seq(service, "ports", &what)
            .iter()
            .map(|p| {
                let spec = match p {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => str_at(other, "target", &what).to_owned(),
                };
                let container = spec.rsplit(':').next().unwrap().split('/').next().unwrap();
                container
                    .parse()
                    .unwrap_or_else(|e| panic!("{what}: port {spec}: {e}"))
            })
            .collect();
        assert_eq!(
            published,
            BTreeSet::from([server.grpc_port(), server.metrics_port()]),
            "{what}: publish the gRPC and the metrics port"
        );
        let test: Vec<&str> = seq(service, "healthcheck.test", &what)
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            test.contains(&"tenantctl") && test.contains(&"health"),
            "{what}: the healthcheck should be `tenantctl health`, not {test:?}"
        );
    }
    assert!(replicas >= 2, "{file}: run at least two tenantd replicas");
}

/// `KEY=value` words of a systemd `Environment=` line or a Dockerfile `ENV`.
fn assignments(words: &str) -> Vec<(String, String)> {
    words
        .split_whitespace()
        .filter_map(|w| {
            let w = w.trim_matches('"');
            w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[test]
fn systemd_unit_runs_the_server_on_its_ports() {
    let server = Server::load();
    let path = Path::new(DEPLOY).join("tenantd.service");
    let file = rel(&path);
    let text = read(&path);
    let mut env = BTreeMap::new();
    let mut exec = None;
    let mut stop = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Environment=") {
            env.extend(assignments(rest));
        } else if let Some(rest) = line.strip_prefix("ExecStart=") {
            exec = Some(rest.to_owned());
        } else if let Some(rest) = line.strip_prefix("TimeoutStopSec=") {
            stop = Some(humantime::parse_duration(rest).unwrap_or_else(|_| {
                Duration::from_secs(rest.parse().expect("TimeoutStopSec in seconds"))
            }));
        }
    }
    server.check_names(&file, env.keys(), false);
    let effective = server.accept(&file, &env);
    server.check_reachable(&file, &effective);
    let exec = exec.unwrap_or_else(|| panic!("{file}: no ExecStart"));
    assert!(
        exec.ends_with("tenantd serve"),
        "{file}: ExecStart should run `tenantd serve`"
    );
    let stop = stop.unwrap_or_else(|| panic!("{file}: no TimeoutStopSec"));
    assert!(
        stop > effective.shutdown,
        "{file}: TimeoutStopSec must exceed the shutdown timeout"
    );
}

#[test]
fn dockerfile_exposes_the_server_ports_and_runs_as_non_root() {
    let server = Server::load();
    let path = Path::new(DEPLOY).join("Dockerfile");
    let file = rel(&path);
    // Instructions of the final stage, continuation lines joined.
    let joined = read(&path).replace("\\\n", " ");
    let mut stage: Vec<(String, String)> = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (op, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stage.clear();
        }
        stage.push((op, rest.trim().to_owned()));
    }
    let all = |op: &str| -> Vec<&str> {
        stage
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    let user = all("USER")
        .last()
        .map(|u| u.split(':').next().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{file}: the final stage sets no USER"));
    assert!(
        user != "root" && user != "0",
        "{file}: the final stage must run as a non-root USER, not {user}"
    );
    let exposed: BTreeSet<u16> = all("EXPOSE")
        .iter()
        .flat_map(|r| r.split_whitespace())
        .map(|p| p.split('/').next().unwrap().parse().expect("EXPOSE port"))
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([server.grpc_port(), server.metrics_port()]),
        "{file}: EXPOSE the gRPC and the metrics port"
    );
    let env: BTreeMap<String, String> = all("ENV").iter().flat_map(|r| assignments(r)).collect();
    server.check_names(&file, env.keys(), true);
    let effective = server.accept(&file, &env);
    server.check_reachable(&file, &effective);
}

#[test]
fn every_tenantd_variable_named_in_deploy_is_real() {
    let server = Server::load();
    for path in files(Path::new(DEPLOY)) {
        let text = read(&path);
        let names: Vec<String> = text
            .match_indices("TENANTD_")
            .map(|(i, _)| {
                text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect::<String>()
            })
            // `TENANTD_*` speaks of them all.
            .filter(|name| !name.ends_with('_'))
            .collect();
        server.check_names(&rel(&path), &names, true);
    }
}
