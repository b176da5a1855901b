//! Partners stream GPS fixes into the rooms of the orders they carry.

use common::*;
use switchyard_protocol::Role;
use switchyard_protocol::client::{ClientOp, LocationFix};

fn fix(order: &str, lat: f64, lng: f64) -> ClientOp {
    ClientOp::Location {
        order_id: order.to_owned(),
        fix: LocationFix {
            lat,
            lng,
            heading: Some(90.0),
            speed: Some(8.5),
            ts: Some(1_732_000_000_000),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_location_reaches_the_order_room_and_the_next_snapshot() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let order = server.create_order("c1", 1, 100).await;
    server.assign(&order, "p1").await;
    let room = format!("order:{order}");
    let mut c1 = connect(&url, &token("c1", Role::Customer)).await;
    assert_eq!(c1.subscribe(&room).await["type"], "ok");
    let mut p1 = connect(&url, &token("p1", Role::Partner)).await;

    let r = p1.request(fix(&order, 12.9716, 77.5946)).await;
    assert_eq!(
        (r["type"].as_str(), r["op"].as_str()),
        (Some("ok"), Some("location")),
        "{r}"
    );
    let e = c1.event(&room, "partner.location").await;
    assert_eq!(e["data"]["lat"], 12.9716);
    assert_eq!(e["data"]["lng"], 77.5946);
    assert_eq!(e["data"]["partner"], "p1");
    assert_eq!(e["data"]["ts"], 1_732_000_000_000_i64);

    // The next subscriber's snapshot carries the last known location.
    let mut admin_ws = connect(&url, &admin()).await;
    let snap = admin_ws.subscribe(&room).await;
    assert_eq!(snap["snapshot"]["last_location"]["lat"], 12.9716);
    assert_eq!(snap["snapshot"]["last_location"]["heading"], 90.0);
    assert!(
        snap["snapshot"]["last_location"]["received_at"]
            .as_i64()
            .unwrap()
            > 0
    );
    // …and so does the REST read, once the position is written (within one flush interval).
    let stored = eventually("the stored location", async || {
        let (_, o) = server
            .call(
                "GET",
                &format!("/api/orders/{order}"),
                &token("c1", Role::Customer),
                None,
            )
            .await;
        Some(o["last_location"].clone()).filter(|l| !l.is_null())
    })
    .await;
    assert_eq!(stored["lng"], 77.5946);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_assigned_partner_may_send_and_coordinates_are_validated() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let order = server.create_order("c1", 1, 100).await;
    server.assign(&order, "p1").await;
    let mut p1 = connect(&url, &token("p1", Role::Partner)).await;
    let mut p2 = connect(&url, &token("p2", Role::Partner)).await;
    let mut c1 = connect(&url, &token("c1", Role::Customer)).await;
    let mut adm = connect(&url, &admin()).await;
    assert_eq!(
        p2.request(fix(&order, 1.0, 1.0)).await["error"],
        "forbidden"
    );
    assert_eq!(
        c1.request(fix(&order, 1.0, 1.0)).await["error"],
        "forbidden"
    );
    assert_eq!(
        adm.request(fix(&order, 1.0, 1.0)).await["error"],
        "forbidden"
    );
    assert_eq!(
        p1.request(fix("999999", 1.0, 1.0)).await["error"],
        "forbidden"
    );
    for (lat, lng) in [(90.5, 0.0), (-91.0, 0.0), (0.0, 180.5), (0.0, -181.0)] {
        assert_eq!(
            p1.request(fix(&order, lat, lng)).await["error"],
            "bad_request",
            "{lat},{lng}"
        );
    }
    p1.send_raw(tokio_tungstenite::tungstenite::Message::Text(
        format!(r#"{{"op":"location","order_id":"{order}","lat":1e999,"lng":0,"id":99}}"#).into(),
    ))
    .await;
    // Its reply, by id: an event of p1's user room (the assignment, published by the relay
    // whenever it gets to it) may come first.
    assert_eq!(
        p1.recv_until(|v| v["id"] == 99).await["error"],
        "bad_request",
        "out-of-range number"
    );
    // A reassigned order no longer accepts the former partner's fixes.
    server.assign(&order, "p2").await;
    assert_eq!(
        p1.request(fix(&order, 1.0, 1.0)).await["error"],
        "forbidden"
    );
    assert_eq!(p2.request(fix(&order, 1.0, 1.0)).await["type"], "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_floods_are_rate_limited_without_disconnecting() {
    let server = TestApp::embedded()
        .with_config(|c| {
            // A slow refill: however long the 10 round trips take on this machine, hardly
            // a token comes back meanwhile.
            c.serve.limits.location_rate = 0.1;
            c.serve.limits.location_burst = 3.0;
        })
        .start()
        .await;
    let url = server.ws_url();
    let order = server.create_order("c1", 1, 100).await;
    server.assign(&order, "p1").await;
    let mut p1 = connect(&url, &token("p1", Role::Partner)).await;
    let mut limited = 0;
    let mut accepted = 0;
    for _ in 0..10 {
        let r = p1.request(fix(&order, 1.0, 1.0)).await;
        match r["error"].as_str() {
            Some("rate_limited") => limited += 1,
            None => accepted += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        accepted >= 3 && limited >= 5,
        "accepted {accepted}, limited {limited}"
    );
    assert_eq!(p1.ping().await["type"], "ok");
    server.stop().await;
}
