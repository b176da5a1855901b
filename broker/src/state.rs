//! Latest values every process reads, kept beside the bus so that gateways need no database.
//!
//! Two kinds of value live here (in Redis, for the distributed mode):
//!
//! - **room snapshots** — what a subscribe answers with when it cannot recover: an
//!   `order:{id}` room's order (its customer and partner decide who may join), the
//!   `admin:revenue` totals. The API's outbox relay writes each one *before* it publishes the
//!   events of the same commit, so a snapshot is never older than the position a subscriber
//!   read after joining: events up to that position are covered, later ones are delivered.
//! - **partner positions** — each order's newest fix, written by the gateway that received it
//!   (batched), shown in snapshots, and queued for the API to write to the database.
//! - **typing turns** — who was last shown typing in which order room, so a user typing on
//!   two gateways is forwarded once per interval (a key that expires with the interval).
//!
//! It is a cache, not a source of truth: any value may be missing (never written, expired
//! after the offset TTL, evicted, or lost when Redis restarts without persistence). Readers
//! fall back to the API, which reads the database.

use crate::BrokerError;
use async_trait::async_trait;
use std::time::Duration;
use switchyard_protocol::Room;

/// A room's snapshot and, for an order room, its newest partner position (JSON texts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cached {
    pub snapshot: Option<String>,
    pub position: Option<String>,
}

#[async_trait]
pub trait SharedState: Send + Sync + 'static {
    /// Replaces `room`'s snapshot (a JSON text).
    async fn put_snapshot(&self, room: &Room, json: &str) -> Result<(), BrokerError>;

    /// `room`'s snapshot and newest position, read together (one round trip).
    async fn cached(&self, room: &Room) -> Result<Cached, BrokerError>;

    /// Records orders' newest positions (`(order id, Location JSON)`): readable at once by
    /// [`SharedState::cached`], and queued until [`SharedState::take_positions`].
    async fn put_positions(&self, batch: &[(i64, String)]) -> Result<(), BrokerError>;

    /// Takes every queued position (the newest per order) off the queue, atomically: two
    /// takers never get the same one.
    async fn take_positions(&self) -> Result<Vec<(i64, String)>, BrokerError>;

    /// Puts positions taken but not written back on the queue, unless a newer one for the
    /// same order was queued meanwhile.
    async fn requeue_positions(&self, batch: &[(i64, String)]) -> Result<(), BrokerError>;

    /// Claims `sub`'s turn to be shown typing in `room` for `interval`: true when no gateway
    /// claimed it for `sub` within the last `interval` (the `chat.typing` throttle across
    /// gateways).
    async fn claim_typing(
        &self,
        room: &Room,
        sub: &str,
        interval: Duration,
    ) -> Result<bool, BrokerError>;
}
