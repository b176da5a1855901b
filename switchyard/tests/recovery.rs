//! Positions and recovery (embedded bus): a client that comes back gets exactly what it
//! missed, or is told plainly to resync from the snapshot.

mod common;

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

/// Re-subscribes (idempotent) until the room's position reaches `offset`: the outbox relay
/// publishes shortly after each REST call returns.
async fn wait_for_offset(watcher: &mut Client, room: &str, offset: u64) -> Value {
    for _ in 0..250 {
        let r = watcher.subscribe(room).await;
        if r["position"]["offset"].as_u64() >= Some(offset) {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{room} never reached offset {offset}");
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
    let now = wait_for_offset(&mut watcher, &room, since + 3).await;
    let last = now["position"]["offset"].as_u64().unwrap();
    assert_eq!(last, since + 3);

    let mut back = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let reply = back
        .request(json!({"op":"subscribe","room":room,"since":position}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert!(
        reply.get("snapshot").is_none(),
        "no snapshot when recovered: {reply}"
    );
    assert_eq!(reply["position"]["offset"].as_u64(), Some(last));
    for (i, status) in ["confirmed", "packed", "out_for_delivery"]
        .iter()
        .enumerate()
    {
        let e = back.recv().await;
        assert_eq!(e["type"], "event", "{e}");
        assert_eq!(e["offset"].as_u64(), Some(since + 1 + i as u64));
        assert_eq!(e["data"]["status"], *status);
    }
    // Live events continue right after, with no duplicate.
    change(&server, &order, &["delivered"]).await;
    let e = back.event(&room, "order.status").await;
    assert_eq!(e["offset"].as_u64(), Some(last + 1));
    assert_eq!(e["data"]["status"], "delivered");

    // Coming back at the current position recovers nothing, completely.
    let mut idle = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let at_head = json!({"epoch": position["epoch"], "offset": last + 1});
    let r = idle
        .request(json!({"op":"subscribe","room":room,"since":at_head}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_history_or_another_epoch_means_resync() {
    let server = TestServer::start_with(&["--history-size", "2"]).await;
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
    wait_for_offset(&mut watcher, &room, since + 3).await;

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
