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
//! # Shutdown
//! [`HttpServer::shutdown`]: stop accepting; tell every connection to finish (idle
//! keep-alive connections close at once, a request being served completes and then closes);
//! wait for them up to a grace period; then drop whatever is left.

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Timings of the HTTP side of a server process.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A connection must deliver a complete request head within this long (its first
    /// request, and each later one on a kept-alive connection), or it is closed.
    pub handshake_timeout: Duration,
}

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
            handshake_timeout: config.handshake_timeout,
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
    handshake_timeout: Duration,
    stop: CancellationToken,
    force: CancellationToken,
}

async fn accept_loop(listener: TcpListener, conns: Arc<Conns>, tracker: TaskTracker) {
    loop {
        let tcp = tokio::select! {
            () = conns.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    accept_error(err, &conns.stop).await;
                    continue;
                }
            },
        };
        tracker.spawn(serve_connection(tcp, conns.clone()));
    }
}

/// As `axum::serve` (and hyper 0.14's server): a reset or aborted connection is the
/// client's business; anything else (EMFILE: out of descriptors) is logged and retried
/// after a pause instead of spinning.
async fn accept_error(err: std::io::Error, stop: &CancellationToken) {
    use std::io::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%err, "accept failed; retrying in 1 s");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

async fn serve_connection(tcp: TcpStream, conns: Arc<Conns>) {
    // Set by the service when the first request head has been parsed and routed.
    let routed = Arc::new(AtomicBool::new(false));
    let service = {
        let routed = routed.clone();
        let app = TowerToHyperService::new(conns.app.clone());
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            routed.store(true, Ordering::Relaxed);
            app.call(req)
        })
    };
    let mut conn = pin!(
        conns
            .http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades()
    );
    let mut first_request = pin!(tokio::time::sleep(conns.handshake_timeout));
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
