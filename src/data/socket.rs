//! The socket of a tenant connection, opened here rather than by the driver
//! so that closing a connection can wait for PostgreSQL to end its backend.
//!
//! A connection's budget permit is given back only when its socket is
//! closed by the server (or after 5 s of waiting for that): the backend has
//! then left pg_stat_activity and freed its slot of max_connections, so the
//! budget holds for what PostgreSQL sees, not only for what tenantd counts.

use std::future::Future as _;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// How long a closing connection waits for the server to hang up.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Where the database listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp {
        host: String,
        port: u16,
    },
    /// The socket directory and port, as libpq takes them.
    Unix {
        dir: PathBuf,
        port: u16,
    },
}

impl Endpoint {
    pub async fn connect(&self, timeout: Duration) -> io::Result<Socket> {
        let connect = async {
            Ok::<_, io::Error>(match self {
                Endpoint::Tcp { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    Inner::Tcp(s)
                }
                Endpoint::Unix { dir, port } => {
                    Inner::Unix(UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?)
                }
            })
        };
        let inner = tokio::time::timeout(timeout, connect).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "connecting to PostgreSQL timed out",
            )
        })??;
        Ok(Socket {
            inner,
            write_closed: false,
            close_deadline: None,
        })
    }
}

enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A TCP or Unix socket whose shutdown lasts until the peer hangs up.
pub struct Socket {
    inner: Inner,
    write_closed: bool,
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// Closes the sending side (after the driver's Terminate message), then
    /// reads until the server closes its side: by then its backend is gone.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_closed {
            ready!(match &mut this.inner {
                Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                Inner::Unix(s) => Pin::new(s).poll_shutdown(cx),
            })?;
            this.write_closed = true;
        }
        let deadline = this
            .close_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_WAIT)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 256];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            let read = match &mut this.inner {
                Inner::Tcp(s) => Pin::new(s).poll_read(cx, &mut buf),
                Inner::Unix(s) => Pin::new(s).poll_read(cx, &mut buf),
            };
            match ready!(read) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => continue,
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}
