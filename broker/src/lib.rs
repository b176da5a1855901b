//! The bus between publishers (the API, partners' location ops) and gateways, split by job:
//!
//! - the [`Bus`] proper: assigns each event its per-room offset, encodes the event frame
//!   once, and hands the [`Publication`] to every attached [`Deliver`] sink (a gateway's hub)
//!   that has members in the room; keeps each room's history for recovery;
//! - the [`Controller`]: control messages for every process rather than for a room's
//!   members (revocations, wake-ups of the outbox relay), to [`Listen`]ers of their own — a
//!   process that only needs control messages never receives publications;
//! - [`ConnectionLeases`]: the per-user connection count across every gateway (claim, renew,
//!   release).
//!
//! A [`Backplane`] holds the three. Two implementations fill the traits:
//! [`memory`] (the embedded mode's in-process bus) and [`redis`] (distributed mode), with the
//! same contract.
//!
//! # Contract
//! - Offsets in one room start at 1 and increase by one per published event, within the
//!   room's *epoch*. A new epoch (offsets starting again) begins whenever the room's offsets
//!   and history were lost: a new process for the memory bus, a flushed or restarted
//!   Redis. Every [`Publication`] carries its epoch, so a subscriber never compares offsets
//!   of two epochs, whether one epoch serves every room or each room has its own.
//! - Publications of one room are delivered to each sink in offset order.
//! - `subscribe`/`unsubscribe` tell the bus which rooms this node serves; a bus may
//!   skip delivering rooms nobody subscribed to (the memory bus delivers everything and
//!   lets the hub drop what has no members, which costs one map lookup).
//!
//! # Layout
//! - [`memory`]: the in-process bus, controller and leases (embedded mode).
//! - [`redis`]: Redis pub/sub with offsets assigned in Redis, control channel, leases
//!   (distributed mode).
//! - [`fleet`]: the partners' last known positions (the `admin:fleet` snapshot).
//! - [`presence`]: who is in which room, once per user across gateways; the
//!   `presence.join`/`presence.leave` events (in process, or in Redis).
//! - [`revocations`]: per-user revocation records every process checks tokens against.
//! - [`state`]: room snapshots and partner positions every process reads (distributed mode:
//!   in the same Redis), so gateways need no database.

pub mod fleet;
pub mod memory;
pub mod presence;
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
    /// Shared with every queued copy and the hub's map (never copied per recipient).
    pub room: Room,
    /// The epoch `offset` counts in. Shared: one allocation per epoch, not per publication.
    pub epoch: Arc<str>,
    pub offset: u64,
    /// The complete `{"type":"event",...}` text frame (UTF-8), shared, never copied per
    /// recipient.
    pub frame: Bytes,
}

/// An event for [`Bus::publish_batch`]: `data` as `event` in `room`.
#[derive(Debug)]
pub struct Outgoing {
    pub room: Room,
    pub event: String,
    pub data: Box<RawValue>,
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
    /// The relay published these chat messages' events: `(message_id, room offset)`, so the
    /// API processes' sends waiting for their offset can answer (`switchyard_store::chat`).
    ChatPublished { offsets: Vec<(i64, u64)> },
}

/// How much history each room keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Publications kept per room.
    pub size: usize,
    /// How long a publication stays recoverable.
    pub ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 100,
            ttl: Duration::from_secs(300),
        }
    }
}

/// A fresh epoch: time and process id, hex. Unique per call site and moment (a process start,
/// a room's first publish in Redis).
pub fn new_epoch() -> String {
    // Made for every position read and publish call; the process id is read once (each
    // `process::id()` is a `getpid` system call: one per handshake, issue #17).
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, PID.get_or_init(std::process::id))
}

/// Receives publications (a gateway's hub). Must not block: it runs on the bus's delivery
/// path, and the room's delivery waits behind it.
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, publication: Publication);

    /// Publications may have been lost for every room this node serves (the bus connection
    /// dropped, or the node fell behind): members must be told to recover.
    fn gap(&self) {}

    /// Publications of these rooms may have been lost (their subscription was renewed after
    /// a reconnect, a slot move or a failover): their members must be told to recover. By
    /// default every room is told.
    fn gap_rooms(&self, rooms: &[Room]) {
        let _ = rooms;
        self.gap();
    }
}

