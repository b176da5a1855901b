//! The local registry of one gateway: its connections by user, and its rooms and their
//! members.
//!
//! Connections are indexed by user (Centrifuge's hub keeps connection shards by user beside
//! its subscription shards): the per-user and per-gateway connection limits are counted there,
//! and a revocation or the drain reaches each connection exactly once, whichever rooms it
//! joined — an admin in other users' `user:` rooms included.
//!
//! Each room maps to its [`Members`]: chunks of immutable, shared member slices. Joining or
//! leaving rebuilds one or two chunks under the map's shard lock (O(1) amortized, whatever
//! the room's size); delivering clones the snapshot's `Arc` (one atomic increment), releases
//! the lock, and walks it. So no lock is held during a fan-out, none is taken per recipient,
//! and publishers in different rooms never contend.
//!
//! A publication's frame is turned into one `Utf8Bytes` and every member gets a clone
//! of the same bytes: encoded once, never per recipient.

use crate::members::{Members, Snapshot};
use crate::outbound::{Event, Mailbox, Outbound, Outgoing, Pushed};
use crate::write_delay::WriteDelay;
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use switchyard_broker::{Control, Deliver, Listen, Publication};
use switchyard_protocol::close::Disconnect;
use switchyard_protocol::server::frame_event_name;
use switchyard_protocol::{Room, UserId, events};

pub struct Hub {
    rooms: DashMap<Room, Members>,
    /// Every local connection, by user (a user has at most `max_connections_per_user`).
    users: DashMap<Arc<str>, Vec<Outbound>>,
    /// Local connections, all users.
    connections: AtomicUsize,
    /// Handles on the delivery-path metrics, registered once: no registry lookup per event.
    pub(crate) metrics: DeliveryMetrics,
    /// Handles on the gauges every handshake and close moves, registered once: no registry
    /// lookup (a hash of the name, a shard's lock) per connection (issue #17).
    pub(crate) counts: ConnectionMetrics,
    /// The gateway's write delay, handed to each new connection's mailbox.
    write_delay: Option<Arc<WriteDelay>>,
}

/// The metrics every publication or write batch touches.
pub(crate) struct DeliveryMetrics {
    pub delivered: metrics::Counter,
    pub conflated: metrics::Counter,
    pub dropped: metrics::Counter,
    pub slow_consumer_closes: metrics::Counter,
    pub queue_bytes: metrics::Gauge,
    pub fanout_latency: metrics::Histogram,
}

/// The gauges and counters of connections, rooms and subscriptions.
pub(crate) struct ConnectionMetrics {
    pub connections: metrics::Gauge,
    pub opened: metrics::Counter,
    pub rooms: metrics::Gauge,
    /// Memberships of connections in rooms (`switchyard_subscriptions`).
    pub subscriptions: metrics::Gauge,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            rooms: DashMap::new(),
            users: DashMap::new(),
            connections: AtomicUsize::new(0),
            metrics: DeliveryMetrics {
                delivered: metrics::counter!("switchyard_events_delivered_total"),
                conflated: metrics::counter!("switchyard_events_conflated_total"),
                dropped: metrics::counter!("switchyard_events_dropped_total"),
                slow_consumer_closes: metrics::counter!("switchyard_slow_consumer_closes_total"),
                queue_bytes: metrics::gauge!("switchyard_outbound_queue_bytes"),
                fanout_latency: metrics::histogram!("switchyard_fanout_latency_seconds"),
            },
            counts: ConnectionMetrics {
                connections: metrics::gauge!("switchyard_connections"),
                opened: metrics::counter!("switchyard_connections_opened_total"),
                rooms: metrics::gauge!("switchyard_rooms"),
                subscriptions: metrics::gauge!("switchyard_subscriptions"),
            },
            write_delay: None,
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("rooms", &self.rooms.len())
            .field("users", &self.users.len())
            .finish()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// A hub whose connections' writes gather under load (see [`crate::write_delay`]).
    pub fn with_write_delay(write_delay: Arc<WriteDelay>) -> Hub {
        Hub {
            write_delay: Some(write_delay),
            ..Hub::default()
        }
    }

