//! The REST API and the events every change publishes.

use common::*;
use serde_json::{Value, json};
use switchyard_protocol::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_reaches_the_order_room_and_the_user_room_with_increasing_offsets() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let order = server.create_order("c1", 2, 6500).await;
    let room = format!("order:{order}");
    let mut c1 = connect(&url, &token("c1", Role::Customer)).await;
    assert_eq!(c1.subscribe(&room).await["type"], "ok");

    let mut order_offsets = Vec::new();
    let mut user_offsets = Vec::new();
    for status in ["confirmed", "packed", "out_for_delivery", "delivered"] {
        let (code, body) = server.set_status(&order, &admin(), status).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], status);
        // One event in each room; rooms are delivered independently (each in its own order),
        // so the two may arrive either way round.
        let (mut in_order_room, mut in_user_room) = (None, None);
        while in_order_room.is_none() || in_user_room.is_none() {
            let e = c1
                .recv_until(|v| v["type"] == "event" && v["event"] == "order.status")
                .await;
            match e["room"].as_str() {
                Some(r) if r == room => in_order_room = Some(e),
                Some("user:c1") => in_user_room = Some(e),
                _ => {}
            }
        }
        let (e, u) = (in_order_room.unwrap(), in_user_room.unwrap());
        assert_eq!(e["data"]["status"], status);
        assert_eq!(e["data"]["order_id"], order.as_str());
        order_offsets.push(e["offset"].as_u64().unwrap());
        assert_eq!(u["data"]["status"], status);
        user_offsets.push(u["offset"].as_u64().unwrap());
    }
    for offsets in [&order_offsets, &user_offsets] {
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_and_assignment_are_published() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut c1 = connect(&url, &token("c1", Role::Customer)).await;
    let mut p7 = connect(&url, &token("p7", Role::Partner)).await;
    let order = server.create_order("c1", 1, 500).await;
    let e = c1.event("user:c1", "order.created").await;
    assert_eq!(e["data"]["id"], order.as_str());
    assert_eq!(e["data"]["total_paise"], 500);
    server.assign(&order, "p7").await;
    let e = p7.event("user:p7", "order.assigned").await;
    assert_eq!(e["data"]["partner"], "p7");
    let e = c1.event("user:c1", "order.assigned").await;
    assert_eq!(e["data"]["order_id"], order.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_rules_over_rest() {
    let server = TestServer::start().await;
    let order = server.create_order("c1", 1, 100).await;
    let c1 = token("c1", Role::Customer);
    let c2 = token("c2", Role::Customer);
    server.assign(&order, "p1").await;
    let p1 = token("p1", Role::Partner);
    // Invalid transition → 409, even for an admin.
    assert_eq!(
        server.set_status(&order, &admin(), "delivered").await.0,
        409
    );
    // Valid but not allowed → 403.
    assert_eq!(server.set_status(&order, &c1, "confirmed").await.0, 403);
    assert_eq!(server.set_status(&order, &p1, "confirmed").await.0, 403);
    // Someone else's order is not visible → 404.
    assert_eq!(server.set_status(&order, &c2, "cancelled").await.0, 404);
    // Unknown status value → 422.
    assert_eq!(
        server.set_status(&order, &admin(), "teleported").await.0,
        422
    );
    // The partner moves delivery along.
    assert_eq!(
        server.set_status(&order, &admin(), "confirmed").await.0,
        200
    );
    assert_eq!(server.set_status(&order, &admin(), "packed").await.0, 200);
    assert_eq!(
        server.set_status(&order, &c1, "cancelled").await.0,
        409,
        "a customer may cancel, but not a packed order: the state refuses it"
    );
    assert_eq!(
        server.set_status(&order, &p1, "out_for_delivery").await.0,
        200
    );
    assert_eq!(server.set_status(&order, &p1, "delivered").await.0, 200);
    // A customer cancels early.
    let early = server.create_order("c1", 1, 100).await;
    let (code, body) = server.set_status(&early, &c1, "cancelled").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("cancelled")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_listings_follow_roles() {
    let server = TestServer::start().await;
    let a = server.create_order("c1", 1, 100).await;
    let b = server.create_order("c2", 1, 100).await;
    let c = server.create_order("c1", 1, 100).await;
    server.assign(&b, "p1").await;
    let c1 = token("c1", Role::Customer);
    let p1 = token("p1", Role::Partner);
    assert_eq!(
        server
            .call("GET", &format!("/api/orders/{a}"), &c1, None)
            .await
            .0,
        200
    );
    assert_eq!(
        server
            .call("GET", &format!("/api/orders/{b}"), &c1, None)
            .await
            .0,
        404
    );
    assert_eq!(
        server
            .call("GET", &format!("/api/orders/{b}"), &p1, None)
            .await
            .0,
        200
    );
    assert_eq!(
        server.call("GET", "/api/orders/abc", &c1, None).await.0,
        404
    );
    let ids = |v: &Value| -> Vec<String> {
        v["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, mine) = server.call("GET", "/api/orders", &c1, None).await;
    assert_eq!(ids(&mine), vec![a.clone(), c.clone()]);
    let (_, assigned) = server.call("GET", "/api/orders", &p1, None).await;
    assert_eq!(ids(&assigned), vec![b.clone()]);
    // Admin pages through everything.
    let (_, page1) = server
        .call("GET", "/api/orders?limit=2", &admin(), None)
        .await;
    assert_eq!(ids(&page1), vec![a.clone(), b.clone()]);
    let next = page1["next_after"].as_str().unwrap();
    let (_, page2) = server
        .call(
            "GET",
            &format!("/api/orders?limit=2&after={next}"),
            &admin(),
            None,
        )
        .await;
    assert_eq!(ids(&page2), vec![c.clone()]);
    assert!(page2["next_after"].is_null());
    assert_eq!(
        server
            .call("GET", "/api/orders?limit=0", &admin(), None)
            .await
            .0,
        422
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_are_json_with_the_right_status() {
    let server = TestApp::embedded()
        .with_config(|c| c.serve.limits.max_body_bytes = 1024)
        .start()
        .await;
    let c1 = token("c1", Role::Customer);
    let post = |body: String, token: Option<String>, content_type: bool| {
        let mut req = server.http.post(server.url("/api/orders")).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if content_type {
            req = req.header("content-type", "application/json");
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let good = json!({"items":[{"sku":"milk-1l","qty":1}],"address":"x"}).to_string();
    let cases = [
        (
            post("{".into(), Some(c1.clone()), true).await,
            400,
            "bad_request",
        ),
        (post(good.clone(), None, true).await, 401, "unauthorized"),
        (
            post(good.clone(), Some("garbage".into()), true).await,
            401,
            "unauthorized",
        ),
        (
            post(good.clone(), Some(admin()), true).await,
            403,
            "forbidden",
        ),
        (
            post(good.clone(), Some(c1.clone()), false).await,
            415,
            "unsupported_media_type",
        ),
        (
            post("x".repeat(4096), Some(c1.clone()), true).await,
            413,
            "payload_too_large",
        ),
        (
            post(
                json!({"items":[],"address":"x"}).to_string(),
                Some(c1.clone()),
                true,
            )
            .await,
            422,
            "invalid",
        ),
        (
            post(
                json!({"items":[{"sku":"milk-1l","qty":-1}],"address":"x"}).to_string(),
                Some(c1.clone()),
                true,
            )
            .await,
            422,
            "invalid",
        ),
        (
            post(
                json!({"items":"nope","address":"x"}).to_string(),
                Some(c1.clone()),
                true,
            )
            .await,
            422,
            "invalid",
        ),
    ];
    for ((status, body), want_status, want_code) in cases {
        assert_eq!(status, want_status, "{body}");
        assert_eq!(body["error"], want_code, "{body}");
        assert!(body["message"].is_string(), "{body}");
    }
    let (status, body) = server.call("GET", "/api/nowhere", &c1, None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = server.call("DELETE", "/api/orders", &c1, None).await;
    assert_eq!(status, 405);
    let (status, _) = server.call("GET", "/api/revenue", &c1, None).await;
    assert_eq!(status, 403);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_moves_revenue_once() {
    let server = TestServer::start().await;
    let mut adm = connect(&server.ws_url(), &admin()).await;
    assert_eq!(adm.subscribe("admin:revenue").await["type"], "ok");
    let order = server.create_order("c1", 2, 6500).await;
    let c1 = token("c1", Role::Customer);

    let (status, first) = pay(&server, &order, &c1, "key-1", 13_000).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "paid");
    let e = adm.event("admin:revenue", "revenue.updated").await;
    assert_eq!(e["data"]["total_paise"], 13_000);
    assert_eq!(e["data"]["paid_orders"], 1);
    assert_eq!(e["data"]["payment"]["order_id"], order.as_str());

    for _ in 0..3 {
        let (status, again) = pay(&server, &order, &c1, "key-1", 13_000).await;
        assert_eq!(
            (status, &again),
            (201, &first),
            "a repeat returns the same result"
        );
    }
    assert_eq!(
        pay(&server, &order, &c1, "key-2", 13_000).await.0,
        409,
        "already paid"
    );
    assert_eq!(
        pay(&server, &order, &c1, "key-1", 12_000).await.0,
        422,
        "key reused for another body"
    );
    let other = server.create_order("c1", 1, 100).await;
    assert_eq!(
        pay(&server, &other, &c1, "key-3", 99).await.0,
        422,
        "amount must equal the total"
    );
    assert_eq!(
        pay(&server, &other, &token("c2", Role::Customer), "key-4", 100)
            .await
            .0,
        404
    );
    let (status, body) = server
        .call(
            "POST",
            &format!("/api/orders/{other}/payment"),
            &c1,
            Some(json!({"amount_paise":100})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "no Idempotency-Key"
    );

    let (_, revenue) = server.call("GET", "/api/revenue", &admin(), None).await;
    assert_eq!(
        revenue,
        json!({"currency":"INR","total_paise":13_000,"paid_orders":1})
    );
    // The repeats published nothing: the next revenue event directly follows the first.
    assert_eq!(pay(&server, &other, &c1, "key-5", 100).await.0, 201);
    let next = adm.event("admin:revenue", "revenue.updated").await;
    assert_eq!(
        next["offset"].as_u64(),
        e["offset"].as_u64().map(|o| o + 1),
        "{next}"
    );
    assert_eq!(next["data"]["paid_orders"], 2);
    assert_eq!(next["data"]["total_paise"], 13_100);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_payments_of_different_orders_all_count_and_totals_only_grow() {
    let server = TestServer::start().await;
    let mut adm = connect(&server.ws_url(), &admin()).await;
    assert_eq!(adm.subscribe("admin:revenue").await["type"], "ok");
    const N: usize = 20;
    let mut orders = Vec::new();
    for i in 0..N {
        orders.push(
            server
                .create_order(&format!("c{i}"), 1, 100 + i as i64)
                .await,
        );
    }
    let expected: i64 = (0..N as i64).map(|i| 100 + i).sum();
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        let server = server.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let t = token(&format!("c{i}"), Role::Customer);
            // Each payment is also retried with its key at once, concurrently.
            let a = pay(&server, &order, &t, "k", 100 + i as i64);
            let b = pay(&server, &order, &t, "k", 100 + i as i64);
            let (a, b) = tokio::join!(a, b);
            assert_eq!((a.0, b.0), (201, 201));
            assert_eq!(a.1, b.1);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, revenue) = server.call("GET", "/api/revenue", &admin(), None).await;
    assert_eq!(revenue["total_paise"], expected);
    assert_eq!(revenue["paid_orders"], N);
    // The ticker's updates come in offset order with totals that only grow, up to the final
    // total. (Revenue is a latest-value event: updates that pile up in a connection's queue
    // are conflated to the newest, so it may see fewer than N.)
    let mut last_offset = 0;
    let mut last_total = 0;
    while last_total < expected {
        let e = adm.event("admin:revenue", "revenue.updated").await;
        let offset = e["offset"].as_u64().unwrap();
        let total = e["data"]["total_paise"].as_i64().unwrap();
        assert!(offset > last_offset && total > last_total, "{e}");
        last_offset = offset;
        last_total = total;
    }
    assert_eq!(last_total, expected);
    let server = std::sync::Arc::into_inner(server).unwrap();
    server.stop().await;
}

/// A request with an arbitrary body and content type, as a client that gets everything
/// else wrong too would send it.
async fn raw(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = server
        .http
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every write answers the first failing check of 401 → 404 → 403 → 409 → payload: each
/// step below sends a request that would also fail every later check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_check_authentication_visibility_permission_state_then_payload() {
    let server = TestServer::start().await;
    let (c1, c2) = (token("c1", Role::Customer), token("c2", Role::Customer));
    let (p1, p2) = (token("p1", Role::Partner), token("p2", Role::Partner));
    let packed = server.create_order("c1", 1, 100).await;
    server.assign(&packed, "p1").await;
    for status in ["confirmed", "packed"] {
        assert_eq!(server.set_status(&packed, &admin(), status).await.0, 200);
    }
    let placed = server.create_order("c1", 1, 100).await;
    let cancelled = server.create_order("c1", 1, 100).await;
    assert_eq!(server.set_status(&cancelled, &c1, "cancelled").await.0, 200);
    let step = |status: u16, code: &'static str| (status, code);
    let check = |(status, body): (u16, Value), (want, code): (u16, &str), what: &str| {
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(body["error"], code, "{what}: {body}");
    };

    // POST /api/orders/{id}/status
    let status_of = |order: &str| format!("/api/orders/{order}/status");
    let junk = r#"{"status":"delivered","junk":1}"#;
    check(
        raw(&server, &status_of(&packed), None, "{", &[]).await,
        step(401, "unauthorized"),
        "status: no token",
    );
    for body in [junk, "{", r#"{"status":"teleported"}"#] {
        check(
            raw(&server, &status_of(&packed), Some(&c2), body, &[]).await,
            step(404, "not_found"),
            "status: someone else's order",
        );
        check(
            raw(&server, &status_of(&packed), Some(&p2), body, &[]).await,
            step(404, "not_found"),
            "status: a partner not assigned",
        );
    }
    // The issue's case: a customer may never deliver, whatever the state — 403, not 409.
    check(
        server.set_status(&packed, &c1, "delivered").await,
        step(403, "forbidden"),
        "status: customer delivers a packed order",
    );
    check(
        raw(&server, &status_of(&packed), Some(&c1), junk, &[]).await,
        step(403, "forbidden"),
        "status: customer delivers, bad payload",
    );
    check(
        raw(
            &server,
            &status_of(&packed),
            Some(&p1),
            r#"{"status":"confirmed","x":1}"#,
            &[],
        )
        .await,
        step(403, "forbidden"),
        "status: partner confirms",
    );
    let late_cancel = r#"{"status":"cancelled","junk":1}"#;
    check(
        raw(&server, &status_of(&packed), Some(&c1), late_cancel, &[]).await,
        step(409, "conflict"),
        "status: customer cancels a packed order",
    );
    check(
        raw(
            &server,
            &status_of(&placed),
            Some(&admin()),
            r#"{"status":"delivered","x":1}"#,
            &[],
        )
        .await,
        step(409, "conflict"),
        "status: admin skips the machine",
    );
    check(
        raw(&server, &status_of(&placed), Some(&c1), late_cancel, &[]).await,
        step(422, "invalid"),
        "status: unknown field",
    );
    check(
        raw(
            &server,
            &status_of(&placed),
            Some(&c1),
            r#"{"status":"teleported"}"#,
            &[],
        )
        .await,
        step(422, "invalid"),
        "status: unknown status",
    );
    check(
        raw(&server, &status_of(&placed), Some(&c1), "{", &[]).await,
        step(400, "bad_request"),
        "status: malformed JSON",
    );

    // POST /api/orders/{id}/assign
    let assign_of = |order: &str| format!("/api/orders/{order}/assign");
    let bad_partner = r#"{"partner":"not a valid id!"}"#;
    check(
        raw(&server, &assign_of(&packed), None, bad_partner, &[]).await,
        step(401, "unauthorized"),
        "assign: no token",
    );
    check(
        raw(&server, &assign_of(&packed), Some(&c2), bad_partner, &[]).await,
        step(404, "not_found"),
        "assign: someone else's order",
    );
    check(
        raw(&server, &assign_of(&cancelled), Some(&c1), bad_partner, &[]).await,
        step(403, "forbidden"),
        "assign: a customer",
    );
    check(
        raw(
            &server,
            &assign_of(&cancelled),
            Some(&admin()),
            bad_partner,
            &[],
        )
        .await,
        step(409, "conflict"),
        "assign: a cancelled order",
    );
    check(
        raw(
            &server,
            &assign_of(&placed),
            Some(&admin()),
            bad_partner,
            &[],
        )
        .await,
        step(422, "invalid"),
        "assign: a bad partner id",
    );

    // POST /api/orders/{id}/payment (no Idempotency-Key, a malformed body: both payload)
    let pay_of = |order: &str| format!("/api/orders/{order}/payment");
    check(
        raw(&server, &pay_of(&placed), None, "{", &[]).await,
        step(401, "unauthorized"),
        "payment: no token",
    );
    check(
        raw(&server, &pay_of(&placed), Some(&c2), "{", &[]).await,
        step(404, "not_found"),
        "payment: someone else's order",
    );
    check(
        raw(&server, &pay_of(&packed), Some(&p1), "{", &[]).await,
        step(403, "forbidden"),
        "payment: the assigned partner",
    );
    check(
        raw(&server, &pay_of(&cancelled), Some(&c1), "{", &[]).await,
        step(409, "conflict"),
        "payment: a cancelled order",
    );
    check(
        raw(
            &server,
            &pay_of(&placed),
            Some(&c1),
            r#"{"amount_paise":100}"#,
            &[],
        )
        .await,
        step(400, "bad_request"),
        "payment: no Idempotency-Key",
    );
    let key = [("idempotency-key", "k1")];
    check(
        raw(
            &server,
            &pay_of(&placed),
            Some(&c1),
            r#"{"amount_paise":99}"#,
            &key,
        )
        .await,
        step(422, "invalid"),
        "payment: wrong amount",
    );
    check(
        raw(
            &server,
            &pay_of(&placed),
            Some(&c1),
            r#"{"amount_paise":-5}"#,
            &key,
        )
        .await,
        step(422, "invalid"),
        "payment: negative amount",
    );

    // POST /api/orders, /api/publish, /api/users/{sub}/revoke: no order, so 401 → 403 →
    // payload.
    for path in [
        "/api/orders",
        "/api/publish",
        "/api/publish/batch",
        "/api/users/c1/revoke",
    ] {
        check(
            raw(&server, path, None, "{", &[]).await,
            step(401, "unauthorized"),
            path,
        );
    }
    check(
        raw(&server, "/api/orders", Some(&admin()), "{", &[]).await,
        step(403, "forbidden"),
        "create: an admin",
    );
    check(
        raw(&server, "/api/orders", Some(&c1), "{", &[]).await,
        step(400, "bad_request"),
        "create: malformed",
    );
    for path in ["/api/publish", "/api/publish/batch"] {
        check(
            raw(&server, path, Some(&c1), "{", &[]).await,
            step(403, "forbidden"),
            path,
        );
        check(
            raw(&server, path, Some(&admin()), "{", &[]).await,
            step(400, "bad_request"),
            path,
        );
    }
    check(
        raw(&server, "/api/users/not%20valid/revoke", Some(&c1), "", &[]).await,
        step(403, "forbidden"),
        "revoke: a customer",
    );
    check(
        raw(
            &server,
            "/api/users/not%20valid/revoke",
            Some(&admin()),
            "",
            &[],
        )
        .await,
        step(422, "invalid"),
        "revoke: a bad user id",
    );
    server.stop().await;
}
