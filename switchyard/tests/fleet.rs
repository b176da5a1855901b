//! `admin:fleet` (issue #16), with real processes in both modes: the `switchyard` binary
//! (embedded), and gateways + an API process + Redis + nginx (`scripts/cluster.sh`; the Redis
//! Cluster case is in `redis_cluster.rs`). Presence timings are shortened by settings as in
//! `presence.rs`; the location rate is lifted so a partner may send 10 fixes a second.
//!
//! Throttling is asserted without timing the server: the fleet's publishes are at least a
//! second apart, so over a window the test measures (from before the first fix to after the
//! last event) at most `window + 1` of them can arrive — however slow or fast the machine.

use common::cluster::Cluster;
use common::process::ServerProcess;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use switchyard_protocol::Role;

const FLEET: &str = "admin:fleet";

/// Fixes the partner sends, one every [`FIX_EVERY`] (10 Hz).
const FIXES: usize = 30;
const FIX_EVERY: Duration = Duration::from_millis(100);

const FLAGS: [&str; 10] = [
    "--presence-heartbeat-ms",
    "500",
    "--presence-sweep-ms",
    "200",
    "--presence-debounce-ms",
    "2000",
    "--location-rate",
    "50",
    "--location-burst",
    "50",
];
pub const SETTINGS: [(&str, &str); 5] = [
    ("SWITCHYARD_PRESENCE_HEARTBEAT_MS", "500"),
    ("SWITCHYARD_PRESENCE_SWEEP_MS", "200"),
    ("SWITCHYARD_PRESENCE_DEBOUNCE_MS", "2000"),
    ("SWITCHYARD_LOCATION_RATE", "50"),
    ("SWITCHYARD_LOCATION_BURST", "50"),
];

fn subs(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|p| p["sub"].as_str().unwrap().to_owned())
        .collect()
}

/// The next `presence.*` event of `admin:fleet`: (`join`/`leave`, sub, role).
async fn next_presence(client: &mut Client) -> (String, String, String) {
    let e = next_presence_event(client, FLEET).await;
    (
        e["event"].as_str().unwrap()["presence.".len()..].to_owned(),
        e["data"]["sub"].as_str().unwrap().to_owned(),
        e["data"]["role"].as_str().unwrap().to_owned(),
    )
}

/// `GET /api/presence?room=admin:fleet` on `base`, as admin.
async fn rest_fleet(base: &str) -> Vec<String> {
    let (status, body) = http_call(
        &reqwest::Client::new(),
        "GET",
        &format!("{base}/api/presence?room={FLEET}"),
        &admin(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    subs(&body["presence"])
}

/// The fix number `i` (its latitude tells which it was).
fn lat(i: usize) -> f64 {
    12.9 + i as f64 / 1000.0
}

/// Where the scenario runs: the admin's gateway, the partner's (another one in the distributed
/// mode), an API base, and an order assigned to `p1`.
struct Setup {
    admin_ws: String,
    partner_ws: String,
    base: String,
    order: String,
}

/// The scenario up to the partner's end: refusals, the empty snapshot, the partner's join, its
/// 10 Hz fixes throttled to ≤ 1 Hz with the newest winning, a later admin's snapshot with the
/// partner's last position. Returns the first admin (to see the leave) and the partner.
async fn fleet_scenario(s: &Setup) -> (Client, Client) {
    // Admins only.
    let mut c1 = connect(&s.admin_ws, &token("c1", Role::Customer)).await;
    assert_eq!(c1.subscribe(FLEET).await["error"], "forbidden");
    let mut p9 = connect(&s.admin_ws, &token("p9", Role::Partner)).await;
    assert_eq!(p9.subscribe(FLEET).await["error"], "forbidden");
    p9.close().await;
    let mut a1 = connect(&s.admin_ws, &admin()).await;
    // p9 just left (debounced): wait until the fleet is empty, so the snapshot is known.
    eventually("no partner online", async || {
        rest_fleet(&s.base).await.is_empty()
    })
    .await;
    let joined = a1.subscribe(FLEET).await;
    assert_eq!(joined["type"], "ok", "{joined}");
    assert_eq!(joined["snapshot"], json!({"partners": []}), "{joined}");
    assert_eq!(joined["presence"], json!([]), "{joined}");

    // The partner connects (no subscribe needed): it joins the fleet.
    let mut p1 = connect(&s.partner_ws, &token("p1", Role::Partner)).await;
    let joined = next_presence(&mut a1).await;
    assert_eq!(joined, ("join".into(), "p1".into(), "partner".into()));
    assert_eq!(rest_fleet(&s.base).await, ["p1"]);
    // The customer follows the order room: the order room keeps the partner's own rate.
    let room = format!("order:{}", s.order);
    assert_eq!(c1.subscribe(&room).await["type"], "ok");

    // 10 Hz for 3 s.
    let started = Instant::now();
    for i in 0..FIXES {
        let fix = json!({"op": "location", "order_id": s.order, "lat": lat(i), "lng": 77.59});
        let reply = p1.request(fix).await;
        assert_eq!(reply["type"], "ok", "{reply}");
        tokio::time::sleep(FIX_EVERY).await;
    }
    let last = lat(FIXES - 1);
    let seen = positions_until(&mut a1, s.order.as_str(), last).await;
    let window = started.elapsed();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "newer positions only: {seen:?}"
    );
    assert!(
        seen.len() as u64 <= window.as_secs() + 1,
        "≤ 1 Hz: {} positions in {window:?} for {FIXES} fixes: {seen:?}",
        seen.len()
    );
    assert!(seen.len() < FIXES, "throttled: {seen:?}");
    let in_order_room = c1
        .recv_until(|v| v["event"] == "partner.location" && v["data"]["lat"] == last)
        .await;
    assert_eq!(in_order_room["room"], room.as_str());

    // A later admin's snapshot: p1 online at its last position (written behind the publish:
    // subscribe again until it is there).
    let mut a2 = connect(&s.admin_ws, &admin()).await;
    let snapshot = eventually("p1's last position in the snapshot", async || {
        let reply = a2.subscribe(FLEET).await;
        let partners = &reply["snapshot"]["partners"];
        match partners[0]["location"]["lat"].as_f64() == Some(last) {
            true => Ok(reply),
            false => Err(reply),
        }
    })
    .await;
    assert_eq!(
        subs(&snapshot["snapshot"]["partners"]),
        ["p1"],
        "{snapshot}"
    );
    assert_eq!(subs(&snapshot["presence"]), ["p1"], "{snapshot}");
    let partner = &snapshot["snapshot"]["partners"][0];
    assert_eq!(partner["location"]["order_id"], s.order.as_str());
    assert_eq!(partner["since"], snapshot["presence"][0]["since"]);
    (a1, p1)
}

/// Embedded: the whole scenario, then the partner closes and leaves the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/sy.db", dir.path().display());
    let mut args = vec!["--listen", "127.0.0.1:0", "--database-url", &db];
    args.extend(FLAGS);
    let server = ServerProcess::start(dir.path(), &args, &[("JWT_SECRET", SECRET)]);
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
    let order = order["id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .call(
            "POST",
            &format!("/api/orders/{order}/assign"),
            &admin(),
            Some(json!({"partner":"p1"})),
        )
        .await;
    assert_eq!(status, 200);
    let setup = Setup {
        admin_ws: server.ws_url(),
        partner_ws: server.ws_url(),
        base: server.url(""),
        order,
    };
    let (mut a1, mut p1) = fleet_scenario(&setup).await;
    p1.close().await;
    let left = next_presence(&mut a1).await;
    assert_eq!(left, ("leave".into(), "p1".into(), "partner".into()));
    assert!(rest_fleet(&setup.base).await.is_empty());
}

