//! The embedded mode's in-process bus.
//!
//! Publishers send requests through a bounded channel to one dispatcher task, which owns
//! the per-room offset counters (no lock needed: it is the only writer), encodes each event
//! once and calls every sink in order. The bounded channel is the backpressure: when the
//! dispatcher falls behind, `publish` waits rather than queueing without limit.
//!
//! Offsets and history live in memory: a restart starts a new *epoch* (random per process),
//! so clients can tell that offsets began again and that their old position is gone.
//!
//! History: each room keeps its last [`HistoryConfig::size`] publications for at most
//! [`HistoryConfig::ttl`] (a ring of shared frames, no copies). A recovery request goes through
//! the same channel as publishes, so it sees exactly the publications delivered before it.

use crate::revocations::Revocations;
use crate::{Broker, BrokerError, Control, Deliver, History, Publication, Sinks};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_protocol::client::StreamPosition;
use switchyard_protocol::{Room, server::encode_event};
use tokio::sync::{mpsc, oneshot};

/// How many publish requests may wait for the dispatcher.
const QUEUE: usize = 4096;

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

struct RoomStream {
    offset: u64,
    recent: VecDeque<(Instant, Publication)>,
}

enum Request {
    History {
        room: String,
        since: Option<StreamPosition>,
        reply: oneshot::Sender<History>,
    },
    Publish {
        room: String,
        event: String,
        data: Box<RawValue>,
        reply: oneshot::Sender<u64>,
    },
    Control(Control),
}

/// In-process [`Broker`].
pub struct MemoryBroker {
    requests: mpsc::Sender<Request>,
    sinks: Sinks,
    /// The only process there is: its records are all the records.
    revocations: Revocations,
}

impl MemoryBroker {
    /// Creates the broker and spawns its dispatcher on the current Tokio runtime.
    /// The dispatcher stops when the broker is dropped.
    pub fn start(history: HistoryConfig) -> Arc<MemoryBroker> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sinks = Sinks::default();
        tokio::spawn(dispatch(rx, sinks.clone(), history, new_epoch()));
        Arc::new(MemoryBroker {
            requests: tx,
            sinks,
            revocations: Revocations::default(),
        })
    }
}

/// A fresh epoch: time and process id, hex. Unique per start of a process.
pub(crate) fn new_epoch() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

async fn dispatch(
    mut rx: mpsc::Receiver<Request>,
    sinks: Sinks,
    config: HistoryConfig,
    epoch: String,
) {
    // Every publication of this process shares the one epoch.
    let shared_epoch: Arc<str> = epoch.as_str().into();
    // One entry per room ever published to: its offset (a few bytes) and a bounded ring
    // (emptied by age). The embedded mode (one machine, one database) can afford that.
    let mut rooms: HashMap<String, RoomStream> = HashMap::new();
    let mut swept = Instant::now();
    while let Some(req) = rx.recv().await {
        if swept.elapsed() > config.ttl / 4 {
            let now = Instant::now();
            for stream in rooms.values_mut() {
                expire(&mut stream.recent, now, config.ttl);
            }
            swept = now;
        }
        let (room, event, data, reply) = match req {
            Request::Publish {
                room,
                event,
                data,
                reply,
            } => (room, event, data, reply),
            Request::Control(control) => {
                sinks.control(&control);
                continue;
            }
            Request::History { room, since, reply } => {
                let stream = rooms.get_mut(&room);
                let offset = stream.as_ref().map(|s| s.offset).unwrap_or(0);
                let missed = match (since, stream) {
                    (Some(since), _) if since.epoch != epoch || since.offset > offset => None,
                    (Some(since), _) if since.offset == offset => Some(Vec::new()),
                    (Some(since), Some(stream)) => {
                        expire(&mut stream.recent, Instant::now(), config.ttl);
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
                let _ = reply.send(History {
                    position: StreamPosition {
                        epoch: epoch.clone(),
                        offset,
                    },
                    missed,
                });
                continue;
            }
        };
        let stream = rooms.entry(room.clone()).or_insert_with(|| RoomStream {
            offset: 0,
            recent: VecDeque::new(),
        });
        stream.offset += 1;
        let offset = stream.offset;
        let frame = Bytes::from(encode_event(&room, &event, offset, &data));
        let publication = Publication {
            room,
            epoch: shared_epoch.clone(),
            offset,
            frame,
        };
        if config.size > 0 {
            if stream.recent.len() == config.size {
                stream.recent.pop_front();
            }
            stream
                .recent
                .push_back((Instant::now(), publication.clone()));
        }
        sinks.deliver(publication);
        let _ = reply.send(offset);
    }
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
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        room: &Room,
        event: &str,
        data: Box<RawValue>,
    ) -> Result<u64, BrokerError> {
        let (reply, offset) = oneshot::channel();
        self.requests
            .send(Request::Publish {
                room: room.as_str().to_owned(),
                event: event.to_owned(),
                data,
                reply,
            })
            .await
            .map_err(|_| BrokerError::Closed)?;
        offset.await.map_err(|_| BrokerError::Closed)
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
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::History {
                room: room.as_str().to_owned(),
                since: since.cloned(),
                reply,
            })
            .await
            .map_err(|_| BrokerError::Closed)?;
        answer.await.map_err(|_| BrokerError::Closed)
    }

    async fn broadcast(&self, control: Control) -> Result<(), BrokerError> {
        self.requests
            .send(Request::Control(control))
            .await
            .map_err(|_| BrokerError::Closed)
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

    fn attach(&self, sink: Arc<dyn Deliver>) {
        self.sinks.attach(sink);
    }

    fn is_ready(&self) -> bool {
        let up = !self.requests.is_closed();
        metrics::gauge!("switchyard_bus_connected").set(if up { 1.0 } else { 0.0 });
        up
    }
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
        let broker = MemoryBroker::start(HistoryConfig::default());
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
                .filter(|p| p.room == room)
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
        let broker = MemoryBroker::start(HistoryConfig {
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
