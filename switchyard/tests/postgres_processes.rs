//! Several API processes on one PostgreSQL database, as real `switchyard` processes
//! (scripts/cluster.sh: PostgreSQL, Redis, API processes, a gateway, nginx): payments, status
//! changes and the outbox relay stay exactly-once and in order when the API runs twice.

use common::cluster::Cluster;
use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use switchyard_protocol::{OrderStatus, Role};
use tokio::task::JoinSet;

/// A direct connection to the cluster's database, to count what was written.
async fn database(cluster: &Cluster) -> sqlx::PgPool {
    sqlx::PgPool::connect(&cluster.database_url).await.unwrap()
}

async fn count(db: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(db)
        .await
        .unwrap()
}

/// 200 concurrent payments over two API processes, four per `Idempotency-Key`, 50 keys (one
/// per order): exactly 50 payments, every duplicate answered with the first receipt, and the
/// revenue is their sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_pay_each_key_exactly_once() {
    let cluster = Cluster::up(1, 2);
    let apis = cluster.apis.clone();
    let mut orders = Vec::new();
    for i in 0..50 {
        orders.push(cluster.create_order(&apis[i % 2], &format!("c{i}")).await);
    }
    let mut payments = JoinSet::new();
    for n in 0..200 {
        let (i, api) = (n % 50, apis[(n / 50) % 2].clone());
        let order = orders[i].clone();
        let http = cluster.http.clone();
        payments.spawn(async move {
            let resp = http
                .post(format!("http://{api}/api/orders/{order}/payment"))
                .bearer_auth(token(&format!("c{i}"), Role::Customer))
                .header("idempotency-key", format!("pay-{i}"))
                .json(&json!({ "amount_paise": 250 }))
                .send()
                .await
                .unwrap();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            let status = resp.status().as_u16();
            (i, status, replayed, resp.json::<Value>().await.unwrap())
        });
    }
    let mut receipts: HashMap<usize, Value> = HashMap::new();
    let mut first_answers = 0;
    while let Some(done) = payments.join_next().await {
        let (i, status, replayed, body) = done.unwrap();
        assert_eq!(status, 201, "{body}");
        first_answers += usize::from(!replayed);
        let first = receipts.entry(i).or_insert_with(|| body.clone());
        assert_eq!(
            *first, body,
            "a duplicate of key pay-{i} answered differently"
        );
    }
    assert_eq!(first_answers, 50, "one first answer per key");
    let payment_ids: BTreeSet<&str> = receipts
        .values()
        .map(|r| r["payment_id"].as_str().unwrap())
        .collect();
    assert_eq!(payment_ids.len(), 50);

    let db = database(&cluster).await;
    assert_eq!(count(&db, "payments").await, 50);
    for api in &apis {
        let (status, revenue) = cluster
            .call(api, "GET", "/api/revenue", &admin(), None)
            .await;
        assert_eq!(status, 200, "{revenue}");
        assert_eq!(revenue["total_paise"], 50 * 250, "{revenue}");
        assert_eq!(revenue["paid_orders"], 50, "{revenue}");
    }
}

/// 100 concurrent status changes on one order over two API processes: every accepted change
/// is a valid transition from the state the one before left, the rest are refused with 409,
/// and the events a subscriber receives tell exactly the accepted story, ending in the
/// order's final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_status_changes_over_two_api_processes_tell_one_story() {
    use OrderStatus::*;
    let cluster = Cluster::up(1, 2);
    let apis = cluster.apis.clone();
    let order = cluster.create_order(&apis[0], "c1").await;
    let room = format!("order:{order}");
    let mut watcher = connect(&cluster.ws(&cluster.gateways[0]), &admin()).await;
    assert_eq!(watcher.subscribe(&room).await["type"], "ok");

    let targets = [Confirmed, Packed, OutForDelivery, Delivered, Cancelled];
    let mut changes = JoinSet::new();
    for n in 0..100 {
        let (api, to) = (apis[n % 2].clone(), targets[n % targets.len()]);
        let http = cluster.http.clone();
        let order = order.clone();
        changes.spawn(async move {
            let url = format!("http://{api}/api/orders/{order}/status");
            let body = json!({ "status": to.as_str() });
            let (status, body) = http_call(&http, "POST", &url, &admin(), Some(body)).await;
            (to, status, body)
        });
    }
    let mut accepted = Vec::new();
    while let Some(done) = changes.join_next().await {
        let (to, status, body) = done.unwrap();
        match status {
            200 => accepted.push(to),
            409 => assert_eq!(body["error"], "conflict", "{body}"),
            _ => panic!("{status}: {body}"),
        }
    }
    assert!(!accepted.is_empty());

    let mut state = Placed;
    let mut told = Vec::new();
    for _ in 0..accepted.len() {
        let event = watcher.event(&room, "order.status").await;
        let data = &event["data"];
        let previous: OrderStatus = serde_json::from_value(data["previous"].clone()).unwrap();
        let status: OrderStatus = serde_json::from_value(data["status"].clone()).unwrap();
        assert_eq!(previous, state, "a lost update: {event}");
        assert!(state.can_become(status), "an invalid transition: {event}");
        state = status;
        told.push(status);
    }
    accepted.sort_by_key(|s| s.as_str());
    told.sort_by_key(|s| s.as_str());
    assert_eq!(told, accepted, "the events are the accepted changes");
    assert!(state.is_final(), "{state}");
    let (_, now) = cluster
        .call(
            &apis[1],
            "GET",
            &format!("/api/orders/{order}"),
            &admin(),
            None,
        )
        .await;
    assert_eq!(now["status"], state.as_str(), "{now}");
}

