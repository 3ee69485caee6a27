//! The socket of a tenant connection, opened here rather than by the driver
//! so that closing a connection can wait for PostgreSQL to end its backend.
//!
//! A connection's budget permit is given back only when its socket is
//! closed by the server (or after 5 s of waiting for that): the backend has
//! then left pg_stat_activity and freed its slot of max_connections, so the
//! budget holds for what PostgreSQL sees, not only for what tenantd counts.
//!
//! It also bounds what one message from the server may bring into memory.
//! The driver reads a whole message before it hands it on, so a single row
//! of 100 MB would cost 100 MB before any limit could look at it. The socket
//! reads the protocol's framing (a type byte and a length) and drops rows
//! and notices larger than the limit as they stream past, counting them so
//! the call can report its result truncated; any other message larger than
//! the limit ends the connection with [`MessageTooLarge`].
//!
//! And it can be closed from outside while a statement runs ([`Control::
//! close_now`]): the driver closes a connection only once every response it
//! waits for has come, which a statement that ignores cancels never sends.
//! The socket then closes its sending side at once; the backend notices
//! within `client_connection_check_interval` and ends, and the socket is
//! given up when the server has hung up, as on any close.
//!
//! Over TCP it speaks TLS when the database URL asks for it (see
//! [`crate::pgtls`]): the guard then reads the decrypted stream, and closing
//! from outside shuts the TCP socket's sending side under the TLS session.

use std::future::Future as _;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::pgtls::{DbTls, Negotiated};

/// How long a closing connection waits for the server to hang up.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Where the database listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp {
        host: String,
        port: u16,
        /// TLS as the database URL's sslmode says; `None`: never.
        tls: Option<Arc<DbTls>>,
    },
    /// The socket directory and port, as libpq takes them.
    Unix { dir: PathBuf, port: u16 },
}

impl Endpoint {
    /// A socket whose incoming messages are bounded by `limit` bytes, and
    /// its control.
    pub async fn connect_guarded(
        &self,
        timeout: Duration,
        limit: usize,
    ) -> io::Result<(Socket, Arc<Control>)> {
        let mut socket = self.connect(timeout).await?;
        let control = Arc::new(Control::default());
        socket.guard = Some(Guard::new(limit, control.clone()));
        socket.control = Some(control.clone());
        Ok((socket, control))
    }

    pub async fn connect(&self, timeout: Duration) -> io::Result<Socket> {
        let connect = async {
            Ok::<_, io::Error>(match self {
                Endpoint::Tcp { host, port, tls } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    match tls {
                        None => Inner::Tcp(s),
                        Some(tls) => match tls.negotiate(s, host).await? {
                            Negotiated::Tls(s) => Inner::Tls(s),
                            Negotiated::Plain(s) => Inner::Tcp(s),
                        },
                    }
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
            guard: None,
            control: None,
        })
    }
}

enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A TCP or Unix socket whose shutdown lasts until the peer hangs up.
pub struct Socket {
    inner: Inner,
    write_closed: bool,
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bounds incoming messages, when asked for.
    guard: Option<Guard>,
    /// Lets the connection be closed from outside, when asked for.
    control: Option<Arc<Control>>,
}

impl Inner {
    /// Shuts the sending side of the socket itself (under TLS too: the
    /// server notices the TCP half-close whatever its TLS session holds).
    fn poll_shutdown_raw(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(&mut s.get_mut().0).poll_shutdown(cx),
        }
    }

    fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(control) = &this.control {
            control.waker.register(cx.waker());
            if control.close_requested.load(Ordering::Acquire) && !this.write_closed {
                // Only the sending side: what the server still sends (its
                // last words, then its hang-up) is read as usual.
                let _ = ready!(this.inner.poll_shutdown_raw(cx));
                this.write_closed = true;
            }
        }
        match &mut this.guard {
            None => this.inner.poll_read_raw(cx, buf),
            Some(guard) => guard.poll_read(&mut this.inner, cx, buf),
        }
    }
}

