//! The files under `deploy/` agree with the server they deploy. Every YAML and
//! JSON file parses; the Kubernetes manifests, the compose file, the systemd
//! unit and the Dockerfile use the ports of the server's default listen and
//! metrics addresses, name only real `TENANTD_*` variables, and give them
//! values the server accepts. Expected values come from the clap definition
//! of `tenantd serve`, never from a second copy here: change a default port
//! or rename a flag and this test names the file that no longer matches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use serde::Deserialize;
use serde_norway::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// `tenantd serve`'s arguments as a command of their own.
#[derive(Parser)]
#[command(name = "tenantd-serve")]
struct Serve {
    #[command(flatten)]
    args: tenantd::config::ServeArgs,
}

/// One flag of `tenantd serve` that has an environment variable.
struct Flag {
    long: String,
    default: Option<String>,
}

/// What the server defines: its variables and the ports of its defaults.
struct Server {
    /// Every `TENANTD_*` variable of `tenantd serve`, with its flag.
    flags: BTreeMap<String, Flag>,
    /// Variables `tenantctl` reads (its own settings, fine in its environment).
    tenantctl_env: BTreeSet<String>,
}

const LISTEN_ENV: &str = "TENANTD_LISTEN_ADDR";
const METRICS_ENV: &str = "TENANTD_METRICS_ADDR";
const SHUTDOWN_ENV: &str = "TENANTD_SHUTDOWN_TIMEOUT";

impl Server {
    fn load() -> Server {
        let mut flags = BTreeMap::new();
        for arg in Serve::command().get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let default = arg
                .get_default_values()
                .first()
                .map(|d| d.to_string_lossy().into_owned());
            flags.insert(
                env.to_string_lossy().into_owned(),
                Flag {
                    long: long.to_owned(),
                    default,
                },
            );
        }
        Server {
            flags,
            tenantctl_env: tenantctl_env(),
        }
    }

    fn default_addr(&self, env: &str) -> SocketAddr {
        let flag = self.flags.get(env).unwrap_or_else(|| {
            panic!("`tenantd serve` has no flag with env {env}; update deploy/ and this test")
        });
        let default = flag
            .default
            .as_deref()
            .unwrap_or_else(|| panic!("--{} has no default", flag.long));
        default
            .parse()
            .unwrap_or_else(|e| panic!("default of --{} {default:?}: {e}", flag.long))
    }

    /// The port of the default `--listen-addr`.
    fn grpc_port(&self) -> u16 {
        self.default_addr(LISTEN_ENV).port()
    }

    /// The port of the default `--metrics-addr`.
    fn metrics_port(&self) -> u16 {
        self.default_addr(METRICS_ENV).port()
    }

    /// Panics unless every `TENANTD_*` name is a variable of `tenantd serve`
    /// (or, with `tenantctl_too`, of tenantctl).
    fn check_names<'a>(
        &self,
        file: &str,
        names: impl IntoIterator<Item = &'a String>,
        tenantctl_too: bool,
    ) {
        for name in names {
            if !name.starts_with("TENANTD_") {
                continue;
            }
            let known = self.flags.contains_key(name)
                || (tenantctl_too && self.tenantctl_env.contains(name));
            assert!(
                known,
                "{file}: {name} is not an environment variable of `tenantd serve`{} \
                 (known: {:?})",
                if tenantctl_too { " or tenantctl" } else { "" },
                self.flags.keys().collect::<Vec<_>>()
            );
        }
    }

    /// Parses `env` (TENANTD_* → value) as `tenantd serve` would read it and
    /// runs the server's own checks; returns the effective listen address,
    /// metrics address and shutdown timeout (explicit value or default).
    fn accept(&self, file: &str, env: &BTreeMap<String, String>) -> Effective {
        let mut argv = vec!["tenantd-serve".to_owned()];
        for (name, value) in env {
            if let Some(flag) = self.flags.get(name) {
                argv.push(format!("--{}={value}", flag.long));
            }
        }
        let parsed = Serve::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{file}: `tenantd serve` rejects these settings: {e}"));
        if let Err(e) = parsed.args.validate() {
            panic!("{file}: `tenantd serve` rejects these settings: {e:#}");
        }
        let value = |name: &str| -> String {
            env.get(name)
                .cloned()
                .or_else(|| self.flags.get(name).and_then(|f| f.default.clone()))
                .unwrap_or_else(|| panic!("{file}: no value for {name}"))
        };
        let addr = |name: &str| -> SocketAddr {
            value(name)
                .parse()
                .unwrap_or_else(|e| panic!("{file}: {name}: {e}"))
        };
        Effective {
            listen: addr(LISTEN_ENV),
            metrics: addr(METRICS_ENV),
            shutdown: humantime::parse_duration(&value(SHUTDOWN_ENV))
                .unwrap_or_else(|e| panic!("{file}: {SHUTDOWN_ENV}: {e}")),
        }
    }

    /// Checks that a containerised or networked server listens where its
    /// ports say: every interface, on the default ports.
    fn check_reachable(&self, file: &str, effective: &Effective) {
        assert!(
            effective.listen.ip().is_unspecified(),
            "{file}: {LISTEN_ENV} must listen on every interface (0.0.0.0), not {}",
            effective.listen
        );
        assert_eq!(
            effective.listen.port(),
            self.grpc_port(),
            "{file}: {LISTEN_ENV} uses another port than the server's default"
        );
        assert!(
            effective.metrics.ip().is_unspecified(),
            "{file}: {METRICS_ENV} must listen on every interface (0.0.0.0), not {}",
            effective.metrics
        );
        assert_eq!(
            effective.metrics.port(),
            self.metrics_port(),
            "{file}: {METRICS_ENV} uses another port than the server's default"
        );
    }
}

