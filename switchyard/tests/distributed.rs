//! Distributed mode: real redis-server, several gateway and API processes, real nginx —
//! started by scripts/cluster.sh.

use common::cluster::Cluster;
use common::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use switchyard_broker::redis::{Redis, RedisConfig};
use switchyard_broker::{Bus, Deliver, Publication};
use switchyard_protocol::{Role, Room};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_across_gateways_isolation_nginx_and_revocation() {
    let cluster = Cluster::up(2, 1);
    let (gw_a, gw_b, api) = (&cluster.gateways[0], &cluster.gateways[1], &cluster.apis[0]);
    let order = cluster.create_order(api, "c1").await;
    let room = format!("order:{order}");

    // One client on each gateway, same room.
    let mut on_a = connect(&cluster.ws(gw_a), &token("c1", Role::Customer)).await;
    assert_eq!(on_a.subscribe(&room).await["type"], "ok");
    // Only gateway A serves the room so far: one Redis subscriber for its channel.
    assert_eq!(cluster.numsub(&room), 1);
    let mut on_b = connect(&cluster.ws(gw_b), &admin()).await;
    assert_eq!(on_b.subscribe(&room).await["type"], "ok");
    assert_eq!(cluster.numsub(&room), 2);

    let (status, _) = cluster.set_status(api, &order, "confirmed").await;
    assert_eq!(status, 200);
    let a = on_a.event(&room, "order.status").await;
    let b = on_b.event(&room, "order.status").await;
    assert_eq!(a["offset"], b["offset"], "same offset on both gateways");
    assert_eq!(a["data"]["status"], "confirmed");
    // Once each: the next event is the very next offset, with nothing in between.
    cluster.set_status(api, &order, "packed").await;
    for client in [&mut on_a, &mut on_b] {
        let next = client
            .recv_until(|v| v["type"] == "event" && v["room"] == room.as_str())
            .await;
        assert_eq!(
            next["offset"].as_u64(),
            a["offset"].as_u64().map(|o| o + 1),
            "{next}"
        );
        assert_eq!(next["data"]["status"], "packed");
    }

    // When B's only member leaves, B drops its Redis subscription: no traffic for it.
    let r = on_b.request(json!({"op":"unsubscribe","room":room})).await;
    assert_eq!(r["type"], "ok");
    eventually("gateway B unsubscribed", async || {
        cluster.numsub(&room) == 1
    })
    .await;
    let other = cluster.create_order(api, "c2").await;
    assert_eq!(
        cluster.numsub(&format!("order:{other}")),
        0,
        "no gateway serves it"
    );

    // Through nginx: connect, subscribe, receive an event published through nginx's /api.
    let mut via_nginx = connect(&cluster.ws(&cluster.nginx), &token("c2", Role::Customer)).await;
    assert_eq!(
        via_nginx.subscribe(&format!("order:{other}")).await["type"],
        "ok"
    );
    let (status, _) = cluster
        .call(
            &cluster.nginx,
            "POST",
            &format!("/api/orders/{other}/status"),
            &token("c2", Role::Customer),
            Some(json!({"status":"cancelled"})),
        )
        .await;
    assert_eq!(status, 200);
    let e = via_nginx
        .event(&format!("order:{other}"), "order.status")
        .await;
    assert_eq!(e["data"]["status"], "cancelled");
    // nginx's access log never records query strings (tokens).
    let q = format!(
        "ws://{}/ws?access_token={}",
        cluster.nginx,
        token("c9", Role::Customer)
    );
    let mut with_query = connect_request(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(q.as_str())
            .unwrap(),
    )
    .await
    .unwrap();
    // nginx writes a WebSocket's log line when the connection ends.
    with_query.socket.close().await.unwrap();
    drop(with_query);
    let log_path = cluster.dir.path().join("nginx/access.log");
    eventually("the WebSocket's access log line", async || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("GET /ws")
    })
    .await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("access_token"), "{log}");

    // Reassignment revokes the former partner's subscription on its gateway (B here), and
    // the API that made the change runs in another process.
    let delivery = cluster.create_order(api, "c3").await;
    let droom = format!("order:{delivery}");
    cluster
        .call(
            api,
            "POST",
            &format!("/api/orders/{delivery}/assign"),
            &admin(),
            Some(json!({"partner":"p1"})),
        )
        .await;
    let mut p1 = connect(&cluster.ws(gw_b), &token("p1", Role::Partner)).await;
    assert_eq!(p1.subscribe(&droom).await["type"], "ok");
    let mut watcher = connect(&cluster.ws(gw_a), &admin()).await;
    assert_eq!(watcher.subscribe(&droom).await["type"], "ok");
    let (status, _) = cluster
        .call(
            api,
            "POST",
            &format!("/api/orders/{delivery}/assign"),
            &admin(),
            Some(json!({"partner":"p2"})),
        )
        .await;
    assert_eq!(status, 200);
    let revoked = p1.recv_until(|v| v["type"] == "revoked").await;
    assert_eq!(revoked["room"], droom.as_str());
    assert!(revoked["reason"].as_str().unwrap().contains("reassigned"));
    // p1 no longer gets the room's events; the watcher does.
    cluster.set_status(api, &delivery, "confirmed").await;
    watcher.event(&droom, "order.status").await;
    let pong = p1.ping().await;
    assert_eq!(pong["type"], "ok");
    // And cannot rejoin.
    assert_eq!(p1.subscribe(&droom).await["error"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_give_one_gapless_offset_sequence() {
    let cluster = Cluster::up(1, 2);
    let mut adm = connect(&cluster.ws(&cluster.gateways[0]), &admin()).await;
    assert_eq!(adm.subscribe("user:c1").await["type"], "ok");
    const N: usize = 40;
    let apis = cluster.apis.clone();
    let creates = (0..N).map(|i| {
        let api = apis[i % 2].clone();
        let cluster = &cluster;
        async move { cluster.create_order(&api, "c1").await }
    });
    futures_util::future::join_all(creates).await;
    let mut offsets = Vec::new();
    for _ in 0..N {
        let e = adm.event("user:c1", "order.created").await;
        offsets.push(e["offset"].as_u64().unwrap());
    }
    let first = offsets[0];
    assert_eq!(
        offsets,
        (first..first + N as u64).collect::<Vec<_>>(),
        "no gap, no duplicate, in order"
    );
}

#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<Publication>>);

impl Deliver for Collect {
    fn deliver(&self, p: Publication) {
        self.0.lock().unwrap().push(p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_share_one_offset_counter_in_redis() {
    let cluster = Cluster::up(1, 1);
    let config = RedisConfig::new(format!("redis://127.0.0.1:{}", cluster.redis_port));
    let a = Redis::connect(config.clone()).await.unwrap().bus;
    let b = Redis::connect(config.clone()).await.unwrap().bus;
    let listener = Redis::connect(config).await.unwrap().bus;
    let sink = Arc::new(Collect::default());
    listener.attach(sink.clone());
    let room = Room::parse("order:shared").unwrap();
    listener.subscribe(&room).await.unwrap();
    // Redis has the subscription before anything is published.
    eventually("the listener's subscription is active", async || {
        cluster.numsub("order:shared") >= 1
    })
    .await;
    const N: usize = 200;
    let publishers = (0..N).map(|i| {
        let broker: Arc<dyn Bus> = if i % 2 == 0 { a.clone() } else { b.clone() };
        let room = room.clone();
        async move {
            broker
                .publish(
                    &room,
                    "test.seq",
                    RawValue::from_string(format!(r#"{{"i":{i}}}"#)).unwrap(),
                )
                .await
                .unwrap()
        }
    });
    let mut returned = futures_util::future::join_all(publishers).await;
    returned.sort();
    assert_eq!(returned, (1..=N as u64).collect::<Vec<_>>());
    eventually("every publication delivered", async || {
        sink.0.lock().unwrap().len() >= N
    })
    .await;
    assert_eq!(sink.0.lock().unwrap().len(), N, "every publication once");
    let got = sink.0.lock().unwrap();
    let offsets: Vec<u64> = got.iter().map(|p| p.offset).collect();
    assert_eq!(
        offsets,
        (1..=N as u64).collect::<Vec<_>>(),
        "delivered in offset order"
    );
    let frame: Value = serde_json::from_slice(&got[0].frame).unwrap();
    assert_eq!(frame["offset"], 1);
    assert_eq!(frame["room"], "order:shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_survive_a_redis_restart() {
    let cluster = Cluster::up(2, 1);
    let api = cluster.apis[0].clone();
    let order = cluster.create_order(&api, "c1").await;
    let room = format!("order:{order}");
    let mut clients = Vec::new();
    for gw in &cluster.gateways {
        let mut c = connect(&cluster.ws(gw), &token("c1", Role::Customer)).await;
        assert_eq!(c.subscribe(&room).await["type"], "ok");
        clients.push(c);
    }
    cluster.stop_redis();
    // Not ready while Redis is away; writes are refused rather than silently dropped.
    let gw = cluster.gateways[0].clone();
    eventually("gateway reports not ready", async || {
        cluster.readyz(&gw).await == 503
    })
    .await;
    let (status, body) = cluster.set_status(&api, &order, "confirmed").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    cluster.start_redis();
    cluster.wait_ready().await;
    eventually("both gateways re-subscribed", async || {
        cluster.numsub(&room) == 2
    })
    .await;
    let (status, _) = cluster.set_status(&api, &order, "confirmed").await;
    assert_eq!(status, 200);
    for c in &mut clients {
        // Still the same WebSocket connections, told that they may have missed events.
        c.recv_until(|v| v["type"] == "gap" && v["room"] == room.as_str())
            .await;
        let e = c.event(&room, "order.status").await;
        assert_eq!(e["data"]["status"], "confirmed");
    }
    let metrics = scrape(&format!("http://{gw}")).await;
    assert!(
        sample(&metrics, "switchyard_bus_reconnects_total").is_some_and(|n| n > 0.0),
        "outage counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_on_another_gateway_and_a_new_epoch_after_redis_restarts() {
    let cluster = Cluster::up(2, 1);
    let (gw_a, gw_b, api) = (
        cluster.gateways[0].clone(),
        cluster.gateways[1].clone(),
        cluster.apis[0].clone(),
    );
    let order = cluster.create_order(&api, "c1").await;
    let room = format!("order:{order}");
    let mut first = connect(&cluster.ws(&gw_a), &token("c1", Role::Customer)).await;
    let position = first.subscribe(&room).await["position"].clone();
    let since = position["offset"].as_u64().unwrap();
    drop(first);
    // An epoch created by a read (the handshake reads the user room's position; nothing was
    // ever published there) lives as long as history (300 s here), not as long as offsets
    // (7 days): reads of rooms nobody publishes to leave no keys behind.
    let reader = connect(&cluster.ws(&gw_a), &token("c7", Role::Customer)).await;
    let ttl: i64 = cluster
        .redis_cli(&["TTL", "sy:epoch:{user:c7}"])
        .trim()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&ttl), "epoch TTL {ttl}");
    drop(reader);
    for status in ["confirmed", "packed", "out_for_delivery"] {
        assert_eq!(cluster.set_status(&api, &order, status).await.0, 200);
    }
    let mut watcher = connect(&cluster.ws(&gw_b), &admin()).await;
    let head = watcher.subscribe_until(&room, since + 3).await;
    assert!(
        head["position"]["offset"].as_u64() >= Some(since + 3),
        "{head}"
    );

    // Back on the other gateway: exactly the missed events, in order — the three changes,
    // and the room's presence events (the first connection's leave, the watcher's join)
    // wherever they fell among them.
    let mut back = connect(&cluster.ws(&gw_b), &token("c1", Role::Customer)).await;
    let reply = back
        .request(json!({"op":"subscribe","room":room,"since":position}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let mut next = since + 1;
    let mut statuses = Vec::new();
    while statuses.len() < 3 {
        let e = back.recv().await;
        assert_eq!(e["offset"].as_u64(), Some(next), "{e}");
        next += 1;
        match e["event"].as_str() {
            Some("order.status") => statuses.push(e["data"]["status"].clone()),
            other => assert!(other.is_some_and(|e| e.starts_with("presence.")), "{e}"),
        }
    }
    assert_eq!(statuses, ["confirmed", "packed", "out_for_delivery"]);
    assert_eq!(cluster.set_status(&api, &order, "delivered").await.0, 200);
    // Then every later event of the room, live: no duplicate, no gap.
    loop {
        let e = back
            .recv_until(|v| v["type"] == "event" && v["room"] == room.as_str())
            .await;
        assert_eq!(
            e["offset"].as_u64(),
            Some(next),
            "no duplicate, no gap: {e}"
        );
        next += 1;
        if e["event"] == "order.status" {
            assert_eq!(e["data"]["status"], "delivered");
            break;
        }
    }
    let last = json!({"epoch": position["epoch"], "offset": next - 1});

    // Redis restarts without persistence: history and offsets are gone, the epoch changes,
    // and a client coming back is told to resync rather than given wrong offsets.
    cluster.stop_redis();
    cluster.start_redis();
    cluster.wait_ready().await;
    let mut again = connect(&cluster.ws(&gw_a), &token("c1", Role::Customer)).await;
    let reply = again
        .request(json!({"op":"subscribe","room":room,"since":last}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["snapshot"]["status"], "delivered");
    assert_ne!(reply["position"]["epoch"], position["epoch"]);
}

/// Issue #11 §1: Redis restarts without persistence, so every room's offsets start again at 1
/// in a new epoch. A subscriber that stays connected and does nothing but read gets `gap`, then
/// every later event of each room, in order; the first one names the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_a_reading_subscriber_gets_every_event_of_the_new_epoch() {
    let cluster = Cluster::up(2, 1);
    let (gw, api) = (cluster.gateways[0].clone(), cluster.apis[0].clone());
    let order = cluster.create_order(&api, "c1").await;
    let room = format!("order:{order}");
    let service = token("svc", Role::Service);
    let tick = async |room: &str, seq: u64| {
        let body = json!({"room":room,"event":"test.tick","data":{"seq":seq}});
        let (status, reply) = cluster
            .call(&api, "POST", "/api/publish", &service, Some(body))
            .await;
        assert_eq!(status, 200, "{reply}");
        reply["offset"].as_u64().unwrap()
    };
    // Both rooms well above offset 1 before the restart.
    for seq in 0..5 {
        tick(&room, seq).await;
        tick("user:c1", seq).await;
    }
    let mut reader = connect(&cluster.ws(&gw), &token("c1", Role::Customer)).await;
    let mut old = std::collections::HashMap::new();
    for r in [room.as_str(), "user:c1"] {
        let reply = reader.subscribe(r).await;
        assert!(reply["position"]["offset"].as_u64() >= Some(5), "{reply}");
        old.insert(r.to_owned(), reply["position"].clone());
    }

    cluster.stop_redis();
    cluster.start_redis();
    cluster.wait_ready().await;
    eventually("the gateway subscribed again", async || {
        cluster.numsub(&room) == 1 && cluster.numsub("user:c1") == 1
    })
    .await;
    // In the new epoch: three ticks, then a status change through the API (its outbox event
    // reaches both rooms).
    for seq in 0..3 {
        assert_eq!(tick(&room, seq).await, seq + 1);
    }
    assert_eq!(cluster.set_status(&api, &order, "confirmed").await.0, 200);

    let mut gaps = std::collections::HashSet::new();
    let mut events: std::collections::HashMap<String, Vec<Value>> = Default::default();
    while events.get(&room).map_or(0, Vec::len) < 4 || !events.contains_key("user:c1") {
        let frame = reader.recv().await;
        let r = frame["room"].as_str().unwrap().to_owned();
        match frame["type"].as_str() {
            Some("gap") => {
                gaps.insert(r);
            }
            Some("event") => events.entry(r).or_default().push(frame),
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(gaps.contains(&room) && gaps.contains("user:c1"), "{gaps:?}");
    let order_events = &events[&room];
    let offsets: Vec<u64> = order_events
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4], "{order_events:?}");
    assert_eq!(order_events[3]["data"]["status"], "confirmed");
    let epoch = order_events[0]["epoch"].clone();
    assert!(
        epoch.is_string(),
        "the first event names its epoch: {}",
        order_events[0]
    );
    assert_ne!(epoch, old[&room]["epoch"]);
    assert!(order_events[1..].iter().all(|e| e.get("epoch").is_none()));
    let status = &events["user:c1"][0];
    assert_eq!(
        (status["event"].as_str(), status["offset"].as_u64()),
        (Some("order.status"), Some(1)),
        "{status}"
    );
    assert!(
        status["epoch"].is_string() && status["epoch"] != old["user:c1"]["epoch"],
        "each room names its own new epoch: {status}"
    );

    // The new epoch is a position like any other: recovery from it works.
    let since = json!({"epoch": epoch, "offset": 2});
    let reply = reader
        .request(json!({"op":"subscribe","room":room,"since":since}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["position"], json!({"epoch": epoch, "offset": 4}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_are_limited_across_the_cluster() {
    // The leases in a Redis of their own (SWITCHYARD_LEASE_REDIS_URL): here database 1 of the
    // bus's server, the bus in database 0.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let leases = format!("redis://127.0.0.1:{port}/1");
    let cluster = Cluster::on_redis(
        &format!("redis://127.0.0.1:{port}/0"),
        Some(port),
        2,
        1,
        &[
            ("SWITCHYARD_MAX_CONNECTIONS_PER_USER", "2"),
            ("SWITCHYARD_LEASE_REDIS_URL", &leases),
        ],
    );
    let (gw_a, gw_b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let c1 = token("c1", Role::Customer);
    let first = connect(&cluster.ws(gw_a), &c1).await;
    let _second = connect(&cluster.ws(gw_b), &c1).await;
    // A third, on either gateway, is over the user's limit of two.
    cluster.refuses_another_connection(&c1).await;
    // Another user is not affected.
    connect(&cluster.ws(gw_a), &token("c2", Role::Customer)).await;
    // Closing one frees its slot for any gateway.
    drop(first);
    eventually("the closed connection's claim to be released", async || {
        cluster
            .redis_cli(&["-n", "1", "ZCARD", "sy:conns:{user:c1}"])
            .trim()
            == "1"
    })
    .await;
    assert_eq!(
        cluster.redis_cli(&["EXISTS", "sy:conns:{user:c1}"]).trim(),
        "0"
    );
    connect(&cluster.ws(gw_b), &c1).await;
}

/// One room's events as a client saw them: `(offset, event, seq)` (`seq` for the test's own
/// `test.tick` events).
type Seen = Vec<(u64, String, Option<u64>)>;

fn record(seen: &mut std::collections::HashMap<String, Seen>, frame: &Value) {
    if frame["type"] != "event" {
        return;
    }
    let room = frame["room"].as_str().unwrap().to_owned();
    seen.entry(room).or_default().push((
        frame["offset"].as_u64().unwrap(),
        frame["event"].as_str().unwrap().to_owned(),
        frame["data"]["seq"].as_u64(),
    ));
}

/// Reads the recovered events of `room` after `last` up to `head`, which come first; returns
/// how many.
async fn expect_recovered(
    client: &mut Client,
    seen: &mut std::collections::HashMap<String, Seen>,
    room: &str,
    last: u64,
    head: u64,
) -> u64 {
    for offset in last + 1..=head {
        let frame = client.recv().await;
        assert_eq!(frame["room"], room, "recovered events first: {frame}");
        assert_eq!(frame["offset"].as_u64(), Some(offset), "{frame}");
        record(seen, &frame);
    }
    head - last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_every_event_on_another_gateway_after_a_sigkill() {
    use futures_util::StreamExt;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio_tungstenite::tungstenite::Message;

    let cluster = Arc::new(Cluster::up(2, 1));
    let (gw_a, gw_b, api) = (
        cluster.gateways[0].clone(),
        cluster.gateways[1].clone(),
        cluster.apis[0].clone(),
    );
    let order = cluster.create_order(&api, "c1").await;
    let order_room = format!("order:{order}");
    let user_room = "user:c1".to_owned();
    let rooms = [user_room.clone(), order_room.clone()];

    let mut on_a = connect(&cluster.ws(&gw_a), &token("c1", Role::Customer)).await;
    let mut positions = HashMap::new();
    // The relay publishes order.created into the user room just after the REST call: wait
    // for it, so every later event in both rooms is one the test publishes.
    eventually("order.created published", async || {
        on_a.subscribe(&user_room).await["position"]["offset"].as_u64() >= Some(1)
    })
    .await;
    for room in &rooms {
        let reply = on_a.subscribe(room).await;
        assert_eq!(reply["type"], "ok", "{reply}");
        positions.insert(room.clone(), reply["position"].clone());
    }
    // Skip the order.created event and the replies still queued from the polling above.
    let mut seen: HashMap<String, Seen> = HashMap::new();

    // Publisher: a bounded number of events, alternating rooms, paced so that some arrive
    // before the kill, some while no gateway serves the client, and some after it is back.
    const EVENTS: u64 = 80;
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let cluster = cluster.clone();
        let api = api.clone();
        let rooms = rooms.clone();
        let published = published.clone();
        tokio::spawn(async move {
            let service = token("svc", Role::Service);
            let mut offsets: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
            for seq in 0..EVENTS {
                let room = &rooms[(seq % 2) as usize];
                let (status, body) = cluster
                    .call(
                        &api,
                        "POST",
                        "/api/publish",
                        &service,
                        Some(json!({"room":room,"event":"test.tick","data":{"seq":seq}})),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                offsets
                    .entry(room.clone())
                    .or_default()
                    .push((seq, body["offset"].as_u64().unwrap()));
                published.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            offsets
        })
    };

    // Read on A until a few events of each room arrived, then SIGKILL A.
    let ticks = |seen: &HashMap<String, Seen>, room: &str| {
        seen.get(room)
            .map_or(0, |v| v.iter().filter(|e| e.2.is_some()).count())
    };
    while rooms.iter().any(|r| ticks(&seen, r) < 5) {
        let frame = on_a.recv().await;
        record(&mut seen, &frame);
    }
    cluster.kill_gateway(0).await;
    let killed_at = published.load(Ordering::SeqCst);
    // Whatever A wrote before it died still counts; then the connection ends.
    loop {
        match tokio::time::timeout(WAIT, on_a.socket.ws_mut().next()).await {
            Err(_) => panic!("the connection to the killed gateway never ended"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(Message::Text(t)))) => record(&mut seen, &serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => {}
        }
    }
    drop(on_a);
    // Let events be published while the client is away, so there is something to recover.
    eventually("events published while the client is away", async || {
        published.load(Ordering::SeqCst) >= killed_at + 6
    })
    .await;

    // Back on B with, for each room, the last position it saw: the user room in the handshake
    // (the documented way: the connection is in it from the welcome on), the order room with a
    // subscribe. The missed events follow the welcome / the reply, before any live one.
    let user_last = seen[&user_room].last().unwrap().0;
    let since = format!(
        "{}:{user_last}",
        positions[&user_room]["epoch"].as_str().unwrap()
    );
    let mut on_b = connect(
        &format!("{}?since={since}", cluster.ws(&gw_b)),
        &token("c1", Role::Customer),
    )
    .await;
    assert_eq!(on_b.welcome["recovered"], true, "{}", on_b.welcome);
    let user_head = on_b.welcome["positions"][&user_room]["offset"]
        .as_u64()
        .unwrap();
    let mut recovered = 0;
    let mut heads = vec![(user_room.clone(), user_last, user_head)];
    let order_last = seen[&order_room].last().unwrap().0;
    let since = json!({"epoch": positions[&order_room]["epoch"], "offset": order_last});
    // Recovered user-room events first; the order room's reply comes after them.
    recovered += expect_recovered(&mut on_b, &mut seen, &user_room, user_last, user_head).await;
    on_b.send(json!({"op":"subscribe","room":order_room,"since":since,"id":1000}))
        .await;
    let reply = loop {
        let frame = on_b.recv().await;
        if frame["id"] == 1000 {
            break frame;
        }
        // Live user-room events, after the recovered ones: never a repeat.
        record(&mut seen, &frame);
    };
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["recovered"], true, "{reply}");
    let order_head = reply["position"]["offset"].as_u64().unwrap();
    heads.push((order_room.clone(), order_last, order_head));
    recovered += expect_recovered(&mut on_b, &mut seen, &order_room, order_last, order_head).await;
    assert!(
        recovered > 0,
        "nothing was missed: the test did not exercise recovery"
    );
    eprintln!(
        "killed after {killed_at} of {EVENTS} published; recovered {recovered} on B: {heads:?}"
    );

    // Live events keep coming on B until the publisher is done.
    let published_offsets = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher finished")
        .unwrap();
    let last_published = |room: &str| published_offsets[room].last().unwrap().1;
    while rooms
        .iter()
        .any(|r| seen[r].last().unwrap().0 < last_published(r))
    {
        let frame = on_b.recv().await;
        record(&mut seen, &frame);
    }
    // And after: one more event per room, live, with the next offset.
    for room in &rooms {
        let (status, body) = cluster
            .call(
                &api,
                "POST",
                "/api/publish",
                &token("svc", Role::Service),
                Some(json!({"room":room,"event":"test.after","data":{}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let live = on_b.event(room, "test.after").await;
        assert_eq!(live["offset"].as_u64(), Some(last_published(room) + 1));
    }

    for room in &rooms {
        let got = &seen[room];
        let base = positions[room]["offset"].as_u64().unwrap();
        // By offset: every one from the subscription on, once, in order.
        let offsets: Vec<u64> = got.iter().map(|e| e.0).collect();
        assert_eq!(
            offsets,
            (base + 1..=last_published(room)).collect::<Vec<_>>(),
            "{room}: no gap, no duplicate, in order"
        );
        // By payload: exactly the sequence numbers published into this room, each at the
        // offset its publish call returned.
        let ticks: Vec<(u64, u64)> = got
            .iter()
            .filter(|e| e.1 == "test.tick")
            .map(|e| (e.2.unwrap(), e.0))
            .collect();
        assert_eq!(ticks, published_offsets[room], "{room}");
    }
}

/// Issue #20 §2: a network partition between the processes and Redis — Redis keeps running
/// with its data, a proxy in between cuts every connection and refuses new ones. `/readyz`
/// turns 503 while it lasts; once it heals, members are told `gap`, everything is ready again
/// by itself, and the room's stream goes on where it was (same epoch, recovery complete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_from_redis_turns_readyz_503_and_gives_gap_then_heals() {
    use common::chaos::ChaosProxy;
    let redis_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = ChaosProxy::start(([127, 0, 0, 1], redis_port).into()).await;
    let url = format!("redis://{}", proxy.addr);
    let cluster = Cluster::on_redis(&url, Some(redis_port), 1, 1, &[]);
    let (gw, api) = (cluster.gateways[0].clone(), cluster.apis[0].clone());
    let order = cluster.create_order(&api, "c1").await;
    let room = format!("order:{order}");
    let mut client = connect(&cluster.ws(&gw), &token("c1", Role::Customer)).await;
    let position = client.subscribe(&room).await["position"].clone();
    let mut watcher = connect(&cluster.ws(&gw), &admin()).await;
    assert_eq!(watcher.subscribe(&room).await["type"], "ok");
    // The watcher's arrival is an event of the room: the client's position moves past it.
    let joined = client.event(&room, "presence.join").await;
    let position = json!({"epoch": position["epoch"], "offset": joined["offset"]});

    proxy.partition();
    for process in [&gw, &api] {
        eventually("not ready while partitioned", async || {
            cluster.readyz(process).await == 503
        })
        .await;
    }
    // The redis-server never stopped: a partition, not a restart.
    assert_eq!(cluster.redis_cli(&["ping"]).trim(), "PONG");
    // Writes are refused meanwhile rather than accepted into a bus that cannot deliver.
    assert_eq!(cluster.set_status(&api, &order, "confirmed").await.0, 503);

    proxy.heal();
    // Every room the gateway serves: the order room, and the client's own user room.
    client
        .recv_until(|v| v["type"] == "gap" && v["room"] == room.as_str())
        .await;
    cluster.wait_ready().await;
    assert_eq!(cluster.set_status(&api, &order, "confirmed").await.0, 200);
    // The client resubscribes from what it has — the stream kept its epoch and history — and
    // the change reaches it exactly once (live, or recovered if it was published before the
    // gateway's subscription was back).
    client
        .send(json!({"op":"subscribe","room":room,"since":position,"id":900}))
        .await;
    let mut reply = Value::Null;
    let mut events = Vec::new();
    let confirmed = |e: &Value| e["data"]["status"] == "confirmed";
    while reply.is_null() || !events.iter().any(confirmed) {
        let frame = client.recv().await;
        if frame["id"] == 900 {
            reply = frame;
        } else if frame["type"] == "event" && frame["room"] == room.as_str() {
            events.push(frame);
        }
    }
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["position"]["epoch"], position["epoch"]);
    let confirmed = events.iter().find(|e| confirmed(e)).unwrap().clone();
    assert!(confirmed["offset"].as_u64() > position["offset"].as_u64());
    assert_eq!(cluster.set_status(&api, &order, "packed").await.0, 200);
    let packed = client.event(&room, "order.status").await;
    assert_eq!(packed["data"]["status"], "packed");
    assert_eq!(
        packed["offset"].as_u64(),
        confirmed["offset"].as_u64().map(|o| o + 1)
    );
    let seen = watcher
        .recv_until(|v| v["type"] == "event" && v["data"]["status"] == "packed")
        .await;
    assert_eq!(seen["offset"], packed["offset"]);
}

/// A redis-server that stopped answering: SIGSTOPped (its connections stay open, nothing is
/// read or answered), continued again when dropped — also when the test fails.
struct Stopped(u32);

impl Stopped {
    /// The redis-server `cluster.sh` started for `cluster` (its pid file).
    fn redis(cluster: &Cluster) -> Stopped {
        let pid = std::fs::read_to_string(cluster.dir.path().join("redis.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Stopped::signal(pid, "STOP");
        Stopped(pid)
    }

    fn signal(pid: u32, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        Stopped::signal(self.0, "CONT");
    }
}

/// Issue #13, the defect the cluster benchmark found: a handshake waits for Redis (the user
/// room's subscription, its position, the connection lease) only until one deadline,
/// SWITCHYARD_HANDSHAKE_BUS_TIMEOUT_MS. Many handshakes at once all complete; when Redis stops
/// answering, a handshake is refused within the deadline — 503 `unavailable` with
/// `Retry-After`, counted — instead of waiting for the listener's request timeout (30 s); once
/// Redis answers again, handshakes succeed by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_wait_for_redis_only_until_their_deadline() {
    use tokio_tungstenite::tungstenite;
    let cluster = Cluster::up_with(1, 1, &[("SWITCHYARD_HANDSHAKE_BUS_TIMEOUT_MS", "2000")]);
    let gw = cluster.gateways[0].clone();
    let url = cluster.ws(&gw);
    let clients = futures_util::future::join_all((0..200).map(|i| {
        let url = url.clone();
        async move { connect(&url, &token(&format!("many{i}"), Role::Customer)).await }
    }))
    .await;
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(client.welcome["sub"], format!("many{i}"));
    }
    // Each holds its lease, beside its user room's keys (one hash slot: `{user:<sub>}`).
    assert_eq!(
        cluster
            .redis_cli(&["ZCARD", "sy:conns:{user:many7}"])
            .trim(),
        "1"
    );
    drop(clients);

    let stopped = Stopped::redis(&cluster);
    let request =
        || switchyard_client::socket::bearer_request(&url, &token("late", Role::Customer)).unwrap();
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(25),
        tokio_tungstenite::connect_async(request()),
    )
    .await
    .expect("answered before the listener's request timeout");
    let waited = started.elapsed();
    let response = match answer {
        Err(tungstenite::Error::Http(response)) => response,
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("upgraded while Redis does not answer"),
    };
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=4).contains(&retry_after), "{retry_after}");
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    // The deadline (2 s) and what surrounds it, far from the request timeout.
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    let metrics = scrape(&format!("http://{gw}")).await;
    let refused = ["bus_timeout", "bus_unavailable"]
        .iter()
        .filter_map(|reason| {
            sample(
                &metrics,
                &format!("switchyard_handshake_rejections_total{{reason=\"{reason}\"}}"),
            )
        })
        .sum::<f64>();
    assert!(refused >= 1.0, "{metrics}");

    drop(stopped);
    eventually("handshakes succeed once Redis answers again", async || {
        connect_request(request()).await.is_ok()
    })
    .await;
}

/// Issue #17 §2: the batch publish on one Redis — several rooms' events in one script call,
/// offsets still atomic per room (the contract in `common::batch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publishes_keep_offsets_per_room() {
    let cluster = Cluster::up(1, 1);
    let config = RedisConfig::new(format!("redis://127.0.0.1:{}", cluster.redis_port));
    let bus = async || -> Arc<dyn Bus> {
        let bus: Arc<dyn Bus> = Redis::connect(config.clone()).await.unwrap().bus;
        bus
    };
    let (a, b, listener) = (bus().await, bus().await, bus().await);
    let rooms: Vec<Room> = (0..5)
        .map(|i| Room::parse(&format!("order:{}", 900_000 + i)).unwrap())
        .collect();
    common::batch::batches_keep_offsets_per_room(a, b, listener, &rooms, 60).await;
}

/// Issue #17 §2: the publish script refreshes a room's keys' expiry once per slack instead of
/// per event, and each key still lives at least its TTL after the room's last event: the
/// history its history TTL, the offset counter and the epoch the offset TTL — whether the
/// epoch was started by a read (history TTL only) or by the publish itself. Within one script
/// call (Redis's clock stands still in it) only the room's first event refreshes; the others
/// check the epoch's remaining lifetime (one `PTTL` each) and skip the three `PEXPIRE`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_refresh_expiry_once_per_slack_and_keys_outlive_the_last_event() {
    let cluster = Cluster::up(1, 1);
    let mut config = RedisConfig::new(format!("redis://127.0.0.1:{}", cluster.redis_port));
    config.offset_ttl = Duration::from_secs(60);
    config.history = switchyard_broker::HistoryConfig {
        size: 100,
        ttl: Duration::from_millis(1600),
    };
    // The slack: a sixteenth of the shorter TTL.
    let slack = 100;
    let bus = Redis::connect(config).await.unwrap().bus;
    let pttl = |key: &str| -> i64 { cluster.redis_cli(&["PTTL", key]).trim().parse().unwrap() };
    let keys = |room: &str| ["off", "epoch", "hist"].map(|kind| format!("sy:{kind}:{{{room}}}"));
    let event = |room: &Room, i: usize| switchyard_broker::Outgoing {
        room: room.clone(),
        event: "test.ttl".into(),
        data: RawValue::from_string(format!(r#"{{"i":{i}}}"#)).unwrap(),
    };
    // Lower bounds allow for the time between the publish and the PTTL (a loaded machine).
    let outlives = |room: &str, at_least: &str| {
        let [off, epoch, hist] = keys(room);
        for key in [&off, &epoch] {
            let ttl = pttl(key);
            assert!(
                (59_000..=60_000 + slack).contains(&ttl),
                "{key}: {ttl} ms ({at_least})"
            );
        }
        let ttl = pttl(&hist);
        assert!(
            (1_000..=1_600 + slack).contains(&ttl),
            "{hist}: {ttl} ms ({at_least})"
        );
    };

    // A room whose epoch a read started: the epoch lives the history TTL only...
    let read_first = Room::parse("order:970001").unwrap();
    bus.history(&read_first, None).await.unwrap();
    let [_, epoch, _] = keys(read_first.as_str());
    assert!((1..=1_600).contains(&pttl(&epoch)), "read-created epoch");
    // ... until its first event, which gives it (and the counter) the offset TTL.
    cluster.redis_cli(&["CONFIG", "RESETSTAT"]);
    let offsets = bus
        .publish_batch((0..10).map(|i| event(&read_first, i)).collect())
        .await;
    let offsets: Vec<u64> = offsets.into_iter().map(Result::unwrap).collect();
    assert_eq!(offsets, (1..=10).collect::<Vec<u64>>());
    // The first event refreshed (offset 1: no PTTL); the nine others only looked (nothing
    // else here sends PTTL).
    let stats = cluster.redis_cli(&["INFO", "commandstats"]);
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("pttl"), 9, "{stats}");
    outlives(read_first.as_str(), "after the first batch");

    // A room the publish starts, then an event after more than the slack: refreshed again, so
    // the history outlives the last event by its TTL, not the first.
    let fresh = Room::parse("order:970002").unwrap();
    for (offset, pause_ms) in [(1, 0), (2, 900)] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let data = RawValue::from_string("{}".into()).unwrap();
        let published = bus.publish(&fresh, "test.ttl", data).await.unwrap();
        assert_eq!(published, offset);
        outlives(
            fresh.as_str(),
            &format!("event {offset}, {pause_ms} ms after the last"),
        );
    }
    // And the history holds both, in order.
    let history = bus
        .history(
            &fresh,
            Some(&switchyard_protocol::client::StreamPosition {
                epoch: bus.history(&fresh, None).await.unwrap().position.epoch,
                offset: 0,
            }),
        )
        .await
        .unwrap();
    let missed: Vec<u64> = history.missed.unwrap().iter().map(|p| p.offset).collect();
    assert_eq!(missed, vec![1, 2]);
}

/// Issue #17: a handshake's subscription and position read (one Redis round trip) leave no gap
/// — every event published after the position reaches the gateway, though the publisher never
/// pauses while a burst of handshakes joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_miss_no_event_of_their_user_room() {
    let cluster = Cluster::up(1, 1);
    let config = RedisConfig::new(format!("redis://127.0.0.1:{}", cluster.redis_port));
    let publisher: Arc<dyn Bus> = Redis::connect(config.clone()).await.unwrap().bus;
    let gateway = Redis::connect(config).await.unwrap();
    common::gapless::joins_miss_nothing(publisher, &gateway, "gapless", 5, 200).await;
}
