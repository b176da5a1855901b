//! The batch publish's contract (issue #17 §2), the same on one Redis and on a cluster: two
//! processes publishing batches that mix rooms (on a cluster, rooms of every shard) get
//! offsets 1, 2, 3, … per room with none twice or skipped; a subscriber receives every event
//! once, in offset order, in one epoch; and recovery from any position gives exactly the
//! events after it (the history behind the gap semantics).

use serde_json::value::RawValue;
use std::sync::{Arc, Mutex};
use switchyard_broker::{Bus, Deliver, Outgoing, Publication};
use switchyard_protocol::Room;
use switchyard_protocol::client::StreamPosition;

/// Every publication delivered to a bus it is attached to.
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<Publication>>);

impl Deliver for Collect {
    fn deliver(&self, p: Publication) {
        self.0.lock().unwrap().push(p);
    }
}

/// Publishes `per_room` events to each room in batches of 7 (mixing rooms), alternately
/// through `a` and `b`, all batches at once, while `listener` (subscribed here) collects; then
/// checks the contract above. Rooms should be fresh (no event yet).
pub async fn batches_keep_offsets_per_room(
    a: Arc<dyn Bus>,
    b: Arc<dyn Bus>,
    listener: Arc<dyn Bus>,
    rooms: &[Room],
    per_room: usize,
) {
    let sink = Arc::new(Collect::default());
    listener.attach(sink.clone());
    for room in rooms {
        listener.subscribe(room).await.unwrap();
    }
    let events: Vec<Room> = (0..per_room * rooms.len())
        .map(|i| rooms[i % rooms.len()].clone())
        .collect();
    let batches = events.chunks(7).enumerate().map(|(k, chunk)| {
        let bus = if k % 2 == 0 { a.clone() } else { b.clone() };
        let batch: Vec<Outgoing> = chunk
            .iter()
            .enumerate()
            .map(|(i, room)| Outgoing {
                room: room.clone(),
                event: "test.batch".into(),
                data: RawValue::from_string(format!(r#"{{"k":{k},"i":{i}}}"#)).unwrap(),
            })
            .collect();
        let rooms: Vec<Room> = chunk.to_vec();
        async move {
            let offsets = bus.publish_batch(batch).await;
            rooms
                .into_iter()
                .zip(offsets)
                .map(|(room, offset)| (room, offset.unwrap()))
                .collect::<Vec<_>>()
        }
    });
    let returned: Vec<(Room, u64)> = futures_util::future::join_all(batches)
        .await
        .into_iter()
        .flatten()
        .collect();
    let expected: Vec<u64> = (1..=per_room as u64).collect();
    for room in rooms {
        let mut offsets: Vec<u64> = returned
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, o)| *o)
            .collect();
        offsets.sort();
        assert_eq!(offsets, expected, "each offset once: {room}");
    }
    crate::eventually("every publication delivered", async || {
        sink.0.lock().unwrap().len() >= per_room * rooms.len()
    })
    .await;
    let got = sink.0.lock().unwrap().clone();
    assert_eq!(got.len(), per_room * rooms.len(), "each once");
    for room in rooms {
        let of_room: Vec<&Publication> = got.iter().filter(|p| p.room == *room).collect();
        let delivered: Vec<u64> = of_room.iter().map(|p| p.offset).collect();
        assert_eq!(delivered, expected, "in order: {room}");
        assert!(
            of_room.iter().all(|p| p.epoch == of_room[0].epoch),
            "{room}"
        );
        // Recovery from the middle: exactly the events after it, the frames delivered.
        let since = StreamPosition {
            epoch: of_room[0].epoch.to_string(),
            offset: (per_room / 2) as u64,
        };
        let history = listener.history(room, Some(&since)).await.unwrap();
        assert_eq!(history.position.offset, per_room as u64);
        let missed = history.missed.expect("recoverable");
        let frames: Vec<_> = missed.iter().map(|p| (p.offset, p.frame.clone())).collect();
        let live: Vec<_> = of_room[per_room / 2..]
            .iter()
            .map(|p| (p.offset, p.frame.clone()))
            .collect();
        assert_eq!(frames, live, "{room}");
        // Another epoch: not recoverable (the client resyncs), never a silent hole.
        let other = StreamPosition {
            epoch: "another".into(),
            offset: 1,
        };
        assert!(
            listener
                .history(room, Some(&other))
                .await
                .unwrap()
                .missed
                .is_none()
        );
    }
}
