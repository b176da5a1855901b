//! Failover and resharding on a real Redis Cluster (3 primaries, 3 replicas; each test with a
//! cluster of its own: they kill a node, move a slot). The primary owning a busy room is SIGKILLed while events
//! flow; its replica is promoted. Subscribers get `gap` and then every later event; a client
//! recovering from before the failure gets exactly the missed events or `recovered:false`,
//! never a silent hole; `/readyz` shows the outage and recovers by itself.

use common::cluster::Cluster;
use common::redis_cluster::RedisCluster;
use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use switchyard_protocol::Role;

/// Events the publisher sends, paced: some before the kill, some during the outage (retried
/// until accepted), the rest after the promotion.
const EVENTS: u64 = 150;

/// The `seq` recorded for an event the test's publisher did not send (a presence event).
const NOT_PUBLISHED: u64 = u64::MAX - 1;

/// A room's events as one client saw them, in the epoch they count in.
#[derive(Default, Debug)]
struct Stream {
    epoch: String,
    /// `(offset, seq)` in `epoch`, in arrival order.
    events: Vec<(u64, u64)>,
}

impl Stream {
    fn start(position: &Value) -> Stream {
        Stream {
            epoch: position["epoch"].as_str().unwrap().to_owned(),
            events: Vec::new(),
        }
    }

    /// Records an event frame; an event naming an epoch starts that epoch's sequence.
    fn record(&mut self, frame: &Value) {
        if let Some(epoch) = frame["epoch"].as_str() {
            self.epoch = epoch.to_owned();
            self.events.clear();
        }
        let offset = frame["offset"].as_u64().unwrap();
        if let Some(&(last, _)) = self.events.last() {
            assert_eq!(offset, last + 1, "no hole, no repeat, in order: {frame}");
        }
        // The room's other events are its members' `presence.*` (no `seq`).
        let seq = match frame["data"]["seq"].as_u64() {
            Some(seq) => seq,
            None => {
                assert!(
                    frame["event"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("presence.")),
                    "{frame}"
                );
                NOT_PUBLISHED
            }
        };
        self.events.push((offset, seq));
    }

