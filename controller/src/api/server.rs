//! The accept loop and per-connection handling of the API.
//!
//! Written out instead of `axum::serve` because a controller that tens of
//! thousands of agents long-poll must bound what an idle or slow client can
//! hold:
//! - a TLS handshake gets [`Limits::tls_handshake`];
//! - request headers must arrive within [`Limits::header_read`], so a client
//!   that sends a few bytes at a time is closed (hyper's header timer, which
//!   starts at a request's first byte), and so is one that opens a
//!   connection and sends nothing (our own watchdog);
//! - a connection with no request in flight for [`Limits::idle`] is closed.
//!   A request in flight (an agent's long-poll) keeps its connection, however
//!   long it waits;
//! - running out of file descriptors makes the loop pause briefly and log
//!   (rate-limited) instead of spinning.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::RateLimitedLog;

/// Time limits on what a client may hold without doing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A TLS handshake must finish within this.
    pub tls_handshake: Duration,
    /// A request's headers must arrive within this.
    pub header_read: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(90),
        }
    }
}

/// How long in-flight requests get to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// Accept connections until `shutdown` resolves, then stop accepting, ask
/// every connection to finish its request and close, and wait for them (at
/// most [`DRAIN`]).
pub(super) async fn run(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    let accept_errors = RateLimitedLog::new(Duration::from_secs(10));
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(suppressed) = accept_errors.allow() {
                    tracing::error!(
                        error = %e,
                        suppressed,
                        "cannot accept a connection; if it says \"Too many open files\", \
                         raise LimitNOFILE in the unit (each waiting agent holds one)"
                    );
                }
                // EMFILE and friends: the backlog keeps the connection; try
                // again once something has closed.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // A waiting agent sends nothing for minutes: keepalive probes find a
        // peer that vanished without a FIN (power cut, dropped link) and keep
        // NAT and firewall state on the way alive. The kernel sends them.
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive());
        let app = app.clone();
        let stop = stop_rx.clone();
        // Each protocol is its own task, sized for its own connection state
        // (thousands of them wait at once; see docs/benchmarks.md).
        match &tls {
            None => {
                // Plain HTTP: HTTP/2 with prior knowledge (agents, for the
                // PINGs that find a silent controller) or HTTP/1.1, told
                // apart by the first bytes.
                let tasks = tracker.clone();
                tracker.spawn(async move {
                    match tokio::time::timeout(limits.header_read, speaks_h2(&stream)).await {
                        Ok(Ok(true)) => {
                            tasks.spawn(http2(stream, peer, app, limits, stop));
                        }
                        Ok(Ok(false)) => {
                            tasks.spawn(http1(stream, peer, app, limits, stop));
                        }
                        Ok(Err(e)) => tracing::trace!(%peer, error = %e, "connection failed"),
                        Err(_) => tracing::trace!(%peer, "nothing sent in time"),
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let tasks = tracker.clone();
                tracker.spawn(async move {
                    let s =
                        match tokio::time::timeout(limits.tls_handshake, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                        tasks.spawn(http2(s, peer, app, limits, stop));
                    } else {
                        tasks.spawn(http1(s, peer, app, limits, stop));
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        tracing::warn!("closing connections whose requests did not finish in time");
    }
    Ok(())
}

/// Whether a plain connection opens with HTTP/2's preface (`PRI * HTTP/2.0`:
/// no HTTP/1 request starts with `PRI `), looking without taking.
async fn speaks_h2(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    let mut buf = [0u8; 16];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        let seen = &buf[..n.min(PREFACE.len())];
        if !PREFACE.starts_with(seen) {
            return Ok(false);
        }
        if seen.len() == PREFACE.len() {
            return Ok(true);
        }
        // A prefix of it so far: wait for more (peek returns at once with
        // what is there).
        stream.readable().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// When a connection last finished a request, and how many it has in flight.
struct Activity {
    start: Instant,
    last_done_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Whether any request has begun. hyper's header timer starts only at a
    /// request's first byte, so a connection that never sends one is closed
    /// by this watchdog after the header timeout instead.
    started: AtomicBool,
    /// Wakes the watchdog when a request ends, so it can move its deadline.
    changed: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_done_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// When the connection becomes idle-closable, or `None` while a request
    /// is in flight.
    fn idle_deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.started.load(Ordering::Acquire) {
            return Some(self.start + limits.header_read);
        }
        let idle = limits.idle;
        let last = Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
        Some(self.start + last + idle)
    }
}

/// Counts a request in flight while it lives.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.started.store(true, Ordering::Release);
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.start.elapsed().as_millis() as u64;
        self.0.last_done_ms.fetch_max(ms, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// TCP keepalive of accepted connections: first probe after a minute of
/// silence, then every 15 s; four unanswered probes close the connection
/// (a vanished agent is found within two minutes).
fn keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15))
        .with_retries(4)
}

/// The service of one connection: the router, with the peer address and
/// the connection's activity count around every request.
fn service(
    peer: SocketAddr,
    app: Router,
    activity: &Arc<Activity>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    let activity = activity.clone();
    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let guard = InFlight::begin(&activity);
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await;
            drop(guard);
            Ok::<_, Infallible>(resp.unwrap_or_else(|never| match never {}))
        }
    })
}

// `http1` and `http2` stay two functions, not one with a protocol argument:
// an async fn's state is sized for its largest branch, and HTTP/2's state in
// every HTTP/1 long-poll is what made a waiting agent cost 26.8 KiB.
async fn http1<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper's header timer also runs while a kept-alive connection
        // waits for its next request: at the header timeout it would close
        // every idle connection long before the idle timeout. The
        // watchdog bounds a connection's first request by the header
        // timeout; later ones by the idle timeout.
        .header_read_timeout(limits.header_read.max(limits.idle))
        .serve_connection(TokioIo::new(io), service(peer, app, &activity));
    drive(conn, activity, peer, limits, stop).await;
}

async fn http2<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .serve_connection(TokioIo::new(io), service(peer, app, &activity));
    drive(conn, activity, peer, limits, stop).await;
}

/// What [`drive`] needs of a connection of either protocol.
trait Connection: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Connection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S> Connection for hyper::server::conn::http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// Serve one connection until it ends, closing it when idle too long or
/// when the server stops.
async fn drive(
    conn: impl Connection,
    activity: Arc<Activity>,
    peer: SocketAddr,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = pin!(conn);
    let mut closing = false;
    loop {
        // Sleep until the idle deadline. While a request is in flight there
        // is none: the request's end wakes this (thousands of long-polls
        // wait at once, and a timer each would wake them all for nothing).
        let deadline = activity.idle_deadline(&limits);
        let wake = deadline.unwrap_or_else(Instant::now);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified(), if !closing => {}
            () = tokio::time::sleep_until(wake.into()), if !closing && deadline.is_some() => {
                if activity
                    .idle_deadline(&limits)
                    .is_some_and(|d| d <= Instant::now())
                {
                    if !activity.started.load(Ordering::Acquire) {
                        // No request ever began (nothing sent, or headers
                        // trickling in): nothing to finish gracefully, and
                        // hyper would wait for those headers. Drop it.
                        tracing::trace!(%peer, "closing a connection that sent no request in time");
                        return;
                    }
                    tracing::trace!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
