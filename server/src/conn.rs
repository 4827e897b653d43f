//! Client connections: how many, how long they may sit without a call, and
//! what each one holds.
//!
//! Every accepted TCP connection is wrapped in a [`GuardedConn`]:
//! - at most `--max-connections` are open at once; past it a new connection
//!   is closed at accept (counted as `limit`);
//! - a connection must start its first call within `--header-timeout-ms` of
//!   being accepted (an idle TCP connection, a half-sent HTTP/2 preface or
//!   half-sent HTTP/1.1 headers are closed, counted as
//!   `first_request_timeout`);
//! - a connection with no call in flight for `--idle-timeout-ms` is closed
//!   (`idle`); clients reconnect on their next call, as gRPC clients do.
//!
//! The per-connection [`ConnState`] reaches the tower layers through the
//! request extensions ([`ConnInfo`]), so a call can be charged to the
//! connection it came on (see [`crate::layers::ProtectLayer`]'s
//! per-connection share of the node's slots).

use crate::metrics::{Metrics, ReasonLabels};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The connection bounds, from configuration.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// From accept to the first call.
    pub first_request_timeout: Duration,
    /// With no call in flight, before the connection is closed.
    pub idle_timeout: Duration,
}

/// What one connection holds, shared by its IO and the calls it carries.
#[derive(Debug)]
pub struct ConnState {
    /// Calls in flight (any service, streams for their whole life).
    active: AtomicUsize,
    /// Receipts slots held (see the protect layer).
    pub(crate) slots: AtomicUsize,
    /// Whether a call ever started on it.
    served: AtomicBool,
    /// When the last call ended (ms since `epoch`), or the accept time.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl ConnState {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            slots: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Marks a call started; the guard marks it ended when dropped.
    pub(crate) fn call_started(self: &Arc<Self>) -> CallGuard {
        self.served.store(true, Ordering::Release);
        self.active.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One call in flight on a connection.
#[derive(Debug)]
pub(crate) struct CallGuard(Arc<ConnState>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since_ms.store(s.now_ms(), Ordering::Release);
        s.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connect info tonic puts into every request's extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Addresses (also inserted on their own, for `Request::remote_addr`).
    pub tcp: TcpConnectInfo,
    /// The connection's state.
    pub state: Arc<ConnState>,
}

/// Accepted connections, bounded in number.
#[derive(Debug, Clone)]
pub struct Acceptor {
    limits: ConnLimits,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Acceptor {
    /// An acceptor enforcing `limits`.
    pub fn new(limits: ConnLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            limits,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            metrics,
        }
    }

    /// Wraps an accepted stream, or `None` (the stream is dropped, which
    /// closes it) when the node is at `--max-connections`.
    pub fn admit(&self, stream: TcpStream) -> Option<GuardedConn> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.closed("limit");
            tracing::debug!(peer = ?stream.peer_addr().ok(), "connection refused: --max-connections reached");
            return None;
        };
        self.metrics.connections_open.inc();
        let state = Arc::new(ConnState::new());
        let limit = self.limits.first_request_timeout;
        Some(GuardedConn {
            info: ConnInfo {
                tcp: TcpConnectInfo {
                    local_addr: stream.local_addr().ok(),
                    remote_addr: stream.peer_addr().ok(),
                },
                state,
            },
            inner: stream,
            timer: Box::pin(tokio::time::sleep(limit)),
            acceptor: self.clone(),
            _permit: permit,
        })
    }

    fn closed(&self, reason: &'static str) {
        self.metrics
            .connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// A client connection that closes itself when it has waited too long for
/// a call (see the module docs).
#[derive(Debug)]
pub struct GuardedConn {
    inner: TcpStream,
    info: ConnInfo,
    timer: Pin<Box<Sleep>>,
    acceptor: Acceptor,
    _permit: OwnedSemaphorePermit,
}

impl Drop for GuardedConn {
    fn drop(&mut self) {
        self.acceptor.metrics.connections_open.dec();
    }
}

impl GuardedConn {
    /// `Err` once the connection has waited too long for a call; otherwise
    /// re-arms the timer for the next check.
    fn check_timer(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let s = &self.info.state;
            let limits = self.acceptor.limits;
            let (limit, reason) = if s.served.load(Ordering::Acquire) {
                (limits.idle_timeout, "idle")
            } else {
                (limits.first_request_timeout, "first_request_timeout")
            };
            let now = Instant::now();
            if s.active.load(Ordering::Acquire) > 0 {
                self.timer.as_mut().reset(now + limit);
                continue;
            }
            let since = s.epoch + Duration::from_millis(s.idle_since_ms.load(Ordering::Acquire));
            if now >= since + limit {
                self.acceptor.closed(reason);
                tracing::debug!(peer = ?self.info.tcp.remote_addr, reason, "closing connection");
                return Err(io::Error::new(io::ErrorKind::TimedOut, reason));
            }
            self.timer.as_mut().reset(since + limit);
        }
        Ok(())
    }
}

impl AsyncRead for GuardedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The server always has a read pending on an open connection, so
        // the timer is polled (and its wake-up registered) here.
        self.check_timer(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for GuardedConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// A client connection as the server reads it: plain, or TLS over a
/// [`GuardedConn`] (so the handshake counts against
/// `--header-timeout-ms` like a first call does).
#[derive(Debug)]
pub enum Conn {
    /// Plain text (h2c and HTTP/1.1).
    Plain(GuardedConn),
    /// TLS (`--tls-cert`), the handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<GuardedConn>>),
}

impl Conn {
    /// Runs the TLS handshake on `conn`, within `--header-timeout-ms`. A
    /// failure is logged and counted (`tls_handshake`, or
    /// `first_request_timeout` when the client was too slow).
    pub async fn handshake(conn: GuardedConn, tls: tokio_rustls::TlsAcceptor) -> Option<Self> {
        let peer = conn.info.tcp.remote_addr;
        let acceptor = conn.acceptor.clone();
        // The connection's own timer only runs while the handshake reads; a
        // client that sent its hello and stopped reading our answer would
        // hold its slot forever without this bound.
        let limit = acceptor.limits.first_request_timeout;
        let Ok(done) = tokio::time::timeout(limit, tls.accept(conn)).await else {
            acceptor.closed("first_request_timeout");
            tracing::debug!(?peer, "TLS handshake not done within --header-timeout-ms");
            return None;
        };
        match done {
            Ok(stream) => Some(Conn::Tls(Box::new(stream))),
            Err(e) => {
                if e.kind() != io::ErrorKind::TimedOut {
                    acceptor.closed("tls_handshake");
                }
                tracing::debug!(?peer, "TLS handshake failed: {e}");
                None
            }
        }
    }
}

macro_rules! each_conn {
    ($self:expr, $c:ident => $body:expr) => {
        match $self.get_mut() {
            Conn::Plain($c) => {
                let $c = Pin::new($c);
                $body
            }
            Conn::Tls($c) => {
                let $c = Pin::new($c.as_mut());
                $body
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_conn!(self, c => c.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_conn!(self, c => c.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_conn!(self, c => c.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_conn!(self, c => c.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_conn!(self, c => c.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(c) => c.is_write_vectored(),
            Conn::Tls(c) => c.is_write_vectored(),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(c) => c.info.clone(),
            Conn::Tls(c) => c.get_ref().0.info.clone(),
        }
    }
}
