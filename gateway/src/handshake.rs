//! `GET /ws`: authenticate, check limits, then upgrade — in that order, so a refused
//! client gets an HTTP status and a JSON body and never a WebSocket.
//!
//! Token sources, first match wins: `Authorization: Bearer <jwt>`; a `bearer.<jwt>` entry
//! in `Sec-WebSocket-Protocol` next to `switchyard.v1` (browsers, which cannot set
//! headers); the `access_token` query parameter. The query string is never logged.
//!
//! [`admit`] (the checks) and [`limits`] (tungstenite's limits) are shared with the
//! test-only `/conformance/echo` route, so conformance runs see the real handshake.

use crate::session::Session;
use crate::slot::{self, Full, Opened, Refused};
use crate::{GatewayConfig, Shared};
use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use switchyard_auth::{AuthError, Principal, bearer};
use switchyard_protocol::client::StreamPosition;
use switchyard_protocol::error::HandshakeRefusal;
use switchyard_protocol::{ErrorCode, Role, SUBPROTOCOL};

/// A refused handshake: the status and the one error shape (with the old `reason` alias).
fn refuse(status: StatusCode, error: ErrorCode, message: &str) -> Response {
    (status, Json(HandshakeRefusal::new(error, message))).into_response()
}

fn unauthorized(reason: &str) -> Response {
    metrics::counter!("switchyard_handshake_rejections_total", "reason" => reason.to_owned())
        .increment(1);
    refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, reason)
}

/// The token from the first source that has one.
fn token<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer::from_authorization)
    {
        return Some(token);
    }
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    if let (_, Some(token)) = bearer::from_subprotocols(offers) {
        return Some(token);
    }
    uri.query().and_then(bearer::from_query)
}

/// Whether the request's `Origin` is on the allow-list. No `Origin` at all is allowed (not a
/// browser, which always sends one on a WebSocket handshake); a value that is not UTF-8, or
/// more than one `Origin` header, is refused: either could otherwise be read as absent or
/// as the allowed one by us, and as something else by whatever reads the request next.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => true,
        (Some(_), Some(_)) => false,
        (Some(origin), None) => origin
            .to_str()
            .is_ok_and(|origin| allowed.iter().any(|o| o == origin)),
    }
}

/// What a route gets from [`admit`]: who connected, the upgrade, and the connection let in
/// (its slot held).
pub(crate) struct Admitted {
    pub principal: Principal,
    pub ws: WebSocketUpgrade,
    pub opened: Opened,
}

/// The checks every WebSocket route makes, in order: draining, `Origin`, token (no
/// service tokens), a valid upgrade request and `since`, then a connection slot here, the
/// user room joined and its position read, and a claim in the cluster-wide per-user count
/// (all waits for the bus under one deadline, [`slot::open`]). `Err` is the refusal.
// The refusal is the response itself, made once per refused handshake: not worth a box.
#[allow(clippy::result_large_err)]
pub(crate) async fn admit(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    uri: &Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Admitted, Response> {
    if shared.shutdown.is_cancelled() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "server is draining",
        ));
    }
    let config = &shared.config;
    if !config.allowed_origins.is_empty() && !origin_allowed(headers, &config.allowed_origins) {
        metrics::counter!("switchyard_handshake_rejections_total", "reason" => "origin")
            .increment(1);
        return Err(refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        ));
    }
    let principal = match token(headers, uri) {
        None => return Err(unauthorized(&AuthError::Missing.to_string())),
        Some(token) => match shared
            .verifier
            .verify_unrevoked(token, |sub| shared.backplane.controller.revoked_at(sub))
        {
            Ok(principal) => principal,
            Err(err) => return Err(unauthorized(&err.to_string())),
        },
    };
    if principal.role == Role::Service {
        return Err(unauthorized("service tokens cannot open a WebSocket"));
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return Err(refuse(
                rejection.status(),
                ErrorCode::BadRequest,
                &rejection.body_text(),
            ));
        }
    };
    let since = match uri.query().map(user_room_since).unwrap_or(Ok(None)) {
        Ok(since) => since,
        Err(()) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "since must be <epoch>:<offset>",
            ));
        }
    };
    let opened = slot::open(shared, &principal.sub, since)
        .await
        .map_err(|refused| refusal(shared, refused))?;
    Ok(Admitted {
        principal,
        ws,
        opened,
    })
}

