//! The real `tenantd serve` binary as a child process, over a test's
//! database: for what only a process shows (its exit, its signals, its
//! memory). Killed (SIGKILL) when dropped, also when the test panics.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Tenantd {
    child: Child,
    pub addr: String,
    /// Its log so far (growing).
    pub log: Arc<Mutex<Vec<String>>>,
    /// Holds the admin key the binary is started with.
    _key_file: tempfile::NamedTempFile,
}

impl Tenantd {
    /// Starts the binary over `database_url` with the admin key and
    /// `extra` flags, and waits until it listens.
    pub fn start(database_url: &str, extra: &[&str]) -> Tenantd {
        Self::start_with_env(database_url, extra, &[])
    }

    /// [`Tenantd::start`] with environment variables set for it.
    pub fn start_with_env(database_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Tenantd {
        Self::start_adjusted(database_url, extra, env, |_| {})
    }

    /// [`Tenantd::start_with_env`] with the command adjusted last.
    pub fn start_adjusted(
        database_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Tenantd {
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key.path(), super::admin_key()).unwrap();
        let mut command = serve();
        command
            .arg("--database-url")
            .arg(database_url)
            .arg("--admin-key-file")
            .arg(key.path())
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null());
        adjust(&mut command);
        let mut child = command.spawn().expect("run tenantd");
        let (addr, log) = follow_log(&mut child, Duration::from_secs(60));
        Tenantd {
            child,
            addr,
            log,
            _key_file: key,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process's resident memory now and at its peak, in KiB
    /// (VmRSS and VmHWM of /proc/<pid>/status).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read the process status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGTERM, and waits (up to `within`) for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        exited(&mut self.child, within).await
    }

    /// Waits (up to `within`) for the process to exit on its own.
    pub async fn exited(&mut self, within: Duration) -> ExitStatus {
        exited(&mut self.child, within).await
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }
}

impl Drop for Tenantd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tenantd serve` on ports of its own, its JSON log (stderr) piped, with
/// none of the caller's TENANTD_* settings that would change what it does.
pub fn serve() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenantd"));
    command
        .args([
            "serve",
            "--listen-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env_remove("TENANTD_DATABASE_URL")
        .env_remove("TENANTD_UPGRADE_WORKERS")
        .env_remove("TENANTD_LOG")
        .stderr(Stdio::piped());
    command
}

/// Follows the JSON log (stderr) of a `tenantd serve` child on a thread of
/// its own, echoing every line and keeping them all, and waits up to
/// `within` until it says where it listens. Returns that address and the
/// log so far (growing).
pub fn follow_log(child: &mut Child, within: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    let stderr = child.stderr.take().expect("tenantd's stderr is piped");
    let pid = child.id();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let log = lines.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("tenantd[{pid}]: {line}");
            log.lock().unwrap().push(line.clone());
            if !sent && line.contains("tenantd listening") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(within)
        .expect("tenantd reports its address");
    (addr, lines)
}

/// Sends `signal` to the child.
pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// Waits (up to `within`, on the test's runtime) for the child to exit.
pub async fn exited(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "tenantd did not stop within {within:?} of the signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