/// Receives control messages. Must not block.
pub trait Listen: Send + Sync + 'static {
    fn control(&self, control: &Control);
}

/// An immutable list swapped on attach (at start), so a delivery takes one `Arc` clone under
/// a momentary read lock and holds no lock while the receivers run.
pub struct Attached<T: ?Sized>(Arc<std::sync::RwLock<Arc<[Arc<T>]>>>);

impl<T: ?Sized> Clone for Attached<T> {
    fn clone(&self) -> Self {
        Attached(self.0.clone())
    }
}

impl<T: ?Sized> Default for Attached<T> {
    fn default() -> Self {
        Attached(Arc::new(std::sync::RwLock::new(Arc::from(Vec::new()))))
    }
}

impl<T: ?Sized> Attached<T> {
    pub fn attach(&self, receiver: Arc<T>) {
        let mut list = self.0.write().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = list.iter().cloned().collect();
        all.push(receiver);
        *list = all.into();
    }

    pub fn snapshot(&self) -> Arc<[Arc<T>]> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The sinks attached to a bus.
pub type Sinks = Attached<dyn Deliver>;

/// The listeners attached to a controller.
pub type Listeners = Attached<dyn Listen>;

impl Attached<dyn Deliver> {
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

    pub fn gap_rooms(&self, rooms: &[Room]) {
        for sink in self.snapshot().iter() {
            sink.gap_rooms(rooms);
        }
    }
}

impl Attached<dyn Listen> {
    pub fn control(&self, control: &Control) {
        for listener in self.snapshot().iter() {
            listener.control(control);
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

/// The bus proper: room events, their offsets and history.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `data` as `event` in `room`; returns the offset it was given.
    async fn publish(
        &self,
        room: &Room,
        event: &str,
        data: Box<RawValue>,
    ) -> Result<u64, BrokerError>;

    /// Publishes several events, each as [`Bus::publish`] would (its room's next offset), in
    /// their order within each room, in as few round trips as the bus allows (Redis: one
    /// script call for the batch; on a cluster one per hash slot, pipelined). One result per
    /// event, in the events' order. By default one publish after the other.
    async fn publish_batch(&self, events: Vec<Outgoing>) -> Vec<Result<u64, BrokerError>> {
        let mut results = Vec::with_capacity(events.len());
        for Outgoing { room, event, data } in events {
            results.push(self.publish(&room, &event, data).await);
        }
        results
    }

    /// This node has (at least one more) member in `room`. Counted: every call is
    /// matched by one [`Bus::unsubscribe`].
    async fn subscribe(&self, room: &Room) -> Result<(), BrokerError>;

    /// One member fewer in `room` on this node.
    async fn unsubscribe(&self, room: &Room);

    /// The room's position, and with `since` the publications after it (recovery). Call it
    /// after subscribing, so nothing published in between is lost (deduplicate by offset):
    /// the bus runs the read after this node's subscriptions are active (Redis: on the
    /// subscriber connection, after its `SUBSCRIBE`).
    async fn history(
        &self,
        room: &Room,
        since: Option<&StreamPosition>,
    ) -> Result<History, BrokerError>;

    /// Adds a sink that receives every publication this node subscribed to.
    fn attach(&self, sink: Arc<dyn Deliver>);

    /// Whether the bus can currently publish and deliver (`/readyz`).
    fn is_ready(&self) -> bool;
}

/// Control messages for every process, and the revocation records they carry.
#[async_trait]
pub trait Controller: Send + Sync + 'static {
    /// Sends a control message to every process's listeners (this one's included).
    async fn broadcast(&self, control: Control) -> Result<(), BrokerError>;

    /// Withdraws `sub`'s tokens issued up to `at` until `until` (seconds since the Unix
    /// epoch: when every such token has expired): records it in this process, stores it where
    /// processes that start later read it (Redis), and broadcasts [`Control::RevokeUser`]
    /// (every process records it and closes the user's connections with 4501).
    async fn revoke_user(&self, sub: &str, at: u64, until: u64) -> Result<(), BrokerError>;

    /// When `sub`'s tokens were last withdrawn, as this process knows it: a map lookup, for
    /// every handshake, `refresh` and REST call.
    fn revoked_at(&self, sub: &str) -> Option<u64>;

    /// Adds a listener that receives every control message.
    fn listen(&self, listener: Arc<dyn Listen>);

    /// Whether control messages currently reach this process (`/readyz`).
    fn is_ready(&self) -> bool;
}

/// The per-user connection count across every gateway sharing the bus.
#[async_trait]
pub trait ConnectionLeases: Send + Sync + 'static {
    /// Counts connection `conn` of user `sub` against `limit` connections per user across
    /// every gateway; false when the user already has `limit`. The claim is a lease: it
    /// lapses after `lease` unless renewed, so a killed gateway's connections stop counting.
    async fn claim(
        &self,
        sub: &str,
        conn: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<bool, BrokerError>;

    /// A handshake's claim ([`ConnectionLeases::claim`]) and its user room's position read
    /// from `bus` ([`Bus::history`], with `since` the events missed): in one round trip where
    /// the implementation can — Redis, when the leases live in the bus's Redis, runs one script
    /// (the lease set shares the user room's hash slot, so this holds on a cluster too); by
    /// default both calls at once. Called after the room is subscribed.
    async fn claim_and_read(
        &self,
        bus: &dyn Bus,
        claim: Claim<'_>,
        room: &Room,
        since: Option<&StreamPosition>,
    ) -> Result<(bool, History), BrokerError> {
        claim_then_read(self, bus, claim, room, since).await
    }

    /// Extends a claim (every heartbeat interval).
    async fn renew(&self, sub: &str, conn: &str, lease: Duration);

    /// Ends a claim (the connection closed).
    async fn release(&self, sub: &str, conn: &str);
}

/// A connection's claim in the per-user count: `conn` of user `sub`, at most `limit` per user,
/// lapsing after `lease` unless renewed.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub sub: &'a str,
    pub conn: &'a str,
    pub limit: usize,
    pub lease: Duration,
}

/// [`ConnectionLeases::claim_and_read`] as two calls, at once.
pub async fn claim_then_read<L: ConnectionLeases + ?Sized>(
    leases: &L,
    bus: &dyn Bus,
    claim: Claim<'_>,
    room: &Room,
    since: Option<&StreamPosition>,
) -> Result<(bool, History), BrokerError> {
    let (claimed, history) = tokio::join!(
        leases.claim(claim.sub, claim.conn, claim.limit, claim.lease),
        bus.history(room, since)
    );
    Ok((claimed?, history?))
}

/// The jobs of the bus, as one process uses them. Cheap to clone.
#[derive(Clone)]
pub struct Backplane {
    pub bus: Arc<dyn Bus>,
    pub controller: Arc<dyn Controller>,
    pub leases: Arc<dyn ConnectionLeases>,
    /// Who is in which room (publishes its events on `bus`).
    pub presence: Arc<dyn presence::Presence>,
    /// The partners' last known positions (`admin:fleet`'s snapshot).
    pub fleet: Arc<dyn fleet::FleetPositions>,
}

impl Backplane {
    /// The embedded mode's: everything in this process.
    pub fn memory(history: HistoryConfig) -> Backplane {
        let controller = memory::MemoryController::new();
        let bus = memory::MemoryBus::start(history);
        follow_readiness(bus.clone(), controller.clone());
        Backplane {
            presence: presence::memory::MemoryPresence::new(bus.clone()),
            bus,
            controller,
            leases: Arc::new(memory::OneProcess),
            fleet: Arc::new(fleet::MemoryFleet::default()),
        }
    }

    /// Whether events and control messages currently flow (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.bus.is_ready() && self.controller.is_ready()
    }
}

/// How often `switchyard_bus_connected` is brought up to date.
const READINESS_CHECK: Duration = Duration::from_secs(1);

/// The one writer of `switchyard_bus_connected`: whether the bus and the controller are ready
/// (what `/readyz` answers), every READINESS_CHECK, scraped or not, for as long as both live.
/// Spawned on the current Tokio runtime by whoever builds them.
pub(crate) fn follow_readiness<B: Bus, C: Controller>(bus: Arc<B>, controller: Arc<C>) {
    let (bus, controller) = (Arc::downgrade(&bus), Arc::downgrade(&controller));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(READINESS_CHECK);
        loop {
            tick.tick().await;
            let (Some(bus), Some(controller)) = (bus.upgrade(), controller.upgrade()) else {
                return;
            };
            let up = bus.is_ready() && controller.is_ready();
            metrics::gauge!("switchyard_bus_connected").set(if up { 1.0 } else { 0.0 });
        }
    });
}
