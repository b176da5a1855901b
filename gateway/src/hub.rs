//! The local registry of rooms and their members on one gateway.
//!
//! Each room maps to an immutable, shared member list (`Arc<[Outbound]>`). Joining or
//! leaving builds a new list under the map's shard lock; delivering clones the `Arc`
//! (one atomic increment), releases the lock, and walks the list. So no lock is held
//! during a fan-out, and publishers in different rooms never contend.
//!
//! A publication's frame is turned into one `Utf8Bytes` and every member gets a clone
//! of the same bytes: encoded once, never per recipient.

use crate::outbound::{Event, Outbound, Outgoing, Pushed};
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use std::sync::Arc;
use switchyard_broker::{Control, Deliver, Publication};
use switchyard_protocol::events;
use switchyard_protocol::server::frame_event_name;

pub struct Hub {
    rooms: DashMap<String, Arc<[Outbound]>>,
    /// Handles on the delivery-path metrics, registered once: no registry lookup per event.
    pub(crate) metrics: DeliveryMetrics,
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

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            rooms: DashMap::new(),
            metrics: DeliveryMetrics {
                delivered: metrics::counter!("switchyard_events_delivered_total"),
                conflated: metrics::counter!("switchyard_events_conflated_total"),
                dropped: metrics::counter!("switchyard_events_dropped_total"),
                slow_consumer_closes: metrics::counter!("switchyard_slow_consumer_closes_total"),
                queue_bytes: metrics::gauge!("switchyard_outbound_queue_bytes"),
                fanout_latency: metrics::histogram!("switchyard_fanout_latency_seconds"),
            },
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("rooms", &self.rooms.len())
            .finish()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// A new connection's handle and mailbox, bounded to `limit_bytes`, its bytes counted in
    /// `switchyard_outbound_queue_bytes` by the mailbox itself.
    pub fn outbound(
        &self,
        conn: u64,
        sub: Arc<str>,
        limit_bytes: usize,
    ) -> (Outbound, Arc<crate::outbound::Mailbox>) {
        Outbound::new(conn, sub, limit_bytes, self.metrics.queue_bytes.clone())
    }

    /// Adds a member; returns false if it was already there.
    pub fn join(&self, room: &str, member: &Outbound) -> bool {
        let mut entry = self.rooms.entry(room.to_owned()).or_insert_with(|| {
            metrics::gauge!("switchyard_rooms").increment(1.0);
            Arc::new([])
        });
        if entry.iter().any(|m| m.conn == member.conn) {
            return false;
        }
        let mut members = Vec::with_capacity(entry.len() + 1);
        members.extend(entry.iter().cloned());
        members.push(member.clone());
        *entry = members.into();
        true
    }

