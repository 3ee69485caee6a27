//! The gRPC listener's connections, guarded: at most so many at once, at
//! most so many from one address, and a connection that sends nothing
//! within the handshake timeout is closed. Without these, idle TCP
//! connections that never speak — no credential needed — could take every
//! file descriptor the process has, and with them every caller's service.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::log_bursts::LogBursts;

/// A refused connection is logged once per burst of its kind; the rest
/// are counted and summed up (the tenant pools' failures log the same way).
fn refused(bursts: &LogBursts, kind: &str, message: &str) {
    let now = Instant::now();
    for s in bursts.due(now) {
        tracing::warn!(
            more = s.more,
            "{} more gRPC connections refused like this in the last {}s: {}",
            s.more,
            s.over.as_secs(),
            s.sample
        );
    }
    if bursts.first(kind, message, now) {
        tracing::warn!("{message}; repeats are counted and summed up");
    }
}

/// How the listener guards its connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once, in all.
    pub max: usize,
    /// Connections open at once from one client address.
    pub per_address: usize,
    /// How long a new connection may stay silent before it is closed.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max: 4096,
            per_address: 512,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections waiting for their first bytes at once; more wait in the
/// kernel's accept queue.
const PENDING: usize = 1024;

/// A connection with its places among the open ones; both are given back
/// when it closes.
pub struct Guarded {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
    _address: AddressPlace,
}

struct AddressPlace {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The listener's connections that got a place and spoke within the
/// handshake timeout. The others are closed (and logged, a line per burst).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<Guarded>> {
    let places = Arc::new(Semaphore::new(limits.max));
    let by_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let bursts = Arc::new(LogBursts::new(Duration::from_secs(10)));
    let timeout = limits.handshake_timeout;
    TcpListenerStream::new(listener)
        .filter_map(move |accepted| {
            let admitted = match accepted {
                Ok(stream) => admit(stream, &places, &by_address, &limits, &bursts),
                Err(e) => {
                    refused(
                        &bursts,
                        "accept",
                        &format!("cannot accept a gRPC connection: {e}"),
                    );
                    None
                }
            };
            std::future::ready(admitted)
        })
        .map(move |guarded| async move {
            // Silent until the timeout (or closed): dropped here. A peek,
            // not a readiness check, which may be spurious.
            let mut first = [0u8; 1];
            match tokio::time::timeout(timeout, guarded.stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => Some(Ok(guarded)),
                _ => None,
            }
        })
        .buffer_unordered(PENDING)
        .filter_map(std::future::ready)
}

fn admit(
    stream: TcpStream,
    places: &Arc<Semaphore>,
    by_address: &Arc<Mutex<HashMap<IpAddr, usize>>>,
    limits: &ConnectionLimits,
    bursts: &LogBursts,
) -> Option<Guarded> {
    let ip = stream.peer_addr().ok()?.ip();
    let Ok(place) = Arc::clone(places).try_acquire_owned() else {
        refused(
            bursts,
            "max",
            &format!(
                "gRPC connections at their limit (--max-connections {}): closing new ones",
                limits.max
            ),
        );
        return None;
    };
    let address = {
        let mut open = by_address.lock().ok()?;
        let n = open.entry(ip).or_default();
        if *n >= limits.per_address {
            refused(
                bursts,
                "per_address",
                &format!(
                    "gRPC connections from {ip} at their limit \
                     (--max-connections-per-address {}): closing new ones",
                    limits.per_address
                ),
            );
            return None;
        }
        *n += 1;
        AddressPlace {
            open: Arc::clone(by_address),
            ip,
        }
    };
    let _ = stream.set_nodelay(true);
    Some(Guarded {
        stream,
        _place: place,
        _address: address,
    })
}
