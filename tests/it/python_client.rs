//! A client in another language: `tests/python/client.py`, stock Python
//! grpcio that learns the API through server reflection (nothing generated
//! from the protos), drives a real tenantd through users, tenants, sessions,
//! typed data, a fleet upgrade and the audit chain.
//!
//! The script runs twice: `setup` against the server as built, then — after
//! a restart with one more tenant migration, which Python cannot arrange,
//! and mutual TLS on — `upgrade`, over TLS with a client certificate. Ids
//! pass between the two in a JSON state file.
//!
//! The interpreter is the one TENANTD_PYTHON names, else that of a
//! virtualenv this test makes under the target directory
//! (`python-client-venv`, with `tests/python/requirements.txt` installed)
//! and reuses while the requirements stay the same; that needs python3 with
//! its venv module (Debian: python3-venv). TENANTD_SKIP_PYTHON=1 skips the
//! test, with a note.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tenantd::pb;
use tokio::process::Command;

use crate::common::{TestServer, admin_key};
use crate::tls::{Pki, https};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/requirements.txt");

/// What makes the test run without a virtualenv of its own.
const ALTERNATIVES: &str = "or point TENANTD_PYTHON at an interpreter that has \
     tests/python/requirements.txt installed, or set TENANTD_SKIP_PYTHON=1 to skip this test";

/// The target directory this test was built into (CARGO_TARGET_DIR when
/// it was set, else `target/` of the package).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The interpreter the script runs with: TENANTD_PYTHON, else the
/// virtualenv's (made or brought up to date first).
fn python() -> PathBuf {
    match std::env::var_os("TENANTD_PYTHON") {
        Some(python) => python.into(),
        None => provision_venv(&target_dir().join("python-client-venv")),
    }
}

/// Makes `venv` a virtualenv with the client's requirements installed and
/// answers its interpreter. Under an exclusive lock (processes testing at
/// once wait for each other); installs nothing when the stamp in `venv`
/// holds the hash of requirements.txt as it is.
fn provision_venv(venv: &Path) -> PathBuf {
    let requirements = std::fs::read(REQUIREMENTS).expect("read tests/python/requirements.txt");
    let hash = hex::encode(Sha256::digest(&requirements));
    let python = venv.join("bin").join("python");
    let stamp = venv.join("requirements.sha256");

    let lock_path = venv.with_extension("lock");
    std::fs::create_dir_all(lock_path.parent().expect("the venv has a parent"))
        .expect("create the target directory");
    let lock =
        File::create(&lock_path).unwrap_or_else(|e| panic!("create {}: {e}", lock_path.display()));
    // nix's flock, as the harness locks its cluster: std's File::lock would
    // need Rust 1.89, above the crate's rust-version.
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));

    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
        return python;
    }
    if !runs(std::process::Command::new(&python).args(["-c", "import pip"])) {
        create_venv(venv);
    }
    let _ = std::fs::remove_file(&stamp);
    let out = std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(REQUIREMENTS)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {} -m pip: {e}", python.display()));
    assert!(
        out.status.success(),
        "installing tests/python/requirements.txt into {} failed ({}):\n{}\n{}",
        venv.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&stamp, format!("{hash}\n"))
        .unwrap_or_else(|e| panic!("write {}: {e}", stamp.display()));
    python
    // The lock is released as `_lock` is dropped.
}

/// Whether `command` runs and exits 0 (its output discarded).
fn runs(command: &mut std::process::Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `python3 -m venv --clear venv`, or a panic that says which Debian
/// packages are missing.
fn create_venv(venv: &Path) {
    let out = match std::process::Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!(
            "the Python client test makes a virtualenv with python3, which cannot run ({e}).\n\
             Install it (Debian/Ubuntu: apt-get install python3 python3-venv), {ALTERNATIVES}."
        ),
    };
    assert!(
        out.status.success(),
        "python3 lacks the venv module (or ensurepip) that the Python client test makes its \
         virtualenv with: {}\nInstall it (Debian/Ubuntu: apt-get install python3-venv), \
         {ALTERNATIVES}.",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let out = std::process::Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv)
        .stdin(Stdio::null())
        .output()
        .expect("run python3 -m venv");
    assert!(
        out.status.success(),
        "python3 -m venv {} failed ({}): {}\nDebian/Ubuntu need python3-venv for it \
         (apt-get install python3-venv); {ALTERNATIVES}.",
        venv.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs the script with `args`, the admin key in its environment (never on
/// its command line); panics with its output unless it exits 0.
async fn client(python: &Path, args: &[&str]) {
    let child = Command::new(python)
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
        .unwrap_or_else(|e| panic!("run {} {SCRIPT}: {e}", python.display()));
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

/// The interpreter with the client's packages: `None` when
/// TENANTD_SKIP_PYTHON=1 says not to run; a panic saying what is missing
/// when it cannot start the client.
async fn python_ready() -> Option<PathBuf> {
    if std::env::var("TENANTD_SKIP_PYTHON").as_deref() == Ok("1") {
        // Straight to the stderr descriptor: the test harness captures
        // println!/eprintln! of passing tests, and this note must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "note: the Python client test was SKIPPED (TENANTD_SKIP_PYTHON=1)"
        );
        return None;
    }
    let python = tokio::task::spawn_blocking(python)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let out = Command::new(&python)
        .arg(SCRIPT)
        .arg("check")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(out) if out.status.success() => Some(python),
        Ok(out) => panic!(
            "the Python client cannot start with {}: {}\ninstall its packages with \
             `{} -m pip install -r tests/python/requirements.txt` (or unset TENANTD_PYTHON to \
             let this test make a virtualenv of its own, or set TENANTD_SKIP_PYTHON=1 to skip \
             this test)",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            python.display()
        ),
        Err(e) => panic!(
            "cannot run {}: {e}\n(unset TENANTD_PYTHON to let this test make a virtualenv of \
             its own, or set TENANTD_SKIP_PYTHON=1 to skip this test)",
            python.display()
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
    let Some(python) = python_ready().await else {
        return;
    };
    let mut server = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state.json");
    let state_arg = state.to_str().unwrap();

    let endpoint = server.addr.to_string();
    client(
        &python,
        &["setup", "--endpoint", &endpoint, "--state", state_arg],
    )
    .await;

    // The second half over mutual TLS: grpcio with the CA and a client
    // certificate of it.
    let (migrations, next) = migrations_with_python_note();
    let dir = migrations.path().to_path_buf();
    let pki = Pki::new();
    let tls = pki.server(true);
    server
        .restart_with(|c| {
            c.tenant_migrations = Some(dir);
            c.tls = Some(tls);
        })
        .await;
    let endpoint = format!("https://localhost:{}", server.addr.port());
    let path = |file: &str| pki.path(file).to_str().unwrap().to_owned();
    client(
        &python,
        &[
            "upgrade",
            "--endpoint",
            &endpoint,
            "--state",
            state_arg,
            "--ca",
            &path("ca.pem"),
            "--cert",
            &path("client.pem"),
            "--cert-key",
            &path("client.key"),
        ],
    )
    .await;

    // What Python reported, seen through the generated client as well.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(state["upgraded_version"], next);
    let channel = https(&server, pki.client("ca.pem", Some("client")))
        .connect()
        .await
        .unwrap();
    let tenant = pb::tenant_service_client::TenantServiceClient::with_interceptor(
        channel,
        tenantd::grpc::auth::Bearer::new(admin_key()).unwrap(),
    )
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
