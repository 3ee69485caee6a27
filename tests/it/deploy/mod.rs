//! The files under `deploy/` agree with the server they deploy. Every YAML and
//! JSON file parses; the Kubernetes manifests, the compose file, the systemd
//! unit and the Dockerfile use the ports of the server's default listen and
//! metrics addresses, name only real `TENANTD_*` variables, and give them
//! values the server accepts. Expected values come from the clap definition
//! of `tenantd serve`, never from a second copy here: change a default port
//! or rename a flag and this test names the file that no longer matches.

mod hosts;
mod kubernetes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use serde::Deserialize;
use serde_norway::Value;

use crate::common::cli::{Serve, env_vars, tenantctl_help};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

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
    env_vars(&tenantctl_help())
}

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
