//! Money under attack: capped orders, a revenue total that refuses to overflow, payment
//! answers without the platform's revenue, refunds when a paid order is cancelled (also when
//! the payment and the cancellation race), and idempotency keys scoped to the caller.

use common::*;
use serde_json::{Value, json};
use switchyard_protocol::Role;

async fn create(server: &TestServer, customer: &str, items: Value) -> (u16, Value) {
    server
        .call(
            "POST",
            "/api/orders",
            &token(customer, Role::Customer),
            Some(json!({ "items": items, "address": "12 MG Road" })),
        )
        .await
}

fn line(qty: i64, unit_price_paise: i64) -> Value {
    json!({ "sku": "phone", "qty": qty, "unit_price_paise": unit_price_paise })
}

/// Puts `sku` in the catalog at `price_paise`; returns the status.
async fn product(server: &TestServer, sku: &str, price_paise: i64) -> (u16, Value) {
    let body = json!({ "name": sku, "price_paise": price_paise, "stock": 100 });
    server
        .call("PUT", &format!("/api/products/{sku}"), &admin(), Some(body))
        .await
}

/// The hole this closes: the client set its own prices. Now the catalog's price is charged
/// whatever the client sends, and a price that is not the catalog's is refused with the
/// current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_sets_the_price_not_the_client() {
    let server = TestServer::start().await;
    let (status, body) = product(&server, "phone", 15_000_000).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = create(&server, "c1", json!([line(1, 1)])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("price_changed")),
        "{body}"
    );
    assert_eq!(
        body["items"],
        json!([{"sku": "phone", "price_paise": 15_000_000}])
    );
    let (status, order) = create(&server, "c1", json!([{"sku": "phone", "qty": 2}])).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["total_paise"], 30_000_000, "{order}");
    assert_eq!(order["items"][0]["unit_price_paise"], 15_000_000);
    assert_eq!(order["items"][0]["name"], "phone");
    // Unknown SKUs are named.
    let (status, body) = create(&server, "c1", json!([{"sku": "gold-bar", "qty": 1}])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("gold-bar"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_money_is_capped_and_a_revenue_total_at_its_cap_breaks_nobody_else() {
    let server = TestServer::start().await;
    // No product may cost more than the unit price cap; one at the cap, one at a paisa.
    let (status, body) = product(&server, "phone", 50_000_001).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid")),
        "{body}"
    );
    for (sku, price) in [("phone", 50_000_000), ("cable", 1)] {
        let (status, body) = product(&server, sku, price).await;
        assert_eq!(status, 201, "{body}");
    }
    // The attack: one order of 10^16 paise; ~930 of them paid overflowed the revenue total.
    let (status, body) = create(&server, "c1", json!([line(10_000, 10_000_000_000)])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid")),
        "{body}"
    );
    // The documented caps: qty ≤ 1,000, unit price ≤ ₹5 lakh, total ≤ ₹10 lakh.
    let (status, body) = create(&server, "c1", json!([line(1_001, 1)])).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = create(&server, "c1", json!([line(1, 50_000_001)])).await;
    assert_eq!(status, 422, "{body}");
    let cable = json!({ "sku": "cable", "qty": 1 });
    let (status, body) = create(&server, "c1", json!([line(2, 50_000_000), cable])).await;
    assert_eq!(status, 422, "one paisa over the total cap: {body}");
    let (status, at_cap) = create(&server, "c1", json!([line(2, 50_000_000)])).await;
    assert_eq!(
        (status, at_cap["total_paise"].as_i64()),
        (201, Some(100_000_000))
    );
    let big = at_cap["id"].as_str().unwrap().to_owned();

    // A total driven to the cap (through a database that already holds one: no API path
    // gets there any more) refuses what would pass it, cleanly, and changes nothing.
    let near_cap = i64::MAX - 50_000;
    let db = format!("sqlite://{}/test.db", server.dir.path().display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    sqlx::query("UPDATE revenue SET total_paise = $1 WHERE id = 1")
        .bind(near_cap)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let c1 = token("c1", Role::Customer);
    let (status, body) = pay(&server, &big, &c1, "big", 100_000_000).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (_, order) = server
        .call("GET", &format!("/api/orders/{big}"), &c1, None)
        .await;
    assert_eq!(order["paid"], false, "{order}");
    let (status, revenue) = server.call("GET", "/api/revenue", &admin(), None).await;
    assert_eq!(
        (status, revenue["total_paise"].as_i64()),
        (200, Some(near_cap))
    );

    // Everyone else's payments still work, admins' included, and the total stays readable.
    let small = server.create_order("c2", 1, 500).await;
    let c2 = token("c2", Role::Customer);
    assert_eq!(pay(&server, &small, &c2, "k", 500).await.0, 201);
    let by_admin = server.create_order("c3", 1, 700).await;
    assert_eq!(pay(&server, &by_admin, &admin(), "k", 700).await.0, 201);
    let (status, revenue) = server.call("GET", "/api/revenue", &admin(), None).await;
    assert_eq!(
        (
            status,
            revenue["total_paise"].as_i64(),
            revenue["paid_orders"].as_i64()
        ),
        (200, Some(near_cap + 1_200), Some(2))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_answers_never_carry_the_revenue() {
    let server = TestServer::start().await;
    let c1 = token("c1", Role::Customer);
    let fields = |v: &Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let documented = [
        "amount_paise",
        "order_id",
        "paid_at",
        "payment_id",
        "status",
    ];
    let order = server.create_order("c1", 1, 900).await;
    let (status, first) = pay(&server, &order, &c1, "k", 900).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(fields(&first), documented, "{first}");
    let (status, replay) = pay(&server, &order, &c1, "k", 900).await;
    assert_eq!((status, &replay), (201, &first), "a replay too");
    let other = server.create_order("c2", 1, 400).await;
    let (status, by_admin) = pay(&server, &other, &admin(), "k", 400).await;
    assert_eq!(status, 201, "{by_admin}");
    assert_eq!(fields(&by_admin), documented, "{by_admin}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_paid_order_refunds_it_through_the_outbox() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let c1 = token("c1", Role::Customer);
    let mut adm = connect(&url, &admin()).await;
    assert_eq!(adm.subscribe("admin:revenue").await["type"], "ok");
    let mut phone = connect(&url, &c1).await;
    let kept = server.create_order("c2", 1, 300).await;
    assert_eq!(
        pay(&server, &kept, &token("c2", Role::Customer), "k", 300)
            .await
            .0,
        201
    );
    let order = server.create_order("c1", 2, 6_500).await;
    let room = format!("order:{order}");
    assert_eq!(phone.subscribe(&room).await["type"], "ok");
    let (status, payment) = pay(&server, &order, &c1, "k", 13_000).await;
    assert_eq!(status, 201, "{payment}");
    let paid = adm
        .recv_until(|v| v["event"] == "revenue.updated" && v["data"]["total_paise"] == 13_300)
        .await;

    let (status, cancelled) = server.set_status(&order, &c1, "cancelled").await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        (
            &cancelled["status"],
            &cancelled["paid"],
            &cancelled["refunded"]
        ),
        (&json!("cancelled"), &json!(true), &json!(true))
    );
    // Rooms are independent streams (delivered by different workers), so the two rooms'
    // refunds may arrive in either order: take both before judging them.
    let mut refunds = std::collections::HashMap::new();
    while refunds.len() < 2 {
        let e = phone
            .recv_until(|v| v["type"] == "event" && v["event"] == "order.refunded")
            .await;
        refunds.insert(e["room"].as_str().unwrap_or_default().to_owned(), e);
    }
    for room in [room.as_str(), "user:c1"] {
        let e = &refunds[room];
        assert_eq!(e["data"]["order_id"], order.as_str(), "{e}");
        assert_eq!(e["data"]["payment_id"], payment["payment_id"], "{e}");
        assert_eq!(e["data"]["amount_paise"], 13_000, "{e}");
    }
    let e = adm.event("admin:revenue", "revenue.updated").await;
    assert_eq!(e["offset"].as_u64(), paid["offset"].as_u64().map(|o| o + 1));
    assert_eq!(
        (&e["data"]["total_paise"], &e["data"]["paid_orders"]),
        (&json!(300), &json!(1))
    );
    assert_eq!(e["data"]["refund"]["order_id"], order.as_str(), "{e}");
    let (_, revenue) = server.call("GET", "/api/revenue", &admin(), None).await;
    assert_eq!(
        revenue,
        json!({"currency":"INR","total_paise":300,"paid_orders":1})
    );
    // Once: the order is cancelled for good, and replaying the payment counts nothing.
    assert_eq!(server.set_status(&order, &c1, "cancelled").await.0, 409);
    let (status, replay) = pay(&server, &order, &c1, "k", 13_000).await;
    assert_eq!((status, &replay), (201, &payment));
    assert_eq!(pay(&server, &order, &c1, "k2", 13_000).await.0, 409);
    let (_, revenue) = server.call("GET", "/api/revenue", &admin(), None).await;
    assert_eq!(revenue["total_paise"], 300);

    // An admin cancelling a paid order further along refunds it too.
    let packed = server.create_order("c1", 1, 1_000).await;
    assert_eq!(pay(&server, &packed, &c1, "k3", 1_000).await.0, 201);
    for status in ["confirmed", "packed"] {
        assert_eq!(server.set_status(&packed, &admin(), status).await.0, 200);
    }
    let (status, body) = server.set_status(&packed, &admin(), "cancelled").await;
    assert_eq!((status, &body["refunded"]), (200, &json!(true)), "{body}");
    let (_, revenue) = server.call("GET", "/api/revenue", &admin(), None).await;
    assert_eq!(
        (&revenue["total_paise"], &revenue["paid_orders"]),
        (&json!(300), &json!(1))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_racing_a_cancellation_is_either_refunded_or_refused() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let c1 = token("c1", Role::Customer);
    let mut phone = connect(&server.ws_url(), &c1).await;
    const N: usize = 24;
    let mut orders = Vec::new();
    for _ in 0..N {
        orders.push(server.create_order("c1", 1, 2_500).await);
    }
    // Each order is paid and cancelled at the same moment, from two tasks; half the pairs
    // start with the payment, half with the cancellation.
    let mut races = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        let (server, order, c1) = (server.clone(), order.clone(), c1.clone());
        races.push(tokio::spawn(async move {
            let key = format!("k{i}");
            let pay = pay(&server, &order, &c1, &key, 2_500);
            let cancel = server.set_status(&order, &c1, "cancelled");
            let ((paid, _), (cancelled, _)) = if i % 2 == 0 {
                tokio::join!(pay, cancel)
            } else {
                let (c, p) = tokio::join!(cancel, pay);
                (p, c)
            };
            (order, paid, cancelled)
        }));
    }
    let mut refunds_expected = 0;
    for race in races {
        let (order, paid, cancelled) = race.await.unwrap();
        assert_eq!(
            cancelled, 200,
            "the customer may always cancel a placed order"
        );
        let (_, now) = server
            .call("GET", &format!("/api/orders/{order}"), &c1, None)
            .await;
        assert_eq!(now["status"], "cancelled");
        match paid {
            // Paid, then cancelled: refunded.
            201 => {
                assert_eq!(
                    (&now["paid"], &now["refunded"]),
                    (&json!(true), &json!(true))
                );
                refunds_expected += 1;
            }
            // Cancelled first: the payment was refused and nothing was charged.
            409 => assert_eq!(
                (&now["paid"], &now["refunded"]),
                (&json!(false), &json!(false))
            ),
            other => panic!("payment answered {other}"),
        }
    }
    // No money stays with a cancelled order, and every refund was announced exactly once.
    let (_, revenue) = server.call("GET", "/api/revenue", &admin(), None).await;
    assert_eq!(
        (&revenue["total_paise"], &revenue["paid_orders"]),
        (&json!(0), &json!(0))
    );
    // Events leave in commit order: everything up to a later order's creation has arrived.
    let sentinel = server.create_order("c1", 1, 100).await;
    let mut announced = 0;
    loop {
        let e = phone
            .recv_until(|v| v["type"] == "event" && v["room"] == "user:c1")
            .await;
        match e["event"].as_str() {
            Some("order.refunded") => announced += 1,
            Some("order.created") if e["data"]["id"] == sentinel.as_str() => break,
            _ => {}
        }
    }
    assert_eq!(announced, refunds_expected);
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_belong_to_the_caller_and_role_and_come_after_authorization() {
    let server = TestServer::start().await;
    let order = server.create_order("c1", 1, 800).await;
    let c1 = token("c1", Role::Customer);
    let (status, first) = pay(&server, &order, &c1, "shared-key", 800).await;
    assert_eq!(status, 201, "{first}");
    let send = |token: String| {
        let request = server
            .http
            .post(server.url(&format!("/api/orders/{order}/payment")))
            .bearer_auth(token)
            .header("idempotency-key", "shared-key")
            .json(&json!({ "amount_paise": 800 }));
        async move {
            let resp = request.send().await.unwrap();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            (
                resp.status().as_u16(),
                replayed,
                resp.json::<Value>().await.unwrap(),
            )
        }
    };
    // An admin token whose sub happens to be "c1" is another caller: no replay of c1's answer.
    let (status, replayed, body) = send(token("c1", Role::Admin)).await;
    assert_eq!((status, replayed), (409, false), "{body}");
    // Someone who may not see the order learns nothing from the key: 404 first.
    let (status, replayed, body) = send(token("c2", Role::Customer)).await;
    assert_eq!((status, replayed), (404, false), "{body}");
    // The caller itself still gets its replay.
    let (status, replayed, body) = send(c1.clone()).await;
    assert_eq!((status, replayed, &body), (201, true, &first));
    server.stop().await;
}
