//! The embedded mode's in-process bus, controller and leases.
//!
//! Each room's stream (offset counter and recent publications) sits behind a lock of its
//! own: a publish encodes the event once (split around its offset, before any lock), then
//! takes its room's lock, assigns the next offset, writes it into the frame,
//! keeps it in the room's history and hands it to every sink — so one room's publications
//! reach the sinks in offset order, while rooms publish in parallel on as many cores as
//! there are publishers. The sinks never block (a hub's mailboxes are bounded and shed
//! load), so the lock is short.
//!
//! Offsets and history live in memory: a restart starts a new *epoch* (random per process),
//! so clients can tell that offsets began again and that their old position is gone.
//!
//! History: each room keeps its last [`HistoryConfig::size`] publications for at most
//! [`HistoryConfig::ttl`] (a ring of shared frames, no copies), emptied by age on every
//! publish and recovery and by a sweep every quarter of the TTL. A recovery takes the room's
//! lock, so it sees exactly the publications delivered before it.

use crate::revocations::Revocations;
use crate::{
    BrokerError, Bus, ConnectionLeases, Control, Controller, Deliver, History, HistoryConfig,
    Listen, Listeners, Publication, Sinks,
};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use switchyard_protocol::Room;
use switchyard_protocol::client::StreamPosition;
use switchyard_protocol::server::{event_frame_at, event_frame_parts};

#[derive(Default)]
struct RoomStream {
    offset: u64,
    recent: VecDeque<(Instant, Publication)>,
}

type Stream = Arc<Mutex<RoomStream>>;

/// In-process [`Bus`].
pub struct MemoryBus {
    /// One entry per room ever published to: its offset (a few bytes) and a bounded ring
    /// (emptied by age). The embedded mode (one machine, one database) can afford that.
    rooms: DashMap<Box<str>, Stream>,
    /// Every publication of this process shares the one epoch.
    epoch: Arc<str>,
    config: HistoryConfig,
    sinks: Sinks,
}

impl MemoryBus {
    /// Creates the bus and spawns its history sweeper on the current Tokio runtime (it stops
    /// when the bus is dropped).
    pub fn start(config: HistoryConfig) -> Arc<MemoryBus> {
        let bus = Arc::new(MemoryBus {
            rooms: DashMap::new(),
            epoch: crate::new_epoch().into(),
            config,
            sinks: Sinks::default(),
        });
        tokio::spawn(sweep(Arc::downgrade(&bus)));
        bus
    }

    /// The room's stream, created on first use. The map's shard lock is released before the
    /// stream's own lock is taken.
    fn stream(&self, room: &str) -> Stream {
        if let Some(stream) = self.rooms.get(room) {
            return stream.clone();
        }
        self.rooms.entry(room.into()).or_default().clone()
    }

    fn existing(&self, room: &str) -> Option<Stream> {
        self.rooms.get(room).map(|s| s.clone())
    }
}

/// Empties the rings of rooms nobody publishes to any more, every quarter of the TTL.
async fn sweep(bus: Weak<MemoryBus>) {
    let every = match bus.upgrade() {
        Some(bus) => (bus.config.ttl / 4).max(Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(bus) = bus.upgrade() else { return };
        let now = Instant::now();
        let streams: Vec<Stream> = bus.rooms.iter().map(|e| e.value().clone()).collect();
        for stream in streams {
            expire(&mut lock(&stream).recent, now, bus.config.ttl);
        }
    }
}

fn lock(stream: &Mutex<RoomStream>) -> std::sync::MutexGuard<'_, RoomStream> {
    stream.lock().unwrap_or_else(|e| e.into_inner())
}

