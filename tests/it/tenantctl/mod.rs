//! The real `tenantctl` binary against a real tenantd: tenants, users,
//! memberships and sessions, and fleet upgrades, through the CLI in JSON
//! and table output.

mod clusters;
mod events;
mod identity;
mod tenants;
mod upgrades;

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::common::admin_key;

/// Runs tenantctl against one endpoint, isolated from the caller's
/// environment: with the admin key unless told otherwise, and with `stdin`
/// piped in (an empty, closed stdin without it).
#[derive(Clone)]
struct Ctl {
    endpoint: String,
    key: String,
    stdin: Option<String>,
}

impl Ctl {
    fn new(endpoint: impl Into<String>) -> Ctl {
        Ctl {
            endpoint: endpoint.into(),
            key: admin_key().to_owned(),
            stdin: None,
        }
    }

    /// The same runner with `input` on stdin.
    fn with_stdin(&self, input: &str) -> Ctl {
        Ctl {
            stdin: Some(input.to_owned()),
            ..self.clone()
        }
    }

    /// The same runner with `key` (a service key or access token) as TENANTD_KEY.
    fn with_key(&self, key: &str) -> Ctl {
        Ctl {
            key: key.to_owned(),
            ..self.clone()
        }
    }

    /// `tenantctl --endpoint … ARGS…`, its stdout and stderr piped (so not
    /// on a terminal); killed when dropped.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tenantctl"));
        command
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .env_remove("TENANTD_ENDPOINT")
            .env_remove("TENANTCTL_OUTPUT")
            .env("TENANTD_KEY", &self.key)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut child = self.command(args).spawn().expect("run tenantctl");
        if let (Some(input), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .expect("write tenantctl's stdin");
        }
        // The server runs on this test's runtime, so the child is awaited,
        // never waited for on a blocked thread.
        tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("tenantctl {args:?} did not finish within 120 s"))
            .expect("run tenantctl")
    }

    /// Stdout of a run that must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "tenantctl {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// The JSON document of a run that must succeed.
    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let stdout = self.ok(&all).await;
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("tenantctl {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// Exit code and stderr of a run that must fail.
    async fn fails(&self, args: &[&str]) -> (i32, String) {
        let (code, out) = self.fails_saying(args).await;
        (code, String::from_utf8(out.stderr).expect("UTF-8 errors"))
    }

    /// Exit code and the whole output of a run that must fail.
    async fn fails_saying(&self, args: &[&str]) -> (i32, Output) {
        let out = self.run(args).await;
        assert!(
            !out.status.success(),
            "tenantctl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (out.status.code().expect("an exit code"), out)
    }
}

/// The `key` of a JSON document, as an owned string.
fn id_of(doc: &Value, key: &str) -> String {
    doc[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {doc}"))
        .to_owned()
}
