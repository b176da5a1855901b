//! Who may join which room, snapshots, limits, and bad frames.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use switchyard_protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn forbidden(reply: &serde_json::Value) -> bool {
    reply["type"] == "error" && reply["error"] == "forbidden"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_rules() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let order = server.create_order("c1", 1, 100).await;
    let others = server.create_order("c2", 1, 100).await;
    server.assign(&order, "p1").await;

    let mut c1 = connect(&url, &token("c1", Role::Customer)).await;
    let mut p1 = connect(&url, &token("p1", Role::Partner)).await;
    let mut p2 = connect(&url, &token("p2", Role::Partner)).await;
    let mut adm = connect(&url, &admin()).await;

    // user:{id}: the user, or an admin.
    let ok = c1.subscribe("user:c1").await;
    assert_eq!(
        (ok["type"].as_str(), ok["room"].as_str()),
        (Some("ok"), Some("user:c1"))
    );
    assert!(forbidden(&c1.subscribe("user:c2").await));
    assert_eq!(adm.subscribe("user:c2").await["type"], "ok");

    // order:{id}: its customer, its assigned partner, an admin.
    let ok = c1.subscribe(&format!("order:{order}")).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(ok["snapshot"]["id"], order.as_str());
    assert_eq!(ok["snapshot"]["status"], "placed");
    assert!(forbidden(&c1.subscribe(&format!("order:{others}")).await));
    assert_eq!(p1.subscribe(&format!("order:{order}")).await["type"], "ok");
    assert!(forbidden(&p2.subscribe(&format!("order:{order}")).await));
    assert_eq!(
        adm.subscribe(&format!("order:{others}")).await["type"],
        "ok"
    );

    // An unknown order is refused exactly like someone else's.
    let unknown = c1.subscribe("order:999999").await;
    let theirs = c1.subscribe(&format!("order:{others}")).await;
    assert!(forbidden(&unknown));
    assert_eq!(unknown["message"], theirs["message"]);
    assert!(forbidden(&c1.subscribe("order:not-a-number").await));

    // admin:revenue: admins only.
    assert!(forbidden(&c1.subscribe("admin:revenue").await));
    assert!(forbidden(&p1.subscribe("admin:revenue").await));
    let ok = adm.subscribe("admin:revenue").await;
    assert_eq!(
        ok["snapshot"],
        json!({"currency":"INR","total_paise":0,"paid_orders":0})
    );

    // Grammar violations are bad_request, not forbidden.
    for bad in [
        "room:1",
        "order:*",
        "user:a b",
        "order:",
        "admin:other",
        "user:١٢",
        "user:c?",
        "user:[c1]",
        "order:1\r\nPUBLISH x",
        "user:c1\n",
        "user:c\u{0}1",
        "order:１２",
        "user:ç",
        &format!("user:{}", "a".repeat(10 * 1024)),
    ] {
        let r = c1.subscribe(bad).await;
        assert_eq!(r["error"], "bad_request", "{bad:?}: {r}");
        assert!(r["message"].is_string(), "{r}");
        // The field's old name, kept for one release.
        assert_eq!(r["code"], "bad_request", "{r}");
    }

    // Unsubscribe is acknowledged with the room.
    let r = c1
        .request(json!({"op":"unsubscribe","room":format!("order:{order}")}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["op"].as_str()),
        (Some("ok"), Some("unsubscribe"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_follows_the_order_right_after_the_rest_call() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut c1 = connect(&url, &token("c1", Role::Customer)).await;
    let mut p9 = connect(&url, &token("p9", Role::Partner)).await;
    for _ in 0..5 {
        let order = server.create_order("c1", 1, 100).await;
        assert_eq!(c1.subscribe(&format!("order:{order}")).await["type"], "ok");
        assert!(forbidden(&p9.subscribe(&format!("order:{order}")).await));
        server.assign(&order, "p9").await;
        assert_eq!(p9.subscribe(&format!("order:{order}")).await["type"], "ok");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_bad_request_and_the_connection_survives() {
    let server = TestServer::start().await;
    let mut c = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let frames = [
        "not json",
        "{}",
        "[1,2,3]",
        r#"{"op":"fly","id":7}"#,
        r#"{"op":"subscribe"}"#,
        r#"{"op":"subscribe","room":42}"#,
        r#"{"op":"location","order_id":"1","lat":"north","lng":0}"#,
        // JSON has no NaN or infinities; out-of-range floats are refused too.
        r#"{"op":"location","order_id":"1","lat":NaN,"lng":0}"#,
        r#"{"op":"location","order_id":"1","lat":0,"lng":Infinity}"#,
        r#"{"op":"location","order_id":"1","lat":1e999,"lng":0}"#,
        &format!(
            r#"{{"op":"subscribe","room":"user:c1","since":{}{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        ),
    ];
    for frame in frames {
        c.send_raw(Message::Text(frame.into())).await;
        let r = c.recv().await;
        assert_eq!(
            (r["type"].as_str(), r["error"].as_str()),
            (Some("error"), Some("bad_request")),
            "{frame}"
        );
    }
    // The id survives a bad field, so the client can match the error.
    c.send_raw(Message::Text(r#"{"op":"fly","id":7}"#.into()))
        .await;
    assert_eq!(c.recv().await["id"], 7);
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(c.recv().await["error"], "bad_request");
    // Still usable.
    let pong = c.ping().await;
    assert_eq!(
        (pong["type"].as_str(), pong["op"].as_str()),
        (Some("ok"), Some("ping"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_and_frame_limits() {
    let server =
        TestServer::start_with(&["--max-subscriptions", "3", "--max-frame-bytes", "2048"]).await;
    let url = server.ws_url();
    let mut adm = connect(&url, &admin()).await;
    // user:admin counts as one.
    assert_eq!(adm.subscribe("user:a").await["type"], "ok");
    assert_eq!(adm.subscribe("user:b").await["type"], "ok");
    let r = adm.subscribe("user:c").await;
    assert_eq!(r["error"], "limit_exceeded", "{r}");
    // Re-subscribing to a room already joined is not a new subscription.
    assert_eq!(adm.subscribe("user:a").await["type"], "ok");

    // A frame over the limit closes the connection with 1009.
    let mut c = connect(&url, &token("c1", Role::Customer)).await;
    c.send_raw(Message::Text("x".repeat(4096).into())).await;
    let frame = c.closed().await.expect("close frame");
    assert_eq!(frame.code, CloseCode::Size);
    // Others are unaffected.
    assert_eq!(adm.ping().await["type"], "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_floods_are_rate_limited_not_disconnected() {
    let server = TestServer::start_with(&["--op-rate", "5", "--op-burst", "5"]).await;
    let mut c = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    for i in 0..20 {
        c.send(json!({"op":"ping","id":i})).await;
    }
    let mut limited = 0;
    for _ in 0..20 {
        let r = c.recv().await;
        if r["error"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 10, "only {limited} of 20 were limited");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(c.ping().await["type"], "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_costs_only_the_flooder() {
    let server = TestServer::start().await;
    let mut other = connect(&server.ws_url(), &token("c2", Role::Customer)).await;
    let mut flooder = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    // 20,000 pings without reading a single pong: tungstenite keeps at most one pong pending.
    for i in 0..20_000u32 {
        flooder
            .socket
            .ws_mut()
            .feed(Message::Ping(i.to_be_bytes().to_vec().into()))
            .await
            .unwrap();
    }
    flooder.socket.ws_mut().flush().await.unwrap();
    assert_eq!(other.ping().await["type"], "ok");
    // The flooder itself is still served once it reads again.
    assert_eq!(flooder.ping().await["type"], "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007_and_others_keep_going() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let mut other = connect(&server.ws_url(), &token("c2", Role::Customer)).await;
    let mut tcp = raw_upgrade(server.addr, &token("c1", Role::Customer)).await;
    // A masked text frame (zero mask key) whose payload is not UTF-8.
    tcp.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe])
        .await
        .unwrap();
    let received = read_until_closed(&mut tcp).await;
    assert!(
        close_frame_at(&received, 1007).is_some(),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(other.ping().await["type"], "ok");
    server.stop().await;
}
