//! The API's error policy, in one place.
//!
//! Every failure is an HTTP status plus a JSON body `{"error": code, "message": text}`:
//!
//! | status | code | when |
//! |--------|------|------|
//! | 400 | `bad_request` | malformed JSON, a missing or bad header |
//! | 401 | `unauthorized` | missing, malformed, expired or wrongly signed token |
//! | 403 | `forbidden` | the role or the caller's relation to the order does not allow it |
//! | 404 | `not_found` | unknown route, or an order that does not exist *or that the caller may not see* |
//! | 405 | `method_not_allowed` | known route, wrong method |
//! | 409 | `conflict` | invalid status transition, second payment, finished order, a payment the revenue total cannot take |
//! | 413 | `payload_too_large` | body over the configured limit |
//! | 415 | `unsupported_media_type` | body without `Content-Type: application/json` |
//! | 422 | `invalid` | well-formed JSON with invalid values |
//! | 500 | `internal` | a database failure; details are logged, never returned |
//! | 503 | `unavailable` | a change while the event bus is down (retry) |

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("switchyard_api_errors_total", "code" => self.code).increment(1);
        (
            self.status,
            Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::NotFound => ApiError::not_found("order not found"),
            StoreError::Forbidden(m) => ApiError::forbidden(m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Invalid(m) => ApiError::invalid(m),
            StoreError::Database(_) | StoreError::Migrate(_) => {
                tracing::error!(%err, "database error");
                ApiError::internal()
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid",
            _ => "bad_request",
        };
        ApiError::new(status, code, rejection.body_text())
    }
}
