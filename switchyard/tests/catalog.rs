//! The catalog over REST: reads for everyone signed in, writes for admins, validation, orders
//! that take the server's prices and reserve stock, and no oversell across two API processes
//! on either engine.

use common::cluster::Cluster;
use common::process::ServerProcess;
use common::*;
use serde_json::{Value, json};
use switchyard_protocol::Role;
use switchyard_store::testing::TestDatabase;

fn c1() -> String {
    token("c1", Role::Customer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeded_catalog_reads_in_pages_for_any_caller() {
    let server = TestServer::start().await;
    for caller in [c1(), token("p1", Role::Partner), admin()] {
        let (status, milk) = server
            .call("GET", "/api/products/milk-1l", &caller, None)
            .await;
        assert_eq!(status, 200, "{milk}");
        assert_eq!(milk["price_paise"], 6500);
        assert!(milk["stock"].as_i64().unwrap() > 0);
        assert!(
            milk["name"].is_string() && milk["updated_at"].is_i64(),
            "{milk}"
        );
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = server
            .call(
                "GET",
                &format!("/api/products?limit=7&after={after}"),
                &c1(),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for p in page["products"].as_array().unwrap() {
            seen.push(p["sku"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 20, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in SKU order: {seen:?}"
    );
    let (status, _) = server.call("GET", "/api/products/milk-1l", "", None).await;
    assert_eq!(status, 401);
    for (path, want) in [
        ("/api/products/no-such", 404),
        ("/api/products/bad%20sku", 404),
        ("/api/products?limit=0", 422),
        ("/api/products?after=a%2Fb", 422),
    ] {
        let (status, body) = server.call("GET", path, &c1(), None).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_write_and_bad_writes_are_refused() {
    let server = TestServer::start().await;
    let put = json!({"name": "Ghee, 500 ml", "price_paise": 32_000, "stock": 5});
    let (status, body) = server
        .call("PUT", "/api/products/ghee-500ml", &c1(), Some(put.clone()))
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, ghee) = server
        .call(
            "PUT",
            "/api/products/ghee-500ml",
            &admin(),
            Some(put.clone()),
        )
        .await;
    assert_eq!(status, 201, "{ghee}");
    let (status, _) = server
        .call("PUT", "/api/products/ghee-500ml", &admin(), Some(put))
        .await;
    assert_eq!(status, 200, "a replace");
    for (method, path, body) in [
        (
            "PUT",
            "/api/products/bad%20sku",
            json!({"name": "x", "price_paise": 1, "stock": 0}),
        ),
        (
            "PUT",
            "/api/products/x",
            json!({"name": "x", "price_paise": 0, "stock": 0}),
        ),
        (
            "PUT",
            "/api/products/x",
            json!({"name": "x", "price_paise": 1, "stock": -1}),
        ),
        (
            "PUT",
            "/api/products/x",
            json!({"name": " ", "price_paise": 1, "stock": 0}),
        ),
        (
            "PUT",
            "/api/products/x",
            json!({"name": "x", "price_paise": 1.5, "stock": 0}),
        ),
        (
            "PUT",
            "/api/products/x",
            json!({"name": "x", "price_paise": 1, "stock": 0, "colour": "red"}),
        ),
        ("PATCH", "/api/products/ghee-500ml", json!({})),
        (
            "PATCH",
            "/api/products/ghee-500ml",
            json!({"stock": 1, "stock_delta": 1}),
        ),
        (
            "PATCH",
            "/api/products/ghee-500ml",
            json!({"price_paise": -5}),
        ),
        ("PATCH", "/api/products/ghee-500ml", json!({"sku": "other"})),
    ] {
        let (status, reply) = server
            .call(method, path, &admin(), Some(body.clone()))
            .await;
        assert_eq!(
            (status, reply["error"].as_str()),
            (422, Some("invalid")),
            "{method} {path} {body}: {reply}"
        );
    }
    let (status, body) = server
        .call("PATCH", "/api/products/nope", &admin(), Some(json!({})))
        .await;
    assert_eq!(status, 404, "an unknown product before its payload: {body}");
    let (status, ghee) = server
        .call(
            "PATCH",
            "/api/products/ghee-500ml",
            &admin(),
            Some(json!({"stock_delta": 10})),
        )
        .await;
    assert_eq!((status, ghee["stock"].as_i64()), (200, Some(15)), "{ghee}");
    let (status, body) = server
        .call(
            "PATCH",
            "/api/products/ghee-500ml",
            &admin(),
            Some(json!({"stock_delta": -16})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, ghee) = server
        .call(
            "PATCH",
            "/api/products/ghee-500ml",
            &admin(),
            Some(json!({"price_paise": 31_000})),
        )
        .await;
    assert_eq!((status, ghee["price_paise"].as_i64()), (200, Some(31_000)));

    // Delete: kept (discontinued) while an open order holds it, removed otherwise.
    let order = json!({"items": [{"sku": "ghee-500ml", "qty": 1}], "address": "x"});
    let (status, placed) = server
        .call("POST", "/api/orders", &c1(), Some(order.clone()))
        .await;
    assert_eq!(status, 201, "{placed}");
    let (status, kept) = server
        .call("DELETE", "/api/products/ghee-500ml", &admin(), None)
        .await;
    assert_eq!(
        (status, kept["discontinued"].as_bool()),
        (200, Some(true)),
        "{kept}"
    );
    let (status, body) = server.call("POST", "/api/orders", &c1(), Some(order)).await;
    assert_eq!(status, 422, "{body}");
    let id = placed["id"].as_str().unwrap();
    let (status, _) = server.set_status(id, &c1(), "cancelled").await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call("DELETE", "/api/products/ghee-500ml", &admin(), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .call("GET", "/api/products/ghee-500ml", &c1(), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_reserve_stock_and_cancels_give_it_back() {
    let server = TestServer::start().await;
    for (sku, stock) in [("dal-1kg", 3), ("oil-1l", 1)] {
        let (status, body) = server
            .call(
                "PATCH",
                &format!("/api/products/{sku}"),
                &admin(),
                Some(json!({"stock": stock})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let stock = async |sku: &str| -> i64 {
        let (_, p) = server
            .call("GET", &format!("/api/products/{sku}"), &c1(), None)
            .await;
        p["stock"].as_i64().unwrap()
    };
    let order = |lines: Value| json!({"items": lines, "address": "12 MG Road"});
    let (status, body) = server
        .call(
            "POST",
            "/api/orders",
            &c1(),
            Some(order(json!([{"sku": "dal-1kg", "qty": 4}, {"sku": "oil-1l", "qty": 2}, {"sku": "salt-1kg", "qty": 1}]))),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("out_of_stock")),
        "{body}"
    );
    assert_eq!(
        body["items"],
        json!([{"sku": "dal-1kg", "available": 3}, {"sku": "oil-1l", "available": 1}])
    );
    assert_eq!(
        (stock("dal-1kg").await, stock("oil-1l").await),
        (3, 1),
        "nothing taken"
    );
    let (status, placed) = server
        .call(
            "POST",
            "/api/orders",
            &c1(),
            Some(order(
                json!([{"sku": "dal-1kg", "qty": 3, "unit_price_paise": 17900}]),
            )),
        )
        .await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(placed["items"][0]["name"], "Toor dal, 1 kg");
    assert_eq!(stock("dal-1kg").await, 0);
    let id = placed["id"].as_str().unwrap();
    let (status, _) = server.set_status(id, &c1(), "cancelled").await;
    assert_eq!(status, 200);
    assert_eq!(
        stock("dal-1kg").await,
        3,
        "the cancellation gave the units back"
    );
}

/// 200 concurrent one-unit orders against a stock of 50, spread over two API processes on
/// one database: exactly 50 accepted, 150 refused `out_of_stock`, the stock at 0 and the
/// accepted quantities equal to its decrease — on SQLite and on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_never_oversell() {
    for db in TestDatabase::each_engine().await {
        let dir = tempfile::tempdir().unwrap();
        let env = [
            ("JWT_SECRET", SECRET),
            ("DATABASE_URL", db.url.as_str()),
            ("RUST_LOG", "warn"),
            // A burst of 100 requests per process on one product row, beyond the default
            // bounds: they queue for 10 pooled connections (and, on PostgreSQL, for the
            // row's lock) one transaction at a time. On a loaded machine that queue takes
            // longer than the default 5 s acquire and statement timeouts (a 503 when the
            // pool timed out, a 500 past the statement timeout), so they are lifted (and the request deadline with them); what is tested
            // is the stock, not the wait.
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "120000"),
            ("DATABASE_STATEMENT_TIMEOUT_MS", "120000"),
            ("SWITCHYARD_REQUEST_TIMEOUT_MS", "120000"),
        ];
        let apis: Vec<ServerProcess> = (0..2)
            .map(|_| ServerProcess::start(dir.path(), &["api", "--listen", "127.0.0.1:0"], &env))
            .collect();
        let product = json!({"name": "Mangoes, 1 kg", "price_paise": 25_000, "stock": 50});
        let (status, body) = apis[0]
            .call("PUT", "/api/products/mango-1kg", &admin(), Some(product))
            .await;
        assert_eq!(status, 201, "{:?}: {body}", db.engine);
        let http = reqwest::Client::new();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let url = apis[i % 2].url("/api/orders");
            let http = http.clone();
            tasks.spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(token(&format!("c{i}"), Role::Customer))
                    .json(&json!({"items": [{"sku": "mango-1kg", "qty": 1}], "address": "x"}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            });
        }
        let (mut accepted, mut refused) = (0, 0);
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                (201, order) => {
                    assert_eq!(order["items"][0]["qty"], 1);
                    accepted += 1;
                }
                (409, body) => {
                    assert_eq!(body["error"], "out_of_stock", "{body}");
                    assert_eq!(body["items"][0]["sku"], "mango-1kg", "{body}");
                    refused += 1;
                }
                (status, body) => panic!("{:?}: {status} {body}", db.engine),
            }
        }
        assert_eq!((accepted, refused), (50, 150), "{:?}", db.engine);
        for api in &apis {
            let (_, mango) = api
                .call("GET", "/api/products/mango-1kg", &c1(), None)
                .await;
            assert_eq!(mango["stock"], 0, "{:?}: {mango}", db.engine);
        }
    }
}

/// Reads and updates of one SKU, interleaved: every read issued after an update's response
/// returns that update or a newer one — through the embedded mode's in-process cache
/// (`X-Cache: hit` answers are among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_after_a_write_returns_what_it_replaced() {
    let server = TestServer::start().await;
    let base = server.url("");
    hammer(&[base.as_str()], "embedded").await;
}

/// The distributed mode's cache in Redis, shared by two API processes (on PostgreSQL, with a
/// real redis-server): 2,000 interleaved reads and updates of one SKU across both, every read
/// issued after an update's response returning that update or a newer one; `X-Cache` says
/// where an answer came from, and one process's read fills the cache for the other; a miss
/// storm is one database query; with Redis stopped, reads still answer (from the database,
/// counted as bypasses), and once Redis is back the cache serves again — never a value from
/// before a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_cache_never_answers_a_replaced_value() {
    let cluster = Cluster::up(1, 2);
    let bases: Vec<String> = cluster.apis.iter().map(|a| format!("http://{a}")).collect();
    let put = json!({"name": "Milk", "price_paise": 6500, "stock": 0});
    let (status, body) = admin_write(&cluster, 0, "PUT", "/api/products/milk-1l", put).await;
    assert_eq!(status, 201, "{body}");
    let base_refs: Vec<&str> = bases.iter().map(String::as_str).collect();
    hammer(&base_refs, "two API processes on Redis").await;

    // One process's miss fills the cache the other reads.
    let patch = json!({"price_paise": 7000});
    let (status, body) = admin_write(&cluster, 0, "PATCH", "/api/products/milk-1l", patch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(read(&bases[1], "milk-1l").await, ("miss".into(), 7000));
    assert_eq!(read(&bases[1], "milk-1l").await, ("hit".into(), 7000));
    assert_eq!(read(&bases[0], "milk-1l").await, ("hit".into(), 7000));

    // A miss storm on one process: one database query.
    let storm = json!({"name": "Storm", "price_paise": 100, "stock": 1});
    let (status, body) = admin_write(&cluster, 0, "PUT", "/api/products/storm", storm).await;
    assert_eq!(status, 201, "{body}");
    let database_reads = async |base: &str| {
        sample(
            &scrape(base).await,
            "switchyard_catalog_database_reads_total",
        )
        .unwrap()
    };
    let before = database_reads(&bases[1]).await;
    let reads = (0..50).map(|_| read(&bases[1], "storm"));
    for answer in futures_util::future::join_all(reads).await {
        assert_eq!(answer.1, 100);
    }
    assert_eq!(database_reads(&bases[1]).await - before, 1.0);

    // Redis down: the database answers reads (bypasses counted); writes wait for the bus.
    cluster.stop_redis();
    for base in &bases {
        assert_eq!(read(base, "milk-1l").await, ("miss".into(), 7000));
        let bypassed = sample(&scrape(base).await, "switchyard_catalog_cache_bypass_total");
        assert!(bypassed.unwrap() >= 1.0, "{base}: {bypassed:?}");
    }
    let patch = json!({"price_paise": 7100});
    let (status, body) =
        admin_write(&cluster, 1, "PATCH", "/api/products/milk-1l", patch.clone()).await;
    assert_eq!(status, 503, "{body}");

    // Redis back (empty): writes and the cache serve again, never a value from before a write.
    cluster.start_redis();
    cluster.wait_ready().await;
    assert_eq!(read(&bases[0], "milk-1l").await.1, 7000);
    let (status, body) = admin_write(&cluster, 1, "PATCH", "/api/products/milk-1l", patch).await;
    assert_eq!(status, 200, "{body}");
    for base in &bases {
        eventually("the cache answers again", async || {
            let (cache, price) = read(base, "milk-1l").await;
            assert_eq!(price, 7100, "{base}");
            cache == "hit"
        })
        .await;
    }
}

/// An admin's `method` of `path` through the cluster's API process `api`.
async fn admin_write(
    cluster: &Cluster,
    api: usize,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    cluster
        .call(&cluster.apis[api], method, path, &admin(), Some(body))
        .await
}

/// `GET /api/products/{sku}` through `base`: its `X-Cache` and its price.
async fn read(base: &str, sku: &str) -> (String, i64) {
    let response = reqwest::Client::new()
        .get(format!("{base}/api/products/{sku}"))
        .bearer_auth(c1())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    let product: Value = response.json().await.unwrap();
    (cache, product["price_paise"].as_i64().unwrap())
}

/// 1,000 restocks of one unit and 1,000 reads of `milk-1l`, from 8 tasks spread over `bases`.
/// Stock only grows, so "that update or a newer one" is "at least the stock it answered".
async fn hammer(bases: &[&str], what: &str) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    let http = reqwest::Client::new();
    let acked = Arc::new(AtomicI64::new(i64::MIN));
    let hits = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (http, acked, hits) = (http.clone(), acked.clone(), hits.clone());
        let bases: Vec<String> = bases.iter().map(|b| (*b).to_owned()).collect();
        tasks.spawn(async move {
            for i in 0..250 {
                let base = &bases[(t + i) % bases.len()];
                let url = format!("{base}/api/products/milk-1l");
                if (t + i) % 2 == 0 {
                    let response = http
                        .patch(&url)
                        .bearer_auth(admin())
                        .json(&json!({"stock_delta": 1}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    let product: Value = response.json().await.unwrap();
                    acked.fetch_max(product["stock"].as_i64().unwrap(), Ordering::SeqCst);
                } else {
                    let floor = acked.load(Ordering::SeqCst);
                    let response = http.get(&url).bearer_auth(c1()).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
                    assert!(cache == "hit" || cache == "miss", "{cache}");
                    if cache == "hit" {
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                    let product: Value = response.json().await.unwrap();
                    let stock = product["stock"].as_i64().unwrap();
                    assert!(
                        stock >= floor,
                        "a read issued after a write that answered stock {floor} returned {stock} ({cache})"
                    );
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    eprintln!(
        "{what}: {} cache hits of 1000 reads",
        hits.load(Ordering::Relaxed)
    );
}
