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
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// One warning per kind per window: a flood of refused connections is a
/// line every ten seconds, not one per connection.
struct Throttle {
    window: Duration,
    last: Mutex<HashMap<&'static str, std::time::Instant>>,
}

impl Throttle {
    fn due(&self, kind: &'static str) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        match last.get(kind) {
            Some(at) if now.duration_since(*at) < self.window => false,
            _ => {
                last.insert(kind, now);
                true
            }
        }
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
    let refused = Arc::new(Throttle {
        window: Duration::from_secs(10),
        last: Mutex::default(),
    });
    let timeout = limits.handshake_timeout;
    TcpListenerStream::new(listener)
        .filter_map(move |accepted| {
            let admitted = match accepted {
                Ok(stream) => admit(stream, &places, &by_address, &limits, &refused),
                Err(e) => {
                    if refused.due("accept") {
                        tracing::warn!(error = %e, "cannot accept a gRPC connection");
                    }
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
    refused: &Throttle,
) -> Option<Guarded> {
    let ip = stream.peer_addr().ok()?.ip();
    let Ok(place) = Arc::clone(places).try_acquire_owned() else {
        if refused.due("max") {
            tracing::warn!(
                limit = limits.max,
                "gRPC connections at their limit (--max-connections): closing new ones"
            );
        }
        return None;
    };
    let address = {
        let mut open = by_address.lock().ok()?;
        let n = open.entry(ip).or_default();
        if *n >= limits.per_address {
            if refused.due("per_address") {
                tracing::warn!(%ip, limit = limits.per_address, "gRPC connections from one address at their limit (--max-connections-per-address): closing new ones");
            }
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