    /// Registers connection `conn` of user `sub` — unless this gateway already has
    /// `limits.per_gateway` connections, or the user `limits.per_user` here — and returns its
    /// handle, its mailbox (bounded to `limit_bytes`, its bytes counted in
    /// `switchyard_outbound_queue_bytes` by the mailbox itself) and its registration, which
    /// unregisters it when dropped.
    pub fn connect(
        self: &Arc<Self>,
        conn: u64,
        sub: &UserId,
        limit_bytes: usize,
        limits: Limits,
    ) -> Result<Connected, Full> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= limits.per_gateway {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Gateway);
        }
        let (out, mailbox) = Outbound::new(
            conn,
            sub.as_arc().clone(),
            limit_bytes,
            self.metrics.queue_bytes.clone(),
            self.write_delay.clone(),
        );
        let mut user = self.users.entry(sub.as_arc().clone()).or_default();
        if user.len() >= limits.per_user {
            let empty = user.is_empty();
            drop(user);
            if empty {
                self.users.remove_if(sub.as_str(), |_, c| c.is_empty());
            }
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::User);
        }
        // Sized exactly: nearly every user has one connection here (a first push would
        // reserve room for four).
        user.reserve_exact(1);
        user.push(out.clone());
        drop(user);
        self.counts.connections.increment(1.0);
        self.counts.opened.increment(1);
        Ok(Connected {
            registration: Registration {
                hub: self.clone(),
                sub: sub.as_arc().clone(),
                conn,
            },
            out,
            mailbox,
        })
    }

    /// Connections on this gateway.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    fn disconnect(&self, sub: &str, conn: u64) {
        let removed = self.users.remove_if_mut(sub, |_, connections| {
            connections.retain(|c| c.conn != conn);
            connections.is_empty()
        });
        drop(removed);
        self.connections.fetch_sub(1, Ordering::AcqRel);
        self.counts.connections.decrement(1.0);
    }

    /// Adds a member; returns false if it was already there.
    pub fn join(&self, room: &Room, member: &Outbound) -> bool {
        self.join_shared(room, member).1
    }

    /// [`Hub::join`] that also returns the room's name as the hub holds it — the allocation
    /// every event of the room carries from here on ([`Hub::fan_out`]). A session that keeps
    /// it finds an event's room among its own by address, without reading the name
    /// ([`crate::cursor::Joined::get_mut`]).
    pub fn join_shared(&self, room: &Room, member: &Outbound) -> (Room, bool) {
        let mut entry = self.rooms.entry(room.clone()).or_insert_with(|| {
            self.counts.rooms.increment(1.0);
            Members::default()
        });
        let added = entry.insert(member);
        (entry.key().clone(), added)
    }

    /// Removes a member; returns false if it was not there.
    pub fn leave(&self, room: &str, conn: u64) -> bool {
        let mut removed = false;
        let _ = self
            .rooms
            .remove_if_mut(room, |_, members| {
                removed = members.remove(conn);
                members.is_empty()
            })
            .is_some_and(|_| {
                self.counts.rooms.decrement(1.0);
                true
            });
        removed
    }

    /// The rooms with members here that `keep` keeps.
    pub fn rooms_where(&self, keep: impl Fn(&Room) -> bool) -> Vec<Room> {
        self.rooms
            .iter()
            .map(|entry| entry.key().clone())
            .filter(|room| keep(room))
            .collect()
    }

    /// Whether `room` has members here.
    pub fn serves(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Rooms with at least one member here.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Members of `room` here.
    pub fn member_count(&self, room: &str) -> usize {
        self.rooms.get(room).map(|m| m.len()).unwrap_or(0)
    }

    /// Queues `event` for every member of its room; returns how many accepted it. The event
    /// is wrapped once and shared by every member, and carries the room's name as the hub
    /// holds it (the one its members' sessions keep: see [`Hub::join_shared`]).
    pub fn fan_out(&self, mut event: Event) -> usize {
        let Some((room, members)) = self.members(event.room.as_str()) else {
            return 0;
        };
        event.room = room;
        let event = Arc::new(event);
        let (mut accepted, mut conflated, mut total) = (0u64, 0u64, 0u64);
        let mut owed = 0;
        for member in members.iter().flat_map(|chunk| chunk.iter()) {
            total += 1;
            match member.push_owing(Outgoing::Event(event.clone()), &mut owed) {
                Pushed::Queued => accepted += 1,
                Pushed::Conflated => {
                    accepted += 1;
                    conflated += 1;
                }
                Pushed::Overflow => {
                    self.metrics.slow_consumer_closes.increment(1);
                }
                Pushed::Closed => {}
            }
        }
        if owed > 0 {
            self.metrics.queue_bytes.increment(owed as f64);
        }
        self.metrics.delivered.increment(accepted);
        if conflated > 0 {
            self.metrics.conflated.increment(conflated);
        }
        let dropped = total - accepted;
        if dropped > 0 {
            self.metrics.dropped.increment(dropped);
        }
        accepted as usize
    }

    /// Tells every local member of `room` whose user is `sub` to leave it.
    pub fn revoke(&self, room: &str, sub: &str, reason: &str) -> usize {
        let Some((room, members)) = self.members(room) else {
            return 0;
        };
        let reason: Arc<str> = reason.into();
        members
            .iter()
            .flat_map(|chunk| chunk.iter())
            .filter(|m| &*m.sub == sub)
            .filter(|m| {
                m.push(Outgoing::Revoke {
                    room: room.clone(),
                    reason: reason.clone(),
                })
                .accepted()
            })
            .count()
    }

    /// Tells every local member of `room` that its events may have been lost (they recover
    /// from the room's history): the delivery of one of its publications was refused.
    pub fn gap_room(&self, room: &str) -> usize {
        let Some((room, members)) = self.members(room) else {
            return 0;
        };
        tell_gap(&room, &members)
    }

    /// The shared name and a snapshot of the members of `room`, if it has any here.
    fn members(&self, room: &str) -> Option<(Room, Snapshot)> {
        let entry = self.rooms.get(room)?;
        Some((entry.key().clone(), entry.snapshot()))
    }
}

