//! The HTTP/1.1 accept loop: one task per TCP connection, a handshake deadline on each, and
//! a graceful shutdown that waits for in-flight requests — but never past its deadline.
//!
//! # Why not `axum::serve`
//! `axum::serve` (0.8) gives hyper no timer, so hyper's `header_read_timeout` never runs,
//! and it uses hyper-util's `auto` connection, which first reads up to 24 bytes to tell
//! HTTP/1 from HTTP/2 with no timeout at all. A client that connects and sends nothing (or
//! half a request line) held a task and a descriptor until it hung up: the slowloris attack.
//!
//! # The handshake deadline
//! Two bounds, so that neither alone has to be right:
//! - hyper's own `http1::Builder::header_read_timeout` (with a [`TokioTimer`]) bounds every
//!   request head, including the wait for the next request on a kept-alive connection — so
//!   an idle keep-alive connection is also closed after the handshake timeout;
//! - our own first-request deadline: unless the first request head has reached the router
//!   within the timeout, the connection is dropped. This holds whatever hyper does with a
//!   connection that sends no bytes at all: older hyper started its timer only at the first
//!   byte (hyperium/hyper#3178, #3305); 1.12 starts it at once, and
//!   `tests/handshake.rs` passes with either bound alone for a silent or trickling client
//!   (only hyper's covers a kept-alive connection's later requests).
//!
//! HTTP/1.1 only: axum here is built without `http2`, and skipping the `auto` protocol sniff
//! is what removes the untimed read. A WebSocket upgrade leaves this loop once the `101` is
//! written; the gateway tracks and drains upgraded sockets itself (axum's graceful shutdown
//! never saw them either, tokio-rs/axum#3003).
//!
//! # Bodies and requests have deadlines too
//! A request head in time is not enough: a client could then send its body one byte every few
//! seconds, or never, and hold a task and a descriptor for as long as it likes. Every request
//! body is wrapped in [`Deadline`]: the whole body must arrive within `body_timeout` of the
//! head (else 408, and the connection is closed), and the whole request must be answered within
//! `request_timeout` (else 503, closed). A WebSocket upgrade's request ends with its `101`, so
//! neither bounds an upgraded connection.
//!
//! # A bound on connections
//! At most `max_connections` HTTP connections are served at once per listener (upgraded
//! WebSockets leave this count; the gateway bounds them itself), and at most
//! `max_connections_per_ip` from one client address when set (off by default: behind nginx
//! every client has nginx's address). A connection beyond either is answered at once — 503 or
//! 429, a JSON body, `Connection: close` — without reading its request. When the process runs
//! out of descriptors, `accept` fails: the loop then backs off (10 ms, doubling up to 1 s)
//! instead of spinning, and resumes as soon as descriptors come back.
//!
//! # Shutdown
//! [`HttpServer::shutdown`]: stop accepting; tell every connection to finish (idle
//! keep-alive connections close at once, a request being served completes and then closes);
//! wait for them up to a grace period; then drop whatever is left.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use switchyard_api::error::ApiError;
use switchyard_protocol::{ErrorBody, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits and timings of the HTTP side of a listener.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A connection must deliver a complete request head within this long (its first
    /// request, and each later one on a kept-alive connection), or it is closed.
    pub handshake_timeout: Duration,
    /// A request's whole body must arrive within this long of its head (else 408, closed).
    pub body_timeout: Duration,
    /// A request must be answered within this long of its head (else 503, closed).
    pub request_timeout: Duration,
    /// HTTP connections served at once (not counting upgraded WebSockets). Beyond: 503.
    pub max_connections: usize,
    /// HTTP connections served at once from one client address; 0: no such bound. Beyond: 429.
    pub max_connections_per_ip: usize,
}

/// Back-off of the accept loop after a failed `accept` (out of descriptors): from the first
/// pause, doubling, up to the last.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// How long a refused connection is kept open after its answer, reading what the client
/// sends, so that closing it does not reset the connection before the answer is read.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// At most this many refused connections linger at once; beyond, they are closed at once.
const MAX_LINGERING: usize = 64;

/// A running accept loop and its connections.
pub struct HttpServer {
    /// Stops the accept loop and asks every connection to finish.
    stop: CancellationToken,
    /// Drops every connection still open: the grace period is over.
    force: CancellationToken,
    connections: TaskTracker,
    accept: JoinHandle<()>,
}

impl HttpServer {
    /// Starts accepting on `listener`, serving `app` on every connection.
    pub fn spawn(listener: TcpListener, app: Router, config: HttpConfig) -> HttpServer {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.handshake_timeout);
        let shared = Arc::new(Conns {
            http,
            app,
            config,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            lingering: AtomicUsize::new(0),
            stop: CancellationToken::new(),
            force: CancellationToken::new(),
        });
        let connections = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), connections.clone()));
        HttpServer {
            stop: shared.stop.clone(),
            force: shared.force.clone(),
            connections,
            accept,
        }
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then closes what
    /// is left. Returns how many connections had to be closed at the deadline.
    pub async fn shutdown(self, grace: Duration) -> usize {
        self.stop.cancel();
        if let Err(err) = self.accept.await {
            tracing::warn!(%err, "accept loop failed");
        }
        self.connections.close();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.connections.len();
        self.force.cancel();
        self.connections.wait().await;
        left
    }
}