/// Shared with a connection's socket: what its guard saw (rows it dropped,
/// whether it ended the connection over a message too large to drop), and
/// the switch that closes it from outside.
#[derive(Debug, Default)]
pub struct Control {
    rows_dropped: AtomicU64,
    fatal: AtomicBool,
    close_requested: AtomicBool,
    /// Wakes the connection's reader to close.
    waker: futures::task::AtomicWaker,
}

impl Control {
    /// Closes the connection's sending side now, whatever it waits for.
    pub fn close_now(&self) {
        self.close_requested.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Rows (and notices) dropped so far.
    pub fn rows_dropped(&self) -> u64 {
        self.rows_dropped.load(Ordering::Relaxed)
    }

    /// Whether the connection ended over a message too large to drop.
    pub fn ended_connection(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }
}

/// The error a guarded socket ends its connection with.
#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL sent a message of {0} bytes, more than the {1} bytes a response may hold")]
pub struct MessageTooLarge(pub usize, pub usize);

/// Where the guard is in the server's stream of messages.
enum Frame {
    /// Reading a type byte and a length (5 bytes, kept in `header`).
    Header,
    /// Passing on this many more bytes of a message body.
    Pass(usize),
    /// Dropping this many more bytes of a message body.
    Skip(usize),
}

/// Reads the framing of the server's messages and keeps oversized ones out.
struct Guard {
    limit: usize,
    frame: Frame,
    header: [u8; 5],
    header_len: usize,
    /// Bytes to hand on that did not fit the reader's buffer.
    carry: Vec<u8>,
    carry_at: usize,
    scratch: Box<[u8]>,
    seen: Arc<Control>,
}

/// Bytes read from the socket at once.
const SCRATCH: usize = 16 * 1024;

impl Guard {
    fn new(limit: usize, seen: Arc<Control>) -> Self {
        Self {
            limit,
            frame: Frame::Header,
            header: [0; 5],
            header_len: 0,
            carry: Vec::new(),
            carry_at: 0,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            seen,
        }
    }

