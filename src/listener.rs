//! Every listener's connections, guarded (gRPC, the console, metrics): at
//! most so many at once, at most so many from one address, and a
//! connection that sends nothing within the handshake timeout is closed.
//! Without these, idle TCP connections that never speak — no credential
//! needed — could take every file descriptor the process has, and with
//! them every caller's service. Also: the open-file limit fitted at start,
//! and HTTP/1 serving for the plain listeners. No tonic here (metrics stay
//! a leaf); gRPC's use of [`Guarded`] is in `grpc`.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::log_bursts::LogBursts;

/// What a listener serves, for its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Grpc,
    Console,
    Metrics,
}

impl Served {
    fn name(self) -> &'static str {
        match self {
            Served::Grpc => "gRPC",
            Served::Console => "console",
            Served::Metrics => "metrics",
        }
    }

    /// A limit as the operator sets it: its flag for gRPC's, the
    /// configuration's number for the others'.
    fn limit(self, flag: &str, n: usize) -> String {
        match self {
            Served::Grpc => format!("--{flag} {n}"),
            Served::Console | Served::Metrics => format!("{n} at once"),
        }
    }
}

/// How long the listener pauses after a failed accept (out of file
/// descriptors and the like), rather than spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A refused connection is logged once per burst of its kind; the rest
/// are counted and summed up (the tenant pools' failures log the same way).
fn refused(bursts: &LogBursts, served: Served, kind: &str, message: &str) {
    bursts.warn(
        &format!("{} connections refused", served.name()),
        kind,
        message,
    );
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

impl ConnectionLimits {
    /// For the plain HTTP listeners (metrics, the console): scrapers and
    /// operators' browsers are few.
    pub fn http() -> Self {
        Self {
            max: 64,
            per_address: 16,
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
        if let Ok(mut open) = self.open.lock() {
            crate::counts::release(&mut open, &self.ip);
        }
    }
}

impl Guarded {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
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
    served: Served,
) -> impl Stream<Item = io::Result<Guarded>> {
    let places = Arc::new(Semaphore::new(limits.max));
    let by_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let bursts = Arc::new(LogBursts::new(Duration::from_secs(10)));
    let timeout = limits.handshake_timeout;
    TcpListenerStream::new(listener)
        .filter_map(move |accepted| {
            let (admitted, pause) = match accepted {
                Ok(stream) => (
                    admit(stream, &places, &by_address, &limits, &bursts, served),
                    false,
                ),
                Err(e) => {
                    let message = format!("cannot accept a {} connection: {e}", served.name());
                    refused(&bursts, served, "accept", &message);
                    (None, true)
                }
            };
            async move {
                if pause {
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
                admitted
            }
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
    served: Served,
) -> Option<Guarded> {
    let ip = stream.peer_addr().ok()?.ip();
    let Ok(place) = Arc::clone(places).try_acquire_owned() else {
        refused(
            bursts,
            served,
            "max",
            &format!(
                "{} connections at their limit ({}): closing new ones",
                served.name(),
                served.limit("max-connections", limits.max)
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
                served,
                "per_address",
                &format!(
                    "{} connections from {ip} at their limit ({}): closing new ones",
                    served.name(),
                    served.limit("max-connections-per-address", limits.per_address)
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

/// How long a listener's open HTTP/1 connections get, once it stops, to
/// finish the responses they are sending; then they are cut.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// Serves `service` over HTTP/1.1 on `listener` (the plain HTTP
/// listeners: metrics and the console) until `stop`, its connections
/// guarded by `limits`; a request's headers, too, must arrive within the
/// handshake timeout. At `stop` no new connection is taken, idle ones
/// close, and responses being sent get [`HTTP_GRACE`] to end (the
/// console's event streams end on the same signal).
pub async fn serve_http1<S, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    served: Served,
    service: S,
    stop: CancellationToken,
) where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let header_timeout = limits.handshake_timeout;
    let mut incoming = std::pin::pin!(incoming(listener, limits, served));
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            next = incoming.next() => match next {
                Some(Ok(stream)) => stream,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let service = service.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "a {} connection ended with an error", served.name());
            }
        });
    }
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(HTTP_GRACE, drained).await.is_err() {
        connections.shutdown().await;
    }
}

/// File descriptors kept beyond the counted ones: the log, the private
/// cluster's pipes, cancel requests to PostgreSQL, TLS and key files,
/// moves' and placement's connections, DNS.
const FD_RESERVE: usize = 256;

/// What the process's open-file limit must hold besides the gRPC
/// listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct OpenFiles {
    /// Connections to PostgreSQL at most: catalog pool, tenant connection
    /// budget, upgrade workers.
    pub database: usize,
    /// The plain HTTP listeners' connections at most.
    pub http: usize,
}

impl OpenFiles {
    fn others(self) -> usize {
        self.database + self.http + FD_RESERVE
    }
}

/// The gRPC connection cap that fits under an open-file limit of `limit`
/// beside `others`; `None` when `max` already fits. Never below 16, so a
/// tight limit still serves.
fn fitted_max(max: usize, others: usize, limit: u64) -> Option<usize> {
    let room = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(others);
    (max > room).then_some(room.max(16))
}

/// Raises the process's soft open-file limit to its hard limit (where it
/// is lower, as under systemd's default 1024 soft limit), then lowers the
/// gRPC listener's cap if the rest would still not fit: past the limit a
/// flood of connections would leave no descriptor for PostgreSQL, and
/// every call would fail rather than only the flood's. Says so in a
/// warning, with what to raise.
pub fn fit_open_files(grpc: &mut ConnectionLimits, needs: OpenFiles) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return;
        }
    };
    let others = needs.others();
    if let Some(max) = fitted_max(grpc.max, others, limit) {
        tracing::warn!(
            "the open-file limit ({limit}) leaves room for {max} gRPC connections beside \
             {} to PostgreSQL, {} to the HTTP listeners and {FD_RESERVE} kept: \
             --max-connections lowered from {} to {max}; raise the limit \
             (ulimit -n, LimitNOFILE= in a systemd unit) to keep it",
            needs.database,
            needs.http,
            grpc.max
        );
        grpc.max = max;
        grpc.per_address = grpc.per_address.min(max);
    }
}

#[cfg(test)]
mod tests {
    use super::fitted_max;

    #[test]
    fn the_grpc_cap_is_lowered_only_when_the_limit_cannot_hold_it() {
        // Fits: unchanged.
        assert_eq!(fitted_max(4096, 900, 1_048_576), None);
        assert_eq!(fitted_max(4096, 900, 4996), None);
        // One short: lowered to what fits.
        assert_eq!(fitted_max(4096, 900, 4995), Some(4095));
        // systemd's default soft limit.
        assert_eq!(fitted_max(4096, 900, 1024), Some(124));
        // Nothing left: a floor, so the service still answers.
        assert_eq!(fitted_max(4096, 900, 256), Some(16));
        assert_eq!(fitted_max(4096, 900, u64::MAX), None);
    }
}
