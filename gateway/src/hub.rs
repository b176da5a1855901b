//! The local registry of rooms and their members on one gateway.
//!
//! Each room maps to an immutable, shared member list (`Arc<[Outbound]>`). Joining or
//! leaving builds a new list under the map's shard lock; delivering clones the `Arc`
//! (one atomic increment), releases the lock, and walks the list. So no lock is held
//! during a fan-out, and publishers in different rooms never contend.
//!
//! A publication's frame is turned into one `Utf8Bytes` and every member gets a clone
//! of the same bytes: encoded once, never per recipient.

use crate::outbound::{Outbound, Outgoing};
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use std::sync::Arc;
use switchyard_broker::{Control, Deliver, Publication};

#[derive(Debug, Default)]
pub struct Hub {
    rooms: DashMap<String, Arc<[Outbound]>>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Adds a member; returns false if it was already there.
    pub fn join(&self, room: &str, member: &Outbound) -> bool {
        let mut entry = self
            .rooms
            .entry(room.to_owned())
            .or_insert_with(|| Arc::new([]));
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
        self.rooms.remove_if_mut(room, |_, members| {
            if members.iter().any(|m| m.conn == conn) {
                removed = true;
                *members = members.iter().filter(|m| m.conn != conn).cloned().collect();
            }
            members.is_empty()
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

    /// Queues `frame` (the event at `offset` in `room`) for every member of `room`; returns
    /// how many accepted it.
    pub fn fan_out(&self, room: &str, offset: u64, frame: Utf8Bytes) -> usize {
        let Some(members) = self.rooms.get(room).map(|m| Arc::clone(&m)) else {
            return 0;
        };
        let room: Arc<str> = room.into();
        let delivered = members
            .iter()
            .filter(|m| {
                m.push_outgoing(Outgoing::Event {
                    room: room.clone(),
                    offset,
                    frame: frame.clone(),
                })
            })
            .count();
        metrics::counter!("switchyard_events_delivered_total").increment(delivered as u64);
        let dropped = members.len() - delivered;
        if dropped > 0 {
            metrics::counter!("switchyard_events_dropped_total").increment(dropped as u64);
        }
        delivered
    }
}

impl Hub {
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
                m.push_outgoing(Outgoing::Revoke {
                    room: room.clone(),
                    reason: reason.clone(),
                })
            })
            .count()
    }
}

impl Deliver for Hub {
    fn deliver(&self, publication: Publication) {
        match Utf8Bytes::try_from(publication.frame) {
            Ok(frame) => {
                self.fan_out(&publication.room, publication.offset, frame);
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
                told += usize::from(m.push_outgoing(Outgoing::Gap { room: room.clone() }));
            }
        }
        metrics::counter!("switchyard_bus_gaps_total").increment(1);
        tracing::warn!(told, "bus gap: subscribers told to recover");
    }

    fn control(&self, control: &Control) {
        if let Control::Revoke { room, sub, reason } = control {
            let revoked = self.revoke(room, sub, reason);
            if revoked > 0 {
                tracing::info!(%room, %sub, revoked, "subscriptions revoked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_fan_out_leave() {
        let hub = Hub::new();
        let (a, mut ra, _) = Outbound::new(1, "a", 8);
        let (b, mut rb, _) = Outbound::new(2, "b", 8);
        assert!(hub.join("order:1", &a));
        assert!(!hub.join("order:1", &a));
        assert!(hub.join("order:1", &b));
        assert_eq!(hub.fan_out("order:1", 1, Utf8Bytes::from_static("x")), 2);
        assert!(
            matches!(ra.recv().await, Some(Outgoing::Event { frame, .. }) if frame.as_str() == "x")
        );
        assert!(
            matches!(rb.recv().await, Some(Outgoing::Event { frame, .. }) if frame.as_str() == "x")
        );
        assert_eq!(hub.revoke("order:1", "b", "reassigned"), 1);
        assert!(
            matches!(rb.recv().await, Some(Outgoing::Revoke { room, .. }) if &*room == "order:1")
        );
        assert!(hub.leave("order:1", 1));
        assert!(!hub.leave("order:1", 1));
        assert_eq!(hub.member_count("order:1"), 1);
        assert!(hub.leave("order:1", 2));
        assert_eq!(hub.room_count(), 0);
        assert_eq!(hub.fan_out("order:1", 1, Utf8Bytes::from_static("x")), 0);
    }

    #[tokio::test]
    async fn a_full_queue_kicks_only_that_member() {
        let hub = Hub::new();
        let (slow, _rs, kick) = Outbound::new(1, "s", 2);
        let (fast, mut rf, _) = Outbound::new(2, "f", 64);
        hub.join("r", &slow);
        hub.join("r", &fast);
        for _ in 0..3 {
            hub.fan_out("r", 1, Utf8Bytes::from_static("e"));
        }
        assert_eq!(
            kick.kicked().await,
            switchyard_protocol::close::SLOW_CONSUMER
        );
        for _ in 0..3 {
            assert!(rf.recv().await.is_some());
        }
    }
}
