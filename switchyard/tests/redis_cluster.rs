//! Distributed mode on a real Redis Cluster (3 primaries, 3 replicas: redis-server
//! --cluster-enabled yes ×6, started once for this binary by scripts/redis-cluster.sh):
//! sharded pub/sub, per-room keys in one hash slot, control messages and leases — each test
//! with gateways and API processes of its own (scripts/cluster.sh --redis-url) and a key
//! prefix of its own.

use common::cluster::Cluster;
use common::redis_cluster::{self, RedisCluster};
use common::*;
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use switchyard_broker::redis::{Redis, RedisConfig};
use switchyard_broker::{BrokerError, Bus, Deliver, Publication};
use switchyard_protocol::{Role, Room};

/// Gateways and APIs on the shared cluster, keys under `prefix`.
fn on_cluster(prefix: &str, gateways: usize, settings: &[(&str, &str)]) -> Cluster {
    let redis = redis_cluster::shared();
    let mut all = vec![("SWITCHYARD_REDIS_PREFIX", prefix)];
    all.extend_from_slice(settings);
    Cluster::on_redis(&redis.url, None, gateways, 1, &all)
}

/// `{prefix}room:{room}`: a room's shard channel.
fn channel(prefix: &str, room: &str) -> String {
    format!("{prefix}room:{{{room}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_recovery_and_revocation_over_sharded_pub_sub() {
    let prefix = "fan:";
    let redis = redis_cluster::shared();
    let cluster = on_cluster(prefix, 2, &[]);
    let (gw_a, gw_b, api) = (&cluster.gateways[0], &cluster.gateways[1], &cluster.apis[0]);
    let order = cluster.create_order(api, "c1").await;
    let room = format!("order:{order}");

    // One client on each gateway, same room: one shard subscription per gateway, on the
    // shard that owns the room's slot.
    let mut on_a = connect(&cluster.ws(gw_a), &token("c1", Role::Customer)).await;
    let position = on_a.subscribe(&room).await["position"].clone();
    assert_eq!(redis.shardnumsub(&channel(prefix, &room)), 1);
    let mut on_b = connect(&cluster.ws(gw_b), &admin()).await;
    assert_eq!(on_b.subscribe(&room).await["type"], "ok");
    let mut second_on_b = connect(&cluster.ws(gw_b), &admin()).await;
    assert_eq!(second_on_b.subscribe(&room).await["type"], "ok");
    assert_eq!(
        redis.shardnumsub(&channel(prefix, &room)),
        2,
        "one subscription per gateway, however many members"
    );

    // Cross-gateway fan-out: the same offsets on both gateways, once each.
    for status in ["confirmed", "packed"] {
        assert_eq!(cluster.set_status(api, &order, status).await.0, 200);
    }
    let mut offsets = Vec::new();
    for client in [&mut on_a, &mut on_b, &mut second_on_b] {
        let first = client.event(&room, "order.status").await;
        let next = client.event(&room, "order.status").await;
        assert_eq!(first["data"]["status"], "confirmed");
        assert_eq!(next["data"]["status"], "packed");
        assert_eq!(
            next["offset"].as_u64(),
            first["offset"].as_u64().map(|o| o + 1)
        );
        offsets.push(first["offset"].clone());
    }
    assert!(offsets.windows(2).all(|w| w[0] == w[1]), "{offsets:?}");

    // Recovery with `since` on the other gateway: exactly the missed events.
    drop(on_a);
    let mut back = connect(&cluster.ws(gw_b), &token("c1", Role::Customer)).await;
    let reply = back
        .request(json!({"op":"subscribe","room":room,"since":position}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    // The two changes, and the admins' `presence.join`s before them.
    let mut statuses = Vec::new();
    while statuses.len() < 2 {
        let e = back.recv().await;
        match e["event"].as_str() {
            Some("order.status") => statuses.push(e["data"]["status"].clone()),
            other => assert!(other.is_some_and(|e| e.starts_with("presence.")), "{e}"),
        }
    }
    assert_eq!(statuses, ["confirmed", "packed"]);

    // The last member on a gateway leaves: that gateway's shard subscription goes.
    for client in [&mut on_b, &mut second_on_b, &mut back] {
        let r = client
            .request(json!({"op":"unsubscribe","room":room}))
            .await;
        assert_eq!(r["type"], "ok");
    }
    eventually(
        "no gateway subscribed to the room's shard channel",
        async || redis.shardnumsub(&channel(prefix, &room)) == 0,
    )
    .await;

    // Revocation on reassignment: a control message, from the API to every gateway.
    let delivery = cluster.create_order(api, "c3").await;
    let droom = format!("order:{delivery}");
    cluster.assign(api, &delivery, "p1").await;
    let mut p1 = connect(&cluster.ws(gw_b), &token("p1", Role::Partner)).await;
    assert_eq!(p1.subscribe(&droom).await["type"], "ok");
    let mut watcher = connect(&cluster.ws(gw_a), &admin()).await;
    assert_eq!(watcher.subscribe(&droom).await["type"], "ok");
    cluster.assign(api, &delivery, "p2").await;
    let revoked = p1.recv_until(|v| v["type"] == "revoked").await;
    assert_eq!(revoked["room"], droom.as_str());
    cluster.set_status(api, &delivery, "confirmed").await;
    watcher.event(&droom, "order.status").await;
    assert_eq!(p1.subscribe(&droom).await["error"], "forbidden");
}

#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<Publication>>);

impl Deliver for Collect {
    fn deliver(&self, p: Publication) {
        self.0.lock().unwrap().push(p);
    }
}

/// Rooms whose slots fall on every primary (at least one room per shard).
fn rooms_on_every_shard(redis: &RedisCluster, prefix: &str) -> Vec<Room> {
    let primaries = redis.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let mut rooms = Vec::new();
    let mut shards = HashSet::new();
    for i in 0.. {
        let room = Room::parse(&format!("order:{i}")).unwrap();
        let owner = redis.owner(&channel(prefix, room.as_str())).unwrap();
        if shards.insert(owner) {
            rooms.push(room);
        }
        if shards.len() == 3 {
            break;
        }
    }
    rooms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publishes_keep_offsets_per_room_on_every_shard() {
    let prefix = "batch:";
    let redis = redis_cluster::shared();
    let rooms = rooms_on_every_shard(redis, prefix);
    let config = RedisConfig {
        prefix: prefix.into(),
        ..RedisConfig::new(redis.url.clone())
    };
    let bus = async || -> Arc<dyn Bus> {
        let bus: Arc<dyn Bus> = Redis::connect(config.clone()).await.unwrap().bus;
        bus
    };
    let (a, b, listener) = (bus().await, bus().await, bus().await);
    common::batch::batches_keep_offsets_per_room(a, b, listener, &rooms, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_increase_per_room_under_two_publishers_on_every_shard() {
    let prefix = "seq:";
    let redis = redis_cluster::shared();
    let rooms = rooms_on_every_shard(redis, prefix);
    // Every key of a room in the room's slot: the offset counter, the history, the epoch.
    for room in &rooms {
        let slot = redis.keyslot(&channel(prefix, room.as_str()));
        for kind in ["off", "hist", "epoch"] {
            assert_eq!(redis.keyslot(&format!("{prefix}{kind}:{{{room}}}")), slot);
        }
    }
    let config = RedisConfig {
        prefix: prefix.into(),
        ..RedisConfig::new(redis.url.clone())
    };
    let a = Redis::connect(config.clone()).await.unwrap().bus;
    let b = Redis::connect(config.clone()).await.unwrap().bus;
    let listener = Redis::connect(config).await.unwrap().bus;
    let sink = Arc::new(Collect::default());
    listener.attach(sink.clone());
    for room in &rooms {
        listener.subscribe(room).await.unwrap();
        assert_eq!(redis.shardnumsub(&channel(prefix, room.as_str())), 1);
    }
    const N: usize = 100;
    let publishers = (0..N * rooms.len()).map(|i| {
        let bus: Arc<dyn Bus> = if i % 2 == 0 { a.clone() } else { b.clone() };
        let room = rooms[i % rooms.len()].clone();
        async move {
            let data = RawValue::from_string(format!(r#"{{"i":{i}}}"#)).unwrap();
            (
                room.clone(),
                bus.publish(&room, "test.seq", data).await.unwrap(),
            )
        }
    });
    let returned = futures_util::future::join_all(publishers).await;
    for room in &rooms {
        let mut offsets: Vec<u64> = returned
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, o)| *o)
            .collect();
        offsets.sort();
        assert_eq!(offsets, (1..=N as u64).collect::<Vec<_>>(), "{room}");
    }
    eventually("every publication delivered", async || {
        sink.0.lock().unwrap().len() >= N * rooms.len()
    })
    .await;
    let got = sink.0.lock().unwrap();
    assert_eq!(got.len(), N * rooms.len(), "each once");
    for room in &rooms {
        let delivered: Vec<u64> = got
            .iter()
            .filter(|p| p.room == *room)
            .map(|p| p.offset)
            .collect();
        assert_eq!(
            delivered,
            (1..=N as u64).collect::<Vec<_>>(),
            "in order: {room}"
        );
        // One epoch per room, which history reports too.
        let epochs: HashSet<&str> = got
            .iter()
            .filter(|p| p.room == *room)
            .map(|p| &*p.epoch)
            .collect();
        assert_eq!(epochs.len(), 1);
    }
}

/// A batch of subscriptions on a cluster has a deadline (SWITCHYARD_REDIS_SUBSCRIBE_TIMEOUT_MS):
/// the rooms it did not reach fail their subscribe (the client may retry) and are not
/// subscribed. A deadline of zero reaches none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_batch_past_its_deadline_fails_and_subscribes_nothing() {
    let redis = redis_cluster::shared();
    let prefix = "dl:";
    let rooms = rooms_on_every_shard(redis, prefix);
    let late = Redis::connect(RedisConfig {
        prefix: prefix.into(),
        subscribe_timeout: Duration::ZERO,
        ..RedisConfig::new(redis.url.clone())
    })
    .await
    .unwrap()
    .bus;
    for room in &rooms {
        let refused = late.subscribe(room).await;
        assert!(
            matches!(&refused, Err(BrokerError::Unavailable(why)) if why.contains("ran out of time")),
            "{refused:?}"
        );
        assert_eq!(redis.shardnumsub(&channel(prefix, room.as_str())), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_and_user_revocation_on_a_cluster() {
    let prefix = "lim:";
    let redis = redis_cluster::shared();
    let cluster = on_cluster(prefix, 2, &[("SWITCHYARD_MAX_CONNECTIONS_PER_USER", "2")]);
    let (gw_a, gw_b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let c1 = token("c1", Role::Customer);
    let first = connect(&cluster.ws(gw_a), &c1).await;
    let _second = connect(&cluster.ws(gw_b), &c1).await;
    cluster.refuses_another_connection(&c1).await;
    drop(first);
    let leases = format!("{prefix}conns:{{user:c1}}");
    eventually("the closed connection's lease released", async || {
        redis
            .cli(redis.owner(&leases).unwrap(), &["ZCARD", &leases])
            .trim()
            == "1"
    })
    .await;
    let mut again = connect(&cluster.ws(gw_b), &c1).await;

    // A user's revocation reaches every gateway (classic pub/sub for control messages).
    let (status, _) = cluster
        .call(
            &cluster.apis[0],
            "POST",
            "/api/users/c1/revoke",
            &admin(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let close = again.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4501);
}

/// `admin:fleet` on a cluster (issue #16): a partner on one gateway joins the fleet of an admin
/// on the other, its fixes arrive throttled, and a later admin's snapshot has its last position
/// — the room's presence and position keys all in `admin:fleet`'s slot, on its shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_on_a_cluster() {
    let prefix = "fleet:";
    let redis = redis_cluster::shared();
    let settings = [
        ("SWITCHYARD_PRESENCE_HEARTBEAT_MS", "500"),
        ("SWITCHYARD_PRESENCE_SWEEP_MS", "200"),
        ("SWITCHYARD_LOCATION_RATE", "50"),
        ("SWITCHYARD_LOCATION_BURST", "50"),
    ];
    let cluster = on_cluster(prefix, 2, &settings);
    let (gw_a, gw_b, api) = (&cluster.gateways[0], &cluster.gateways[1], &cluster.apis[0]);
    let order = cluster.create_order(api, "c1").await;
    cluster.assign(api, &order, "p1").await;
    let mut a1 = connect(&cluster.ws(gw_a), &admin()).await;
    let joined = a1.subscribe("admin:fleet").await;
    assert_eq!(joined["snapshot"], json!({"partners": []}), "{joined}");
    let mut p1 = connect(&cluster.ws(gw_b), &token("p1", Role::Partner)).await;
    let join = a1.event("admin:fleet", "presence.join").await;
    assert_eq!(join["data"]["sub"], "p1");
    for i in 0..5 {
        let fix =
            json!({"op":"location","order_id":order,"lat":12.9 + f64::from(i) / 100.0,"lng":77.6});
        assert_eq!(p1.request(fix).await["type"], "ok");
    }
    let last = 12.94;
    a1.recv_until(|v| {
        v["room"] == "admin:fleet" && v["event"] == "partner.location" && v["data"]["lat"] == last
    })
    .await;
    let mut a2 = connect(&cluster.ws(gw_a), &admin()).await;
    eventually("p1's last position in a snapshot", async || {
        let reply = a2.subscribe("admin:fleet").await;
        reply["snapshot"]["partners"][0]["location"]["lat"] == last
    })
    .await;
    // The once-a-second turn is claimed on the partner's shard: while p1 keeps sending, a turn key
    // of its (`SET {prefix}fleetturn:{p1}:<window> NX PX`) exists on the primary that owns its slot.
    // A claim that failed would fall back to publishing, so the events above cannot tell.
    let turns = format!("{prefix}fleetturn:{{p1}}");
    let turn_owner = redis.owner(&turns).expect("a primary owns p1's slot");
    let mut i = 0;
    eventually("a turn key of p1 on its shard", async || {
        i += 1;
        if i % 5 == 1 {
            // About 10 Hz, within the location rate set above (the check polls every 20 ms).
            let lat = 13.0 + f64::from(i % 50) / 100.0;
            let fix = json!({"op":"location","order_id":order,"lat":lat,"lng":77.6});
            assert_eq!(p1.request(fix).await["type"], "ok");
        }
        let keys = redis.cli(turn_owner, &["keys", &format!("{turns}:*")]);
        !keys.trim().is_empty()
    })
    .await;
    let slot = redis.keyslot(&channel(prefix, "admin:fleet"));
    for kind in ["fleet", "fleett", "pres", "presa"] {
        let key = format!("{prefix}{kind}:{{admin:fleet}}");
        assert_eq!(redis.keyslot(&key), slot, "{key}");
        let owner = redis.owner(&key).expect("a primary owns the slot");
        assert_eq!(redis.cli(owner, &["exists", &key]).trim(), "1", "{key}");
    }
}

/// Issue #17: a handshake's shard subscription and position read leave no gap on a cluster
/// either — every event published after the position reaches the gateway, though the
/// publisher never pauses while a burst of handshakes (user rooms on every shard) joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_miss_no_event_of_their_user_room_on_a_cluster() {
    let redis = redis_cluster::shared();
    let config = RedisConfig {
        prefix: "gapless:".into(),
        ..RedisConfig::new(redis.url.clone())
    };
    let publisher: Arc<dyn Bus> = Redis::connect(config.clone()).await.unwrap().bus;
    let gateway = Redis::connect(config).await.unwrap();
    common::gapless::joins_miss_nothing(publisher, &gateway, "gapless", 3, 150).await;
}
