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
//! - `GET /internal/revenue` → 200 the revenue totals;
//! - `POST /internal/orders/{id}/messages` `{sub, role, text, client_msg_id}` → a chat message
//!   sent by that user through a gateway (the gateway verified the user's token): 201 stored,
//!   200 a retry, or the store's refusal as in `POST /api/orders/{id}/messages`;
//! - `POST /internal/orders/{id}/read` `{sub, role, message_id}` → 204, the user's read marker
//!   moved (with its `chat.read` event) or already there;
//! - `GET /internal/orders/{id}/chat?sub=` → 200 where that user has read up to, and the
//!   unread count (the order room's subscribe snapshot).

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::products;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use switchyard_protocol::chat::{ChatMessage, ChatState, NewMessage};
use switchyard_protocol::order::parse_order_id;
use switchyard_protocol::room::is_valid_id;
use switchyard_protocol::{Order, Product, Revenue, Role};
use switchyard_store::Actor;

/// The `/internal` routes (nested by [`crate::router`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orders/{id}", get(order))
        .route("/products/{sku}", get(product))
        .route("/revenue", get(revenue))
        .route("/orders/{id}/messages", post(send_message))
        .route("/orders/{id}/read", post(mark_read))
        .route("/orders/{id}/chat", get(chat_state))
}

/// The user a gateway acts for.
#[derive(serde::Deserialize)]
struct OnBehalf {
    sub: String,
    role: Role,
}

impl OnBehalf {
    /// Only users a socket may belong to (services open none), with valid ids.
    fn actor(&self) -> Result<Actor<'_>, ApiError> {
        if self.role == Role::Service || !is_valid_id(&self.sub) {
            return Err(ApiError::invalid("sub and role must name a socket's user"));
        }
        Ok(Actor {
            sub: &self.sub,
            role: self.role,
        })
    }
}

#[derive(serde::Deserialize)]
struct SendOnBehalf {
    #[serde(flatten)]
    user: OnBehalf,
    text: String,
    client_msg_id: String,
}

async fn send_message(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<SendOnBehalf>,
) -> Result<(StatusCode, Json<ChatMessage>), ApiError> {
    caller.require(&[Role::Service])?;
    let id = parse_order_id(&id).ok_or_else(|| ApiError::not_found("order not found"))?;
    let message = NewMessage {
        text: body.text,
        client_msg_id: body.client_msg_id,
    };
    let sent = state
        .store
        .send_message_published(id, body.user.actor()?, &message)
        .await?;
    let status = if sent.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sent.message)))
}

#[derive(serde::Deserialize)]
struct ReadOnBehalf {
    #[serde(flatten)]
    user: OnBehalf,
    message_id: String,
}

async fn mark_read(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ReadOnBehalf>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Service])?;
    let id = parse_order_id(&id).ok_or_else(|| ApiError::not_found("order not found"))?;
    let message_id = parse_order_id(&body.message_id)
        .ok_or_else(|| ApiError::invalid("message_id must be a message id"))?;
    state
        .store
        .mark_read(id, body.user.actor()?, message_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct ChatOf {
    sub: String,
}

async fn chat_state(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(of): Query<ChatOf>,
) -> Result<Json<ChatState>, ApiError> {
    caller.require(&[Role::Service])?;
    let id = parse_order_id(&id).ok_or_else(|| ApiError::not_found("order not found"))?;
    Ok(Json(state.store.chat_state(id, &of.sub).await?))
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
