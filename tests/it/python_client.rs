//! A client in another language: `tests/python/client.py`, stock Python
//! grpcio that learns the API through server reflection (nothing generated
//! from the protos), drives a real tenantd through users, tenants, sessions,
//! typed data, a fleet upgrade and the audit chain.
//!
//! The script runs twice: `setup` against the server as built, then — after
//! a restart with one more tenant migration, which Python cannot arrange —
//! `upgrade`. Ids pass between the two in a JSON state file.
//!
//! Needs python3 with `tests/python/requirements.txt` installed (or the
//! interpreter named by TENANTD_PYTHON). Without them the test fails and says
//! how to install them; TENANTD_SKIP_PYTHON=1 skips it, with a note.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tenantd::pb;
use tokio::process::Command;

use crate::common::{TestServer, admin_key};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
const INSTALL: &str = "python3 -m pip install -r tests/python/requirements.txt";

/// The interpreter: TENANTD_PYTHON (e.g. a virtualenv's), else python3.
fn python() -> String {
    std::env::var("TENANTD_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs the script with `args`, the admin key in its environment (never on
/// its command line); panics with its output unless it exits 0.
async fn client(args: &[&str]) {
    let child = Command::new(python())
        .arg(SCRIPT)
        .args(args)
        .env("TENANTD_KEY", admin_key())
        .env_remove("TENANTD_ENDPOINT")
        // tenantd is on 127.0.0.1: no proxy of the caller's in between.
        .env_remove("grpc_proxy")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env("PYTHONUNBUFFERED", "1")
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run {} {SCRIPT}: {e}", python()));
    // The server runs on this test's runtime: await the child, never block.
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("client.py {args:?} did not finish within 300 s"))
        .expect("wait for client.py");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client.py {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    println!("--- client.py {}\n{stdout}", args[0]);
}

/// Whether the interpreter and the client's packages are there: false
/// when TENANTD_SKIP_PYTHON=1 says not to run; a panic saying how to install
/// them when they are missing.
async fn python_ready() -> bool {
    if std::env::var("TENANTD_SKIP_PYTHON").as_deref() == Ok("1") {
        // Straight to the stderr descriptor: the test harness captures
        // println!/eprintln! of passing tests, and this note must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "note: the Python client test was SKIPPED (TENANTD_SKIP_PYTHON=1); \
             to run it: {INSTALL}"
        );
        return false;
    }
    let out = Command::new(python())
        .arg(SCRIPT)
        .arg("check")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(out) if out.status.success() => true,
        Ok(out) => panic!(
            "the Python client cannot start with {}: {}\ninstall its packages with `{INSTALL}` \
             (or point TENANTD_PYTHON at an interpreter that has them, or set \
             TENANTD_SKIP_PYTHON=1 to skip this test)",
            python(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run {}: {e}\nthis test needs Python 3 with `{INSTALL}` \
             (Debian: apt-get install python3 python3-pip python3-venv; or point \
             TENANTD_PYTHON at an interpreter, or set TENANTD_SKIP_PYTHON=1 to skip this test)",
            python()
        ),
    }
}

/// The shipped tenant migrations plus one that adds `customers.python_note`,
/// numbered after the last; returns the directory and the new version.
fn migrations_with_python_note() -> (tempfile::TempDir, i64) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("tenant_sql");
    let dir = tempfile::tempdir().unwrap();
    let mut latest = 0;
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.ends_with(".sql") {
            continue;
        }
        let version: i64 = name[..4].parse().expect("NNNN_name.sql");
        latest = latest.max(version);
        std::fs::copy(&path, dir.path().join(&name)).unwrap();
    }
    let next = latest + 1;
    std::fs::write(
        dir.path().join(format!("{next:04}_python_note.sql")),
        "ALTER TABLE customers ADD COLUMN python_note text;\n",
    )
    .unwrap();
    (dir, next)
}

#[tokio::test]
async fn a_python_grpcio_client_runs_the_whole_flow_through_reflection() {
    if !python_ready().await {
        return;
    }
    let mut server = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state.json");
    let state_arg = state.to_str().unwrap();

    client(&[
        "setup",
        "--endpoint",
        &server.addr.to_string(),
        "--state",
        state_arg,
    ])
    .await;

    let (migrations, next) = migrations_with_python_note();
    let dir = migrations.path().to_path_buf();
    server
        .restart_with(|c| c.tenant_migrations = Some(dir))
        .await;
    client(&[
        "upgrade",
        "--endpoint",
        &server.addr.to_string(),
        "--state",
        state_arg,
    ])
    .await;

    // What Python reported, seen through the generated client as well.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(state["upgraded_version"], next);
    let tenant = server
        .client()
        .await
        .get_tenant(pb::GetTenantRequest {
            selector: Some(pb::get_tenant_request::Selector::Id(
                state["tenant_id"].as_str().unwrap().to_owned(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tenant.schema_version, next);
    assert_eq!(tenant.slug, state["slug"].as_str().unwrap());
}
