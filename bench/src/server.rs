//! The tenantd server under test: the real binary in a process of its own,
//! on a free loopback port, ready once its gRPC health check says SERVING,
//! stopped with SIGTERM when the work given to [`TenantdServer::serve`] is
//! done. Its log goes to a file that is removed after a clean run and kept
//! (and named) after a failure; its metrics are served on another free port,
//! for [`TenantdServer::scrape`]; its admin key is handed over in a file only
//! this user can read, removed once it has started. Clients connect with the
//! bench's credentials on every call ([`TenantdServer::connect`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tenantd::config::Secret;
use tenantd::grpc::auth::Bearer;
use tonic::transport::{Channel, Endpoint};

/// How long tenantd may take to migrate the catalog and report SERVING.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long tenantd may take to stop after SIGTERM before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one scrape of tenantd's metrics may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// `tenantd serve` in a process of its own, on a free loopback port, logging
/// to a file that is removed after a clean run.
pub struct TenantdServer {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    /// Where it serves Prometheus metrics (`GET /metrics`).
    pub metrics_addr: SocketAddr,
    log: PathBuf,
    /// The admin service key the server was started with.
    key: String,
}

/// A channel whose calls carry the bench's service key.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// A failed call as an error: its code and message.
pub fn status(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// The tenantd binary: the one given, or the one built next to this binary.
pub fn tenantd_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("find this binary's path")?
            .with_file_name("tenantd"),
    };
    ensure!(
        path.is_file(),
        "no tenantd binary at {}: build it with the bench (`cargo build --release -p tenantd \
         -p tenantd-bench`) or pass --tenantd",
        path.display()
    );
    Ok(path)
}

impl TenantdServer {
    /// Starts `tenantd serve` with `args` after its listen address (`tag`
    /// names its log file), runs `body` with it, then stops it. Its log is
    /// removed only when both went well.
    pub async fn serve<T>(
        binary: &Path,
        database_url: &Secret,
        tag: &str,
        args: &[&OsStr],
        body: impl AsyncFnOnce(&Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut server = Self::start(binary, database_url, tag, args).await?;
        let ran = body(&server).await;
        let stopped = server.stop().await;
        let ran = ran?;
        stopped?;
        let _ = std::fs::remove_file(&server.log);
        Ok(ran)
    }

    async fn start(
        binary: &Path,
        database_url: &Secret,
        tag: &str,
        args: &[&OsStr],
    ) -> anyhow::Result<Self> {
        let addr = free_port().await?;
        let metrics_addr = free_port().await?;
        let log = std::env::temp_dir().join(format!("{tag}-tenantd.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("create the tenantd log {}", log.display()))?;
        let err = out
            .try_clone()
            .context("open the tenantd log a second time")?;
        // The server stores this key (hashed) as its bootstrap admin key.
        let key = tenantd::identity::keys::generate();
        let key_file = std::env::temp_dir().join(format!("{tag}-admin.key"));
        write_private(&key_file, &key)?;
        let spawned = tokio::process::Command::new(binary)
            .arg("serve")
            .arg("--admin-key-file")
            .arg(&key_file)
            .arg("--listen-addr")
            .arg(addr.to_string())
            // A free port rather than 9464, which a tenantd already running
            // here holds; chosen here so that the bench can scrape it.
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .args(args)
            // Through the environment, so a password in the URL does not
            // show in the process list.
            .env("TENANTD_DATABASE_URL", database_url.expose())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: Ctrl-C reaches only the bench, which
            // stops the server in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", binary.display()));
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_file(&key_file);
                return Err(e);
            }
        };
        let mut server = Self {
            child,
            addr,
            metrics_addr,
            log,
            key,
        };
        let serving = server.wait_serving().await;
        // tenantd reads the key file only while it starts.
        let _ = std::fs::remove_file(&key_file);
        if let Err(e) = serving {
            let _ = server.child.kill().await;
            return Err(e.context(format!("start tenantd (its log: {})", server.log.display())));
        }
        Ok(server)
    }

    /// A new connection (HTTP/2) to tenantd.
    async fn channel(&self) -> anyhow::Result<Channel> {
        endpoint(self.addr)?
            .connect()
            .await
            .with_context(|| format!("connect a gRPC client to tenantd at {}", self.addr))
    }

    /// `channel` with the bench's credentials on every call.
    fn authed(&self, channel: Channel) -> anyhow::Result<Authed> {
        let bearer = Bearer::new(&self.key).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(tonic::service::interceptor::InterceptedService::new(
            channel, bearer,
        ))
    }

    /// A new connection to tenantd, carrying the bench's service key.
    pub async fn connect(&self) -> anyhow::Result<Authed> {
        let channel = self.channel().await?;
        self.authed(channel)
    }

    /// `clients` clients spread round-robin over `connections` new
    /// connections (at least one).
    pub async fn connect_spread(
        &self,
        clients: usize,
        connections: usize,
    ) -> anyhow::Result<Vec<Authed>> {
        let mut open = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            open.push(self.channel().await?);
        }
        // A clone of a Channel shares its connection.
        (0..clients)
            .map(|i| self.authed(open[i % open.len()].clone()))
            .collect()
    }

