//! The Kubernetes manifests under deploy/kubernetes: the Deployment, its
//! Services and budget, its settings, and the kustomization.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value;

use super::{
    DEPLOY, Server, at, documents, files, is_structured, is_subset, opt, rel, seq, str_at,
    string_map, u64_at,
};

/// Every Kubernetes object under deploy/kubernetes, with the file it is in.
fn kubernetes() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in files(&Path::new(DEPLOY).join("kubernetes")) {
        if !is_structured(&path) {
            continue;
        }
        for doc in documents(&path) {
            if doc.get("kind").is_some() {
                out.push((rel(&path), doc));
            }
        }
    }
    out
}

fn objects<'a>(all: &'a [(String, Value)], kind: &str) -> Vec<&'a (String, Value)> {
    all.iter()
        .filter(|(_, v)| v.get("kind").and_then(Value::as_str) == Some(kind))
        .collect()
}

fn one<'a>(all: &'a [(String, Value)], kind: &str) -> &'a (String, Value) {
    let found = objects(all, kind);
    assert_eq!(
        found.len(),
        1,
        "deploy/kubernetes should hold exactly one {kind}"
    );
    found[0]
}

fn name_of(v: &Value) -> &str {
    str_at(v, "metadata.name", "object")
}

/// The Deployment's tenantd container.
fn tenantd_container<'a>(deployment: &'a Value, file: &str) -> &'a Value {
    let containers = seq(deployment, "spec.template.spec.containers", file);
    containers
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("tenantd"))
        .unwrap_or_else(|| panic!("{file}: no container named tenantd"))
}

/// The container's ports by name.
fn container_ports(container: &Value, file: &str) -> BTreeMap<String, u64> {
    seq(container, "ports", file)
        .iter()
        .map(|p| {
            (
                str_at(p, "name", file).to_owned(),
                u64_at(p, "containerPort", file),
            )
        })
        .collect()
}

#[test]
fn kubernetes_deployment_runs_replicas_the_server_can_serve_and_probe() {
    let server = Server::load();
    let all = kubernetes();
    let (file, deployment) = one(&all, "Deployment");
    let replicas = u64_at(deployment, "spec.replicas", file);
    assert!(
        replicas >= 2,
        "{file}: run at least 2 replicas, not {replicas}"
    );

    let container = tenantd_container(deployment, file);
    let ports = container_ports(container, file);
    assert_eq!(
        ports.get("grpc").copied(),
        Some(u64::from(server.grpc_port())),
        "{file}: the container port named grpc must be the port of the default --listen-addr"
    );
    assert_eq!(
        ports.get("metrics").copied(),
        Some(u64::from(server.metrics_port())),
        "{file}: the container port named metrics must be the port of the default --metrics-addr"
    );

    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(p) = container.get(probe) else {
            assert_ne!(probe, "livenessProbe", "{file}: no livenessProbe");
            assert_ne!(probe, "readinessProbe", "{file}: no readinessProbe");
            continue;
        };
        assert_eq!(
            u64_at(p, "grpc.port", &format!("{file} {probe}")),
            u64::from(server.grpc_port()),
            "{file}: {probe} must be a gRPC probe on the gRPC port"
        );
    }

    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            let path = format!("resources.{kind}.{resource}");
            assert!(
                opt(container, &path).is_some(),
                "{file}: container needs {path}"
            );
        }
    }

    let pod = at(deployment, "spec.template.spec", file);
    let non_root = [pod.get("securityContext"), container.get("securityContext")]
        .into_iter()
        .flatten()
        .any(|s| s.get("runAsNonRoot").and_then(Value::as_bool) == Some(true));
    assert!(non_root, "{file}: set runAsNonRoot: true");
    assert_eq!(
        opt(container, "securityContext.readOnlyRootFilesystem").and_then(Value::as_bool),
        Some(true),
        "{file}: the container needs readOnlyRootFilesystem: true"
    );
    assert_eq!(
        opt(container, "securityContext.allowPrivilegeEscalation").and_then(Value::as_bool),
        Some(false),
        "{file}: the container needs allowPrivilegeEscalation: false"
    );

    let labels = string_map(at(deployment, "spec.template.metadata.labels", file), file);
    let selector = string_map(at(deployment, "spec.selector.matchLabels", file), file);
    assert!(
        is_subset(&selector, &labels),
        "{file}: the selector does not match the pod labels"
    );
    if let Some(port) = opt(deployment, "spec.template.metadata.annotations")
        .and_then(|a| a.get("prometheus.io/port"))
    {
        assert_eq!(
            port.as_str(),
            Some(server.metrics_port().to_string().as_str()),
            "{file}: prometheus.io/port must be the metrics port"
        );
    }
}