    fn last(&self) -> Value {
        json!({"epoch": self.epoch, "offset": self.events.last().map_or(0, |e| e.0)})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failing_over_loses_no_event_silently() {
    let redis = RedisCluster::start();
    let prefix = "fo:";
    let cluster = Arc::new(Cluster::on_redis(
        &redis.url,
        None,
        2,
        1,
        &[("SWITCHYARD_REDIS_PREFIX", prefix)],
    ));
    let (gw_a, gw_b, api) = (
        cluster.gateways[0].clone(),
        cluster.gateways[1].clone(),
        cluster.apis[0].clone(),
    );
    let order = cluster.create_order(&api, "c1").await;
    let room = format!("order:{order}");
    let primary = redis.owner(&format!("{prefix}room:{{{room}}}")).unwrap();

    let mut subscriber = connect(&cluster.ws(&gw_a), &admin()).await;
    let reply = subscriber.subscribe(&room).await;
    let mut seen = Stream::start(&reply["position"]);
    // A client that leaves before the failure, to come back with its position afterwards.
    let mut leaver = connect(&cluster.ws(&gw_b), &token("c1", Role::Customer)).await;
    let left_at = leaver.subscribe(&room).await["position"].clone();
    drop(leaver);

    let acked = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (cluster, api, room, acked) =
            (cluster.clone(), api.clone(), room.clone(), acked.clone());
        tokio::spawn(async move {
            let service = token("svc", Role::Service);
            // (seq, offset) of every publish the API accepted, in order.
            let mut offsets = Vec::new();
            for seq in 0..EVENTS {
                let body = json!({"room": room, "event": "test.tick", "data": {"seq": seq}});
                // Refused while the room's shard is down: retried (bounded) until accepted.
                let mut attempts = 0;
                let accepted = loop {
                    let (status, reply) = cluster
                        .call(&api, "POST", "/api/publish", &service, Some(body.clone()))
                        .await;
                    if status == 200 {
                        break reply;
                    }
                    attempts += 1;
                    assert!(
                        attempts < 600,
                        "publish {seq} refused for a minute: {reply}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                offsets.push((seq, accepted["offset"].as_u64().unwrap()));
                acked.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            offsets
        })
    };

    // Events flow; then the room's primary dies.
    while seen.events.len() < 10 {
        let frame = subscriber.recv().await;
        assert_eq!(frame["type"], "event", "{frame}");
        seen.record(&frame);
    }
    redis.kill(primary);
    for process in [&gw_a, &api] {
        eventually("not ready during the outage", async || {
            cluster.readyz(process).await == 503
        })
        .await;
    }
    eventually("the replica promoted", async || {
        redis
            .owner(&format!("{prefix}room:{{{room}}}"))
            .is_some_and(|owner| owner != primary)
    })
    .await;
    for process in cluster.gateways.iter().chain(&cluster.apis) {
        eventually("ready again by itself", async || {
            cluster.readyz(process).await == 200
        })
        .await;
    }

    // The subscriber: events until the gap, then a resubscribe from what it has.
    let acked_at_gap;
    loop {
        let frame = subscriber.recv().await;
        match frame["type"].as_str() {
            Some("event") => seen.record(&frame),
            Some("gap") => {
                acked_at_gap = acked.load(Ordering::SeqCst);
                break;
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    subscriber
        .send(json!({"op":"subscribe","room":room,"since":seen.last(),"id":77}))
        .await;
    let mut reply = Value::Null;
    while reply.is_null() {
        let frame = subscriber.recv().await;
        match frame["type"].as_str() {
            Some("event") => seen.record(&frame),
            _ if frame["id"] == 77 => reply = frame,
            _ => {}
        }
    }
    assert_eq!(reply["type"], "ok", "{reply}");
    if reply["recovered"] == false {
        // Told to resync: the position is the new baseline of what follows.
        let position = &reply["position"];
        seen.epoch = position["epoch"].as_str().unwrap().to_owned();
        seen.events = vec![(position["offset"].as_u64().unwrap(), u64::MAX)];
    }
    // Every later event, in order, without a hole: until the publisher's last.
    while seen.events.last().map(|e| e.1) != Some(EVENTS - 1) {
        let frame = subscriber.recv().await;
        if frame["type"] == "event" {
            seen.record(&frame);
        }
    }
    let offsets = tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("the publisher finished")
        .unwrap();
    // The final epoch's acknowledged events: after the last time offsets started again.
    let restart = offsets
        .windows(2)
        .rposition(|w| w[1].1 <= w[0].1)
        .map_or(0, |i| i + 1);
    let by_offset: HashMap<u64, u64> = offsets[restart..].iter().map(|&(s, o)| (o, s)).collect();
    let baseline = seen.events[0].0;
    for (offset, seq) in offsets[restart..].iter().map(|&(s, o)| (o, s)) {
        if offset > baseline {
            assert!(
                seen.events.contains(&(offset, seq)),
                "acknowledged event {seq} at offset {offset} reached the subscriber: {seen:?}"
            );
        }
    }
    for &(offset, seq) in &seen.events[1..] {
        if let Some(&acked_seq) = by_offset.get(&offset) {
            assert_eq!(
                seq, acked_seq,
                "offset {offset} is the event acknowledged there"
            );
        }
    }

    // The client that left before the failure: exactly what it missed, or told to resync.
    let mut back = connect(&cluster.ws(&gw_b), &token("c1", Role::Customer)).await;
    back.send(json!({"op":"subscribe","room":room,"since":left_at,"id":78}))
        .await;
    let reply = back.recv_until(|v| v["id"] == 78).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    if reply["recovered"] == true {
        let mut recovered = Stream::start(&left_at);
        let head = reply["position"]["offset"].as_u64().unwrap();
        while recovered.events.last().map_or(0, |e| e.0) < head {
            recovered.record(&back.recv().await);
        }
        assert_eq!(
            recovered.events.first().map(|e| e.0),
            left_at["offset"].as_u64().map(|o| o + 1)
        );
    } else {
        assert_ne!(reply["position"]["epoch"], left_at["epoch"], "{reply}");
    }
    eprintln!(
        "failover: {} of {EVENTS} acknowledged before the gap; recovered {}; final epoch from {baseline}",
        acked_at_gap, reply["recovered"]
    );
    redis.down();
}

/// A resharding moves a busy room's slot to another primary: the gateway's shard subscription
/// follows it (Redis ends it on the old owner), the room's members are told `gap` exactly once,
/// after the subscription on the new owner is live, and events published on the new owner reach
/// them. Rooms of other slots are told nothing; a room left just before its slot moved is not
/// subscribed again.
///
/// (This test once timed out under load: the gap was sent before resubscribing, the first
/// resubscription could reach the old owner before it learned of the move — which then ended it
/// — and the repair waited for the next successful slot check, 5 to 10 s later under load:
/// beyond the test's 10 s wait. Now the gateway resubscribes once every primary agrees on the
/// new map, and only then sends the gap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_subscriptions_follow_a_moved_slot() {
    let redis = RedisCluster::start();
    let prefix = "mv:";
    let cluster = Cluster::on_redis(
        &redis.url,
        None,
        1,
        1,
        &[("SWITCHYARD_REDIS_PREFIX", prefix)],
    );
    let (gw, api) = (cluster.gateways[0].clone(), cluster.apis[0].clone());
    let channel_of = |room: &str| format!("{prefix}room:{{{room}}}");
    let order = cluster.create_order(&api, "c1").await;
    let room = format!("order:{order}");
    let channel = channel_of(&room);
    let slot = redis.keyslot(&channel);
    // Two more rooms in other slots: one that stays put, one the gateway leaves before its
    // slot moves too.
    let mut others = Vec::new();
    while others.len() < 2 {
        let order = cluster.create_order(&api, "c1").await;
        let room = format!("order:{order}");
        let taken: Vec<u16> = others
            .iter()
            .map(|(_, r): &(String, String)| redis.keyslot(&channel_of(r)))
            .collect();
        let other_slot = redis.keyslot(&channel_of(&room));
        if other_slot != slot && !taken.contains(&other_slot) {
            others.push((order, room));
        }
    }
    let [(steady_order, steady_room), (_, left_room)] = <[_; 2]>::try_from(others).unwrap();
    let mut client = connect(&cluster.ws(&gw), &token("c1", Role::Customer)).await;
    let position = client.subscribe(&room).await["position"].clone();
    assert_eq!(redis.shardnumsub(&channel), 1);
    let mut steady = connect(&cluster.ws(&gw), &token("c1", Role::Customer)).await;
    steady.subscribe(&steady_room).await;
    let mut leaver = connect(&cluster.ws(&gw), &token("c1", Role::Customer)).await;
    leaver.subscribe(&left_room).await;
    assert_eq!(redis.shardnumsub(&channel_of(&left_room)), 1);
    let reply = leaver
        .request(json!({"op":"unsubscribe","room":left_room}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    eventually("the gateway left the room in Redis", async || {
        redis.shardnumsub(&channel_of(&left_room)) == 0
    })
    .await;
    assert_eq!(cluster.set_status(&api, &order, "confirmed").await.0, 200);
    client.event(&room, "order.status").await;

    let elsewhere = |slot: u16| {
        let from = redis.owner_of_slot(slot).unwrap();
        redis
            .primaries()
            .into_iter()
            .map(|(port, _)| port)
            .find(|port| *port != from)
            .unwrap()
    };
    let left_slot = redis.keyslot(&channel_of(&left_room));
    redis.move_slot(left_slot, elsewhere(left_slot));
    let to = elsewhere(slot);
    redis.move_slot(slot, to);
    assert_eq!(redis.owner(&channel), Some(to));
    let gap = client.recv_until(|v| v["room"] == room.as_str()).await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(
        redis.shardnumsub(&channel),
        1,
        "the gap comes once the subscription on the new owner is live"
    );
    assert_eq!(
        redis.shardnumsub(&channel_of(&left_room)),
        0,
        "a room without members is not subscribed again"
    );
    assert_eq!(
        cluster.set_status(&api, &steady_order, "confirmed").await.0,
        200
    );
    let next = steady
        .recv_until(|v| v["room"] == steady_room.as_str())
        .await;
    assert_eq!(
        next["type"], "event",
        "a room whose slot did not move is told no gap: {next}"
    );
    assert_eq!(cluster.set_status(&api, &order, "packed").await.0, 200);
    let packed = client.recv_until(|v| v["room"] == room.as_str()).await;
    assert_eq!(packed["type"], "event", "one gap per move: {packed}");
    assert_eq!(packed["data"]["status"], "packed");
    // The room's keys moved with the slot, but were written under another node's replication
    // history, which this node cannot vouch for: the room starts a new epoch (named by its
    // first event) rather than trust offsets it did not write, and a recovery from before
    // resyncs.
    assert!(
        packed["epoch"].is_string() && packed["epoch"] != position["epoch"],
        "{packed}"
    );
    assert_eq!(packed["offset"], 1, "{packed}");
    let mut back = connect(&cluster.ws(&gw), &token("c1", Role::Customer)).await;
    let reply = back
        .request(json!({"op":"subscribe","room":room,"since":position}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["position"]["epoch"], packed["epoch"]);
    redis.down();
}
