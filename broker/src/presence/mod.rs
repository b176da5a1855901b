//! Presence: which users are in a room, once per user across its connections and gateways,
//! and the `presence.join` / `presence.leave` events that tell the changes (issue #16).
//!
//! # Model
//! Each gateway (a *node*) holds an **entry** per (room, user) for as long as it has at least
//! one connection of the user in the room; an entry lives for a TTL and the node renews its
//! entries every heartbeat, so a node that dies (SIGKILL) stops renewing and its entries
//! expire. A user is **announced** (present) from the `presence.join` published when its first
//! entry appeared, until the `presence.leave` published once it has had no entry for the
//! **debounce**: a phone that drops and comes back within it publishes nothing. Leaves are
//! published by [`Presence::sweep`], which any node calls for the rooms it serves (its members
//! or its entries), so the survivors announce a dead node's users.
//!
//! A user's join and leave must reach subscribers in the order they happened, whichever nodes
//! decide them: deciding a transition and publishing its event happen under one
//! **announcement lock** per room (the Redis implementation's is a key with an expiry, so a
//! node that dies holding it blocks nobody for long), never two at once.
//!
//! Worst case, a SIGKILLed gateway's users are announced gone `ttl + sweep interval +
//! debounce` after its last renewal (protocol/README.md, "Presence").
//!
//! # Layout
//! - this module: the [`Presence`] trait and what it carries;
//! - [`memory`]: the embedded mode's, in this process;
//! - [`crate::redis::presence`]: the distributed mode's, in Redis beside the room's keys.

pub mod memory;

use crate::{BrokerError, Bus};
use async_trait::async_trait;
use std::time::Duration;
use switchyard_protocol::events::{PresenceJoin, PresenceLeave};
use switchyard_protocol::presence::Present;
use switchyard_protocol::{BuiltinEvent, Role, Room};

/// A user a node holds connections of, in some room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub sub: String,
    pub role: Role,
}

/// The presence of users in rooms, shared by every process of a deployment.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// `node` holds connections of each of `holders` in `room`: records (or renews) their
    /// entries for `ttl`, and announces (`presence.join`) each user not present yet.
    async fn hold(
        &self,
        room: &Room,
        node: &str,
        holders: &[Holder],
        ttl: Duration,
    ) -> Result<(), BrokerError>;

    /// `node` no longer holds a connection of `sub` in `room`. Nothing is published now: the
    /// leave is announced by a [`sweep`](Presence::sweep) once the user has been gone for the
    /// debounce.
    async fn release(&self, room: &Room, node: &str, sub: &str) -> Result<(), BrokerError>;

    /// Drops expired entries, and announces (`presence.leave`) every user of `room` that has
    /// had no entry for at least `debounce`.
    async fn sweep(&self, room: &Room, debounce: Duration) -> Result<(), BrokerError>;

    /// The users present (announced) in `room`, ordered by `sub`.
    async fn present(&self, room: &Room) -> Result<Vec<Present>, BrokerError>;
}

/// Publishes `presence.join` (`joined`) or `presence.leave` for `user` in `room`.
pub(crate) async fn announce(
    bus: &dyn Bus,
    room: &Room,
    sub: &str,
    role: Role,
    joined: bool,
) -> Result<u64, BrokerError> {
    let encoding = |e: serde_json::Error| BrokerError::Unavailable(e.to_string());
    let sub = sub.to_owned();
    if joined {
        let data =
            serde_json::value::to_raw_value(&PresenceJoin { sub, role }).map_err(encoding)?;
        bus.publish(room, PresenceJoin::NAME, data).await
    } else {
        let data =
            serde_json::value::to_raw_value(&PresenceLeave { sub, role }).map_err(encoding)?;
        bus.publish(room, PresenceLeave::NAME, data).await
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