/// The answer to a handshake [`slot::open`] refused, counted by reason.
fn refusal(shared: &Shared, refused: Refused) -> Response {
    let (reason, status, error, message) = match refused {
        Refused::Full(Full::Gateway) => (
            "limit",
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::LimitExceeded,
            "gateway is at its connection limit",
        ),
        Refused::Full(Full::User) => (
            "limit",
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LimitExceeded,
            "too many connections for this user",
        ),
        Refused::Full(Full::Cluster) => (
            "limit",
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::LimitExceeded,
            "too many connections for this user across the cluster",
        ),
        Refused::BusTimeout => (
            "bus_timeout",
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the event bus did not answer in time; retry later",
        ),
        Refused::BusUnavailable => (
            "bus_unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the event bus is unavailable; retry later",
        ),
    };
    metrics::counter!("switchyard_handshake_rejections_total", "reason" => reason).increment(1);
    let mut response = refuse(status, error, message);
    if matches!(refused, Refused::BusTimeout | Refused::BusUnavailable) {
        // Spread over 1–4 s, so refused clients do not all come back at once.
        let after = 1 + shared.next_conn.load(Ordering::Relaxed) % 4;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after));
    }
    response
}

/// The subprotocol and tungstenite's buffer, frame and message limits, for every route.
///
/// The write buffer is not capped by tungstenite: a session writes one message (or one
/// gathered batch, bounded by its outbound queue) and flushes it before the next, so what waits
/// there is bounded already — and a reply larger than a cap would fail its write and drop the
/// connection without a close frame. Replies have no size limit of the client's choosing but
/// can be large: an `admin:fleet` subscribe lists every partner online (10,000 partners: about
/// 2.5 MB; the old cap of 144 KiB dropped every admin past ~1,200 partners online).
pub(crate) fn limits(ws: WebSocketUpgrade, config: &GatewayConfig) -> WebSocketUpgrade {
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
}

/// The `since` query parameter (`<epoch>:<offset>`, the colon optionally `%3A`): recover the
/// user room in the welcome instead of with a later subscribe.
fn user_room_since(query: &str) -> Result<Option<StreamPosition>, ()> {
    let Some(value) = bearer::query_param(query, "since") else {
        return Ok(None);
    };
    let value = value.replace("%3A", ":").replace("%3a", ":");
    StreamPosition::parse_compact(&value).map(Some).ok_or(())
}

/// `GET /ws`. Takes the request whole and reads its head in place: axum's `HeaderMap` and `Uri`
/// extractors would copy them for every handshake (issue #17: allocations per handshake).
pub(crate) async fn upgrade(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (mut head, _body) = request.into_parts();
    let ws = WebSocketUpgrade::from_request_parts(&mut head, &shared).await;
    let Admitted {
        principal,
        ws,
        opened,
    } = match admit(&shared, &head.headers, &head.uri, ws).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let config = &shared.config;
    let session = Box::new(Session::new(shared.clone(), principal, opened));
    limits(ws, config)
        .on_failed_upgrade(|err| tracing::debug!(%err, "upgrade failed"))
        // The session runs in a task of its own, whose future is the session's loop and nothing
        // else: axum's upgrade task, which would otherwise carry it, keeps what it captured for
        // the upgrade (the WebSocket config, the protocol, the upgrade handle) for as long as
        // it runs — bytes per idle connection (issue #17). It ends as soon as this returns.
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            tokio::spawn(session.run(sink, stream));
            std::future::ready(())
        })
}
