//! The server publish API (`/api/publish`, `/api/publish/batch`) and `switchyard publish`.

use common::*;
use serde_json::{Value, json};
use switchyard_protocol::Role;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn service() -> String {
    token("eta-engine", Role::Service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_event_travels_the_same_path_as_built_in_ones() {
    let server = TestServer::start().await;
    let mut c1 = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let order = server.create_order("c1", 1, 100).await;
    let created = c1.event("user:c1", "order.created").await;
    let room = format!("order:{order}");
    assert_eq!(c1.subscribe(&room).await["type"], "ok");

    let (status, body) = server
        .call("POST", "/api/publish", &service(), Some(json!({"room":"user:c1","event":"eta.updated","data":{"order_id":order,"eta_s":420}})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"], "user:c1");
    let e = c1.event("user:c1", "eta.updated").await;
    assert_eq!(e["data"]["eta_s"], 420);
    // Same offset sequence as the built-in events of the room.
    assert_eq!(
        e["offset"].as_u64(),
        created["offset"].as_u64().map(|o| o + 1)
    );
    assert_eq!(body["offset"], e["offset"]);

    // Admins may publish too, into order rooms as well.
    let (status, _) = server
        .call(
            "POST",
            "/api/publish",
            &admin(),
            Some(json!({"room":room,"event":"packing.started","data":{}})),
        )
        .await;
    assert_eq!(status, 200);
    c1.event(&room, "packing.started").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_500_arrives_in_order_with_consecutive_offsets() {
    let server = TestServer::start().await;
    let mut adm = connect(&server.ws_url(), &admin()).await;
    assert_eq!(adm.subscribe("user:promo").await["type"], "ok");
    let items: Vec<Value> = (0..500)
        .map(|i| json!({"room":"user:promo","event":"promo.tick","data":{"i":i}}))
        .collect();
    let (status, body) = server
        .call(
            "POST",
            "/api/publish/batch",
            &service(),
            Some(json!({ "items": items })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 500);
    let first = results[0]["offset"].as_u64().unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["offset"].as_u64(), Some(first + i as u64), "{r}");
    }
    for i in 0..500 {
        let e = adm.event("user:promo", "promo.tick").await;
        assert_eq!(e["data"]["i"], i);
        assert_eq!(e["offset"].as_u64(), Some(first + i as u64));
    }
    // Invalid items get their own error; the rest of the batch goes out.
    let (status, body) = server
        .call(
            "POST",
            "/api/publish/batch",
            &service(),
            Some(json!({"items":[
                {"room":"user:promo","event":"promo.tick","data":{"i":500}},
                {"room":"user:*","event":"promo.tick","data":{}},
                {"room":"user:promo","event":"order.status","data":{}},
                {"room":"user:promo","event":"promo.tick","data":[1]},
                {"nonsense":true},
                {"room":"user:promo","event":"promo.tick","data":{"i":501}}
            ]})),
        )
        .await;
    assert_eq!(status, 200);
    let r = body["results"].as_array().unwrap();
    assert_eq!(r[0]["offset"].as_u64(), Some(first + 500));
    for bad in &r[1..5] {
        assert_eq!(bad["error"], "invalid", "{bad}");
    }
    assert_eq!(r[5]["offset"].as_u64(), Some(first + 501));
    let (status, _) = server
        .call(
            "POST",
            "/api/publish/batch",
            &service(),
            Some(json!({"items":[]})),
        )
        .await;
    assert_eq!(status, 422);
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"room":"user:a","event":"x","data":{}}))
        .collect();
    let (status, _) = server
        .call(
            "POST",
            "/api/publish/batch",
            &service(),
            Some(json!({ "items": too_many })),
        )
        .await;
    assert_eq!(status, 422);
    server.stop().await;
}

/// Publishes one batch of 600 events interleaving three fresh rooms (200 each: over the 256
/// events of one script call on Redis, so the batch takes several pipelined calls) through
/// the API at `api` (`http://host:port`), while an admin on the gateway at `ws` follows the
/// rooms; checks the reply (one result per item, in the items' order: its room, and offsets
/// consecutive per room in the items' order) and that every room's events arrive in that
/// order with those offsets.
async fn a_mixed_batch_keeps_order_and_offsets_per_room(api: &str, ws: &str, tag: &str) {
    const PER_ROOM: usize = 200;
    let rooms: Vec<String> = (0..3).map(|r| format!("user:mix-{tag}-{r}")).collect();
    let mut watcher = connect(ws, &admin()).await;
    let mut starts = Vec::new();
    for room in &rooms {
        let reply = watcher.subscribe(room).await;
        assert_eq!(reply["type"], "ok", "{reply}");
        starts.push(reply["position"]["offset"].as_u64().unwrap());
    }
    let items: Vec<Value> = (0..PER_ROOM * rooms.len())
        .map(|i| json!({"room": rooms[i % rooms.len()], "event":"mix.tick", "data":{"i":i}}))
        .collect();
    let (status, body) = http_call(
        &reqwest::Client::new(),
        "POST",
        &format!("{api}/api/publish/batch"),
        &service(),
        Some(json!({ "items": items })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), items.len());
    for (i, result) in results.iter().enumerate() {
        let r = i % rooms.len();
        assert_eq!(result["room"], rooms[r], "item {i}: {result}");
        // The room's events come after what it had, in the items' order: none of another
        // room's offsets, none skipped.
        let expected = starts[r] + 1 + (i / rooms.len()) as u64;
        assert_eq!(
            result["offset"].as_u64(),
            Some(expected),
            "item {i}: {result}"
        );
    }
    let mut next = vec![0usize; rooms.len()];
    for _ in 0..items.len() {
        let e = watcher
            .recv_until(|v| v["type"] == "event" && v["event"] == "mix.tick")
            .await;
        let r = rooms.iter().position(|room| e["room"] == *room).unwrap();
        let i = next[r] * rooms.len() + r;
        assert_eq!(e["data"]["i"], i, "{e}");
        assert_eq!(e["offset"], results[i]["offset"], "{e}");
        next[r] += 1;
    }
    assert!(next.iter().all(|n| *n == PER_ROOM), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_rooms_keeps_order_and_offsets_per_room_in_process() {
    let server = TestServer::start().await;
    let api = server.url("");
    a_mixed_batch_keeps_order_and_offsets_per_room(&api, &server.ws_url(), "memory").await;
    server.stop().await;
}

/// The same through Redis: an API process publishing one batch (several pipelined script
/// calls), a gateway process delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_rooms_keeps_order_and_offsets_per_room_on_redis() {
    let cluster = common::cluster::Cluster::up(1, 1);
    let api = format!("http://{}", cluster.apis[0]);
    let ws = cluster.ws(&cluster.gateways[0]);
    a_mixed_batch_keeps_order_and_offsets_per_room(&api, &ws, "redis").await;
}

/// `data` nested `levels` deep (the object itself is level 1), as raw JSON.
fn nested(levels: usize) -> String {
    format!(
        r#"{{"a":{}{}}}"#,
        "[".repeat(levels - 1),
        "]".repeat(levels - 1)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_nested_deeper_than_64_levels_is_refused() {
    let server = TestServer::start().await;
    let mut watcher = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    let send = |path: &'static str, body: String| {
        let request = server
            .http
            .post(server.url(path))
            .bearer_auth(service())
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = request.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let item = |levels| {
        format!(
            r#"{{"room":"user:c1","event":"eta.deep","data":{}}}"#,
            nested(levels)
        )
    };
    // 8,000 levels fit the 16 KiB data limit; clients' parsers break near 1,000.
    for levels in [65, 1_000, 8_000] {
        let (status, body) = send("/api/publish", item(levels)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some("invalid")),
            "{levels}: {body}"
        );
    }
    let (status, body) = send("/api/publish", item(64)).await;
    assert_eq!(status, 200, "{body}");
    let e = watcher.event("user:c1", "eta.deep").await;
    assert_eq!(e["offset"], body["offset"]);
    let batch = format!(r#"{{"items":[{},{}]}}"#, item(8_000), item(2));
    let (status, body) = send("/api/publish/batch", batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["error"], "invalid", "{body}");
    assert!(body["results"][1]["offset"].is_u64(), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_their_codes() {
    let server = TestServer::start().await;
    let ok = json!({"room":"user:c1","event":"eta.updated","data":{}});
    for (who, t) in [
        ("customer", token("c1", Role::Customer)),
        ("partner", token("p1", Role::Partner)),
    ] {
        let (status, body) = server
            .call("POST", "/api/publish", &t, Some(ok.clone()))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden")),
            "{who}"
        );
    }
    let cases = [
        (
            json!({"room":"user:c1","event":"order.status","data":{}}),
            422,
        ),
        (
            json!({"room":"user:c1","event":"revenue.updated","data":{}}),
            422,
        ),
        (
            json!({"room":"user:c1","event":"partner.location","data":{}}),
            422,
        ),
        (json!({"room":"user:c1","event":"Bad Name","data":{}}), 422),
        (
            json!({"room":"order:*","event":"eta.updated","data":{}}),
            422,
        ),
        (
            json!({"room":"user:a\r\nb","event":"eta.updated","data":{}}),
            422,
        ),
        (
            json!({"room":"user:c1","event":"eta.updated","data":"text"}),
            422,
        ),
        (
            json!({"room":"user:c1","event":"eta.updated","data":{"pad":"x".repeat(17 * 1024)}}),
            413,
        ),
        (json!({"room":"user:c1","event":"eta.updated"}), 422),
    ];
    for (body, want) in cases {
        let (status, answer) = server
            .call("POST", "/api/publish", &service(), Some(body.clone()))
            .await;
        assert_eq!(status, want, "{body} → {answer}");
        assert!(answer["message"].is_string());
    }
    // A service token opens no WebSocket.
    let mut req = server.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", service())).unwrap(),
    );
    let (status, body) = refused(req).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("service tokens cannot open a WebSocket"))
    );
    // …and does no order CRUD.
    let (status, _) = server.call("GET", "/api/orders", &service(), None).await;
    assert_eq!(status, 403);
    let metrics = scrape(&server.url("")).await;
    assert!(
        metrics.contains("switchyard_publish_rejections_total{reason=\"event\"}"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_command_prints_the_offset() {
    let server = TestServer::start().await;
    let mut c = connect(&server.ws_url(), &token("c7", Role::Customer)).await;
    let out = tokio::process::Command::from(common::process::switchyard())
        .args([
            "publish",
            "--room",
            "user:c7",
            "--event",
            "eta.updated",
            "--data",
            r#"{"eta_s":60}"#,
        ])
        .args(["--url", &server.url("")])
        .env("JWT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offset: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let e = c.event("user:c7", "eta.updated").await;
    assert_eq!(e["offset"].as_u64(), Some(offset));
    assert_eq!(e["data"]["eta_s"], 60);
    // A refused publish says why and fails.
    let out = tokio::process::Command::from(common::process::switchyard())
        .args([
            "publish",
            "--room",
            "user:c7",
            "--event",
            "order.fake",
            "--url",
            &server.url(""),
        ])
        .args(["--token", &token("c7", Role::Customer)])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
    server.stop().await;
}