fn expire(recent: &mut VecDeque<(Instant, Publication)>, now: Instant, ttl: Duration) {
    while recent
        .front()
        .is_some_and(|(at, _)| now.saturating_duration_since(*at) > ttl)
    {
        recent.pop_front();
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(
        &self,
        room: &Room,
        event: &str,
        data: Box<RawValue>,
    ) -> Result<u64, BrokerError> {
        // The JSON encoding happens here, before the room's lock: under it, only the offset
        // is written between the two parts.
        let (head, tail) = event_frame_parts(room.as_str(), event, &data);
        drop(data);
        let stream = self.stream(room.as_str());
        let mut stream = lock(&stream);
        stream.offset += 1;
        let offset = stream.offset;
        let publication = Publication {
            room: room.clone(),
            epoch: self.epoch.clone(),
            offset,
            frame: Bytes::from(event_frame_at(&head, offset, &tail)),
        };
        if self.config.size > 0 {
            let now = Instant::now();
            expire(&mut stream.recent, now, self.config.ttl);
            if stream.recent.len() == self.config.size {
                stream.recent.pop_front();
            }
            stream.recent.push_back((now, publication.clone()));
        }
        // Under the room's lock: the next publication of this room waits until this one is
        // in every sink.
        self.sinks.deliver(publication);
        Ok(offset)
    }

    async fn subscribe(&self, _room: &Room) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _room: &Room) {}

    async fn history(
        &self,
        room: &Room,
        since: Option<&StreamPosition>,
    ) -> Result<History, BrokerError> {
        let stream = self.existing(room.as_str());
        let mut guard = stream.as_ref().map(|s| lock(s));
        let offset = guard.as_ref().map(|s| s.offset).unwrap_or(0);
        let missed = match (since, guard.as_mut()) {
            (Some(since), _) if *since.epoch != *self.epoch || since.offset > offset => None,
            (Some(since), _) if since.offset == offset => Some(Vec::new()),
            (Some(since), Some(stream)) => {
                expire(&mut stream.recent, Instant::now(), self.config.ttl);
                // Complete only if the oldest kept publication is the one right after `since`.
                let first = stream
                    .recent
                    .iter()
                    .position(|(_, p)| p.offset > since.offset);
                match first {
                    Some(i) if stream.recent[i].1.offset == since.offset + 1 => Some(
                        stream
                            .recent
                            .iter()
                            .skip(i)
                            .map(|(_, p)| p.clone())
                            .collect(),
                    ),
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(History {
            position: StreamPosition {
                epoch: self.epoch.to_string(),
                offset,
            },
            missed,
        })
    }

    fn attach(&self, sink: Arc<dyn Deliver>) {
        self.sinks.attach(sink);
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// In-process [`Controller`]: a broadcast is a call to every listener.
#[derive(Default)]
pub struct MemoryController {
    listeners: Listeners,
    /// The only process there is: its records are all the records.
    revocations: Revocations,
}

impl MemoryController {
    pub fn new() -> Arc<MemoryController> {
        Arc::new(MemoryController::default())
    }
}

#[async_trait]
impl Controller for MemoryController {
    async fn broadcast(&self, control: Control) -> Result<(), BrokerError> {
        self.listeners.control(&control);
        Ok(())
    }

    async fn revoke_user(&self, sub: &str, at: u64, until: u64) -> Result<(), BrokerError> {
        self.revocations.record(sub, at, until);
        self.broadcast(Control::RevokeUser {
            sub: sub.to_owned(),
            at,
            until,
        })
        .await
    }

    fn revoked_at(&self, sub: &str) -> Option<u64> {
        self.revocations.revoked_at(sub)
    }

    fn listen(&self, listener: Arc<dyn Listen>) {
        self.listeners.attach(listener);
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// The in-process [`ConnectionLeases`]: one process, whose own count (the hub's) is exact,
/// so every claim is granted.
pub struct OneProcess;

#[async_trait]
impl ConnectionLeases for OneProcess {
    async fn claim(
        &self,
        _sub: &str,
        _conn: &str,
        _limit: usize,
        _lease: Duration,
    ) -> Result<bool, BrokerError> {
        Ok(true)
    }

    async fn renew(&self, _sub: &str, _conn: &str, _lease: Duration) {}

    async fn release(&self, _sub: &str, _conn: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Publication>>);
    impl Deliver for Collect {
        fn deliver(&self, p: Publication) {
            self.0.lock().unwrap().push(p);
        }
    }

    #[tokio::test]
    async fn offsets_count_per_room_and_arrive_in_order() {
        let broker = MemoryBus::start(HistoryConfig::default());
        let sink = Arc::new(Collect::default());
        broker.attach(sink.clone());
        let a = Room::parse("order:1").unwrap();
        let b = Room::parse("order:2").unwrap();
        let data = || RawValue::from_string("{}".into()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let broker = broker.clone();
            let room = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                broker.publish(&room, "x.y", data()).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // One epoch for the process, shared by every publication and reported by history.
        let epoch = broker.history(&a, None).await.unwrap().position.epoch;
        let got = sink.0.lock().unwrap();
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|p| *p.epoch == *epoch));
        for room in ["order:1", "order:2"] {
            let offsets: Vec<u64> = got
                .iter()
                .filter(|p| p.room.as_str() == room)
                .map(|p| p.offset)
                .collect();
            assert_eq!(offsets, (1..=50).collect::<Vec<_>>());
        }
        assert!(
            got[0]
                .frame
                .starts_with(br#"{"type":"event","room":"order:"#)
        );
    }

    #[tokio::test]
    async fn history_recovers_exactly_what_was_missed_or_says_it_cannot() {
        let broker = MemoryBus::start(HistoryConfig {
            size: 5,
            ttl: Duration::from_secs(60),
        });
        let room = Room::parse("order:1").unwrap();
        let data = || RawValue::from_string("{}".into()).unwrap();
        for _ in 0..8 {
            broker.publish(&room, "x.y", data()).await.unwrap();
        }
        let now = broker.history(&room, None).await.unwrap();
        assert_eq!(now.position.offset, 8);
        assert!(now.missed.is_none());
        let at = |offset| StreamPosition {
            epoch: now.position.epoch.clone(),
            offset,
        };
        let got = broker
            .history(&room, Some(&at(5)))
            .await
            .unwrap()
            .missed
            .unwrap();
        assert_eq!(
            got.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![6, 7, 8]
        );
        let got = broker
            .history(&room, Some(&at(3)))
            .await
            .unwrap()
            .missed
            .unwrap();
        assert_eq!(got.len(), 5);
        let beyond = broker.history(&room, Some(&at(2))).await.unwrap();
        assert!(beyond.missed.is_none(), "beyond history");
        let current = broker.history(&room, Some(&at(8))).await.unwrap();
        assert!(current.missed.unwrap().is_empty());
        let future = broker.history(&room, Some(&at(9))).await.unwrap();
        assert!(future.missed.is_none(), "from the future");
        let other = StreamPosition {
            epoch: "old".into(),
            offset: 7,
        };
        let old = broker.history(&room, Some(&other)).await.unwrap();
        assert!(old.missed.is_none(), "another epoch");
    }
}