/// The relay leader hangs (SIGSTOP) while the other API process takes orders, so the outbox
/// has a backlog; then it is SIGKILLed. The other process takes the lease over and publishes
/// every event of the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_api_process_publishes_a_killed_leaders_backlog() {
    let cluster = Cluster::up(1, 2);
    let leader = eventually("one API process holds the relay lease", async || {
        for (i, api) in cluster.apis.iter().enumerate() {
            let metrics = scrape(&format!("http://{api}")).await;
            if sample(&metrics, "switchyard_relay_leader") == Some(1.0) {
                return Some(i);
            }
        }
        None
    })
    .await;
    let survivor = cluster.apis[1 - leader].clone();
    let mut customer = connect(
        &cluster.ws(&cluster.gateways[0]),
        &token("c1", Role::Customer),
    )
    .await;
    assert_eq!(customer.subscribe("user:c1").await["type"], "ok");

    cluster.signal_api(leader, "STOP");
    // All at once: the backlog must be written before the hung leader's lease (5 s) runs out
    // and the survivor takes over by itself — one after the other, a loaded machine took longer.
    let placed: BTreeSet<String> =
        futures_util::future::join_all((0..20).map(|_| cluster.create_order(&survivor, "c1")))
            .await
            .into_iter()
            .collect();
    let db = database(&cluster).await;
    let backlog = count(&db, "outbox").await;
    assert!(backlog > 0, "the hung leader left no backlog");
    cluster.kill_api(leader).await;

    let mut published = BTreeSet::new();
    while published.len() < placed.len() {
        let event = customer.event("user:c1", "order.created").await;
        published.insert(event["data"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(published, placed);
    eventually("the outbox is empty", async || {
        count(&db, "outbox").await == 0
    })
    .await;
    let metrics = scrape(&format!("http://{survivor}")).await;
    assert_eq!(sample(&metrics, "switchyard_relay_leader"), Some(1.0));
}

/// Every pooled connection busy past `DATABASE_ACQUIRE_TIMEOUT_MS` is a passing overload, not
/// a failure: 503 `unavailable` with `Retry-After` and the JSON error shape (#15; it was a
/// 500). A pool of one connection, held by a request waiting for a row lock the test holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_timeout_answers_503_with_retry_after() {
    let db = switchyard_store::testing::TestDatabase::postgres().await;
    let url = db.url.clone();
    let server = TestApp::embedded()
        .with_config(|c| {
            c.database.database_url = url;
            c.database.database_max_connections = 1;
            c.database.database_acquire_timeout_ms = 300;
            // The held request waits for the lock as long as the test holds it.
            c.database.database_statement_timeout_ms = 120_000;
            c.serve.limits.request_timeout_ms = 120_000;
        })
        .start()
        .await;
    // The embedded mode seeded its catalog: lock one product's row.
    let locker = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut held = locker.begin().await.unwrap();
    sqlx::query("SELECT sku FROM products WHERE sku = 'milk-1l' FOR UPDATE")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    // A write to that row takes the pool's one connection and waits for the lock.
    let http = server.http.clone();
    let write = tokio::spawn(
        http.patch(server.url("/api/products/milk-1l"))
            .bearer_auth(admin())
            .json(&json!({"stock": 7}))
            .send(),
    );
    eventually("the write waits for the row lock", async || {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&locker)
        .await
        .unwrap();
        waiting > 0
    })
    .await;

    // Meanwhile a read finds no free connection.
    let response = server
        .http
        .get(server.url("/api/orders"))
        .bearer_auth(admin())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("retry"),
        "{body}"
    );

    // The lock released, the write completes and reads are served again.
    held.rollback().await.unwrap();
    let written = write.await.unwrap().unwrap();
    assert_eq!(written.status().as_u16(), 200);
    eventually("reads served again", async || {
        server.call("GET", "/api/orders", &admin(), None).await.0 == 200
    })
    .await;
    server.stop().await;
}
