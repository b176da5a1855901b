//! Request extractors that reject with the API's JSON errors: the caller (bearer token)
//! and request bodies.
//!
//! # The order of checks
//! Every write answers the first check that fails, in this order (README, "REST API"):
//! 401 authentication ([`Caller`]) → 404 the order is visible to the caller → 403 the caller
//! may make this kind of change → 409 the change is valid in the order's state → the payload
//! (400 malformed, 415 not JSON, 422 invalid values). A body is read (up to the route's size
//! limit: 413) before the checks but judged only after them ([`Payload`]), so a refusal never
//! depends on whether the payload happened to be valid, and a malformed body says nothing
//! about an order the caller may not see.

use crate::ApiState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use switchyard_auth::{Principal, bearer};
use switchyard_protocol::{ErrorCode, Role};
use switchyard_store::{Actor, Change};

/// The authenticated caller, from `Authorization: Bearer <jwt>`.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            sub: &self.0.sub,
            role: self.0.role,
        }
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    /// Refuses unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role {} may not do this",
                self.0.role
            )))
        }
    }

    /// The caller a request's `Authorization` header names, or the 401 it gets.
    pub fn from_headers(headers: &HeaderMap, state: &ApiState) -> Result<Caller, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing token"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(bearer::from_authorization)
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <jwt>"))?;
        state
            .verifier
            .verify_unrevoked(token, |sub| state.backplane.controller.revoked_at(sub))
            .map(Caller)
            .map_err(|e| ApiError::unauthorized(e.to_string()))
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        // Verified a moment ago by `in_flight::limit` (under `/api`).
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        Caller::from_headers(&parts.headers, state)
    }
}

/// A request body, read but not yet judged: handlers [`parse`](Payload::parse) it after
/// their authorization and state checks. Reading stops at the route's size limit (413).
pub struct Payload {
    bytes: Bytes,
    /// `Content-Type: application/json` (or `…+json`) was sent.
    json: bool,
}

impl<S: Send + Sync> FromRequest<S> for Payload {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::PayloadTooLarge,
                    rejection.body_text(),
                ),
                _ => ApiError::bad_request(rejection.body_text()),
            }
        })?;
        Ok(Payload { bytes, json })
    }
}

impl Payload {
    /// The body as `T`: 415 without a JSON content type, 400 for malformed JSON, 422 for
    /// JSON of the wrong shape.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !self.json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "expected a request with `Content-Type: application/json`",
            ));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&self.bytes)?;
        Ok(value)
    }

    /// A top-level string field, read leniently (whatever else the body holds): for the
    /// checks that must know what kind of change is asked before the payload is judged.
    pub fn peek_str(&self, field: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.bytes).ok()?;
        Some(value.get(field)?.as_str()?.to_owned())
    }

    /// The payload as `T`, checked by `validate`, or — when it is invalid — the first of the
    /// order's checks (404, 403, 409) that fails for `change` before the payload's own error.
    pub async fn checked<T: DeserializeOwned>(
        &self,
        state: &ApiState,
        caller: &Caller,
        order_id: &str,
        change: Change,
        validate: impl FnOnce(&T) -> Result<(), ApiError>,
    ) -> Result<T, ApiError> {
        let parsed = self
            .parse::<T>()
            .and_then(|value| validate(&value).map(|()| value));
        if parsed.is_err() {
            state
                .store
                .precheck(order_id, caller.actor(), change)
                .await?;
        }
        parsed
    }
}

/// Whether the request says its body is JSON, as axum's `Json` decides it.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