    /// Polls the gRPC health check (service "") until it says SERVING.
    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        let endpoint = endpoint(self.addr)?.connect_timeout(Duration::from_secs(1));
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("check on tenantd")? {
                bail!(
                    "tenantd exited ({status}) before serving:\n{}",
                    log_tail(&self.log)
                );
            }
            if let Ok(channel) = endpoint.connect().await {
                let answer = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if answer.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "tenantd did not report SERVING within {SERVER_START_TIMEOUT:?}:\n{}",
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for the graceful shutdown; kills it past the
    /// deadline.
    async fn stop(&mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;

        let Some(pid) = self.child.id() else {
            return Ok(()); // already reaped
        };
        let pid = Pid::from_raw(i32::try_from(pid).context("tenantd's pid")?);
        match kill(pid, Signal::SIGTERM) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e).context("send SIGTERM to tenantd"),
        }
        match tokio::time::timeout(SERVER_STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("wait for tenantd to stop")?;
                ensure!(
                    status.success(),
                    "tenantd stopped with {status}; log: {}",
                    self.log.display()
                );
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "tenantd did not stop within {SERVER_STOP_TIMEOUT:?} of SIGTERM and was killed; log: {}",
                    self.log.display()
                )
            }
        }
    }

    /// One scrape of `/metrics`: every sample by its series (the name with
    /// its labels as written, e.g. `tenantd_tenant_pools_open` or
    /// `tenantd_tenant_pool_evictions_total{reason="capacity"}`).
    pub async fn scrape(&self) -> anyhow::Result<HashMap<String, f64>> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let addr = self.metrics_addr;
        let fetch = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            // HTTP/1.0: the answer ends when the server closes, not chunked.
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            std::io::Result::Ok(answer)
        };
        let answer = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {SCRAPE_TIMEOUT:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("scrape tenantd's metrics at {addr}"))?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("tenantd's metrics at {addr}: no HTTP answer"))?;
        ensure!(
            head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200"),
            "tenantd's metrics at {addr}: {}",
            head.lines().next().unwrap_or_default()
        );
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect())
    }

    /// The process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("tenantd has no process id")
    }
}

/// Writes `text` to a new file at `path` that only this user can read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    // A file left by an earlier run that was killed.
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// A loopback address with a port that was free a moment ago.
async fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("find a free port on 127.0.0.1")?;
    listener.local_addr().context("read the free port")
}

fn endpoint(addr: SocketAddr) -> anyhow::Result<Endpoint> {
    Endpoint::from_shared(format!("http://{addr}")).context("make the gRPC endpoint")
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
