//! The seam where the domain starts: what the gateway needs to know from the application
//! behind it, and nothing more.
//!
//! A gateway decides who may join an order room (its customer, its current partner), answers
//! subscribes with the room's current state (the order, the revenue totals) and hands on
//! partners' newest positions for safekeeping. It asks a [`Backend`] for all of it, wired up by
//! the binary: in the embedded mode one that calls the database in-process; in the distributed
//! mode one that reads the shared state the API keeps in Redis and asks the API over HTTP when
//! that cannot answer — so a gateway process holds no database connection, and any number of
//! them can run on any number of hosts.
//!
//! Chat messages and read markers are written by the API side too (the store, in one
//! transaction with their events): the gateway hands a `send` or `read` op to the backend and
//! answers `ok` only once it is stored — in-process in the embedded mode, through the API's
//! `/internal` routes in the distributed mode.

use async_trait::async_trait;
use std::time::Duration;
use switchyard_protocol::chat::{ChatMessage, ChatState, NewMessage};
use switchyard_protocol::{Location, Order, Product, Revenue, Role};

/// How current an answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// A cached answer will do: it may trail the last commit by the outbox relay's lag.
    /// A cached order never names a *different* customer (customers never change), but may
    /// still name a partner that was just replaced, or not yet name a new one.
    Cached,
    /// The source of truth, as of now.
    Fresh,
}

/// The backend could not answer (the database, Redis or the API is unreachable): the op is
/// refused with `internal` and the client retries.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// Who a chat op is from: the connection's user.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub sub: &'a str,
    pub role: Role,
}

/// Why a chat op was not done: the store's refusal (the op's error reply) or a failure.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Not a member of the order's chat, or no such order.
    #[error("not a member of this order's chat")]
    NotMember,
    /// The chat is closed (the order finished longer ago than the grace period).
    #[error("{0}")]
    Forbidden(String),
    /// The text or an id is invalid.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Failed(#[from] BackendError),
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The order with this id, with the newest position known for it; `None` when there is no
    /// such order.
    async fn order(&self, id: i64, read: Read) -> Result<Option<Order>, BackendError>;

    /// The product with this SKU (the `product:{sku}` snapshot); `None` when there is none.
    async fn product(&self, sku: &str) -> Result<Option<Product>, BackendError>;

    /// The revenue totals (the `admin:revenue` snapshot).
    async fn revenue(&self) -> Result<Revenue, BackendError>;

    /// Keeps these orders' newest positions (one batch every flush interval, see
    /// [`crate::locations`]); where they go is the backend's business.
    async fn write_positions(&self, batch: &[(i64, Location)]) -> Result<(), BackendError>;

    /// Stores a chat message in order `order`'s chat with its `chat.message` event (or, for a
    /// `client_msg_id` the sender already used there, returns the first message); returns
    /// once it is durable.
    async fn send_message(
        &self,
        order: i64,
        from: Sender<'_>,
        message: &NewMessage,
    ) -> Result<ChatMessage, ChatError>;

    /// Moves `from`'s read marker in order `order`'s chat up to `message_id` (never back).
    async fn mark_read(
        &self,
        order: i64,
        from: Sender<'_>,
        message_id: i64,
    ) -> Result<(), ChatError>;

    /// Where `sub` has read up to in order `order`'s chat, and how many are unread.
    async fn chat_state(&self, order: i64, sub: &str) -> Result<ChatState, BackendError>;

    /// Claims `sub`'s turn to be shown typing in order `order`'s room for `interval`, across
    /// every gateway: false when another of its connections (on any gateway) was shown within
    /// it. One gateway alone (the embedded mode) has nothing to ask: its own throttle
    /// ([`crate::typing`]) decided. A claim that cannot be made (Redis down) lets it through.
    async fn typing_turn(&self, order: i64, sub: &str, interval: Duration) -> bool {
        let _ = (order, sub, interval);
        true
    }
}
