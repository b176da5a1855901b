//! Presence (issue #16), with real processes in both modes: the `switchyard` binary
//! (embedded), and gateways + an API process + Redis + nginx (`scripts/cluster.sh`). Timings
//! are shortened by settings (heartbeat 500 ms: an entry lives 1.5 s; sweeps every 200 ms;
//! debounce 2 s, long enough for a reconnect on a loaded machine), and every wait polls (`eventually`, or reading frames bounded by `WAIT`).
//!
//! "Nothing was published" is shown without waiting for it: a second user leaves *after* the
//! flap, and its leave — published by a sweep that would have published the flapping user's
//! earlier leave first — is the next presence event of the room.

use common::cluster::Cluster;
use common::process::ServerProcess;
use common::*;
use serde_json::{Value, json};
use switchyard_protocol::Role;

/// Presence timings for the tests, as flags and as environment variables.
const FLAGS: [&str; 6] = [
    "--presence-heartbeat-ms",
    "500",
    "--presence-sweep-ms",
    "200",
    "--presence-debounce-ms",
    "2000",
];
const SETTINGS: [(&str, &str); 3] = [
    ("SWITCHYARD_PRESENCE_HEARTBEAT_MS", "500"),
    ("SWITCHYARD_PRESENCE_SWEEP_MS", "200"),
    ("SWITCHYARD_PRESENCE_DEBOUNCE_MS", "2000"),
];

/// The next `presence.*` event of `room`: (`join`/`leave`, sub). (The room also carries the
/// order's own events, which the outbox relay publishes when it gets to them.)
async fn next_presence(client: &mut Client, room: &str) -> (String, String) {
    let e = next_presence_event(client, room).await;
    (
        e["event"].as_str().unwrap()["presence.".len()..].to_owned(),
        e["data"]["sub"].as_str().unwrap().to_owned(),
    )
}

