//! The chat ops of an order room (protocol/README.md, "Chat"):
//! - `send`: rate limited per connection (`SWITCHYARD_CHAT_RATE`/`_BURST`), handed to the
//!   backend, which stores it with its `chat.message` event (the API side: the gateway writes
//!   no database); answered `ok` with the stored message only once it is durable. Who may
//!   send is the store's decision, made on the order as committed;
//! - `typing`: for members who joined the room (a former partner lost it with its revoke);
//!   published straight to the bus as `chat.typing`, never stored, at most one per user and
//!   room every `SWITCHYARD_CHAT_TYPING_INTERVAL_MS` across the user's connections and gateways
//!   ([`crate::typing`]; the rest are answered `ok` and dropped), and latest-value in slow
//!   queues;
//! - `read`: the read marker, stored by the backend with its `chat.read` event.
//!
//! An order room's subscribe snapshot carries the subscriber's read state
//! ([`with_read_state`]).

use super::{Reply, Session};
use crate::access::Refusal;
use crate::backend::{Backend, ChatError, Sender};
use crate::rate::TokenBucket;
use serde_json::value::RawValue;
use switchyard_protocol::chat::NewMessage;
use switchyard_protocol::events::ChatTyping;
use switchyard_protocol::{BuiltinEvent, ErrorCode, OrderId, Room};
use tokio::time::Instant;

const NOT_A_MEMBER: &str = "not a member of this order's chat";

impl From<ChatError> for Refusal {
    fn from(err: ChatError) -> Refusal {
        match err {
            ChatError::NotMember => Refusal::new(ErrorCode::Forbidden, NOT_A_MEMBER),
            ChatError::Forbidden(why) => Refusal::new(ErrorCode::Forbidden, why),
            ChatError::Invalid(why) => Refusal::new(ErrorCode::BadRequest, why),
            ChatError::Failed(err) => err.into(),
        }
    }
}

/// The order a chat op's room names (decoding made sure it is an order room); a
/// non-canonical id names no order.
fn order_of(room: &Room) -> Result<OrderId, Refusal> {
    OrderId::parse(room.id()).ok_or_else(|| Refusal::new(ErrorCode::Forbidden, NOT_A_MEMBER))
}

impl Session {
    fn sender(&self) -> Sender<'_> {
        Sender {
            sub: &self.who.sub,
            role: self.who.role,
        }
    }

    pub(super) async fn send_message(
        &mut self,
        room: Room,
        message: &NewMessage,
    ) -> Result<Reply, Refusal> {
        let c = &self.shared.config;
        let bucket = self
            .chat_sends
            .get_or_insert_with(|| Box::new(TokenBucket::new(c.chat_rate, c.chat_burst)));
        if !bucket.try_take() {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} chat messages per second",
                    self.shared.config.chat_rate
                ),
            ));
        }
        let order = order_of(&room)?;
        let message = self
            .shared
            .backend
            .send_message(order.get(), self.sender(), message)
            .await?;
        Ok(Reply::Sent { room, message })
    }

    pub(super) async fn typing(&mut self, room: Room) -> Result<Reply, Refusal> {
        if !self.rooms.contains_key(room.as_str()) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "join the order room (subscribe) before typing in its chat",
            ));
        }
        let order = order_of(&room)?;
        let sub = &self.who.sub;
        let interval = self.shared.config.typing_interval;
        let shown = self
            .shared
            .typing
            .admit(&room, sub, Instant::now(), interval)
            && self
                .shared
                .backend
                .typing_turn(order.get(), sub, interval)
                .await;
        if !shown {
            // Said a moment ago (on this connection or another): the members already show it.
            return Ok(Reply::Room(room));
        }
        let event = ChatTyping {
            order_id: room.id().to_owned(),
            from: self.who.sub.to_string(),
            role: self.who.role,
        };
        let data = serde_json::value::to_raw_value(&event)
            .map_err(|_| Refusal::new(ErrorCode::Internal, "encoding failed"))?;
        self.shared
            .backplane
            .bus
            .publish(&room, ChatTyping::NAME, data)
            .await
            .map_err(|err| {
                tracing::warn!(%err, "typing publish failed");
                Refusal::new(ErrorCode::Internal, "bus unavailable, retry")
            })?;
        Ok(Reply::Room(room))
    }

    pub(super) async fn read(&mut self, room: Room, message_id: &str) -> Result<Reply, Refusal> {
        let order = order_of(&room)?;
        let message_id = switchyard_protocol::order::parse_order_id(message_id)
            .ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "not a message id"))?;
        self.shared
            .backend
            .mark_read(order.get(), self.sender(), message_id)
            .await?;
        Ok(Reply::Room(room))
    }
}

/// An order room's snapshot with `chat` (`{last_read, unread}`) for the subscribing user
/// added. Other rooms' snapshots, and `null`, are returned as they are. When the read state
/// cannot be had (the API does not answer), the snapshot goes without it — the room's state
/// matters more than the unread count — and the failure is logged.
pub(super) async fn with_read_state(
    backend: &dyn Backend,
    sub: &str,
    room: &Room,
    snapshot: Box<RawValue>,
) -> Box<RawValue> {
    let Ok(order) = order_of(room) else {
        return snapshot;
    };
    if room.kind() != switchyard_protocol::room::RoomKind::Order || snapshot.get() == "null" {
        return snapshot;
    }
    let state = match backend.chat_state(order.get(), sub).await {
        Ok(state) => state,
        Err(err) => {
            tracing::warn!(%err, %room, "chat read state unavailable; snapshot without it");
            return snapshot;
        }
    };
    let mut value: serde_json::Map<String, serde_json::Value> =
        match serde_json::from_str(snapshot.get()) {
            Ok(value) => value,
            Err(_) => return snapshot,
        };
    value.insert(
        "chat".to_owned(),
        serde_json::to_value(state).unwrap_or_default(),
    );
    serde_json::value::to_raw_value(&value).unwrap_or(snapshot)
}
