//! `switchyard demo`: the real binary, in a fresh directory (embedded secret, new database),
//! at the fast pace. An admin watching from outside sees orders created, their statuses
//! change, payments move the revenue and partners' positions stream — then SIGTERM drains
//! and the process exits cleanly.

use common::process::ServerProcess;
use common::*;
use std::time::Duration;
use switchyard_auth::Issuer;
use switchyard_protocol::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_moves_orders_payments_and_partners() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = ServerProcess::start(
        dir.path(),
        &["demo", "--listen", "127.0.0.1:0", "--demo-speed", "fast"],
        &[],
    );
    // The demo signs with the embedded secret it created beside the database; so can we.
    let secret = std::fs::read_to_string(dir.path().join("switchyard.secret")).unwrap();
    let admin =
        Issuer::new(secret.trim().as_bytes(), None, None).issue("watcher", Role::Admin, 600);

    let mut watcher = connect(&demo.ws_url(), &admin).await;
    assert_eq!(watcher.subscribe("admin:revenue").await["type"], "ok");
    assert_eq!(watcher.subscribe("user:demo-c1").await["type"], "ok");

    // A customer's next order: follow it in its room.
    let created = watcher.event("user:demo-c1", "order.created").await;
    let order = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["customer"], "demo-c1");
    assert_eq!(created["data"]["status"], "placed");
    let room = format!("order:{order}");
    let joined = watcher.subscribe(&room).await;
    assert_eq!(joined["type"], "ok", "{joined}");

    // One loop over everything that arrives: the order goes through its statuses while its
    // partner drives towards the customer, and payments move the revenue (only up). One
    // order in seven is never paid and gets cancelled; then the test follows the next one.
    let mut statuses = Vec::new();
    let mut locations = Vec::new();
    let mut revenue = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut room = room;
    while !(statuses.last().is_some_and(|s| s == "delivered") && revenue.len() >= 2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{statuses:?} {locations:?} {revenue:?}"
        );
        let frame = watcher.recv().await;
        if frame["type"] != "event" {
            continue;
        }
        let data = &frame["data"];
        match (frame["room"].as_str(), frame["event"].as_str()) {
            (Some("admin:revenue"), Some("revenue.updated")) => {
                revenue.push(data["total_paise"].as_i64().unwrap());
            }
            (Some("user:demo-c1"), Some("order.created"))
                if statuses.last().is_some_and(|s| s == "cancelled") =>
            {
                room = format!("order:{}", data["id"].as_str().unwrap());
                assert_eq!(watcher.subscribe(&room).await["type"], "ok");
                statuses.clear();
                locations.clear();
            }
            (Some(r), Some("order.status")) if r == room => {
                statuses.push(data["status"].as_str().unwrap().to_owned());
            }
            (Some(r), Some("partner.location")) if r == room => {
                assert!(
                    data["partner"].as_str().unwrap().starts_with("demo-p"),
                    "{frame}"
                );
                locations.push((data["lat"].as_f64().unwrap(), data["lng"].as_f64().unwrap()));
            }
            _ => {}
        }
    }
    assert!(revenue[0] > 0, "{revenue:?}");
    assert!(revenue.windows(2).all(|w| w[1] > w[0]), "{revenue:?}");
    assert_eq!(
        statuses,
        ["confirmed", "packed", "out_for_delivery", "delivered"],
        "{room}"
    );
    assert!(locations.len() >= 3, "{locations:?}");
    // Near Bengaluru, and moving.
    for (lat, lng) in &locations {
        assert!(
            (12.8..13.2).contains(lat) && (77.4..77.8).contains(lng),
            "{lat},{lng}"
        );
    }
    assert_ne!(locations.first(), locations.last(), "{locations:?}");

    // Over REST too: revenue counted, and the demo prints where its dashboard is.
    let (status, revenue) = demo.call("GET", "/api/revenue", &admin, None).await;
    assert_eq!(status, 200);
    assert!(revenue["paid_orders"].as_i64().unwrap() >= 2, "{revenue}");
    let printed = demo.stdout.lock().unwrap().join("\n");
    assert!(
        printed.contains(&format!("dashboard: http://{}/", demo.addr)),
        "{printed}"
    );

    demo.signal("-TERM");
    let _ = watcher.closed().await;
    let status = demo.wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}