#[test]
fn kubernetes_services_and_budget_select_the_pods_and_their_ports() {
    let server = Server::load();
    let all = kubernetes();
    let (dfile, deployment) = one(&all, "Deployment");
    let labels = string_map(
        at(deployment, "spec.template.metadata.labels", dfile),
        dfile,
    );
    let selector = string_map(at(deployment, "spec.selector.matchLabels", dfile), dfile);
    let ports = container_ports(tenantd_container(deployment, dfile), dfile);
    let expected = BTreeMap::from([
        ("grpc".to_owned(), u64::from(server.grpc_port())),
        ("metrics".to_owned(), u64::from(server.metrics_port())),
    ]);

    let services = objects(&all, "Service");
    assert!(!services.is_empty(), "deploy/kubernetes has no Service");
    let mut exposed = BTreeSet::new();
    for (file, service) in services {
        let what = format!("{file} Service {}", name_of(service));
        let sel = string_map(at(service, "spec.selector", &what), &what);
        assert!(
            !sel.is_empty() && is_subset(&sel, &labels),
            "{what}: the selector does not select the Deployment's pods"
        );
        for port in seq(service, "spec.ports", &what) {
            let name = str_at(port, "name", &what);
            let number = u64_at(port, "port", &what);
            let target = match at(port, "targetPort", &what) {
                Value::String(named) => *ports
                    .get(named)
                    .unwrap_or_else(|| panic!("{what}: targetPort {named} is no container port")),
                other => other
                    .as_u64()
                    .unwrap_or_else(|| panic!("{what}: bad targetPort {other:?}")),
            };
            let want = expected
                .get(name)
                .unwrap_or_else(|| panic!("{what}: port {name} is neither grpc nor metrics"));
            assert_eq!(target, *want, "{what}: port {name} targets the wrong port");
            assert_eq!(
                number, *want,
                "{what}: port {name} should keep the number {want}"
            );
            exposed.insert(name.to_owned());
        }
    }
    assert_eq!(
        exposed,
        expected.keys().cloned().collect(),
        "the Services must expose grpc and metrics"
    );

    let (file, pdb) = one(&all, "PodDisruptionBudget");
    assert_eq!(
        u64_at(pdb, "spec.minAvailable", file),
        1,
        "{file}: minAvailable 1"
    );
    let pdb_selector = string_map(at(pdb, "spec.selector.matchLabels", file), file);
    assert_eq!(
        pdb_selector, selector,
        "{file}: select the Deployment's pods with the Deployment's own selector"
    );
}

