//! The API's error policy, in one place.
//!
//! Every failure is an HTTP status plus the one error shape of every Switchyard surface
//! (`switchyard_protocol::error`): `{"error": code, "message": text}`.
//!
//! | status | code | when |
//! |--------|------|------|
//! | 400 | `bad_request` | malformed JSON, a missing or bad header or query parameter |
//! | 401 | `unauthorized` | missing, malformed, expired or wrongly signed token |
//! | 403 | `forbidden` | the role or the caller's relation to the order does not allow it |
//! | 404 | `not_found` | unknown route, an unknown product, or an order that does not exist *or that the caller may not see* |
//! | 405 | `method_not_allowed` | known route, wrong method |
//! | 408 | `request_timeout` | the body did not arrive in time (the listener, `switchyard/src/listener.rs`) |
//! | 409 | `conflict` | invalid status transition, second payment, finished order, a payment the revenue total cannot take, a restock beyond the stock's bounds |
//! | 409 | `price_changed`, `out_of_stock` | an order line's price is not the catalog's / more units than there are; the body adds `items`: the lines at fault with the current price / the units available |
//! | 413 | `payload_too_large` | body over the configured limit |
//! | 415 | `unsupported_media_type` | body without `Content-Type: application/json` |
//! | 422 | `invalid` | well-formed JSON with invalid values |
//! | 429 | `limit_exceeded` | too many HTTP connections from one address (the listener), or requests in flight of one user ([`crate::in_flight`]) |
//! | 500 | `internal` | the server failed (a database error, corrupt data); details are logged, never returned |
//! | 503 | `unavailable` | a change while the event bus is down, every database connection busy past `DATABASE_ACQUIRE_TIMEOUT_MS` (the pool timed out), the process over its connection limit, or a request over its deadline (retry) |
//!
//! Every 503 carries `Retry-After` (seconds): the condition passes, and a client (a gateway
//! asking `/internal`, a service publishing) should come back then rather than at once.
//!
//! **Logged once, by the edge.** An internal error carries its cause inside the response
//! (an extension), and [`log_failures`], the outermost middleware, logs it with the request's
//! method and route — once, whatever path the error took to become a response (the axum
//! error-handling example). Conversions (`From<StoreError>`) never log.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use switchyard_protocol::catalog::{CatalogRefusal, LineProblem};
use switchyard_protocol::{ErrorBody, ErrorCode};
use switchyard_store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// What went wrong inside, for the log (internal errors only); never sent.
    cause: Option<String>,
    /// The order lines the catalog refused (`price_changed`, `out_of_stock`), sent beside
    /// `error` and `message`.
    lines: Option<Vec<LineProblem>>,
    /// `Retry-After`, seconds (the 503s).
    retry_after: Option<u32>,
}

/// `Retry-After` of a 503: long enough for a busy pool or a restarting bus to recover, short
/// enough that a retry within a client's deadline is worth it.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The cause of a 500, carried from the error to [`log_failures`] in the response.
#[derive(Debug, Clone)]
struct Cause(Arc<str>);

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            cause: None,
            lines: None,
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Invalid,
            message,
        )
    }
    /// 503 `unavailable`, with `Retry-After`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(RETRY_AFTER_SECS),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                message,
            )
        }
    }
    /// A server-side failure: the caller gets a generic 500, `cause` goes to the log.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        ApiError {
            cause: Some(cause.to_string()),
            ..ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error; it has been logged",
            )
        }
    }

    /// The body, as a batch result or a response carries it.
    pub fn body(&self) -> ErrorBody<'static> {
        ErrorBody::new(self.code, self.message.clone())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("switchyard_api_errors_total", "code" => self.code.as_str()).increment(1);
        let mut response = match self.lines {
            Some(items) => (
                self.status,
                Json(CatalogRefusal {
                    error: self.code,
                    message: self.message,
                    items,
                }),
            )
                .into_response(),
            None => (
                self.status,
                Json(ErrorBody::new(self.code, self.message.as_str())),
            )
                .into_response(),
        };
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(Cause(cause.into()));
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Logs every failure the API answered with a 500, once, with what it was doing. Outermost
/// layer of the API router, so every route and middleware below it is covered.
pub async fn log_failures(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    if let Some(Cause(cause)) = response.extensions().get::<Cause>() {
        tracing::error!(
            %method,
            route = route.as_deref().unwrap_or("unmatched"),
            status = response.status().as_u16(),
            cause = %cause,
            "request failed"
        );
    }
    response
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::NotFound => ApiError::not_found("order not found"),
            StoreError::UnknownProduct => ApiError::not_found("product not found"),
            StoreError::Refused(refusal) => ApiError {
                lines: Some(refusal.items),
                ..ApiError::new(StatusCode::CONFLICT, refusal.error, refusal.message)
            },
            StoreError::Forbidden(m) => ApiError::forbidden(m),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Invalid(m) => ApiError::invalid(m),
            // Every pooled connection stayed busy for DATABASE_ACQUIRE_TIMEOUT_MS: a load
            // peak or a slow transaction, not a failure — the client retries (#15).
            err if err.pool_timed_out() => {
                metrics::counter!("switchyard_database_pool_timeouts_total").increment(1);
                ApiError::unavailable("every database connection is busy; retry shortly")
            }
            StoreError::Corrupt(_)
            | StoreError::Config(_)
            | StoreError::Database(_)
            | StoreError::Migrate(_) => ApiError::internal(err),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::Invalid,
            _ => ErrorCode::BadRequest,
        };
        ApiError::new(status, code, rejection.body_text())
    }
}
