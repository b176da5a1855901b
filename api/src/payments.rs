//! `POST /api/orders/{id}/payment` and `GET /api/revenue`.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{Caller, Payload};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use switchyard_protocol::rest::PaymentRequest;
use switchyard_protocol::{Revenue, Role};
use switchyard_store::Change;
use switchyard_store::orders::parse_order_id;

/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// Pays an order once per `Idempotency-Key` (scoped to the caller's `sub`, role and this
/// route). The first success answers 201 `{payment_id, order_id, amount_paise, paid_at,
/// status}` and adds the amount to revenue; a repeat with the same key and body gets the same
/// answer (with `Idempotent-Replayed: true`) and counts nothing; the same key with a
/// different body is 422; a second payment of a paid order is 409. Checks in order: 404, 403,
/// the key, 409, then the payload (400 without a valid key, 422 for a wrong amount).
pub async fn pay(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Payload,
) -> Result<Response, ApiError> {
    let payment: PaymentRequest = body
        .checked(&state, &caller, &id, Change::Pay, |_| {
            idempotency_key(&headers).map(|_| ())
        })
        .await?;
    let key = idempotency_key(&headers)?;
    let id = parse_order_id(&id).ok_or_else(|| ApiError::not_found("order not found"))?;
    let outcome = state
        .store
        .pay(id, caller.actor(), key, payment.amount_paise)
        .await?;
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    let mut response = (status, Json(outcome.body)).into_response();
    if outcome.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    } else {
        metrics::counter!("switchyard_payments_total").increment(1);
    }
    Ok(response)
}

/// The `Idempotency-Key` header: 1 to [`MAX_KEY_LEN`] printable ASCII characters (else 400).
fn idempotency_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::bad_request("missing Idempotency-Key header"))?
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters"
            ))
        })
}

/// `GET /api/revenue` (admin).
pub async fn revenue(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Revenue>, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(Json(state.store.revenue().await?))
}