#[test]
fn kubernetes_settings_are_real_flags_the_server_accepts() {
    let server = Server::load();
    let all = kubernetes();
    let (file, deployment) = one(&all, "Deployment");
    let container = tenantd_container(deployment, file);
    let secrets: BTreeMap<&str, BTreeSet<String>> = objects(&all, "Secret")
        .into_iter()
        .map(|(_, s)| {
            let keys = ["stringData", "data"]
                .iter()
                .filter_map(|k| s.get(*k))
                .flat_map(|m| string_map(m, "Secret").into_keys())
                .collect();
            (name_of(s), keys)
        })
        .collect();
    let config_maps: BTreeMap<&str, (&str, BTreeMap<String, String>)> = objects(&all, "ConfigMap")
        .into_iter()
        .map(|(f, c)| (name_of(c), (f.as_str(), string_map(at(c, "data", f), f))))
        .collect();
    let secret_value = |name: &str, key: &str, what: &str| -> String {
        let keys = secrets
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no Secret {name} (secret.example.yaml)"));
        assert!(keys.contains(key), "{what}: Secret {name} has no key {key}");
        let (_, s) = objects(&all, "Secret")
            .into_iter()
            .find(|(_, s)| name_of(s) == name)
            .unwrap();
        string_map(at(s, "stringData", what), what)
            .remove(key)
            .unwrap_or_else(|| panic!("{what}: example Secret {name} has no stringData {key}"))
    };

    // The container's environment: ConfigMaps first, then `env` entries.
    let mut env = BTreeMap::new();
    for source in container
        .get("envFrom")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let name = str_at(source, "configMapRef.name", file);
        let (cfile, data) = config_maps
            .get(name)
            .unwrap_or_else(|| panic!("{file}: envFrom names no ConfigMap {name}"));
        server.check_names(cfile, data.keys(), false);
        env.extend(data.clone());
    }
    for var in seq(container, "env", file) {
        let name = str_at(var, "name", file).to_owned();
        let value = if let Some(v) = var.get("value") {
            v.as_str().unwrap_or_default().to_owned()
        } else {
            let what = format!("{file} env {name}");
            let secret = str_at(var, "valueFrom.secretKeyRef.name", &what);
            let key = str_at(var, "valueFrom.secretKeyRef.key", &what);
            secret_value(secret, key, &what)
        };
        env.insert(name, value);
    }
    server.check_names(file, env.keys(), false);
    let effective = server.accept(file, &env);
    server.check_reachable(file, &effective);

    let grace = u64_at(
        deployment,
        "spec.template.spec.terminationGracePeriodSeconds",
        file,
    );
    assert!(
        Duration::from_secs(grace) > effective.shutdown,
        "{file}: terminationGracePeriodSeconds ({grace}) must exceed the shutdown timeout ({:?})",
        effective.shutdown
    );

    // The admin key file lives in a mounted Secret.
    let key_file =
        PathBuf::from(env.get("TENANTD_ADMIN_KEY_FILE").unwrap_or_else(|| {
            panic!("{file}: set TENANTD_ADMIN_KEY_FILE (mounted from the Secret)")
        }));
    let dir = key_file.parent().unwrap().to_str().unwrap();
    let base = key_file.file_name().unwrap().to_str().unwrap();
    let mount = seq(container, "volumeMounts", file)
        .iter()
        .find(|m| str_at(m, "mountPath", file).trim_end_matches('/') == dir)
        .unwrap_or_else(|| panic!("{file}: nothing is mounted at {dir} for the admin key"));
    let volume_name = str_at(mount, "name", file);
    let volume = seq(deployment, "spec.template.spec.volumes", file)
        .iter()
        .find(|v| str_at(v, "name", file) == volume_name)
        .unwrap_or_else(|| panic!("{file}: no volume {volume_name}"));
    let what = format!("{file} volume {volume_name}");
    let secret = str_at(volume, "secret.secretName", &what);
    let key = match opt(volume, "secret.items") {
        Some(items) => {
            let item = items
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|i| str_at(i, "path", &what) == base)
                .unwrap_or_else(|| panic!("{what}: no item with path {base}"));
            str_at(item, "key", &what).to_owned()
        }
        None => base.to_owned(),
    };
    let example_key = secret_value(secret, &key, &what);
    assert!(
        !tenantd::identity::keys::is_well_formed(&example_key),
        "{what}: the example admin key must not be a usable key"
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = Path::new(DEPLOY).join("kubernetes");
    let path = dir.join("kustomization.yaml");
    let docs = documents(&path);
    let listed: BTreeSet<String> = seq(&docs[0], "resources", "kustomization.yaml")
        .iter()
        .map(|r| r.as_str().expect("resource is a path").to_owned())
        .collect();
    for resource in &listed {
        assert!(
            dir.join(resource).is_file(),
            "kustomization.yaml lists {resource}, which does not exist"
        );
    }
    for file in files(&dir) {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        if !is_structured(&file) || name == "kustomization.yaml" || name.contains(".example.") {
            continue;
        }
        assert!(
            listed.contains(&name),
            "kustomization.yaml does not list {name}"
        );
    }
}
