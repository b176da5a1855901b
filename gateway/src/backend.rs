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

use async_trait::async_trait;
use switchyard_protocol::{Location, Order, Product, Revenue};

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
}
