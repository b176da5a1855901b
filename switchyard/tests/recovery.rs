//! Positions and recovery (embedded bus): a client that comes back gets exactly what it
//! missed, or is told plainly to resync from the snapshot.

use common::*;
use serde_json::{Value, json};
use switchyard_protocol::Role;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

async fn change(server: &TestServer, order: &str, statuses: &[&str]) {
    for status in statuses {
        let (code, body) = server.set_status(order, &admin(), status).await;
        assert_eq!(code, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_gets_exactly_what_it_missed() {
    let server = TestServer::start().await;
    let order = server.create_order("c1", 1, 100).await;
    let room = format!("order:{order}");
    let mut first = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let joined = first.subscribe(&room).await;
    assert_eq!(joined["snapshot"]["status"], "placed");
    let position: Value = joined["position"].clone();
    assert!(
        position["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{joined}"
    );
    drop(first);

    change(
        &server,
        &order,
        &["confirmed", "packed", "out_for_delivery"],
    )
    .await;
    let since = position["offset"].as_u64().unwrap();
    let mut watcher = connect(&server.ws_url(), &admin()).await;
    let now = watcher.subscribe_until(&room, since + 3).await;
    // The three changes, and the room's presence events (the first connection's leave, the
    // watcher's join) wherever they fell.
    let last = now["position"]["offset"].as_u64().unwrap();
    assert!(last >= since + 3, "{now}");

    let mut back = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let reply = back
        .request(json!({"op":"subscribe","room":room,"since":position}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert!(
        reply.get("snapshot").is_none(),
        "no snapshot when recovered: {reply}"
    );
    assert!(
        reply["position"]["offset"].as_u64() >= Some(last),
        "{reply}"
    );
    // What was missed, then what follows live: one sequence, no gap, no duplicate.
    let mut next = since + 1;
    let mut statuses = Vec::new();
    while statuses.len() < 3 {
        let e = back
            .recv_until(|v| v["type"] == "event" && v["room"] == room.as_str())
            .await;
        assert_eq!(e["type"], "event", "{e}");
        assert_eq!(e["offset"].as_u64(), Some(next), "{e}");
        next += 1;
        match e["event"].as_str() {
            Some("order.status") => statuses.push(e["data"]["status"].clone()),
            other => assert!(other.is_some_and(|e| e.starts_with("presence.")), "{e}"),
        }
    }
    assert_eq!(statuses, ["confirmed", "packed", "out_for_delivery"]);
    // Live events continue right after, with no duplicate and no gap.
    change(&server, &order, &["delivered"]).await;
    loop {
        let e = back
            .recv_until(|v| v["type"] == "event" && v["room"] == room.as_str())
            .await;
        assert_eq!(e["offset"].as_u64(), Some(next), "{e}");
        next += 1;
        if e["event"] == "order.status" {
            assert_eq!(e["data"]["status"], "delivered");
            break;
        }
    }

    // Coming back at the current position recovers nothing, completely.
    let mut idle = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let at_head = json!({"epoch": position["epoch"], "offset": next - 1});
    let r = idle
        .request(json!({"op":"subscribe","room":room,"since":at_head}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_history_or_another_epoch_means_resync() {
    let server = TestApp::embedded()
        .with_config(|c| c.serve.limits.history_size = 2)
        .start()
        .await;
    let order = server.create_order("c1", 1, 100).await;
    let room = format!("order:{order}");
    let mut first = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let position = first.subscribe(&room).await["position"].clone();
    drop(first);
    change(
        &server,
        &order,
        &["confirmed", "packed", "out_for_delivery"],
    )
    .await;
    let mut watcher = connect(&server.ws_url(), &admin()).await;
    let since = position["offset"].as_u64().unwrap();
    watcher.subscribe_until(&room, since + 3).await;

    let mut back = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let r = back
        .request(json!({"op":"subscribe","room":room,"since":position}))
        .await;
    assert_eq!(r["recovered"], false, "3 missed, 2 kept: {r}");
    assert_eq!(
        r["snapshot"]["status"], "out_for_delivery",
        "resync from the snapshot"
    );

    let other_epoch = json!({"epoch":"not-this-one","offset":1});
    let r = back
        .request(json!({"op":"subscribe","room":room,"since":other_epoch}))
        .await;
    assert_eq!(r["recovered"], false, "{r}");
    assert!(r["snapshot"].is_object());

    let bad = back
        .request(json!({"op":"subscribe","room":room,"since":{"epoch":1}}))
        .await;
    assert_eq!(bad["error"], "bad_request");
    server.stop().await;
}

/// Publishes `promo.tick {i}` into `user:c1` through the server publish API.
async fn tick(server: &TestServer, i: u64) {
    let (status, body) = server
        .call(
            "POST",
            "/api/publish",
            &token("notifier", Role::Service),
            Some(json!({"room":"user:c1","event":"promo.tick","data":{"i":i}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_welcome_carries_the_user_rooms_position() {
    let server = TestServer::start().await;
    for i in 0..3 {
        tick(&server, i).await;
    }
    let mut c1 = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let position = c1.welcome["positions"]["user:c1"].clone();
    assert_eq!(position["offset"], 3, "{}", c1.welcome);
    assert!(position["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    tick(&server, 3).await;
    // The next event is the one right after the welcome's position: nothing before it.
    let e = c1.event("user:c1", "promo.tick").await;
    assert_eq!(
        (e["offset"].as_u64(), e["data"]["i"].as_u64()),
        (Some(4), Some(3))
    );

    // The welcome position is a valid `since`: recovery from it is complete and empty.
    let mut again = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let r = again
        .request(json!({"op":"subscribe","room":"user:c1","since": position}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_room_recovers_in_the_welcome_without_duplicates() {
    let server = TestServer::start().await;
    let first = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let seen = first.welcome["positions"]["user:c1"].clone();
    drop(first);
    for i in 1..=3 {
        tick(&server, i).await;
    }
    let since = format!("{}:{}", seen["epoch"].as_str().unwrap(), seen["offset"]);
    let url = format!("{}?since={}", server.ws_url(), since.replace(':', "%3A"));
    let mut back = connect(&url, &token("c1", Role::Customer)).await;
    assert_eq!(back.welcome["recovered"], true, "{}", back.welcome);
    for i in 1..=3 {
        let e = back.event("user:c1", "promo.tick").await;
        assert_eq!(e["data"]["i"], i, "{e}");
    }
    tick(&server, 4).await;
    // The next frame is the live event: nothing recovered twice.
    let e = back.recv().await;
    assert_eq!(
        (e["event"].as_str(), e["data"]["i"].as_u64()),
        (Some("promo.tick"), Some(4)),
        "{e}"
    );

    // Another epoch: told to resync, no events replayed.
    let url = format!("{}?since=otherepoch:1", server.ws_url());
    let stale = connect(&url, &token("c1", Role::Customer)).await;
    assert_eq!(stale.welcome["recovered"], false, "{}", stale.welcome);
    // A malformed position is refused before the upgrade.
    let mut req = format!("{}?since=nope", server.ws_url())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", token("c1", Role::Customer))).unwrap(),
    );
    let (status, body) = refused(req).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    server.stop().await;
}

/// Publishes `test.tick {seq}` into `room` through the server publish API; returns its offset.
async fn publish_tick(server: &TestServer, room: &str, seq: u64) -> u64 {
    let (status, body) = server
        .call(
            "POST",
            "/api/publish",
            &token("notifier", Role::Service),
            Some(json!({"room":room,"event":"test.tick","data":{"seq":seq}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_u64().unwrap()
}

/// The server knows what it already wrote: a re-subscribe with a `since` behind it (the client
/// has not read everything on the wire yet) recovers only what is not on the wire, so the
/// same offset never goes out twice, in the user room as in any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscribe_never_sends_an_offset_that_is_already_on_the_wire() {
    let server = TestServer::start().await;
    let order = server.create_order("c1", 1, 100).await;
    let order_room = format!("order:{order}");
    let mut c1 = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    // The relay's order.created has reached the user room: every later event is the test's.
    let head = c1.subscribe_until("user:c1", 1).await["position"].clone();
    let joined = c1.subscribe(&order_room).await;
    assert_eq!(joined["type"], "ok", "{joined}");
    for (room, position) in [
        ("user:c1", head),
        (order_room.as_str(), joined["position"].clone()),
    ] {
        let base = position["offset"].as_u64().unwrap();
        for seq in 1..=5 {
            publish_tick(&server, room, seq).await;
        }
        for seq in 1..=5 {
            let e = c1.event(room, "test.tick").await;
            assert_eq!(e["offset"].as_u64(), Some(base + seq), "{e}");
        }
        // As if the client had applied only two of the five: the other three were written
        // before the server read this request.
        let since = json!({"epoch": position["epoch"], "offset": base + 2});
        let reply = c1
            .request(json!({"op":"subscribe","room":room,"since":since}))
            .await;
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(reply["position"]["offset"].as_u64(), Some(base + 5));
        publish_tick(&server, room, 6).await;
        let next = c1.recv().await;
        assert_eq!(
            (next["room"].as_str(), next["offset"].as_u64()),
            (Some(room), Some(base + 6)),
            "nothing repeated: {next}"
        );
    }
    server.stop().await;
}

/// A raw client that keeps re-subscribing (with `since` = the last offset it read) while
/// events flow in two rooms sees each room's offsets strictly increasing, every one once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_while_events_flow_never_repeats_nor_reorders() {
    use std::collections::HashMap;
    let server = std::sync::Arc::new(TestServer::start().await);
    let order = server.create_order("c1", 1, 100).await;
    let rooms = ["user:c1".to_owned(), format!("order:{order}")];
    let mut c1 = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    c1.subscribe_until("user:c1", 1).await;
    let mut last: HashMap<String, (Value, u64)> = HashMap::new();
    for room in &rooms {
        let position = c1.subscribe(room).await["position"].clone();
        let offset = position["offset"].as_u64().unwrap();
        last.insert(room.clone(), (position["epoch"].clone(), offset));
    }
    let start: HashMap<String, u64> = last.iter().map(|(r, (_, o))| (r.clone(), *o)).collect();
    const EVENTS: u64 = 300;
    let publisher = {
        let (server, rooms) = (server.clone(), rooms.clone());
        tokio::spawn(async move {
            let mut ends = HashMap::new();
            for seq in 0..EVENTS {
                let room = &rooms[(seq % 2) as usize];
                ends.insert(room.clone(), publish_tick(&server, room, seq).await);
            }
            ends
        })
    };
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let (mut read, mut asked, mut replies) = (0u64, 0i64, 0);
    let mut ends: Option<HashMap<String, u64>> = None;
    let mut publisher = Some(publisher);
    loop {
        if ends.is_none() && publisher.as_ref().is_some_and(|p| p.is_finished()) {
            ends = Some(publisher.take().unwrap().await.unwrap());
        }
        if let Some(ends) = &ends
            && rooms.iter().all(|r| last[r].1 >= ends[r])
            && replies == asked
        {
            break;
        }
        let frame = c1.recv().await;
        match frame["type"].as_str() {
            Some("event") => {
                let room = frame["room"].as_str().unwrap().to_owned();
                let offset = frame["offset"].as_u64().unwrap();
                seen.entry(room.clone()).or_default().push(offset);
                last.get_mut(&room).unwrap().1 = offset;
                read += 1;
                if read % 7 == 0 {
                    // Resubscribe this room from where this client is, without waiting.
                    let (epoch, offset) = &last[&room];
                    asked += 1;
                    c1.send(json!({"op":"subscribe","room":room,"id":asked,
                        "since":{"epoch":epoch,"offset":offset}}))
                        .await;
                }
            }
            Some("ok") => {
                assert_eq!(frame["recovered"], true, "{frame}");
                replies += 1;
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    assert!(asked > 20, "only {asked} resubscribes");
    let ends = ends.unwrap();
    for room in &rooms {
        assert_eq!(
            seen[room],
            (start[room] + 1..=ends[room]).collect::<Vec<_>>(),
            "{room}: every offset once, in order"
        );
    }
}

/// Embedded mode: offsets live in the process, so a new process is a new epoch — the only way
/// the epoch changes there, and it closes every connection (4000). A client that comes back
/// with positions from the old epoch, high offsets included, is told to resync and then, doing
/// nothing but read, gets every event of the new epoch from offset 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_is_a_new_epoch_whose_events_all_reach_a_returning_client() {
    use common::process::ServerProcess;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        ServerProcess::start(
            dir.path(),
            &["--listen", "127.0.0.1:0"],
            &[("JWT_SECRET", SECRET)],
        )
    };
    let service = token("notifier", Role::Service);
    let publish = async |server: &ServerProcess, room: &str, seq: u64| {
        let body = json!({"room":room,"event":"test.tick","data":{"seq":seq}});
        let (status, reply) = server
            .call("POST", "/api/publish", &service, Some(body))
            .await;
        assert_eq!(status, 200, "{reply}");
    };
    let mut first = start();
    let customer = token("c1", Role::Customer);
    let body = json!({"items":[{"sku":"tea-250g","qty":1}],"address":"x"});
    let (status, order) = first
        .call("POST", "/api/orders", &customer, Some(body))
        .await;
    assert_eq!(status, 201, "{order}");
    let room = format!("order:{}", order["id"].as_str().unwrap());
    for seq in 0..5 {
        for r in ["user:c1", room.as_str()] {
            publish(&first, r, seq).await;
        }
    }
    let mut c1 = connect(&first.ws_url(), &customer).await;
    let mut old = Vec::new();
    for r in ["user:c1", room.as_str()] {
        let position = c1.subscribe(r).await["position"].clone();
        assert!(position["offset"].as_u64() >= Some(5), "{position}");
        old.push(position);
    }
    first.signal("-TERM");
    let frame = c1.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), switchyard_protocol::close::SHUTDOWN);
    assert!(first.wait(std::time::Duration::from_secs(10)).success());

    let second = start();
    let since = format!("{}:{}", old[0]["epoch"].as_str().unwrap(), old[0]["offset"]);
    let url = format!("{}?since={since}", second.ws_url());
    let mut back = connect(&url, &customer).await;
    assert_eq!(back.welcome["recovered"], false, "{}", back.welcome);
    let epoch = back.welcome["positions"]["user:c1"]["epoch"].clone();
    assert_ne!(epoch, old[0]["epoch"]);
    let reply = back
        .request(json!({"op":"subscribe","room":room,"since":old[1]}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    // The room's first event in the new process: the subscriber's own `presence.join`.
    assert_eq!(reply["position"], json!({"epoch": epoch, "offset": 1}));
    for seq in 0..3 {
        for r in ["user:c1", room.as_str()] {
            publish(&second, r, seq).await;
        }
    }
    let mut offsets: std::collections::HashMap<String, Vec<u64>> = Default::default();
    while offsets.values().map(Vec::len).sum::<usize>() < 6 {
        let e = back.recv().await;
        assert_eq!(e["type"], "event", "{e}");
        offsets
            .entry(e["room"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets["user:c1"], [1, 2, 3]);
    assert_eq!(offsets[room.as_str()], [2, 3, 4]);
}
