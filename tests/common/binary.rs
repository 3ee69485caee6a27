//! The real `tenantd serve` binary as a child process, over a test's
//! database: for what only a process shows (its exit, its signals, its
//! memory). Killed (SIGKILL) when dropped, also when the test panics.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tenantd {
    child: Child,
    pub addr: String,
    /// Holds the admin key the binary is started with.
    _key_file: tempfile::NamedTempFile,
}

impl Tenantd {
    /// Starts the binary over `database_url` with the admin key and
    /// `extra` flags, and waits until it listens.
    pub fn start(database_url: &str, extra: &[&str]) -> Tenantd {
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key.path(), super::admin_key()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tenantd"))
            .args([
                "serve",
                "--listen-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .arg("--database-url")
            .arg(database_url)
            .arg("--admin-key-file")
            .arg(key.path())
            .args(extra)
            .env_remove("TENANTD_UPGRADE_WORKERS")
            .env_remove("TENANTD_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tenantd");
        let mut server = Tenantd {
            child,
            addr: String::new(),
            _key_file: key,
        };
        let stderr = server.child.stderr.take().unwrap();
        let pid = server.child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("tenantd[{pid}]: {line}");
                if !sent && line.contains("tenantd listening") {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                    sent = true;
                }
            }
        });
        server.addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("tenantd reports its address");
        server
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
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tenantd did not stop within {within:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
