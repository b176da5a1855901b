//! The handshake's no-gap guarantee (issue #17), the same on one Redis and on a cluster: a
//! connection's user room is subscribed and its position read (with the lease claim, in the
//! handshake's one script) so that every event published after that position reaches the
//! gateway live — none falls between the position read and the subscription becoming active.
//!
//! The check races the two on purpose: a publisher keeps every room busy (batches over all of
//! them, back to back) while the gateway joins the rooms, all at once as a burst of handshakes
//! does; then, per room, the events delivered after the position must be exactly position+1 up
//! to the room's last offset.

use crate::batch::Collect;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use switchyard_broker::redis::Redis;
use switchyard_broker::{Bus, Claim, ConnectionLeases, Outgoing};
use switchyard_protocol::Room;

/// `rounds` bursts of `per_round` handshakes' user rooms (`user:{prefix}{round}-{i}`), each
/// burst joined by `gateway` while `publisher` publishes to its rooms without pause.
pub async fn joins_miss_nothing(
    publisher: Arc<dyn Bus>,
    gateway: &Redis,
    prefix: &str,
    rounds: usize,
    per_round: usize,
) {
    let sink = Arc::new(Collect::default());
    gateway.bus.attach(sink.clone());
    let mut positions: HashMap<Room, u64> = HashMap::new();
    let mut rooms_all = Vec::new();
    for round in 0..rounds {
        let subs: Vec<String> = (0..per_round)
            .map(|i| format!("{prefix}{round}-{i}"))
            .collect();
        let rooms: Vec<Room> = subs
            .iter()
            .map(|sub| Room::parse(&format!("user:{sub}")).unwrap())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let publishing = {
            let (publisher, rooms, stop) = (publisher.clone(), rooms.clone(), stop.clone());
            tokio::spawn(async move {
                let mut batches = 0u32;
                while !stop.load(Ordering::Relaxed) && batches < 10_000 {
                    let batch = rooms
                        .iter()
                        .map(|room| Outgoing {
                            room: room.clone(),
                            event: "test.gapless".into(),
                            data: RawValue::from_string("{}".into()).unwrap(),
                        })
                        .collect();
                    for result in publisher.publish_batch(batch).await {
                        result.unwrap();
                    }
                    batches += 1;
                }
                batches
            })
        };
        // Let the publisher get going, then join every room at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let joins = subs.iter().zip(&rooms).map(|(sub, room)| async move {
            gateway.bus.subscribe(room).await.unwrap();
            let claim = Claim {
                sub,
                conn: "gapless",
                limit: 5,
                lease: Duration::from_secs(60),
            };
            let (claimed, history) = gateway
                .leases
                .claim_and_read(gateway.bus.as_ref(), claim, room, None)
                .await
                .unwrap();
            assert!(claimed);
            (room.clone(), history.position.offset)
        });
        positions.extend(futures_util::future::join_all(joins).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.store(true, Ordering::Relaxed);
        let batches = publishing.await.unwrap();
        assert!(batches > 1, "the publisher kept the rooms busy");
        rooms_all.extend(rooms);
    }
    let mut last: HashMap<Room, u64> = HashMap::new();
    for room in &rooms_all {
        last.insert(
            room.clone(),
            publisher.history(room, None).await.unwrap().position.offset,
        );
    }
    crate::eventually("every event after the positions delivered", async || {
        let got = sink.0.lock().unwrap();
        let mut highest: HashMap<&Room, u64> = HashMap::new();
        for p in got.iter() {
            let h = highest.entry(&p.room).or_default();
            *h = (*h).max(p.offset);
        }
        rooms_all
            .iter()
            .all(|room| highest.get(room).copied().unwrap_or(0) >= last[room])
    })
    .await;
    let got = sink.0.lock().unwrap().clone();
    let mut raced = 0;
    for room in &rooms_all {
        let position = positions[room];
        let after: Vec<u64> = got
            .iter()
            .filter(|p| p.room == *room && p.offset > position)
            .map(|p| p.offset)
            .collect();
        let expected: Vec<u64> = (position + 1..=last[room]).collect();
        assert_eq!(
            after, expected,
            "{room}: read at {position}, every later event once, in order"
        );
        // Events at or below the position that arrived live: the subscription was active
        // before the read (those are dropped by the session's cursor).
        if got.iter().any(|p| p.room == *room && p.offset <= position) {
            raced += 1;
        }
    }
    eprintln!(
        "{} rooms joined under load; {raced} got events the position already covered",
        rooms_all.len()
    );
}
