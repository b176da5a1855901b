//! The embedded mode's [`Presence`]: every room's entries in this process, behind one async
//! lock that is also the announcement lock (held while a transition's event is published, so
//! events leave in the order their transitions were decided). Presence changes are rare next
//! to events (a connection joining or leaving a room), so one lock is plenty.

use super::{Holder, Presence, announce, now_ms};
use crate::{BrokerError, Bus};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::presence::Present;
use switchyard_protocol::{Role, Room};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// One room's presence.
#[derive(Default)]
struct RoomPresence {
    /// (node, sub) → when the entry expires.
    entries: HashMap<(String, String), Instant>,
    /// Users announced present: their role and since when (ms since the epoch).
    announced: HashMap<String, (Role, i64)>,
    /// Announced users without any entry, since when: a leave once the debounce passed.
    absent: HashMap<String, Instant>,
}

impl RoomPresence {
    fn has_entry(&self, sub: &str) -> bool {
        self.entries.keys().any(|(_, s)| s == sub)
    }

    /// Marks `sub` absent (from `at`) if it is announced and has no entry left.
    fn maybe_absent(&mut self, sub: &str, at: Instant) {
        if self.announced.contains_key(sub) && !self.has_entry(sub) {
            self.absent.entry(sub.to_owned()).or_insert(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.announced.is_empty()
    }
}

/// In-process [`Presence`]; publishes on `bus`.
pub struct MemoryPresence {
    bus: Arc<dyn Bus>,
    rooms: Mutex<HashMap<Room, RoomPresence>>,
}

impl MemoryPresence {
    pub fn new(bus: Arc<dyn Bus>) -> Arc<MemoryPresence> {
        Arc::new(MemoryPresence {
            bus,
            rooms: Mutex::new(HashMap::new()),
        })
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn hold(
        &self,
        room: &Room,
        node: &str,
        holders: &[Holder],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let mut rooms = self.rooms.lock().await;
        let state = rooms.entry(room.clone()).or_default();
        let expires = Instant::now() + ttl;
        let mut joined = Vec::new();
        for Holder { sub, role } in holders {
            state
                .entries
                .insert((node.to_owned(), sub.clone()), expires);
            state.absent.remove(sub);
            if !state.announced.contains_key(sub) {
                state.announced.insert(sub.clone(), (*role, now_ms()));
                joined.push((sub.clone(), *role));
            }
        }
        // Published under the lock: the next transition waits for these events.
        for (sub, role) in joined {
            announce(self.bus.as_ref(), room, &sub, role, true).await?;
        }
        Ok(())
    }

    async fn release(&self, room: &Room, node: &str, sub: &str) -> Result<(), BrokerError> {
        let mut rooms = self.rooms.lock().await;
        if let Some(state) = rooms.get_mut(room) {
            state.entries.remove(&(node.to_owned(), sub.to_owned()));
            state.maybe_absent(sub, Instant::now());
        }
        Ok(())
    }

    async fn sweep(&self, room: &Room, debounce: Duration) -> Result<(), BrokerError> {
        let mut rooms = self.rooms.lock().await;
        let Some(state) = rooms.get_mut(room) else {
            return Ok(());
        };
        let now = Instant::now();
        let expired: Vec<((String, String), Instant)> = state
            .entries
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, at)| (key.clone(), *at))
            .collect();
        for (key, _) in &expired {
            state.entries.remove(key);
        }
        // Gone since its entry expired (not since this sweep noticed).
        for ((_, sub), at) in &expired {
            state.maybe_absent(sub, *at);
        }
        let due: Vec<String> = state
            .absent
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= debounce)
            .map(|(sub, _)| sub.clone())
            .collect();
        let mut left = Vec::new();
        for sub in due {
            state.absent.remove(&sub);
            if let Some((role, _)) = state.announced.remove(&sub) {
                left.push((sub, role));
            }
        }
        if state.is_empty() {
            rooms.remove(room);
        }
        for (sub, role) in left {
            announce(self.bus.as_ref(), room, &sub, role, false).await?;
        }
        Ok(())
    }

    async fn present(&self, room: &Room) -> Result<Vec<Present>, BrokerError> {
        let rooms = self.rooms.lock().await;
        let mut present: Vec<Present> = rooms
            .get(room)
            .map(|state| {
                state
                    .announced
                    .iter()
                    .map(|(sub, (role, since))| Present {
                        sub: sub.clone(),
                        role: *role,
                        since: *since,
                    })
                    .collect()
            })
            .unwrap_or_default();
        present.sort_by(|a, b| a.sub.cmp(&b.sub));
        Ok(present)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBus;
    use crate::{Deliver, HistoryConfig, Publication};
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct Recorder(StdMutex<Vec<String>>);

    impl Deliver for Recorder {
        fn deliver(&self, publication: Publication) {
            let frame: serde_json::Value = serde_json::from_slice(&publication.frame).unwrap();
            let line = format!(
                "{} {}",
                frame["event"].as_str().unwrap(),
                frame["data"]["sub"].as_str().unwrap()
            );
            self.0.lock().unwrap().push(line);
        }
    }

    fn holder(sub: &str) -> Holder {
        Holder {
            sub: sub.into(),
            role: Role::Customer,
        }
    }

    /// Two nodes hold one user: one join; the user leaves only after the last entry went and
    /// the debounce passed; a flap within the debounce publishes nothing; an entry that is not
    /// renewed expires.
    #[tokio::test(start_paused = true)]
    async fn once_per_user_debounced_and_expiring() {
        let bus = MemoryBus::start(HistoryConfig::default());
        let seen = Arc::new(Recorder::default());
        bus.attach(seen.clone());
        let presence = MemoryPresence::new(bus);
        let room = Room::order("1").unwrap();
        let ttl = Duration::from_secs(30);
        let debounce = Duration::from_secs(2);
        presence
            .hold(&room, "a", &[holder("c1")], ttl)
            .await
            .unwrap();
        presence
            .hold(&room, "b", &[holder("c1")], ttl)
            .await
            .unwrap();
        presence.release(&room, "a", "c1").await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        presence.sweep(&room, debounce).await.unwrap();
        assert_eq!(presence.present(&room).await.unwrap().len(), 1);
        // The flap: gone and back within the debounce.
        presence.release(&room, "b", "c1").await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        presence.sweep(&room, debounce).await.unwrap();
        presence
            .hold(&room, "a", &[holder("c1")], ttl)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        presence.sweep(&room, debounce).await.unwrap();
        assert_eq!(*seen.0.lock().unwrap(), ["presence.join c1"]);
        // Node a dies: its entry (renewed 3 s ago) expires after the TTL; the leave follows
        // the debounce after that.
        tokio::time::advance(ttl - Duration::from_secs(3) + Duration::from_millis(1)).await;
        presence.sweep(&room, debounce).await.unwrap();
        assert_eq!(seen.0.lock().unwrap().len(), 1, "still within the debounce");
        tokio::time::advance(debounce).await;
        presence.sweep(&room, debounce).await.unwrap();
        assert_eq!(
            *seen.0.lock().unwrap(),
            ["presence.join c1", "presence.leave c1"]
        );
        assert!(presence.present(&room).await.unwrap().is_empty());
    }
}