fn tell_gap(room: &Room, members: &Snapshot) -> usize {
    members
        .iter()
        .flat_map(|chunk| chunk.iter())
        .filter(|m| m.push(Outgoing::Gap { room: room.clone() }).accepted())
        .count()
}

/// The connection limits [`Hub::connect`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_gateway: usize,
    pub per_user: usize,
}

/// Why [`Hub::connect`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Gateway,
    User,
}

/// A registered connection: its handle (for rooms), its mailbox (for its session), and the
/// registration that keeps it in the hub's index.
pub struct Connected {
    pub registration: Registration,
    pub out: Outbound,
    pub mailbox: Arc<Mailbox>,
}

/// A connection's place in the hub's index by user; dropping it frees the place (and the
/// connection's share of the limits).
pub struct Registration {
    hub: Arc<Hub>,
    sub: Arc<str>,
    conn: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.disconnect(&self.sub, self.conn);
    }
}

impl Hub {
    /// Kicks every local connection, once each, with `why` (the drain: each closes at its
    /// moment). Returns how many.
    pub fn kick_all(&self, why: Disconnect) -> usize {
        let mut kicked = 0;
        for user in self.users.iter() {
            for connection in user.value() {
                connection.kick(why);
                kicked += 1;
            }
        }
        kicked
    }

    /// Closes every local connection of user `sub` with `why`, ahead of anything queued for
    /// them (a kick, not a queued item, so a full queue cannot turn it into something else).
    pub fn close_user(&self, sub: &str, why: Disconnect) -> usize {
        let Some(connections) = self.users.get(sub).map(|c| c.clone()) else {
            return 0;
        };
        for connection in &connections {
            connection.kick(why);
        }
        connections.len()
    }
}

impl Deliver for Hub {
    fn deliver(&self, publication: Publication) {
        match Utf8Bytes::try_from(publication.frame) {
            Ok(frame) => {
                let latest_only = frame_event_name(&frame).is_some_and(|name| {
                    events::is_latest_value_in(publication.room.as_str(), name)
                });
                // Once per publication (not per recipient): whose position it is, where
                // each partner's stands alone.
                let key =
                    match latest_only && events::conflates_per_partner(publication.room.as_str()) {
                        true => frame_partner(&frame).map(Box::from),
                        false => None,
                    };
                self.fan_out(
                    Event::new(
                        publication.room,
                        publication.epoch,
                        publication.offset,
                        frame,
                        latest_only,
                    )
                    .with_key(key),
                );
            }
            Err(_) => {
                tracing::error!(room = %publication.room, "dropping a publication that is not UTF-8")
            }
        }
    }

