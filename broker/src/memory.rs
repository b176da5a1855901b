//! The embedded mode's in-process bus.
//!
//! Publishers send requests through a bounded channel to one dispatcher task, which owns
//! the per-room offset counters (no lock needed: it is the only writer), encodes each event
//! once and calls every sink in order. The bounded channel is the backpressure: when the
//! dispatcher falls behind, `publish` waits rather than queueing without limit.
//!
//! Offsets live in memory: after a restart every room counts from 1 again.

use crate::{Broker, BrokerError, Control, Deliver, Publication, Sinks};
use async_trait::async_trait;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_protocol::{Room, server::encode_event};
use tokio::sync::{mpsc, oneshot};

/// How many publish requests may wait for the dispatcher.
const QUEUE: usize = 4096;

enum Request {
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
}

impl MemoryBroker {
    /// Creates the broker and spawns its dispatcher on the current Tokio runtime.
    /// The dispatcher stops when the broker is dropped.
    pub fn start() -> Arc<MemoryBroker> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sinks = Sinks::default();
        tokio::spawn(dispatch(rx, sinks.clone()));
        Arc::new(MemoryBroker {
            requests: tx,
            sinks,
        })
    }
}

async fn dispatch(mut rx: mpsc::Receiver<Request>, sinks: Sinks) {
    // Offset counters grow with the number of rooms ever published to: one small entry per
    // order, which the embedded mode (one machine, one database file) can afford.
    let mut offsets: HashMap<String, u64> = HashMap::new();
    while let Some(req) = rx.recv().await {
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
        };
        let offset = offsets
            .entry(room.clone())
            .and_modify(|o| *o += 1)
            .or_insert(1);
        let offset = *offset;
        let frame = encode_event(&room, &event, offset, &data);
        let publication = Publication {
            room,
            offset,
            frame,
        };
        sinks.deliver(publication);
        let _ = reply.send(offset);
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

    async fn broadcast(&self, control: Control) -> Result<(), BrokerError> {
        self.requests
            .send(Request::Control(control))
            .await
            .map_err(|_| BrokerError::Closed)
    }

    fn attach(&self, sink: Arc<dyn Deliver>) {
        self.sinks.attach(sink);
    }

    fn is_ready(&self) -> bool {
        !self.requests.is_closed()
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
        let broker = MemoryBroker::start();
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
        let got = sink.0.lock().unwrap();
        assert_eq!(got.len(), 100);
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
                .starts_with(r#"{"type":"event","room":"order:"#)
        );
    }
}