/// What every connection task shares.
struct Conns {
    http: http1::Builder,
    app: Router,
    config: HttpConfig,
    /// HTTP connections being served.
    open: AtomicUsize,
    /// The same, per client address (only kept when `max_connections_per_ip` is set).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Refused connections waiting for their client to read the answer.
    lingering: AtomicUsize,
    stop: CancellationToken,
    force: CancellationToken,
}

/// A connection's place in the counts; given back on drop.
struct Slot {
    conns: Arc<Conns>,
    ip: Option<IpAddr>,
}

/// Why a connection was refused before its request was read.
enum Refusal {
    Full,
    PerIp,
}

impl Conns {
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Slot, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.config.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        let mut slot = Slot {
            conns: self.clone(),
            ip: None,
        };
        let per_ip = self.config.max_connections_per_ip;
        if per_ip > 0 {
            let ip = peer.ip();
            let mut counts = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.entry(ip).or_insert(0);
            if *count >= per_ip {
                return Err(Refusal::PerIp); // dropping `slot` gives the process-wide place back
            }
            *count += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut counts = self.conns.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = counts.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, conns: Arc<Conns>, tracker: TaskTracker) {
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let (tcp, peer) = tokio::select! {
            () = conns.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF.0;
                    accepted
                }
                Err(err) => {
                    if accept_error(err, backoff, &conns.stop).await {
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    }
                    continue;
                }
            },
        };
        match conns.admit(peer) {
            Ok(slot) => {
                tracker.spawn(serve_connection(tcp, conns.clone(), slot));
            }
            Err(refusal) => refuse(tcp, refusal, &conns),
        }
    }
}

/// As `axum::serve` (and hyper 0.14's server): a reset or aborted connection is the
/// client's business; anything else (EMFILE: out of descriptors) is logged and retried
/// after `pause` instead of spinning. True when it paused.
async fn accept_error(err: std::io::Error, pause: Duration, stop: &CancellationToken) -> bool {
    use std::io::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return false;
    }
    metrics::counter!("switchyard_accept_errors_total").increment(1);
    tracing::error!(%err, ?pause, "accept failed; backing off");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(pause) => {}
    }
    true
}

/// Answers a connection over the limits without reading its request, and closes it.
fn refuse(mut tcp: TcpStream, refusal: Refusal, conns: &Arc<Conns>) {
    // A full process is a passing state: `Retry-After` tells clients (a gateway asking the
    // API, `switchyard/src/backend/remote.rs`) when to come back.
    let (status, retry, code, reason, message) = match refusal {
        Refusal::Full => (
            "503 Service Unavailable",
            "retry-after: 1\r\n",
            ErrorCode::Unavailable,
            "connections",
            "too many HTTP connections; retry shortly",
        ),
        Refusal::PerIp => (
            "429 Too Many Requests",
            "",
            ErrorCode::LimitExceeded,
            "per_ip",
            "too many HTTP connections from this address",
        ),
    };
    metrics::counter!("switchyard_http_rejections_total", "reason" => reason).increment(1);
    let body = serde_json::to_string(&ErrorBody::new(code, message)).unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         {retry}connection: close\r\n\r\n{body}",
        body.len()
    );
    // The answer fits an empty socket buffer: written without waiting.
    let _ = tcp.try_write(answer.as_bytes());
    if conns.lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
        conns.lingering.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let conns = conns.clone();
    tokio::spawn(async move {
        let linger = async {
            let _ = tcp.shutdown().await;
            let mut sink = [0u8; 1024];
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
        conns.lingering.fetch_sub(1, Ordering::AcqRel);
    });
}

