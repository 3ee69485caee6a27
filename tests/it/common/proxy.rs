//! A TCP proxy in front of the test PostgreSQL that can cut connections:
//! the fault of a network that drops a connection without a word, which
//! neither PostgreSQL nor tenantd can be asked to make. Each connection's
//! startup message names its role in plain text; connections of tenant
//! roles (`tenant_…`) can be cut while tenantd's own catalog connections
//! stay up.

use std::net::SocketAddr;
use std::path::PathBuf;

use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

pub struct PgProxy {
    pub addr: SocketAddr,
    /// Bumped to cut every tenant connection open now.
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// Where the real server listens.
#[derive(Clone)]
enum Upstream {
    Unix(PathBuf),
    Tcp(String, u16),
}

impl Upstream {
    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Upstream::Unix(path) => Box::new(UnixStream::connect(path).await?),
            Upstream::Tcp(host, port) => {
                Box::new(TcpStream::connect((host.as_str(), *port)).await?)
            }
        })
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

impl PgProxy {
    /// A proxy on a free loopback port in front of the server `options`
    /// point at.
    pub async fn start(options: &PgConnectOptions) -> PgProxy {
        let upstream = match options.get_socket() {
            Some(dir) => Upstream::Unix(dir.join(format!(".s.PGSQL.{}", options.get_port()))),
            None => Upstream::Tcp(options.get_host().to_owned(), options.get_port()),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0u64);
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let cut = cuts.subscribe();
                tokio::spawn(async move {
                    if let Ok(server) = upstream.connect().await {
                        relay(client, server, cut).await;
                    }
                });
            }
        });
        PgProxy { addr, cut, task }
    }

    /// `options`' role and database, through the proxy.
    pub fn options(&self, options: &PgConnectOptions) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.addr.port())
            .username(options.get_username())
            // The harness gives a managed-mode tenantd role its name as its
            // password (the superuser logs in by trust: it is not asked).
            .password(options.get_username())
            .database(options.get_database().unwrap_or("postgres"))
    }

    /// Closes every tenant connection now, without a word to either side.
    pub fn cut_tenant_connections(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways; a tenant connection (its startup message names a
/// `tenant_` role) ends when `cut` changes.
async fn relay(mut client: TcpStream, mut server: Box<dyn Stream>, mut cut: watch::Receiver<u64>) {
    let _ = client.set_nodelay(true);
    let mut tenant = false;
    let mut seen = Vec::new();
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_server = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if seen.len() < 4096 {
                    seen.extend_from_slice(&from_client[..n]);
                    tenant |= seen.windows(12).any(|w| w == b"user\0tenant_");
                }
                if server.write_all(&from_client[..n]).await.is_err() {
                    return;
                }
            }
            read = server.read(&mut from_server) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if client.write_all(&from_server[..n]).await.is_err() {
                    return;
                }
            }
            changed = cut.changed() => {
                if changed.is_err() || tenant {
                    return;
                }
            }
        }
    }
}