fn subs(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a presence list: {list}"))
        .iter()
        .map(|p| p["sub"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET /api/presence?room=` on `base`, as admin: the subs present, or the refusal.
async fn try_rest_presence(base: &str, room: &str) -> Result<Vec<String>, (u16, Value)> {
    let (status, body) = http_call(
        &reqwest::Client::new(),
        "GET",
        &format!("{base}/api/presence?room={room}"),
        &admin(),
        None,
    )
    .await;
    match status {
        200 => Ok(subs(&body["presence"])),
        _ => Err((status, body)),
    }
}

/// Like [`try_rest_presence`], which must answer.
async fn rest_presence(base: &str, room: &str) -> Vec<String> {
    try_rest_presence(base, room)
        .await
        .unwrap_or_else(|(status, body)| panic!("{status}: {body}"))
}

/// Embedded: a customer sees its partner come online (once for two connections), a flap
/// within the debounce publishes nothing, the partner's last close is a leave; the REST view
/// agrees, and only admins and services may read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_in_an_order_room_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/sy.db", dir.path().display());
    let mut args = vec!["--listen", "127.0.0.1:0", "--database-url", &db];
    args.extend(FLAGS);
    let server = ServerProcess::start(dir.path(), &args, &[("JWT_SECRET", SECRET)]);
    let base = server.url("");
    let items = json!({"items":[{"sku":"milk-1l","qty":1}],"address":"x"});
    let (status, order) = server
        .call(
            "POST",
            "/api/orders",
            &token("c1", Role::Customer),
            Some(items),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().unwrap();
    let (status, _) = server
        .call(
            "POST",
            &format!("/api/orders/{id}/assign"),
            &admin(),
            Some(json!({"partner":"p1"})),
        )
        .await;
    assert_eq!(status, 200);
    let room = format!("order:{id}");

    let mut c1 = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let joined = c1.subscribe(&room).await;
    assert_eq!(subs(&joined["presence"]), ["c1"], "{joined}");
    assert_eq!(joined["presence"][0]["role"], "customer");

    // The partner comes online, on two connections: one join.
    let mut p1 = connect(&server.ws_url(), &token("p1", Role::Partner)).await;
    let reply = p1.subscribe(&room).await;
    assert_eq!(subs(&reply["presence"]), ["c1", "p1"], "{reply}");
    let (kind, who) = next_presence(&mut c1, &room).await;
    assert_eq!((kind.as_str(), who.as_str()), ("join", "p1"));
    let mut p1b = connect(&server.ws_url(), &token("p1", Role::Partner)).await;
    assert_eq!(p1b.subscribe(&room).await["type"], "ok");
    assert_eq!(rest_presence(&base, &room).await, ["c1", "p1"]);

    // A flap: both connections close (the server holds only c1's), and one comes back within
    // the debounce; then an admin joins and leaves. The admin's join and leave are the next
    // presence events: the flap published nothing.
    p1.close().await;
    p1b.close().await;
    eventually("only c1 connected", async || {
        sample(&scrape(&base).await, "switchyard_connections") == Some(1.0)
    })
    .await;
    let mut p1 = connect(&server.ws_url(), &token("p1", Role::Partner)).await;
    assert_eq!(p1.subscribe(&room).await["type"], "ok");
    let mut a1 = connect(&server.ws_url(), &token("a1", Role::Admin)).await;
    assert_eq!(a1.subscribe(&room).await["type"], "ok");
    a1.close().await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (kind, who) = next_presence(&mut c1, &room).await;
        seen.push((kind, who));
    }
    assert_eq!(
        seen,
        [("join".into(), "a1".into()), ("leave".into(), "a1".into())]
    );

    // The partner's last connection closes: it leaves, after the debounce.
    p1.close().await;
    let (kind, who) = next_presence(&mut c1, &room).await;
    assert_eq!((kind.as_str(), who.as_str()), ("leave", "p1"));
    eventually("the REST view without p1", async || {
        rest_presence(&base, &room).await == ["c1"]
    })
    .await;

    // Admins and services only; rooms with presence only.
    let client = reqwest::Client::new();
    let url = |room: &str| format!("{base}/api/presence?room={room}");
    let (status, body) = http_call(
        &client,
        "GET",
        &url(&room),
        &token("c1", Role::Customer),
        None,
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, body) = http_call(&client, "GET", &url("user:c1"), &admin(), None).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("invalid")));
    let (status, _) = http_call(
        &client,
        "GET",
        &url(&room),
        &token("svc", Role::Service),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

/// Distributed: a partner on two gateways is present once and leaves after its last
/// connection; a SIGKILLed gateway's users are announced gone by the surviving one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_gateways_and_a_sigkill() {
    let cluster = Cluster::up_with(3, 1, &SETTINGS);
    let api = cluster.apis[0].clone();
    let base = format!("http://{api}");
    let order = cluster.create_order(&api, "c1").await;
    cluster.assign(&api, &order, "p1").await;
    let room = format!("order:{order}");
    let ws = |n: usize| cluster.ws(&cluster.gateways[n]);

    let mut c1 = connect(&ws(0), &token("c1", Role::Customer)).await;
    assert_eq!(subs(&c1.subscribe(&room).await["presence"]), ["c1"]);
    let mut p1 = connect(&ws(1), &token("p1", Role::Partner)).await;
    assert_eq!(p1.subscribe(&room).await["type"], "ok");
    let (kind, who) = next_presence(&mut c1, &room).await;
    assert_eq!((kind.as_str(), who.as_str()), ("join", "p1"));
    let mut p1b = connect(&ws(2), &token("p1", Role::Partner)).await;
    let reply = p1b.subscribe(&room).await;
    assert_eq!(subs(&reply["presence"]), ["c1", "p1"], "{reply}");

    // The first of p1's connections closes: p1 stays. An admin on the third gateway joins
    // and leaves after it; its events are the next ones.
    p1.close().await;
    let mut a1 = connect(&ws(2), &token("a1", Role::Admin)).await;
    assert_eq!(a1.subscribe(&room).await["type"], "ok");
    a1.close().await;
    for want in [("join", "a1"), ("leave", "a1")] {
        let (kind, who) = next_presence(&mut c1, &room).await;
        assert_eq!((kind.as_str(), who.as_str()), want);
    }
    assert_eq!(rest_presence(&base, &room).await, ["c1", "p1"]);

    // p1's last connection is on gateway 3 (index 2): SIGKILL it. Nobody closes anything;
    // the entry expires, and gateway 1 — which serves the room — announces the leave.
    cluster.kill_gateway(2).await;
    let (kind, who) = next_presence(&mut c1, &room).await;
    assert_eq!((kind.as_str(), who.as_str()), ("leave", "p1"));
    assert_eq!(rest_presence(&base, &room).await, ["c1"]);
}

/// Distributed: Redis restarts without its data; the gateways' renewals write presence
/// again from the live connections, and announce it in the room's new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_rebuilt_after_a_redis_restart() {
    let cluster = Cluster::up_with(2, 1, &SETTINGS);
    let api = cluster.apis[0].clone();
    let base = format!("http://{api}");
    let order = cluster.create_order(&api, "c1").await;
    cluster.assign(&api, &order, "p1").await;
    let room = format!("order:{order}");
    let mut c1 = connect(
        &cluster.ws(&cluster.gateways[0]),
        &token("c1", Role::Customer),
    )
    .await;
    assert_eq!(c1.subscribe(&room).await["type"], "ok");
    let mut p1 = connect(
        &cluster.ws(&cluster.gateways[1]),
        &token("p1", Role::Partner),
    )
    .await;
    assert_eq!(p1.subscribe(&room).await["type"], "ok");
    eventually("both present", async || {
        rest_presence(&base, &room).await == ["c1", "p1"]
    })
    .await;

    cluster.stop_redis();
    cluster.start_redis();
    cluster.wait_ready().await;
    eventually("presence rebuilt from the live connections", async || {
        try_rest_presence(&base, &room)
            .await
            .is_ok_and(|present| present == ["c1", "p1"])
    })
    .await;
    // The connections lived through it (and were told `gap`).
    c1.recv_until(|v| v["type"] == "gap").await;
    p1.recv_until(|v| v["type"] == "gap").await;
}