    /// Removes a member; returns false if it was not there.
    pub fn leave(&self, room: &str, conn: u64) -> bool {
        let mut removed = false;
        let _ = self
            .rooms
            .remove_if_mut(room, |_, members| {
                if members.iter().any(|m| m.conn == conn) {
                    removed = true;
                    *members = members.iter().filter(|m| m.conn != conn).cloned().collect();
                }
                members.is_empty()
            })
            .is_some_and(|_| {
                metrics::gauge!("switchyard_rooms").decrement(1.0);
                true
            });
        removed
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
    /// is wrapped once and shared by every member.
    pub fn fan_out(&self, event: Event) -> usize {
        let Some(members) = self.rooms.get(&*event.room).map(|m| Arc::clone(&m)) else {
            return 0;
        };
        let event = Arc::new(event);
        let (mut accepted, mut conflated) = (0u64, 0u64);
        for member in members.iter() {
            match member.push(Outgoing::Event(event.clone())) {
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
        self.metrics.delivered.increment(accepted);
        if conflated > 0 {
            self.metrics.conflated.increment(conflated);
        }
        let dropped = members.len() as u64 - accepted;
        if dropped > 0 {
            self.metrics.dropped.increment(dropped);
        }
        accepted as usize
    }

    /// Tells every local member of `room` whose user is `sub` to leave it.
    pub fn revoke(&self, room: &str, sub: &str, reason: &str) -> usize {
        let Some(members) = self.rooms.get(room).map(|m| Arc::clone(&m)) else {
            return 0;
        };
        let (room, reason): (Arc<str>, Arc<str>) = (room.into(), reason.into());
        members
            .iter()
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
}

impl Hub {
    /// Kicks every local connection with `code` (the drain: each closes at its moment).
    /// Every connection is in its own `user:` room, so walking those reaches each one.
    pub fn kick_all(&self, code: u16) -> usize {
        let mut kicked = 0;
        for entry in self.rooms.iter().filter(|e| e.key().starts_with("user:")) {
            for member in entry.value().iter() {
                member.kick(code);
                kicked += 1;
            }
        }
        kicked
    }

    /// Closes every local connection of user `sub` with `code`. Every connection is in its
    /// own `user:{sub}` room, so that room's members are exactly the user's connections.
    pub fn close_user(&self, sub: &str, code: u16) -> usize {
        let Some(members) = self
            .rooms
            .get(&format!("user:{sub}"))
            .map(|m| Arc::clone(&m))
        else {
            return 0;
        };
        members
            .iter()
            .filter(|m| &*m.sub == sub)
            .filter(|m| m.push(Outgoing::Close { code }).accepted())
            .count()
    }
}

impl Deliver for Hub {
    fn deliver(&self, publication: Publication) {
        match Utf8Bytes::try_from(publication.frame) {
            Ok(frame) => {
                let latest_only = frame_event_name(&frame).is_some_and(events::is_latest_value);
                self.fan_out(Event::new(
                    &publication.room,
                    publication.epoch,
                    publication.offset,
                    frame,
                    latest_only,
                ));
            }
            Err(_) => {
                tracing::error!(room = %publication.room, "dropping a publication that is not UTF-8")
            }
        }
    }

    fn gap(&self) {
        let rooms: Vec<(Arc<str>, Arc<[Outbound]>)> = self
            .rooms
            .iter()
            .map(|e| (Arc::from(e.key().as_str()), e.value().clone()))
            .collect();
        let mut told = 0;
        for (room, members) in rooms {
            for m in members.iter() {
                told += usize::from(m.push(Outgoing::Gap { room: room.clone() }).accepted());
            }
        }
        metrics::counter!("switchyard_bus_gaps_total").increment(1);
        tracing::warn!(told, "bus gap: subscribers told to recover");
    }

    fn control(&self, control: &Control) {
        match control {
            Control::Revoke { room, sub, reason } => {
                let revoked = self.revoke(room, sub, reason);
                if revoked > 0 {
                    tracing::info!(%room, %sub, revoked, "subscriptions revoked");
                }
            }
            Control::RevokeUser { sub, .. } => {
                let closed = self.close_user(sub, switchyard_protocol::close::REVOKED);
                if closed > 0 {
                    tracing::info!(%sub, closed, "user's connections revoked");
                }
            }
            Control::OutboxWritten => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, offset: u64) -> Event {
        Event::new(
            room,
            "e1".into(),
            offset,
            Utf8Bytes::from_static("x"),
            false,
        )
    }

    fn next_event(mailbox: &crate::outbound::Mailbox) -> Option<Outgoing> {
        let mut batch = Vec::new();
        mailbox.take(&mut batch, 1);
        batch.pop()
    }

    #[test]
    fn join_fan_out_leave() {
        let hub = Hub::new();
        let (a, ma) = hub.outbound(1, "a".into(), 1024);
        let (b, mb) = hub.outbound(2, "b".into(), 1024);
        assert!(hub.join("order:1", &a));
        assert!(!hub.join("order:1", &a));
        assert!(hub.join("order:1", &b));
        assert_eq!(hub.fan_out(event("order:1", 1)), 2);
        for mailbox in [&ma, &mb] {
            assert!(
                matches!(next_event(mailbox), Some(Outgoing::Event(e)) if e.frame.as_str() == "x" && e.offset == 1)
            );
        }
        assert_eq!(hub.revoke("order:1", "b", "reassigned"), 1);
        assert!(
            matches!(next_event(&mb), Some(Outgoing::Revoke { room, .. }) if &*room == "order:1")
        );
        assert!(hub.leave("order:1", 1));
        assert!(!hub.leave("order:1", 1));
        assert_eq!(hub.member_count("order:1"), 1);
        assert!(hub.leave("order:1", 2));
        assert_eq!(hub.room_count(), 0);
        assert_eq!(hub.fan_out(event("order:1", 1)), 0);
    }

    #[tokio::test]
    async fn a_full_mailbox_kicks_only_that_member() {
        let hub = Hub::new();
        let cost = crate::outbound::ITEM_OVERHEAD + 1;
        let (slow, ms) = hub.outbound(1, "s".into(), 2 * cost);
        let (fast, mf) = hub.outbound(2, "f".into(), 64 * cost);
        hub.join("r", &slow);
        hub.join("r", &fast);
        for offset in 1..=3 {
            hub.fan_out(Event::new(
                "r",
                "e1".into(),
                offset,
                Utf8Bytes::from_static("e"),
                false,
            ));
        }
        ms.ready().await;
        assert_eq!(ms.kicked(), Some(switchyard_protocol::close::SLOW_CONSUMER));
        let mut batch = Vec::new();
        mf.take(&mut batch, 10);
        assert_eq!(batch.len(), 3);
    }
}