    fn poll_read(
        &mut self,
        inner: &mut Inner,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.carry_at < self.carry.len() {
                let n = buf.remaining().min(self.carry.len() - self.carry_at);
                buf.put_slice(&self.carry[self.carry_at..self.carry_at + n]);
                self.carry_at += n;
                if self.carry_at == self.carry.len() {
                    self.carry.clear();
                    self.carry_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            let mut read = ReadBuf::new(&mut scratch);
            let polled = inner.poll_read_raw(cx, &mut read);
            let n = read.filled().len();
            let result = match polled {
                Poll::Ready(Ok(())) if n == 0 => Some(Poll::Ready(Ok(()))),
                Poll::Ready(Ok(())) => {
                    let before = buf.filled().len();
                    match self.take(&scratch[..n], buf) {
                        Err(e) => Some(Poll::Ready(Err(e))),
                        // Nothing to hand on yet (all dropped, or a partial
                        // header): read on rather than signal the end.
                        Ok(()) if buf.filled().len() == before && self.carry.is_empty() => None,
                        Ok(()) => Some(Poll::Ready(Ok(()))),
                    }
                }
                other => Some(other),
            };
            self.scratch = scratch;
            if let Some(result) = result {
                return result;
            }
        }
    }

    /// Runs `input` through the framing, handing on what passes.
    fn take(&mut self, mut input: &[u8], buf: &mut ReadBuf<'_>) -> io::Result<()> {
        while !input.is_empty() {
            match self.frame {
                Frame::Header => {
                    let n = (5 - self.header_len).min(input.len());
                    self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
                    self.header_len += n;
                    input = &input[n..];
                    if self.header_len < 5 {
                        continue;
                    }
                    self.header_len = 0;
                    let length = u32::from_be_bytes([
                        self.header[1],
                        self.header[2],
                        self.header[3],
                        self.header[4],
                    ]) as usize;
                    let body = length.checked_sub(4).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "malformed message length")
                    })?;
                    let droppable = matches!(self.header[0], b'D' | b'N' | b'A');
                    if body > self.limit && droppable {
                        self.seen.rows_dropped.fetch_add(1, Ordering::Relaxed);
                        self.frame = Frame::Skip(body);
                    } else if body > self.limit {
                        self.seen.fatal.store(true, Ordering::Relaxed);
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            MessageTooLarge(body, self.limit),
                        ));
                    } else {
                        let header = self.header;
                        self.emit(&header, buf);
                        self.frame = Frame::Pass(body);
                    }
                }
                Frame::Pass(left) => {
                    let n = left.min(input.len());
                    self.emit(&input[..n], buf);
                    input = &input[n..];
                    self.frame = Frame::Pass(left - n);
                }
                Frame::Skip(left) => {
                    let n = left.min(input.len());
                    input = &input[n..];
                    self.frame = Frame::Skip(left - n);
                }
            }
            if matches!(self.frame, Frame::Pass(0) | Frame::Skip(0)) {
                self.frame = Frame::Header;
            }
        }
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8], buf: &mut ReadBuf<'_>) {
        let n = if self.carry.is_empty() {
            buf.remaining().min(bytes.len())
        } else {
            0
        };
        buf.put_slice(&bytes[..n]);
        self.carry.extend_from_slice(&bytes[n..]);
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection was closed",
            )));
        }
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Unix(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    /// Closes the sending side (after the driver's Terminate message), then
    /// reads until the server closes its side: by then its backend is gone.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_closed {
            // Under TLS: close_notify, then the TCP half-close.
            ready!(match &mut this.inner {
                Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                Inner::Unix(s) => Pin::new(s).poll_shutdown(cx),
                Inner::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
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
            match ready!(this.inner.poll_read_raw(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => continue,
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Feeds `stream` through a guard in chunks of `chunk` bytes into
    /// reader buffers of `room` bytes.
    fn run(stream: &[u8], limit: usize, chunk: usize, room: usize) -> (io::Result<Vec<u8>>, u64) {
        let seen = Arc::new(Control::default());
        let mut guard = Guard::new(limit, seen.clone());
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            let mut storage = vec![0u8; room.max(1)];
            let mut buf = ReadBuf::new(&mut storage);
            if let Err(e) = guard.take(piece, &mut buf) {
                return (Err(e), seen.rows_dropped());
            }
            out.extend_from_slice(buf.filled());
            // Drain what did not fit, as poll_read would.
            out.extend_from_slice(&guard.carry[guard.carry_at..]);
            guard.carry.clear();
            guard.carry_at = 0;
        }
        (Ok(out), seen.rows_dropped())
    }

    #[test]
    fn small_messages_pass_and_large_rows_are_dropped_whole() {
        let small = message(b'D', b"abc");
        let large = message(b'D', &[7u8; 100]);
        let notice = message(b'N', &[1u8; 60]);
        let done = message(b'C', b"SELECT 2\0");
        let stream = [small.clone(), large, notice, small.clone(), done.clone()].concat();
        let want = [small.clone(), small, done].concat();
        for chunk in [1, 2, 3, 5, 7, 64, 4096] {
            for room in [1, 4, 5, 6, 1000] {
                let (out, dropped) = run(&stream, 50, chunk, room);
                assert_eq!(out.unwrap(), want, "chunk {chunk} room {room}");
                assert_eq!(dropped, 2);
            }
        }
    }

    #[test]
    fn an_oversized_message_that_cannot_be_dropped_ends_the_connection() {
        let stream = [message(b'D', b"x"), message(b'E', &[0u8; 200])].concat();
        let (out, _) = run(&stream, 50, 3, 16);
        let err = out.unwrap_err();
        assert!(err.to_string().contains("200 bytes"), "{err}");
    }

    #[test]
    fn a_message_exactly_at_the_limit_passes() {
        let m = message(b'D', &[1u8; 50]);
        let (out, dropped) = run(&m, 50, 10, 8);
        assert_eq!(out.unwrap(), m);
        assert_eq!(dropped, 0);
    }
}