async fn serve_connection(tcp: TcpStream, conns: Arc<Conns>, _slot: Slot) {
    // No Nagle: every write here is a whole response or a whole batch of WebSocket frames
    // (one flush per batch), so holding a small write until the previous one is acknowledged
    // only adds latency — up to the peer's delayed-ACK time when events follow each other
    // closer than that (issue #17 §2; the bare fan-out server and Centrifugo set it too).
    let _ = tcp.set_nodelay(true);
    // Set by the service when the first request head has been parsed and routed.
    let routed = Arc::new(AtomicBool::new(false));
    let service = {
        let routed = routed.clone();
        let app = TowerToHyperService::new(conns.app.clone());
        let (body_timeout, request_timeout) =
            (conns.config.body_timeout, conns.config.request_timeout);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            routed.store(true, Ordering::Relaxed);
            let late = Arc::new(AtomicBool::new(false));
            let deadline = Instant::now() + body_timeout;
            let req = req.map(|body| Deadline::new(body, deadline, late.clone()));
            let call = app.call(req);
            async move {
                let answer = tokio::time::timeout(request_timeout, call).await;
                Ok::<_, std::convert::Infallible>(match answer {
                    _ if late.load(Ordering::Relaxed) => timed_out(
                        StatusCode::REQUEST_TIMEOUT,
                        ErrorCode::RequestTimeout,
                        "body_timeout",
                        "the request body did not arrive in time",
                    ),
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => timed_out(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Unavailable,
                        "request_timeout",
                        "the request took too long; retry (with the same Idempotency-Key)",
                    ),
                })
            }
        })
    };
    let mut conn = pin!(
        conns
            .http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades()
    );
    let mut first_request = pin!(tokio::time::sleep(conns.config.handshake_timeout));
    let mut awaiting_first = true;
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                // Errors here are the client's: a reset, a malformed or timed-out head.
                // hyper's error text never includes the request line or headers.
                if let Err(err) = result {
                    if err.is_timeout() {
                        metrics::counter!("switchyard_handshake_timeouts_total").increment(1);
                    }
                    tracing::debug!(%err, "HTTP connection ended with an error");
                }
                return;
            }
            () = &mut first_request, if awaiting_first => {
                if !routed.load(Ordering::Relaxed) {
                    metrics::counter!("switchyard_handshake_timeouts_total").increment(1);
                    tracing::debug!("no complete request within the handshake timeout; closing");
                    return;
                }
                awaiting_first = false;
            }
            () = conns.stop.cancelled(), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            () = conns.force.cancelled() => return,
        }
    }
}

/// The answer to a request that ran out of time; the connection closes after it (its body
/// may be half read).
fn timed_out(status: StatusCode, code: ErrorCode, reason: &'static str, message: &str) -> Response {
    metrics::counter!("switchyard_http_rejections_total", "reason" => reason).increment(1);
    let mut response = ApiError::new(status, code, message).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(switchyard_api::error::RETRY_AFTER_SECS),
        );
    }
    response
}

/// A request body that must be complete by `deadline`: past it, the next read fails (and
/// `late` tells the service to answer 408). The timer is only made for a body that makes
/// a reader wait, so bodiless requests (GETs, upgrades) cost no allocation.
struct Deadline<B> {
    inner: B,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    late: Arc<AtomicBool>,
}

impl<B> Deadline<B> {
    fn new(inner: B, deadline: Instant, late: Arc<AtomicBool>) -> Deadline<B> {
        Deadline {
            inner,
            deadline,
            timer: None,
            late,
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.late.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err("the request body did not arrive in time".into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Warns at start when `wanted` descriptors (connections this process may hold at once) come
/// close to the process's open-file limit: `accept` would then fail before the connection
/// limits refuse anyone with a clear answer.
pub fn warn_if_over_open_files(wanted: usize) {
    let Some(limit) = open_file_limit() else {
        return;
    };
    // Descriptors the process needs besides connections: runtime, database, Redis, logs.
    const RESERVED: usize = 64;
    if wanted + RESERVED > limit {
        tracing::warn!(
            wanted,
            limit,
            "SWITCHYARD_MAX_CONNECTIONS + SWITCHYARD_MAX_HTTP_CONNECTIONS exceed the open-file \
             limit (ulimit -n): accept will fail (and back off) before the limits answer"
        );
    }
}

/// The soft `Max open files` of this process (Linux), from `/proc/self/limits`.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
