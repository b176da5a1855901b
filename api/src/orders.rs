//! `/api/orders`: create, read, list, status changes, partner assignment.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{Caller, Payload};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use switchyard_protocol::catalog::CatalogRefusal;
use switchyard_protocol::order::NewOrder;
use switchyard_protocol::rest::{Assignment, OrderPage, PageQuery, StatusChange};
use switchyard_protocol::room::is_valid_id;
use switchyard_protocol::{ErrorBody, Order, OrderStatus, Role};
use switchyard_store::orders::{can_see, parse_order_id};
use switchyard_store::{Change, Scope};

/// Largest page a listing returns.
pub const MAX_PAGE: i64 = 200;
pub const DEFAULT_PAGE: i64 = 50;

/// The SKUs of an order's lines.
fn skus(order: &Order) -> Vec<String> {
    order.items.iter().map(|line| line.sku.clone()).collect()
}

/// An order id from the path; one that names no order is 404.
pub(crate) fn order_id(id: &str) -> Result<i64, ApiError> {
    parse_order_id(id).ok_or_else(|| ApiError::not_found("order not found"))
}

/// Place an order
///
/// Customers only. Each line names a catalog SKU and a quantity; the name and price are the
/// catalog's, and the units are reserved with the order (a cancellation gives them back).
/// Status starts `placed`; `order.created` goes to the customer's room, `stock.updated` to
/// each product's. Quantities and the total are capped (`SWITCHYARD_MAX_ITEM_QTY`,
/// `SWITCHYARD_MAX_ORDER_TOTAL_PAISE`; beyond: 422).
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    operation_id = "createOrder",
    security(("bearer" = ["customer"])),
    request_body = NewOrder,
    responses(
        (status = 201, description = "The order, `placed`", body = Order),
        (status = 403, description = "`forbidden`: only customers place orders", body = ErrorBody),
        (status = 409, description = "`price_changed`: a line's `unit_price_paise` is not the current price (`items`: each such SKU with its price now); `out_of_stock`: more units than there are (`items`: every short SKU with the units available). Nothing was reserved.", body = CatalogRefusal),
        (status = 422, description = "`invalid`: no items, a bad line, a SKU twice, a SKU not in the catalog or no longer sold (named), over a cap, a blank address", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    body: Payload,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    caller.require(&[Role::Customer])?;
    let new: NewOrder = body.parse()?;
    new.validate(&state.config.order_limits)
        .map_err(ApiError::invalid)?;
    let (store, limits) = (state.store.clone(), state.config.order_limits);
    let customer = caller.0.sub.clone();
    let order = state
        .catalog
        .write(
            async move { store.create_order(&customer, &new, &limits).await },
            skus,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(order)))
}

/// Read an order
///
/// Its customer, its assigned partner, or an admin; anyone else gets the same 404 as for an
/// order that does not exist.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    operation_id = "getOrder",
    security(("bearer" = ["customer", "partner", "admin"])),
    params(("id" = String, Path, description = "The order id (canonical decimal: `42`, never `042`)", pattern = "^[0-9]{1,18}$", example = "1")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 404, description = "`not_found`: no such order, or not yours", body = ErrorBody),
    ),
)]
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

/// List orders, oldest first
///
/// Admins see every order, customers their own, partners the ones assigned to them.
/// Keyset pages: pass the page's `next_after` as `after` for the next one.
#[utoipa::path(
    get,
    path = "/orders",
    tag = "orders",
    operation_id = "listOrders",
    security(("bearer" = ["customer", "partner", "admin"])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 403, description = "`forbidden`: service tokens list no orders", body = ErrorBody),
        (status = 422, description = "`invalid`: `limit` out of range, `after` not an order id", body = ErrorBody),
    ),
)]
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

/// Change an order's status
///
/// Admins: any edge of the status machine. The assigned partner: `out_for_delivery`,
/// `delivered`. The customer: `cancelled` while `placed` or `confirmed` (a paid order is then
/// refunded). `order.status` goes to the order's and the customer's rooms.
#[utoipa::path(
    post,
    path = "/orders/{id}/status",
    tag = "orders",
    operation_id = "setOrderStatus",
    security(("bearer" = ["customer", "partner", "admin"])),
    params(("id" = String, Path, description = "The order id (canonical decimal: `42`, never `042`)", pattern = "^[0-9]{1,18}$", example = "1")),
    request_body = StatusChange,
    responses(
        (status = 200, description = "The order, with its new status", body = Order),
        (status = 403, description = "`forbidden`: your role may never make this change", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order, or not yours", body = ErrorBody),
        (status = 409, description = "`conflict`: not an edge from the order's current status, or too late to cancel", body = ErrorBody),
        (status = 422, description = "`invalid`: not a status", body = ErrorBody),
    ),
)]
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
    let store = state.store.clone();
    let order = state
        .catalog
        .write(
            async move { store.change_status(id, caller.actor(), change.status).await },
            // A cancellation gave its units back to the catalog.
            |order: &Order| match order.status {
                OrderStatus::Cancelled => skus(order),
                _ => Vec::new(),
            },
        )
        .await?;
    Ok(Json(order))
}

/// Assign a delivery partner
///
/// Admins only, while the order is not finished. `order.assigned` goes to the order's room,
/// the customer, the new partner and a former one, who loses the order room at once.
#[utoipa::path(
    post,
    path = "/orders/{id}/assign",
    tag = "orders",
    operation_id = "assignOrder",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The order id (canonical decimal: `42`, never `042`)", pattern = "^[0-9]{1,18}$", example = "1")),
    request_body = Assignment,
    responses(
        (status = 200, description = "The order, with its partner", body = Order),
        (status = 403, description = "`forbidden`: admins only", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
        (status = 409, description = "`conflict`: the order is delivered or cancelled", body = ErrorBody),
        (status = 422, description = "`invalid`: not a user id", body = ErrorBody),
    ),
)]
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
