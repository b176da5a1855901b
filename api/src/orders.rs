//! `/api/orders`: create, read, list, status changes, partner assignment.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{Caller, Payload};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use switchyard_protocol::order::NewOrder;
use switchyard_protocol::rest::{Assignment, OrderPage, PageQuery, StatusChange};
use switchyard_protocol::room::is_valid_id;
use switchyard_protocol::{Order, Role};
use switchyard_store::orders::{can_see, parse_order_id};
use switchyard_store::{Change, Scope};

/// Largest page a listing returns.
pub const MAX_PAGE: i64 = 200;
const DEFAULT_PAGE: i64 = 50;

fn order_id(id: &str) -> Result<i64, ApiError> {
    parse_order_id(id).ok_or_else(|| ApiError::not_found("order not found"))
}

/// `POST /api/orders` (customer) → 201 with the order. Quantities, unit prices and the
/// total are capped (`OrderLimits`; beyond: 422).
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    body: Payload,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    caller.require(&[Role::Customer])?;
    let new: NewOrder = body.parse()?;
    let total = new
        .validate(&state.config.order_limits)
        .map_err(ApiError::invalid)?;
    let order = state.store.create_order(&caller.0.sub, &new, total).await?;
    Ok((StatusCode::CREATED, Json(order)))
}

/// `GET /api/orders/{id}` (the customer, the assigned partner, an admin).
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    let id = order_id(&id)?;
    let order = state.store.order(id).await?;
    order
        .filter(|o| can_see(o, caller.actor()))
        .map(Json)
        .ok_or_else(|| ApiError::not_found("order not found"))
}

/// `GET /api/orders?after=&limit=`: admin sees all, a customer their own, a partner the
/// orders assigned to them. Oldest first; `next_after` is set when more may follow.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    page: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let after = match page.after.as_deref() {
        None | Some("") => 0,
        Some(a) => {
            parse_order_id(a).ok_or_else(|| ApiError::invalid("after must be an order id"))?
        }
    };
    let sub = caller.0.sub.as_str();
    let scope = match caller.role() {
        Role::Admin => Scope::All,
        Role::Customer => Scope::Customer(sub),
        Role::Partner => Scope::Partner(sub),
        Role::Service => return Err(ApiError::forbidden("role service may not list orders")),
    };
    let orders = state.store.list_orders(scope, after, limit).await?;
    let next_after = (orders.len() as i64 == limit)
        .then(|| orders.last().map(|o| o.id.clone()))
        .flatten();
    Ok(Json(OrderPage { orders, next_after }))
}

/// `POST /api/orders/{id}/status` `{"status": ...}`: 404 for an order the caller may not
/// see, 403 for a change this caller may never make, 409 for one the order's state does not
/// allow, then 422 for an unknown status.
pub async fn set_status(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Payload,
) -> Result<Json<Order>, ApiError> {
    // Whether the caller may make the change depends on the status asked for, so it is read
    // leniently before the payload is judged.
    let asked = body.peek_str("status").and_then(|s| s.parse().ok());
    let change: StatusChange = body
        .checked(&state, &caller, &id, Change::Status(asked), |_| Ok(()))
        .await?;
    let id = order_id(&id)?;
    let order = state
        .store
        .change_status(id, caller.actor(), change.status)
        .await?;
    Ok(Json(order))
}

/// `POST /api/orders/{id}/assign` `{"partner": "p7"}` (admin).
pub async fn assign(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Payload,
) -> Result<Json<Order>, ApiError> {
    let assignment: Assignment = body
        .checked(&state, &caller, &id, Change::Assign, |a: &Assignment| {
            if is_valid_id(&a.partner) {
                Ok(())
            } else {
                Err(ApiError::invalid(
                    "partner must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
                ))
            }
        })
        .await?;
    let id = order_id(&id)?;
    // A former partner loses the order room on every gateway: the relay sends the revoke
    // with the commit's events (it is in the outbox).
    let order = state
        .store
        .assign(id, caller.actor(), &assignment.partner)
        .await?;
    Ok(Json(order))
}