struct Effective {
    listen: SocketAddr,
    metrics: SocketAddr,
    shutdown: Duration,
}

/// The variables tenantctl reads, from its own `--help` (`[env: NAME=…]`).
fn tenantctl_env() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantctl"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("run tenantctl --help");
    assert!(out.status.success(), "tenantctl --help failed");
    let help = String::from_utf8(out.stdout).expect("tenantctl --help is UTF-8");
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Files

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn is_structured(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Every document of a YAML (or JSON) file, with `<<` merge keys applied;
/// empty documents are left out.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", rel(path)));
        return vec![serde_norway::to_value(json).expect("JSON converts to a YAML value")];
    }
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let mut value = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} document {} is not valid YAML: {e}", rel(path), i + 1));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{} document {}: merge keys: {e}", rel(path), i + 1));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

// ---------------------------------------------------------------------------
// Reading values

/// The value at a dotted `path` (`spec.template.spec`); panics naming what is missing.
fn at<'a>(v: &'a Value, path: &str, what: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur
            .get(key)
            .unwrap_or_else(|| panic!("{what}: missing `{path}` (at `{key}`)"));
    }
    cur
}

fn opt<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, key| cur.get(key))
}

fn str_at<'a>(v: &'a Value, path: &str, what: &str) -> &'a str {
    at(v, path, what)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a string"))
}

fn u64_at(v: &Value, path: &str, what: &str) -> u64 {
    at(v, path, what)
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a whole number"))
}

fn seq<'a>(v: &'a Value, path: &str, what: &str) -> &'a [Value] {
    at(v, path, what)
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a list"))
}

/// A mapping of scalars as strings (labels, ConfigMap data, compose env).
fn string_map(v: &Value, what: &str) -> BTreeMap<String, String> {
    if let Some(list) = v.as_sequence() {
        // compose's list form: ["KEY=value", …]
        return list
            .iter()
            .map(|item| {
                let s = item
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: {item:?} is not KEY=value"));
                let (k, v) = s
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{what}: {s:?} is not KEY=value"));
                (k.to_owned(), v.to_owned())
            })
            .collect();
    }
    let map = v
        .as_mapping()
        .unwrap_or_else(|| panic!("{what}: not a mapping"));
    map.iter()
        .map(|(k, v)| {
            let k = k
                .as_str()
                .unwrap_or_else(|| panic!("{what}: key {k:?} is not a string"));
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("{what}: {k} is not a scalar: {other:?}"),
            };
            (k.to_owned(), v)
        })
        .collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

// ---------------------------------------------------------------------------
// Kubernetes

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
fn every_yaml_and_json_file_parses() {
    let structured: Vec<_> = files(Path::new(DEPLOY))
        .into_iter()
        .filter(|p| is_structured(p))
        .collect();
    assert!(
        structured.len() >= 2,
        "expected compose.yaml and the Kubernetes manifests under deploy/"
    );
    for path in structured {
        assert!(
            !documents(&path).is_empty(),
            "{} holds no document",
            rel(&path)
        );
    }
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
