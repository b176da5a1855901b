//! The bus between publishers (the API, partners' location ops) and gateways.
//!
//! A [`Broker`] assigns each event its per-room offset, encodes the event frame once,
//! and hands the [`Publication`] to every attached [`Deliver`] sink (a gateway's hub) that
//! has members in the room. Two implementations fill the trait:
//!
//! - [`memory::MemoryBroker`]: the embedded mode's in-process bus;
//! - a Redis implementation (distributed mode) with the same contract.
//!
//! # Contract
//! - Offsets in one room start at 1 and increase by one per published event, within the
//!   room's *epoch*. A new epoch (offsets starting again) begins whenever the room's offsets
//!   and history were lost: a new process for the memory broker, a flushed or restarted
//!   Redis. Every [`Publication`] carries its epoch, so a subscriber never compares offsets
//!   of two epochs, whether one epoch serves every room (today) or each room has its own.
//! - Publications of one room are delivered to each sink in offset order.
//! - `subscribe`/`unsubscribe` tell the broker which rooms this node serves; a broker may
//!   skip delivering rooms nobody subscribed to (the memory broker delivers everything and
//!   lets the hub drop what has no members, which costs one map lookup).
//!
//! # Layout
//! - [`memory`]: the in-process broker (embedded mode).
//! - [`redis`]: Redis pub/sub with offsets assigned in Redis (distributed mode).
//! - [`revocations`]: per-user revocation records every process checks tokens against.
//! - [`state`]: room snapshots and partner positions every process reads (distributed mode:
//!   in the same Redis), so gateways need no database.

pub mod memory;
pub mod redis;
pub mod revocations;
pub mod state;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::Room;
use switchyard_protocol::client::StreamPosition;

/// One event on its way to subscribers: the frame is already encoded, once.
#[derive(Debug, Clone)]
pub struct Publication {
    pub room: String,
    /// The epoch `offset` counts in. Shared: one allocation per epoch, not per publication.
    pub epoch: Arc<str>,
    pub offset: u64,
    /// The complete `{"type":"event",...}` text frame (UTF-8), shared, never copied per
    /// recipient.
    pub frame: Bytes,
}

/// A room's stream position and, when asked with `since`, what was missed.
#[derive(Debug, Clone)]
pub struct History {
    /// The room's current position (last offset published, in the current epoch).
    pub position: StreamPosition,
    /// Every publication after `since`, in order — or `None` when that cannot be given
    /// completely (another epoch, or history no longer reaches back to `since`).
    pub missed: Option<Vec<Publication>>,
}

/// Messages for every process rather than for a room's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// End `sub`'s subscription to `room` on every gateway (a partner was reassigned):
    /// its sessions leave the room and tell the client why.
    Revoke {
        room: String,
        sub: String,
        reason: String,
    },
    /// Close every connection of `sub`, on every gateway, with 4501 (access withdrawn), and
    /// refuse the user's tokens issued up to `at` until `until` (seconds since the Unix
    /// epoch; see [`revocations`]).
    RevokeUser {
        sub: String,
        #[serde(default)]
        at: u64,
        #[serde(default)]
        until: u64,
    },
    /// Outbox rows were committed by some process: the relay holding the lease should look.
    OutboxWritten,
}

/// Receives publications (a gateway's hub) and control messages. Must not block: it runs on
/// the broker's delivery task, and every room's delivery waits behind it.
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, publication: Publication);

    fn control(&self, _control: &Control) {}

    /// Publications may have been lost for every room this node serves (the bus connection
    /// dropped, or the node fell behind): members must be told to recover.
    fn gap(&self) {}
}

/// The sinks attached to a broker: an immutable list swapped on attach (at start), so a
/// delivery takes one `Arc` clone under a momentary read lock and holds no lock while the
/// sinks fan out.
#[derive(Clone)]
pub struct Sinks(Arc<std::sync::RwLock<SinkList>>);

type SinkList = Arc<[Arc<dyn Deliver>]>;

impl Default for Sinks {
    fn default() -> Self {
        Sinks(Arc::new(std::sync::RwLock::new(Arc::new([]))))
    }
}

impl Sinks {
    pub fn attach(&self, sink: Arc<dyn Deliver>) {
        let mut list = self.0.write().unwrap_or_else(|e| e.into_inner());
        let mut sinks: Vec<_> = list.iter().cloned().collect();
        sinks.push(sink);
        *list = sinks.into();
    }

    fn snapshot(&self) -> SinkList {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn deliver(&self, publication: Publication) {
        let sinks = self.snapshot();
        if let Some((last, rest)) = sinks.split_last() {
            for sink in rest {
                sink.deliver(publication.clone());
            }
            last.deliver(publication);
        }
    }

    pub fn gap(&self) {
        for sink in self.snapshot().iter() {
            sink.gap();
        }
    }

    pub fn control(&self, control: &Control) {
        for sink in self.snapshot().iter() {
            sink.control(control);
        }
    }
}

/// Why a publish or subscribe failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the bus is shutting down")]
    Closed,
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes `data` as `event` in `room`; returns the offset it was given.
    async fn publish(
        &self,
        room: &Room,
        event: &str,
        data: Box<RawValue>,
    ) -> Result<u64, BrokerError>;

    /// This node has (at least one more) member in `room`. Counted: every call is
    /// matched by one [`Broker::unsubscribe`].
    async fn subscribe(&self, room: &Room) -> Result<(), BrokerError>;

    /// One member fewer in `room` on this node.
    async fn unsubscribe(&self, room: &Room);

    /// The room's position, and with `since` the publications after it (recovery). Call it
    /// after subscribing, so nothing published in between is lost (deduplicate by offset).
    async fn history(
        &self,
        room: &Room,
        since: Option<&StreamPosition>,
    ) -> Result<History, BrokerError>;

    /// Sends a control message to every process's sinks (this one's included).
    async fn broadcast(&self, control: Control) -> Result<(), BrokerError>;

    /// Withdraws `sub`'s tokens issued up to `at` until `until` (seconds since the Unix
    /// epoch: when every such token has expired): records it in this process, stores it where
    /// processes that start later read it (Redis), and broadcasts [`Control::RevokeUser`]
    /// (every process records it and closes the user's connections with 4501).
    async fn revoke_user(&self, sub: &str, at: u64, until: u64) -> Result<(), BrokerError>;

    /// When `sub`'s tokens were last withdrawn, as this process knows it: a map lookup, for
    /// every handshake, `refresh` and REST call.
    fn revoked_at(&self, sub: &str) -> Option<u64>;

    /// Adds a sink that receives every publication this node subscribed to, and every
    /// control message.
    fn attach(&self, sink: Arc<dyn Deliver>);

    /// Whether the broker can currently publish and deliver (`/readyz`).
    fn is_ready(&self) -> bool;

    /// Counts connection `conn` of user `sub` against `limit` connections per user across
    /// every gateway sharing this bus; false when the user already has `limit`. The claim is
    /// a lease: it lapses after `lease` unless renewed, so a killed gateway's connections
    /// stop counting. The in-process bus serves one process, whose own count is exact, so
    /// it always says yes.
    async fn claim_connection(
        &self,
        _sub: &str,
        _conn: &str,
        _limit: usize,
        _lease: Duration,
    ) -> Result<bool, BrokerError> {
        Ok(true)
    }

    /// Extends a claim (called on every heartbeat of the connection).
    async fn renew_connection(&self, _sub: &str, _conn: &str, _lease: Duration) {}

    /// Ends a claim (the connection closed).
    async fn release_connection(&self, _sub: &str, _conn: &str) {}
}
