//! `GET /conformance/echo` — test-only, for RFC 6455 conformance runs (the Autobahn
//! fuzzingclient cases, see protocol/README.md). Mounted only when
//! [`GatewayConfig::conformance_echo`](crate::GatewayConfig) is set.
//!
//! The handshake is the one `/ws` uses ([`handshake::admit`] and [`handshake::limits`]:
//! draining, `Origin`, token, connection slots, the same tungstenite buffer, frame and
//! message limits); only the session differs: text and binary messages are echoed back,
//! pings are answered by tungstenite, and read errors close with the codes `/ws` uses.

use crate::handshake::{self, Admitted};
use crate::{Shared, session};
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use futures_util::SinkExt;
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::close::Disconnect;
use tokio_util::sync::CancellationToken;

pub(crate) async fn echo(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Admitted { ws, opened, .. } = match handshake::admit(&shared, &headers, &uri, ws).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let tracked = shared.tracker.token();
    let shutdown = shared.shutdown.clone();
    let write_timeout = shared.config.write_timeout;
    handshake::limits(ws, &shared.config)
        .on_failed_upgrade(|err| tracing::debug!(%err, "conformance upgrade failed"))
        .on_upgrade(move |socket| async move {
            let _tracked = tracked;
            let _slot = opened.slot;
            run(socket, shutdown, write_timeout).await;
        })
}

/// Echoes until the peer closes, a read fails, or the server shuts down.
async fn run(mut socket: WebSocket, shutdown: CancellationToken, write_timeout: Duration) {
    let why = loop {
        let inbound = tokio::select! {
            inbound = socket.recv() => inbound,
            _ = shutdown.cancelled() => break Disconnect::SHUTDOWN,
        };
        let reply = match inbound {
            None => return,
            Some(Err(err)) => match session::close_for(err) {
                Some(why) => break why,
                None => return,
            },
            Some(Ok(Message::Close(_))) => {
                // tungstenite queued the close reply; send it (as `/ws` does).
                let _ = tokio::time::timeout(write_timeout, socket.flush()).await;
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => message,
        };
        match tokio::time::timeout(write_timeout, socket.send(reply)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    };
    let _ = tokio::time::timeout(write_timeout, socket.send(session::close_message(why))).await;
}
