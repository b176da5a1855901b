//! `/api/orders/{id}/messages`: an order's chat over REST — backends and support post
//! messages, apps page through the history (the socket's `send` op reaches the same store call
//! through `/internal`, see [`crate::internal`]). The rules are the store's
//! (`switchyard_store::chat`): members only, idempotent by `client_msg_id`, closed after the
//! grace period once the order is finished, text normalized to NFC.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{Caller, Payload};
use crate::orders::order_id;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use switchyard_protocol::ErrorBody;
use switchyard_protocol::chat::{
    ChatMessage, DEFAULT_PAGE, MAX_PAGE, MessagePage, MessageQuery, NewMessage,
};
use switchyard_protocol::order::parse_order_id;

/// Send a chat message
///
/// The order's customer, its assigned partner, and support (admins; `service` tokens post as
/// support, shown with role `admin`). The message is stored with its `chat.message` event to
/// the order's room in one transaction; the answer comes once the event is published and
/// carries its room `offset` (after `SWITCHYARD_CHAT_PUBLISH_WAIT_MS` without it, when the bus
/// is down). Sending the same `client_msg_id` to the same order again (a retry after a lost
/// answer) answers 200 with the first message and stores nothing. Once the order is
/// delivered or cancelled, sending is refused after `SWITCHYARD_CHAT_CLOSE_GRACE_SECS`.
#[utoipa::path(
    post,
    path = "/orders/{id}/messages",
    tag = "chat",
    operation_id = "sendMessage",
    security(("bearer" = ["customer", "partner", "admin", "service"])),
    params(("id" = String, Path, description = "The order id (canonical decimal: `42`, never `042`)", pattern = "^[0-9]{1,18}$", example = "1")),
    request_body = NewMessage,
    responses(
        (status = 201, description = "The message, stored", body = ChatMessage),
        (status = 200, description = "A retry: the message first stored with this `client_msg_id`", body = ChatMessage),
        (status = 403, description = "`forbidden`: the chat is closed (the order was finished longer ago than the grace period)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order, or not a member of its chat", body = ErrorBody),
        (status = 422, description = "`invalid`: text empty after trimming, over 2,000 characters, or with control characters other than newline and tab; a bad `client_msg_id`", body = ErrorBody),
    ),
)]
pub async fn send(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Payload,
) -> Result<(StatusCode, Json<ChatMessage>), ApiError> {
    let id = order_id(&id)?;
    let new: NewMessage = match body.parse() {
        Ok(new) => new,
        Err(err) => {
            // The order's checks come before the payload's.
            state.store.chat_precheck(id, caller.actor()).await?;
            return Err(err);
        }
    };
    let sent = state
        .store
        .send_message_published(id, caller.actor(), &new)
        .await?;
    let status = if sent.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sent.message)))
}

/// Read an order's chat, newest page first
///
/// Members only (anyone else gets the same 404 as for an order that does not exist). Each page
/// is oldest first; pass its `next_before` as `before` for the page before it.
#[utoipa::path(
    get,
    path = "/orders/{id}/messages",
    tag = "chat",
    operation_id = "listMessages",
    security(("bearer" = ["customer", "partner", "admin", "service"])),
    params(
        ("id" = String, Path, description = "The order id (canonical decimal: `42`, never `042`)", pattern = "^[0-9]{1,18}$", example = "1"),
        MessageQuery,
    ),
    responses(
        (status = 200, description = "A page of messages, oldest first", body = MessagePage),
        (status = 404, description = "`not_found`: no such order, or not a member of its chat", body = ErrorBody),
        (status = 422, description = "`invalid`: `limit` out of range, `before` not a message id", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<MessageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<MessagePage>, ApiError> {
    let id = order_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    let before = match query.before.as_deref() {
        None | Some("") => Ok(None),
        Some(b) => parse_order_id(b)
            .map(Some)
            .ok_or_else(|| ApiError::invalid("before must be a message id")),
    };
    let before = match before {
        Ok(before) if (1..=MAX_PAGE).contains(&limit) => before,
        invalid => {
            // The order's check comes before the query's: others get the 404.
            state.store.messages(id, caller.actor(), None, 1).await?;
            invalid?;
            return Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}")));
        }
    };
    Ok(Json(
        state
            .store
            .messages(id, caller.actor(), before, limit)
            .await?,
    ))
}
