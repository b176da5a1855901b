//! Distributed gateways hold no database: they answer subscribes from the room snapshots the
//! API's relay keeps in Redis, and ask the API's `/internal` routes when Redis cannot answer.
//! Real redis-server, gateway and API processes and nginx, started by scripts/cluster.sh.

use common::cluster::Cluster;
use common::process;
use common::*;
use serde_json::{Value, json};
use switchyard_protocol::Role;

fn fix(order: &str, lat: f64) -> Value {
    json!({"op":"location","order_id":order,"lat":lat,"lng":77.5,"ts":1_732_000_000_000_i64})
}

/// The room snapshot the relay wrote to Redis (empty when there is none).
fn cached_snapshot(cluster: &Cluster, room: &str) -> String {
    cluster
        .redis_cli(&["GET", &format!("sy:snap:{{{room}}}")])
        .trim()
        .to_owned()
}

/// A gateway's `switchyard_backend_reads_total{source}`.
async fn backend_reads(gateway: &str, source: &str) -> f64 {
    let metrics = scrape(&format!("http://{gateway}")).await;
    sample(
        &metrics,
        &format!("switchyard_backend_reads_total{{source=\"{source}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_run_without_a_database() {
    // The topology of scripts/cluster.sh: PostgreSQL, Redis, 2 API processes, 3 gateways, nginx.
    let cluster = Cluster::up(3, 2);
    // A working order room through a gateway, so the gateways did real work.
    let order = cluster.create_order(&cluster.apis[0], "c1").await;
    let mut c1 = connect(
        &cluster.ws(&cluster.gateways[0]),
        &token("c1", Role::Customer),
    )
    .await;
    assert_eq!(c1.subscribe(&format!("order:{order}")).await["type"], "ok");
    for i in 1..=3 {
        // Each in its own working directory, which it leaves empty.
        let dir = cluster.dir.path().join(format!("gateway{i}"));
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(files.is_empty(), "gateway{i} wrote {files:?}");
        let pid = std::fs::read_to_string(cluster.dir.path().join(format!("gateway{i}.pid")))
            .unwrap()
            .trim()
            .to_owned();
        // No database setting in its environment, no database file open.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !environ
                .split(|b| *b == 0)
                .any(|var| var.starts_with(b"DATABASE_URL=")),
            "gateway{i} has DATABASE_URL"
        );
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
            let target = target.to_string_lossy();
            assert!(!target.contains(".db"), "gateway{i} has {target} open");
        }
    }
    // Ready without a database: it has none to report on.
    let ready: Value = reqwest::get(format!("http://{}/readyz", cluster.gateways[0]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["database"], Value::Null, "{ready}");
    // `switchyard gateway` has no database setting at all.
    let help = process::switchyard()
        .args(["gateway", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("SWITCHYARD_API_URL"), "{help}");
    assert!(!help.contains("DATABASE_URL"), "{help}");
    let refused = process::switchyard()
        .args(["gateway", "--database-url", "sqlite://x.db"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unexpected argument"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_and_partners_are_admitted_after_redis_lost_its_data() {
    let cluster = Cluster::up(2, 1);
    let api = cluster.apis[0].clone();
    let order = cluster.create_order(&api, "c1").await;
    let room = format!("order:{order}");
    cluster.assign(&cluster.apis[0], &order, "p1").await;
    assert_eq!(cluster.set_status(&api, &order, "confirmed").await.0, 200);
    eventually("the relay wrote the snapshot", async || {
        cached_snapshot(&cluster, &room).contains("confirmed")
    })
    .await;

    // Redis loses everything (a restart without persistence, an eviction, a FLUSHALL).
    assert_eq!(cluster.redis_cli(&["FLUSHALL"]).trim(), "OK");
    assert_eq!(cached_snapshot(&cluster, &room), "");
    let before = backend_reads(&cluster.gateways[0], "api").await;

    let mut c1 = connect(
        &cluster.ws(&cluster.gateways[0]),
        &token("c1", Role::Customer),
    )
    .await;
    let reply = c1.subscribe(&room).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["snapshot"]["status"], "confirmed", "{reply}");
    assert_eq!(reply["snapshot"]["partner"], "p1", "{reply}");
    assert!(backend_reads(&cluster.gateways[0], "api").await > before);
    let mut p1 = connect(
        &cluster.ws(&cluster.gateways[1]),
        &token("p1", Role::Partner),
    )
    .await;
    assert_eq!(p1.subscribe(&room).await["type"], "ok");
    assert_eq!(p1.request(fix(&order, 12.9)).await["type"], "ok");
    // …and everyone else is still refused.
    for (sub, role) in [("c2", Role::Customer), ("p2", Role::Partner)] {
        let mut other = connect(&cluster.ws(&cluster.gateways[0]), &token(sub, role)).await;
        assert_eq!(other.subscribe(&room).await["error"], "forbidden", "{sub}");
    }
    // The next change writes the snapshot again, and later reads come from Redis.
    assert_eq!(cluster.set_status(&api, &order, "packed").await.0, 200);
    c1.event(&room, "order.status").await;
    assert!(cached_snapshot(&cluster, &room).contains("packed"));
    let from_redis = backend_reads(&cluster.gateways[1], "shared_state").await;
    let mut admin_ws = connect(&cluster.ws(&cluster.gateways[1]), &admin()).await;
    assert_eq!(
        admin_ws.subscribe(&room).await["snapshot"]["status"],
        "packed"
    );
    assert!(backend_reads(&cluster.gateways[1], "shared_state").await > from_redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_positions_and_revenue_are_the_same_on_every_gateway() {
    let cluster = Cluster::up(2, 1);
    let (gw_a, gw_b, api) = (
        cluster.gateways[0].clone(),
        cluster.gateways[1].clone(),
        cluster.apis[0].clone(),
    );
    let order = cluster.create_order(&api, "c1").await;
    let room = format!("order:{order}");
    cluster.assign(&cluster.apis[0], &order, "p1").await;
    assert_eq!(cluster.set_status(&api, &order, "confirmed").await.0, 200);
    let (status, paid) = cluster
        .http
        .post(format!("http://{api}/api/orders/{order}/payment"))
        .bearer_auth(token("c1", Role::Customer))
        .header("idempotency-key", "k1")
        .json(&json!({"amount_paise": 250}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 201, "{:?}", paid.text().await);

    // The partner reports on gateway A; a subscriber on gateway B sees the position in its
    // snapshot (within the gateway's flush interval), with the order's committed state.
    let mut p1 = connect(&cluster.ws(&gw_a), &token("p1", Role::Partner)).await;
    assert_eq!(p1.request(fix(&order, 12.97)).await["type"], "ok");
    let mut c1 = connect(&cluster.ws(&gw_b), &token("c1", Role::Customer)).await;
    let mut snapshot = Value::Null;
    // The payment's snapshot reaches Redis through the relay, after its 201: wait for both.
    eventually(
        "the position and the payment in gateway B's snapshot",
        async || {
            snapshot = c1.subscribe(&room).await["snapshot"].clone();
            snapshot["last_location"]["lat"] == 12.97 && snapshot["paid"] == true
        },
    )
    .await;
    assert_eq!(snapshot["status"], "confirmed", "{snapshot}");
    assert_eq!(snapshot["paid"], true, "{snapshot}");
    assert_eq!(snapshot["partner"], "p1", "{snapshot}");

    // The API writes the position to the database: the REST read shows it too.
    eventually("the position in the database", async || {
        let (_, o) = cluster
            .call(&api, "GET", &format!("/api/orders/{order}"), &admin(), None)
            .await;
        o["last_location"]["lat"] == 12.97
    })
    .await;

    // Revenue: the same totals on every gateway as over REST.
    let (_, revenue) = cluster
        .call(&api, "GET", "/api/revenue", &admin(), None)
        .await;
    for gw in [&gw_a, &gw_b] {
        let mut adm = connect(&cluster.ws(gw), &admin()).await;
        let reply = adm.subscribe("admin:revenue").await;
        assert_eq!(reply["snapshot"], revenue, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_snapshot_never_keeps_out_the_assigned_partner() {
    let cluster = Cluster::up(1, 1);
    let order = cluster.create_order(&cluster.apis[0], "c1").await;
    let room = format!("order:{order}");
    cluster.assign(&cluster.apis[0], &order, "p1").await;
    eventually("a snapshot naming p1", async || {
        cached_snapshot(&cluster, &room).contains("\"p1\"")
    })
    .await;
    let naming_p1 = cached_snapshot(&cluster, &room);
    cluster.assign(&cluster.apis[0], &order, "p2").await;
    eventually("a snapshot naming p2", async || {
        cached_snapshot(&cluster, &room).contains("\"p2\"")
    })
    .await;
    // Put the old one back: Redis now says p1 carries the order, as it would for the moment
    // between a commit and its relay.
    cluster.redis_cli(&["SET", &format!("sy:snap:{{{room}}}"), &naming_p1]);
    let mut p2 = connect(
        &cluster.ws(&cluster.gateways[0]),
        &token("p2", Role::Partner),
    )
    .await;
    assert_eq!(p2.subscribe(&room).await["type"], "ok");
    assert_eq!(p2.request(fix(&order, 1.0)).await["type"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassignment_revokes_the_former_partner_on_every_gateway() {
    let cluster = Cluster::up(2, 1);
    let order = cluster.create_order(&cluster.apis[0], "c1").await;
    let room = format!("order:{order}");
    cluster.assign(&cluster.apis[0], &order, "p1").await;
    let mut p1s = Vec::new();
    for gw in &cluster.gateways {
        let mut p1 = connect(&cluster.ws(gw), &token("p1", Role::Partner)).await;
        assert_eq!(p1.subscribe(&room).await["type"], "ok");
        assert_eq!(p1.request(fix(&order, 2.0)).await["type"], "ok");
        p1s.push(p1);
    }
    cluster.assign(&cluster.apis[0], &order, "p2").await;
    for p1 in &mut p1s {
        let revoked = p1.recv_until(|v| v["type"] == "revoked").await;
        assert_eq!(revoked["room"], room.as_str());
        assert_eq!(p1.request(fix(&order, 3.0)).await["error"], "forbidden");
        assert_eq!(p1.subscribe(&room).await["error"], "forbidden");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_need_a_service_token_and_are_not_behind_nginx() {
    let cluster = Cluster::up(1, 1);
    let api = cluster.apis[0].clone();
    let order = cluster.create_order(&api, "c1").await;
    let path = format!("/internal/orders/{order}");
    let status = |r: reqwest::Response| r.status().as_u16();
    let anonymous = cluster
        .http
        .get(format!("http://{api}{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(status(anonymous), 401);
    for (sub, role) in [("c1", Role::Customer), ("admin", Role::Admin)] {
        let (code, body) = cluster
            .call(&api, "GET", &path, &token(sub, role), None)
            .await;
        assert_eq!(
            (code, body["error"].as_str()),
            (403, Some("forbidden")),
            "{body}"
        );
    }
    let service = token("svc", Role::Service);
    let (code, body) = cluster.call(&api, "GET", &path, &service, None).await;
    assert_eq!(
        (code, body["customer"].as_str()),
        (200, Some("c1")),
        "{body}"
    );
    let (code, _) = cluster
        .call(&api, "GET", "/internal/orders/999999", &service, None)
        .await;
    assert_eq!(code, 404);
    let (code, body) = cluster
        .call(&api, "GET", "/internal/revenue", &service, None)
        .await;
    assert_eq!(
        (code, body["currency"].as_str()),
        (200, Some("INR")),
        "{body}"
    );
    // nginx does not route /internal.
    let (code, _) = cluster
        .call(&cluster.nginx, "GET", &path, &service, None)
        .await;
    assert_eq!(code, 404);
}

/// A burst of joins that all go to the API (Redis lost its snapshots) on a gateway allowed
/// more requests in flight than the API takes HTTP connections: the API refuses the excess
/// with 503 at once, and the gateway queues its requests (SWITCHYARD_API_MAX_IN_FLIGHT) and
/// retries the refused after their `Retry-After` — every join succeeds (#17: 1,639 of 10,000
/// joins failed with the API's 503 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_succeeds_on_an_api_with_few_connections() {
    const CUSTOMERS: usize = 60;
    let cluster = Cluster::up_with(
        1,
        1,
        &[
            // Every process: the API takes 4 connections at once (the gateway's WebSocket
            // handshakes below are made one at a time, within its 4).
            ("SWITCHYARD_MAX_HTTP_CONNECTIONS", "4"),
            // The gateway: 16 requests in flight, so it does overrun the API's 4.
            ("SWITCHYARD_API_MAX_IN_FLIGHT", "16"),
            // Generous: a slow machine must not turn the queue into refusals.
            ("SWITCHYARD_API_DEADLINE_MS", "30000"),
            ("SWITCHYARD_API_TIMEOUT_MS", "10000"),
        ],
    );
    let api = cluster.apis[0].clone();
    let mut orders = Vec::new();
    for i in 0..CUSTOMERS {
        orders.push(cluster.create_order(&api, &format!("c{i}")).await);
    }
    let last = format!("order:{}", orders[CUSTOMERS - 1]);
    eventually("the relay wrote the last snapshot", async || {
        !cached_snapshot(&cluster, &last).is_empty()
    })
    .await;
    // Redis loses the snapshots: every join asks the API.
    assert_eq!(cluster.redis_cli(&["FLUSHALL"]).trim(), "OK");
    let before = backend_reads(&cluster.gateways[0], "api").await;

    let mut clients = Vec::new();
    for i in 0..CUSTOMERS {
        let token = token(&format!("c{i}"), Role::Customer);
        clients.push(connect(&cluster.ws(&cluster.gateways[0]), &token).await);
    }
    // All the subscribes at once.
    let replies =
        futures_util::future::join_all(clients.iter_mut().zip(&orders).map(
            |(client, order)| async move { client.subscribe(&format!("order:{order}")).await },
        ))
        .await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(
            reply["type"],
            "ok",
            "c{i}: {reply}\ngateway1's errors:\n{}\napi1's errors:\n{}",
            errors(&cluster.log("gateway1")),
            errors(&cluster.log("api1"))
        );
        assert_eq!(reply["snapshot"]["customer"], format!("c{i}"), "{reply}");
    }
    assert!(backend_reads(&cluster.gateways[0], "api").await >= before + CUSTOMERS as f64);
    // How often the gateway retried the API's refusals: printed, not asserted (it depends on
    // the machine's timing). (The API's own count cannot be read now: the gateway's pooled
    // connections fill its 4.)
    let retries = sample(
        &scrape(&format!("http://{}", cluster.gateways[0])).await,
        "switchyard_backend_api_retries_total",
    );
    println!("gateway retries: {retries:?}");
}

/// The lines of a process's log that are warnings or errors.
fn errors(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect::<Vec<_>>()
        .join("\n")
}
