//! `/internal`: what gateways ask the API when the shared state (Redis) cannot answer.
//!
//! Gateways hold no database. They decide who may join an order room and answer subscribe
//! snapshots from the snapshots the outbox relay keeps in Redis; when one is missing (never
//! written, expired, or Redis lost its data) or may be stale (a partner the cached order does
//! not name may just have been assigned), they ask here. These routes are for other
//! Switchyard processes, not for clients: they need a `service` token (gateways mint one from
//! `JWT_SECRET`, or are given `SWITCHYARD_SERVICE_TOKEN`), nginx does not route `/internal`, and
//! they are left out of the public API description.
//!
//! - `GET /internal/orders/{id}` → 200 the order as stored (the REST shape), 404 unknown;
//! - `GET /internal/products/{sku}` → 200 the product, 404 unknown;
//! - `GET /internal/revenue` → 200 the revenue totals.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::products;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use switchyard_protocol::order::parse_order_id;
use switchyard_protocol::{Order, Product, Revenue, Role};

/// The `/internal` routes (nested by [`crate::router`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orders/{id}", get(order))
        .route("/products/{sku}", get(product))
        .route("/revenue", get(revenue))
}

async fn order(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Order>, ApiError> {
    caller.require(&[Role::Service])?;
    let id = parse_order_id(&id).ok_or_else(|| ApiError::not_found("order not found"))?;
    state
        .store
        .order(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("order not found"))
}

async fn product(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sku): Path<String>,
) -> Result<Json<Product>, ApiError> {
    caller.require(&[Role::Service])?;
    state
        .store
        .product(products::sku(&sku)?)
        .await?
        .map(Json)
        .ok_or_else(products::not_found)
}

async fn revenue(State(state): State<ApiState>, caller: Caller) -> Result<Json<Revenue>, ApiError> {
    caller.require(&[Role::Service])?;
    Ok(Json(state.store.revenue().await?))
}