/// Distributed: the admin on one gateway, the partner on another; the partner's gateway is
/// SIGKILLed and the admin's gateway announces the partner gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_across_gateways_and_a_sigkill() {
    let cluster = Cluster::up_with(2, 1, &SETTINGS);
    let api = cluster.apis[0].clone();
    let order = cluster.create_order(&api, "c1").await;
    cluster.assign(&api, &order, "p1").await;
    let setup = Setup {
        admin_ws: cluster.ws(&cluster.gateways[0]),
        partner_ws: cluster.ws(&cluster.gateways[1]),
        base: format!("http://{api}"),
        order,
    };
    let (mut a1, _p1) = fleet_scenario(&setup).await;
    cluster.kill_gateway(1).await;
    let left = next_presence(&mut a1).await;
    assert_eq!(left, ("leave".into(), "p1".into(), "partner".into()));
    assert!(rest_fleet(&setup.base).await.is_empty());
}

/// Distributed: one partner connected to two gateways, sending 10 Hz on each at once; an
/// admin sees it in `admin:fleet` at most once a second overall (the turns are claimed in
/// Redis, not per gateway), and the newest fix still arrives. Counted, not timed: the turns
/// are wall-clock windows of a second, so over the measured window at most `window + 2` (its
/// two partial windows) can arrive — without the cluster-wide turns it would be about twice
/// the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_on_two_gateways_appears_at_most_once_a_second() {
    const TWICE: usize = 50; // fixes per connection, 10 Hz: 5 s
    let cluster = Cluster::up_with(2, 1, &SETTINGS);
    let api = cluster.apis[0].clone();
    let order = cluster.create_order(&api, "c1").await;
    cluster.assign(&api, &order, "p1").await;
    let mut a1 = connect(&cluster.ws(&cluster.gateways[0]), &admin()).await;
    let joined = a1.subscribe(FLEET).await;
    assert_eq!(joined["type"], "ok", "{joined}");
    let mut on = [
        connect(
            &cluster.ws(&cluster.gateways[0]),
            &token("p1", Role::Partner),
        )
        .await,
        connect(
            &cluster.ws(&cluster.gateways[1]),
            &token("p1", Role::Partner),
        )
        .await,
    ];
    let started = Instant::now();
    for i in 0..TWICE {
        for (g, p1) in on.iter_mut().enumerate() {
            let n = 2 * i + g;
            let fix = json!({"op": "location", "order_id": order, "lat": lat(n), "lng": 77.59});
            let reply = p1.request(fix).await;
            assert_eq!(reply["type"], "ok", "{reply}");
        }
        tokio::time::sleep(FIX_EVERY).await;
    }
    let seen = positions_until(&mut a1, &order, lat(2 * TWICE - 1)).await;
    let window = started.elapsed();
    assert!(
        seen.len() as u64 <= window.as_secs() + 2,
        "≤ 1 Hz across both gateways: {} positions in {window:?} for {} fixes: {seen:?}",
        seen.len(),
        2 * TWICE
    );
}

/// The latitudes of p1's positions `admin` receives in `admin:fleet` (each for `order`), up to
/// and including the one at `last`.
async fn positions_until(admin: &mut Client, order: &str, last: f64) -> Vec<f64> {
    let mut seen = Vec::new();
    loop {
        let e = admin.event(FLEET, "partner.location").await;
        assert_eq!(e["data"]["partner"], "p1", "{e}");
        assert_eq!(e["data"]["order_id"], order, "{e}");
        let at = e["data"]["lat"].as_f64().unwrap();
        seen.push(at);
        if at == last {
            return seen;
        }
    }
}
