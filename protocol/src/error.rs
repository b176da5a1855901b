//! The one error shape of every surface, and its codes.
//!
//! A REST error, a refused WebSocket handshake and a WebSocket `error` frame all carry the
//! same two fields: `error`, a machine-readable [`ErrorCode`], and `message`, a human-readable
//! text for logs and developers (never parsed by clients):
//!
//! ```text
//! REST, any 4xx/5xx              {"error":"not_found","message":"order not found"}
//! handshake refused (401, …)     {"error":"unauthorized","message":"token expired","reason":"token expired"}
//! WebSocket reply                {"type":"error","id":3,"error":"forbidden","message":"…","code":"forbidden"}
//! ```
//!
//! `reason` (handshake) and `code` (WebSocket) are the names these fields had before the one shape;
//! they are still sent, with the same values, for one release so that older clients keep
//! working, and will then be removed (protocol/README.md, "Errors").

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Every error code Switchyard sends, on any surface. A client branches on this, never on
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: not JSON, an unknown op, a missing or bad field or header, a bad
    /// room name, a binary frame. (HTTP 400; on a socket the connection stays usable.)
    BadRequest,
    /// No token, or a token that is malformed, expired, wrongly signed or not for this
    /// surface. (HTTP 401)
    Unauthorized,
    /// The caller may not do this: its role, or its relation to the order or room. (HTTP 403)
    Forbidden,
    /// No such route, or an order that does not exist or that the caller may not see. (HTTP 404)
    NotFound,
    /// Known route, wrong method. (HTTP 405)
    MethodNotAllowed,
    /// The request body did not arrive within the body deadline. (HTTP 408; the connection
    /// is closed)
    RequestTimeout,
    /// The change conflicts with the order's state: an invalid transition, a second payment,
    /// a finished order. (HTTP 409)
    Conflict,
    /// An order line's `unit_price_paise` is not the catalog's price any more (the app showed
    /// a stale one); the body's `items` carry the current prices. (HTTP 409)
    PriceChanged,
    /// An order asks for more units than the catalog has; the body's `items` name every
    /// short SKU and its available quantity. (HTTP 409)
    OutOfStock,
    /// A body, or a published event's data, over its configured limit. (HTTP 413)
    PayloadTooLarge,
    /// A body without `Content-Type: application/json`. (HTTP 415)
    UnsupportedMediaType,
    /// Well-formed JSON with invalid values. (HTTP 422)
    Invalid,
    /// Too many requests or ops for a rate limit; retry later. (HTTP 429; on a socket the
    /// connection stays open)
    RateLimited,
    /// A configured count limit was hit: connections (HTTP 429 per user, 503 per gateway),
    /// subscriptions per connection.
    LimitExceeded,
    /// The server is draining, overloaded or took too long, or a dependency (the event bus)
    /// is down; retry. (HTTP 503)
    Unavailable,
    /// The server failed; the details are logged, never returned. Retrying may help. (HTTP 500)
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::Conflict,
        ErrorCode::PriceChanged,
        ErrorCode::OutOfStock,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Invalid,
        ErrorCode::RateLimited,
        ErrorCode::LimitExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PriceChanged => "price_changed",
            ErrorCode::OutOfStock => "out_of_stock",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Invalid => "invalid",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error body of REST responses and refused handshakes: `{"error": code, "message": text}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ErrorBody<'a> {
    pub error: ErrorCode,
    #[cfg_attr(feature = "schema", schema(value_type = String))]
    pub message: Cow<'a, str>,
}

impl<'a> ErrorBody<'a> {
    pub fn new(error: ErrorCode, message: impl Into<Cow<'a, str>>) -> ErrorBody<'a> {
        ErrorBody {
            error,
            message: message.into(),
        }
    }

    pub fn into_owned(self) -> ErrorBody<'static> {
        ErrorBody {
            error: self.error,
            message: Cow::Owned(self.message.into_owned()),
        }
    }
}

impl fmt::Display for ErrorBody<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// The body of a refused WebSocket handshake: the [`ErrorBody`] plus, for one release, the
/// same message under its old name `reason`.
#[derive(Debug, Serialize)]
pub struct HandshakeRefusal<'a> {
    #[serde(flatten)]
    pub body: ErrorBody<'a>,
    /// Deprecated alias of `message` (the field's name before the one shape).
    pub reason: &'a str,
}

impl<'a> HandshakeRefusal<'a> {
    pub fn new(error: ErrorCode, message: &'a str) -> HandshakeRefusal<'a> {
        HandshakeRefusal {
            body: ErrorBody::new(error, message),
            reason: message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_their_wire_names() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }

    #[test]
    fn one_shape_with_the_old_alias() {
        let body = ErrorBody::new(ErrorCode::NotFound, "order not found");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":"not_found","message":"order not found"}"#
        );
        let refusal = HandshakeRefusal::new(ErrorCode::Unauthorized, "token expired");
        assert_eq!(
            serde_json::to_string(&refusal).unwrap(),
            r#"{"error":"unauthorized","message":"token expired","reason":"token expired"}"#
        );
        // A client reads the refusal as the one shape, ignoring the alias.
        let read: ErrorBody =
            serde_json::from_str(&serde_json::to_string(&refusal).unwrap()).unwrap();
        assert_eq!(
            read,
            ErrorBody::new(ErrorCode::Unauthorized, "token expired")
        );
    }
}