    fn gap(&self) {
        let rooms: Vec<(Room, Snapshot)> = self
            .rooms
            .iter()
            .map(|e| (e.key().clone(), e.value().snapshot()))
            .collect();
        let told: usize = rooms
            .into_iter()
            .map(|(room, members)| tell_gap(&room, &members))
            .sum();
        metrics::counter!("switchyard_bus_gaps_total").increment(1);
        tracing::warn!(told, "bus gap: subscribers told to recover");
    }
}

/// The `partner` of a `partner.location` frame (its data's first `"partner"` field: the
/// frame's own fields — type, room, event, offset — never carry that name).
fn frame_partner(frame: &str) -> Option<&str> {
    const FIELD: &str = "\"partner\":\"";
    let start = frame.find(FIELD)? + FIELD.len();
    let len = frame[start..].find('"')?;
    Some(&frame[start..start + len])
}

impl Listen for Hub {
    fn control(&self, control: &Control) {
        match control {
            Control::Revoke { room, sub, reason } => {
                let revoked = self.revoke(room, sub, reason);
                if revoked > 0 {
                    tracing::info!(%room, %sub, revoked, "subscriptions revoked");
                }
            }
            Control::RevokeUser { sub, .. } => {
                let closed = self.close_user(sub, Disconnect::REVOKED);
                if closed > 0 {
                    tracing::info!(%sub, closed, "user's connections revoked");
                }
            }
            Control::OutboxWritten | Control::ChatPublished { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Limits = Limits {
        per_gateway: 100,
        per_user: 16,
    };

    fn room(name: &str) -> Room {
        Room::parse(name).unwrap()
    }

    fn event(name: &str, offset: u64) -> Event {
        Event::new(
            room(name),
            "e1".into(),
            offset,
            Utf8Bytes::from_static("x"),
            false,
        )
    }

    fn connect(hub: &Arc<Hub>, conn: u64, sub: &str, limit_bytes: usize) -> Connected {
        hub.connect(conn, &UserId::parse(sub).unwrap(), limit_bytes, ROOMY)
            .unwrap()
    }

    fn next_event(mailbox: &crate::outbound::Mailbox) -> Option<Outgoing> {
        let mut batch = Vec::new();
        mailbox.take(&mut batch, 1);
        batch.pop()
    }

    #[test]
    fn join_fan_out_leave() {
        let hub = Arc::new(Hub::new());
        let (a, b) = (connect(&hub, 1, "a", 1024), connect(&hub, 2, "b", 1024));
        assert!(hub.join(&room("order:1"), &a.out));
        assert!(!hub.join(&room("order:1"), &a.out));
        assert!(hub.join(&room("order:1"), &b.out));
        assert_eq!(hub.fan_out(event("order:1", 1)), 2);
        for mailbox in [&a.mailbox, &b.mailbox] {
            assert!(
                matches!(next_event(mailbox), Some(Outgoing::Event(e)) if e.frame.as_str() == "x" && e.offset == 1)
            );
        }
        assert_eq!(hub.revoke("order:1", "b", "reassigned"), 1);
        assert!(
            matches!(next_event(&b.mailbox), Some(Outgoing::Revoke { room, .. }) if room.as_str() == "order:1")
        );
        assert!(hub.leave("order:1", 1));
        assert!(!hub.leave("order:1", 1));
        assert_eq!(hub.member_count("order:1"), 1);
        assert!(hub.leave("order:1", 2));
        assert_eq!(hub.room_count(), 0);
        assert_eq!(hub.fan_out(event("order:1", 1)), 0);
    }

    /// Issue #17 §2: every member is told the room's name as the hub holds it, and every
    /// event of the room carries that same allocation, whatever name the bus parsed.
    #[test]
    fn joins_and_events_share_the_hubs_room_name() {
        let hub = Arc::new(Hub::new());
        let (a, b) = (connect(&hub, 1, "a", 1024), connect(&hub, 2, "b", 1024));
        let (first, added) = hub.join_shared(&room("order:1"), &a.out);
        assert!(added);
        let (second, added) = hub.join_shared(&room("order:1"), &b.out);
        assert!(added);
        assert!(std::ptr::eq(first.as_str(), second.as_str()));
        assert_eq!(hub.fan_out(event("order:1", 1)), 2);
        for mailbox in [&a.mailbox, &b.mailbox] {
            assert!(
                matches!(next_event(mailbox), Some(Outgoing::Event(e)) if std::ptr::eq(e.room.as_str(), first.as_str()))
            );
        }
    }

    #[tokio::test]
    async fn a_full_mailbox_kicks_only_that_member() {
        let hub = Arc::new(Hub::new());
        let cost = crate::outbound::ITEM_OVERHEAD + 1;
        let slow = connect(&hub, 1, "s", 2 * cost);
        let fast = connect(&hub, 2, "f", 64 * cost);
        hub.join(&room("order:r"), &slow.out);
        hub.join(&room("order:r"), &fast.out);
        for offset in 1..=3 {
            hub.fan_out(Event::new(
                room("order:r"),
                "e1".into(),
                offset,
                Utf8Bytes::from_static("e"),
                false,
            ));
        }
        slow.mailbox.ready().await;
        assert_eq!(slow.mailbox.kicked(), Some(Disconnect::SLOW));
        let mut batch = Vec::new();
        fast.mailbox.take(&mut batch, 10);
        assert_eq!(batch.len(), 3);
    }

    /// Issue #20 §1: the drain counted an admin once per customer `user:` room it had joined.
    #[test]
    fn kick_all_reaches_each_connection_once() {
        let hub = Arc::new(Hub::new());
        let admin = connect(&hub, 1, "admin", 1024);
        let customers: Vec<Connected> = (0..3)
            .map(|i| connect(&hub, 2 + i, &format!("c{i}"), 1024))
            .collect();
        for (i, c) in customers.iter().enumerate() {
            let user_room = room(&format!("user:c{i}"));
            hub.join(&user_room, &c.out);
            hub.join(&user_room, &admin.out);
        }
        hub.join(&room("user:admin"), &admin.out);
        assert_eq!(hub.kick_all(Disconnect::SHUTDOWN), 4);
        assert_eq!(admin.mailbox.kicked(), Some(Disconnect::SHUTDOWN));
    }

    /// Issue #20 §1: a revoke travelled as a queued item, so a user whose queue was full was
    /// closed as a slow consumer (4003, reconnect) instead of revoked (4501, do not).
    #[test]
    fn a_revoke_wins_over_a_full_queue() {
        let hub = Arc::new(Hub::new());
        let cost = crate::outbound::ITEM_OVERHEAD + 1;
        let c1 = connect(&hub, 1, "c1", 2 * cost);
        let other = connect(&hub, 2, "c2", 2 * cost);
        hub.join(&room("user:c1"), &c1.out);
        for offset in 1..=2 {
            hub.fan_out(event("user:c1", offset));
        }
        assert_eq!(c1.mailbox.queued_bytes(), 2 * cost, "full");
        assert_eq!(hub.close_user("c1", Disconnect::REVOKED), 1);
        assert_eq!(c1.mailbox.kicked(), Some(Disconnect::REVOKED));
        // Already overflowed (kicked as slow): the revoke still wins.
        hub.fan_out(event("user:c1", 3));
        let c1b = connect(&hub, 3, "c1", 2 * cost);
        hub.join(&room("user:c1"), &c1b.out);
        for offset in 4..=6 {
            hub.fan_out(event("user:c1", offset));
        }
        assert_eq!(c1b.mailbox.kicked(), Some(Disconnect::SLOW));
        assert_eq!(hub.close_user("c1", Disconnect::REVOKED), 2);
        assert_eq!(c1b.mailbox.kicked(), Some(Disconnect::REVOKED));
        assert_eq!(other.mailbox.kicked(), None);
    }

    #[test]
    fn limits_are_counted_per_user_and_per_gateway_and_freed_on_drop() {
        let hub = Arc::new(Hub::new());
        let limits = Limits {
            per_gateway: 3,
            per_user: 2,
        };
        let u = UserId::parse("u").unwrap();
        let v = UserId::parse("v").unwrap();
        let a = hub.connect(1, &u, 1024, limits).unwrap();
        let _b = hub.connect(2, &u, 1024, limits).unwrap();
        assert_eq!(hub.connect(3, &u, 1024, limits).err(), Some(Full::User));
        let _c = hub.connect(4, &v, 1024, limits).unwrap();
        assert_eq!(hub.connect(5, &v, 1024, limits).err(), Some(Full::Gateway));
        assert_eq!(hub.connections(), 3);
        drop(a);
        assert_eq!(hub.connections(), 2);
        assert!(hub.connect(6, &u, 1024, limits).is_ok());
    }
}
