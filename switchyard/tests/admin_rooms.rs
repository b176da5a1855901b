//! The admin's live operations view (issue #16): `admin:orders` carries every order as it is
//! placed and every change of every order, through the outbox, in both modes — real
//! processes: the `switchyard` binary (embedded), and gateways + API processes + Redis +
//! nginx (`scripts/cluster.sh`).

use common::cluster::Cluster;
use common::process::ServerProcess;
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use switchyard_protocol::Role;

/// Reads `admin:orders` events until every one of `want` (`(event, order id)`) has arrived;
/// checks that the room's offsets go up by exactly one (nothing lost, nothing twice).
async fn feed_until(admin: &mut Client, want: &BTreeSet<(String, String)>) {
    let mut seen = BTreeSet::new();
    let mut last: Option<u64> = None;
    while !want.is_subset(&seen) {
        let e = admin
            .recv_until(|v| v["type"] == "event" && v["room"] == "admin:orders")
            .await;
        let offset = e["offset"].as_u64().unwrap();
        if let Some(last) = last {
            assert_eq!(offset, last + 1, "gapless offsets in admin:orders: {e}");
        }
        last = Some(offset);
        let order = match e["event"].as_str().unwrap() {
            "order.created" => &e["data"]["id"],
            _ => &e["data"]["order_id"],
        };
        seen.insert((
            e["event"].as_str().unwrap().to_owned(),
            order.as_str().unwrap().to_owned(),
        ));
    }
}

fn expect(event: &str, ids: &[String]) -> impl Iterator<Item = (String, String)> {
    ids.iter().map(move |id| (event.to_owned(), id.clone()))
}

/// Embedded: `switchyard all` as a process. Orders placed by several customers at once, then
/// assigned, moved and paid, all reach the admin's one room; a customer may not join it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_orders_carries_every_order_and_change_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/sy.db", dir.path().display());
    let server = ServerProcess::start(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--database-url", &db],
        &[("JWT_SECRET", SECRET)],
    );
    let mut c1 = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    assert_eq!(c1.subscribe("admin:orders").await["error"], "forbidden");
    let mut feed = connect(&server.ws_url(), &admin()).await;
    let joined = feed.subscribe("admin:orders").await;
    assert_eq!(joined["type"], "ok", "{joined}");
    assert_eq!(
        joined["snapshot"],
        Value::Null,
        "the orders are GET /api/orders"
    );

    let body = json!({"items":[{"sku":"milk-1l","qty":1}],"address":"x"});
    let placed = futures_util::future::join_all((0..12).map(|n| {
        let body = body.clone();
        let server = &server;
        async move {
            let who = token(&format!("c{}", n % 4), Role::Customer);
            let (status, order) = server.call("POST", "/api/orders", &who, Some(body)).await;
            assert_eq!(status, 201, "{order}");
            order["id"].as_str().unwrap().to_owned()
        }
    }))
    .await;
    let first = placed[0].clone();
    let (status, body) = server
        .call(
            "POST",
            &format!("/api/orders/{first}/assign"),
            &admin(),
            Some(json!({"partner":"p1"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            "POST",
            &format!("/api/orders/{first}/status"),
            &admin(),
            Some(json!({"status":"confirmed"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = pay_process(&server, &first, body["total_paise"].as_i64().unwrap()).await;
    assert_eq!(status, 201, "{body}");

    let one = std::slice::from_ref(&first);
    let want: BTreeSet<_> = expect("order.created", &placed)
        .chain(expect("order.assigned", one))
        .chain(expect("order.status", one))
        .chain(expect("order.paid", one))
        .collect();
    feed_until(&mut feed, &want).await;
}

async fn pay_process(server: &ServerProcess, order: &str, amount: i64) -> (u16, Value) {
    // The customer of order `first` is c0 (the first of the twelve).
    let customer = token("c0", Role::Customer);
    let client = reqwest::Client::new();
    let response = client
        .post(server.url(&format!("/api/orders/{order}/payment")))
        .bearer_auth(customer)
        .header("idempotency-key", "k1")
        .json(&json!({"amount_paise": amount}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Distributed: two API processes take orders through nginx (each commits its own outbox
/// rows; one relay publishes them); an admin on a gateway gets every one in `admin:orders`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_orders_carries_every_order_across_api_processes() {
    let cluster = Cluster::up(2, 2);
    let mut feed = connect(&cluster.ws(&cluster.gateways[1]), &admin()).await;
    assert_eq!(feed.subscribe("admin:orders").await["type"], "ok");
    let mut placed = Vec::new();
    for n in 0..8 {
        let api = &cluster.apis[n % 2];
        placed.push(cluster.create_order(api, &format!("c{n}")).await);
    }
    cluster.assign(&cluster.nginx, &placed[3], "p9").await;
    let want: BTreeSet<_> = expect("order.created", &placed)
        .chain(expect("order.assigned", std::slice::from_ref(&placed[3])))
        .collect();
    feed_until(&mut feed, &want).await;
}
