//! `POST /api/orders/{id}/payment` and `GET /api/revenue`.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{Caller, Payload};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use switchyard_protocol::rest::{PaymentReceipt, PaymentRequest};
use switchyard_protocol::{ErrorBody, Revenue, Role};
use switchyard_store::Change;
use switchyard_store::orders::parse_order_id;

/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// Pay an order, once per `Idempotency-Key`
///
/// The order's customer or an admin; the amount must equal the order total. The first success
/// answers 201 and adds the amount to revenue (`order.paid`, `revenue.updated`). The same key
/// with the same body answers the stored result with `Idempotent-Replayed: true` and counts
/// nothing; with another body it is 422. Keys are scoped by caller `sub`, role and route.
/// Checks in order: 404, 403, the key, 409, then the payload (400 without a valid key, 422 for
/// a wrong amount).
#[utoipa::path(
    post,
    path = "/orders/{id}/payment",
    tag = "payments",
    operation_id = "payOrder",
    security(("bearer" = ["customer", "admin"])),
    params(
        ("id" = String, Path, description = "The order id (canonical decimal: `42`, never `042`)", pattern = "^[0-9]{1,18}$", example = "1"),
        ("Idempotency-Key" = String, Header, description = "1 to 255 printable ASCII characters, unique per payment attempt", pattern = "^[!-~]{1,255}$"),
    ),
    request_body = PaymentRequest,
    responses(
        (status = 201, description = "Paid (or the stored answer of an earlier request with this key)", body = PaymentReceipt,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer of an earlier request"))),
        (status = 403, description = "`forbidden`: partners never pay; service tokens may not", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order, or not yours", body = ErrorBody),
        (status = 409, description = "`conflict`: already paid, cancelled, or a payment the revenue total cannot take", body = ErrorBody),
        (status = 422, description = "`invalid`: the amount is not the order total, or the key was used for another payment", body = ErrorBody),
    ),
)]
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

/// Read the revenue totals
///
/// Admins only (payments minus refunds, and the number of paid orders).
#[utoipa::path(
    get,
    path = "/revenue",
    tag = "payments",
    operation_id = "getRevenue",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The totals", body = Revenue),
        (status = 403, description = "`forbidden`: admins only", body = ErrorBody),
    ),
)]
pub async fn revenue(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Revenue>, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(Json(state.store.revenue().await?))
}
