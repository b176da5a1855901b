//! `/metrics`: the families the code exports, their labels, and the Grafana dashboard that
//! reads them (deploy/grafana/dashboards/switchyard.json).

use common::process::ServerProcess;
use common::*;
use serde_json::json;
use switchyard_protocol::Role;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// API requests are counted per route *template*: the order id never becomes a label value,
/// and paths that match no route share one label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_are_labelled_by_route_template() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("JWT_SECRET", SECRET)],
    );
    let c1 = token("c1", Role::Customer);
    let body = json!({"items":[{"sku":"milk-1l","qty":1}],"address":"x"});
    let (status, order) = server.call("POST", "/api/orders", &c1, Some(body)).await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (status, _) = server
            .call("GET", &format!("/api/orders/{id}"), &c1, None)
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = server
        .call("GET", "/api/orders/999999", &admin(), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call("GET", "/api/no/such/route/12345", &c1, None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call("DELETE", &format!("/api/orders/{id}"), &admin(), None)
        .await;
    assert_eq!(status, 405);

    let metrics = scrape(&server.url("")).await;
    let requests = |route: &str, method: &str, status: &str| {
        sample(
            &metrics,
            &format!(
                "switchyard_api_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(
        requests("/api/orders", "POST", "201"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        requests("/api/orders/{id}", "GET", "200"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        requests("/api/orders/{id}", "GET", "404"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        requests("/api/orders/{id}", "DELETE", "405"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(requests("unmatched", "GET", "404"), Some(1.0), "{metrics}");
    // No path ever becomes a label: neither the order id nor the unknown route.
    let api_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_api_request"))
        .collect();
    for line in &api_lines {
        let labels = line.split('}').next().unwrap();
        assert!(
            !labels.contains(&format!("/{id}\""))
                && !labels.contains("999999")
                && !labels.contains("12345"),
            "a raw path in a label: {line}"
        );
    }
    // A Prometheus histogram (buckets from 1 ms), not a summary.
    assert!(
        metrics.contains("# TYPE switchyard_api_request_duration_seconds histogram"),
        "{metrics}"
    );
    let bucket =
        "switchyard_api_request_duration_seconds_bucket{route=\"/api/orders/{id}\",method=\"GET\"";
    assert_eq!(
        sample(&metrics, &format!("{bucket},le=\"+Inf\"}}")),
        Some(4.0),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{bucket},le=\"0.001\"}}")),
        "{metrics}"
    );
}

/// The relay reports the outbox backlog, its age and whether it holds the lease. While
/// another holder has the lease, committed events wait and every process shows them; once
/// the lease is free, this process takes it and the backlog drains to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_gauges_follow_the_backlog_and_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/sy.db", dir.path().display());
    let store = switchyard_store::Store::open(&db).await.unwrap();
    assert!(store.relay_lease("someone-else", 60_000).await.unwrap());
    let server = ServerProcess::start(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--database-url", &db],
        &[("JWT_SECRET", SECRET)],
    );
    let c1 = token("c1", Role::Customer);
    let body = json!({"items":[{"sku":"milk-1l","qty":1}],"address":"x"});
    for _ in 0..3 {
        let (status, _) = server
            .call("POST", "/api/orders", &c1, Some(body.clone()))
            .await;
        assert_eq!(status, 201);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Each order: its snapshot row and its order.created event to the customer and to
    // `admin:orders`, and the stock it took: the product room's snapshot and `stock.updated`
    // to that room and to `admin:inventory`.
    let metrics = eventually(
        "eighteen outbox rows, the oldest a second old",
        async || {
            let m = scrape(&server.url("")).await;
            if sample(&m, "switchyard_outbox_backlog") == Some(18.0)
                && sample(&m, "switchyard_outbox_oldest_age_seconds").is_some_and(|age| age >= 1.0)
            {
                Ok(m)
            } else {
                Err(m)
            }
        },
    )
    .await;
    assert_eq!(
        sample(&metrics, "switchyard_relay_leader"),
        Some(0.0),
        "{metrics}"
    );

    store.release_relay_lease("someone-else").await.unwrap();
    let metrics = eventually("this relay leading, the outbox empty", async || {
        let m = scrape(&server.url("")).await;
        if sample(&m, "switchyard_relay_leader") == Some(1.0)
            && sample(&m, "switchyard_outbox_backlog") == Some(0.0)
        {
            Ok(m)
        } else {
            Err(m)
        }
    })
    .await;
    assert_eq!(
        sample(&metrics, "switchyard_outbox_oldest_age_seconds"),
        Some(0.0)
    );
    store.close().await;
}

/// Issue #19 §10: whatever is queued for a connection — events, and the close a revocation
/// sends — is added to `switchyard_outbound_queue_bytes` when queued and taken off when it
/// leaves, so after 100 revoked connections the gauge reads 0 again (each revoke used to take
/// 64 bytes off for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_queue_gauge_is_back_at_zero_after_100_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("JWT_SECRET", SECRET)],
    );
    let mut clients = Vec::new();
    for i in 0..100 {
        clients.push(connect(&server.ws_url(), &token(&format!("u{i}"), Role::Customer)).await);
    }
    for i in 0..100 {
        let (status, body) = server
            .call("POST", &format!("/api/users/u{i}/revoke"), &admin(), None)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for client in &mut clients {
        let frame = client.closed().await.expect("a close frame");
        assert_eq!(u16::from(frame.code), switchyard_protocol::close::REVOKED);
    }
    let metrics = eventually("no connections left", async || {
        let m = scrape(&server.url("")).await;
        if sample(&m, "switchyard_connections") == Some(0.0) {
            Ok(m)
        } else {
            Err(m)
        }
    })
    .await;
    assert_eq!(
        sample(&metrics, "switchyard_outbound_queue_bytes"),
        Some(0.0),
        "{metrics}"
    );
}

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every `expr` of every panel, however deeply nested.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v.as_str()) {
                    ("expr", Some(e)) => out.push(e.to_owned()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `switchyard_*` series names in PromQL expressions.
fn series_names(exprs: &[String]) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("switchyard_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

/// Rust sources of the workspace crates, except the list that registers families at zero
/// (a name only there would be a family nothing records).
fn recording_sources() -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("switchyard/src/health.rs")
            {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut sources = String::new();
    for krate in [
        "protocol",
        "auth",
        "broker",
        "store",
        "gateway",
        "api",
        "switchyard",
    ] {
        walk(&repo_root().join(krate).join("src"), &mut sources);
    }
    sources
}

/// The Grafana dashboard queries only what the code exports: after some real traffic on a
/// real `switchyard` process, every family the dashboard uses is in its `/metrics`
/// (histograms as `_bucket`), and is recorded by code outside the zero-registration list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_the_dashboard_queries_is_exported() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("deploy/grafana/dashboards/switchyard.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let names = series_names(&all);
    assert!(names.len() >= 20, "{names:?}");
    // The dashboard's data source is the provisioned one.
    let datasource = std::fs::read_to_string(
        root.join("deploy/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    assert!(datasource.contains("uid: prometheus"));
    assert!(text.contains(r#""uid": "prometheus""#));

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("JWT_SECRET", SECRET)],
    );
    let url = server.ws_url();
    // Traffic: a refused handshake, a customer and a partner connected, an order through
    // REST (created, assigned, moving, paid), locations, a REST error, a client closing.
    let req = format!("{url}?access_token=not-a-jwt")
        .into_client_request()
        .unwrap();
    assert_eq!(refused(req).await.0, 401);
    let mut customer = connect(&url, &token("c1", Role::Customer)).await;
    let mut partner = connect(&url, &token("p1", Role::Partner)).await;
    let c1 = token("c1", Role::Customer);
    let body = json!({"items":[{"sku":"milk-1l","qty":2,"unit_price_paise":6500}],"address":"x"});
    let (status, order) = server.call("POST", "/api/orders", &c1, Some(body)).await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().unwrap();
    let room = format!("order:{id}");
    assert_eq!(customer.subscribe(&room).await["type"], "ok");
    let (status, _) = server
        .call(
            "POST",
            &format!("/api/orders/{id}/assign"),
            &admin(),
            Some(json!({"partner":"p1"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(partner.subscribe(&room).await["type"], "ok");
    let (status, _) = server
        .call(
            "POST",
            &format!("/api/orders/{id}/status"),
            &admin(),
            Some(json!({"status":"confirmed"})),
        )
        .await;
    assert_eq!(status, 200);
    let paid = reqwest::Client::new()
        .post(server.url(&format!("/api/orders/{id}/payment")))
        .bearer_auth(&c1)
        .header("idempotency-key", "k1")
        .json(&json!({"amount_paise": 13000}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 201);
    let located = partner
        .request(json!({"op":"location","order_id":id,"lat":12.97,"lng":77.59}))
        .await;
    assert_eq!(located["type"], "ok", "{located}");
    customer.event(&room, "partner.location").await;
    let (status, _) = server.call("GET", "/api/revenue", &c1, None).await;
    assert_eq!(status, 403);
    partner.socket.close().await.unwrap();

    let exported = eventually("a close counted and this relay leading", async || {
        let m = scrape(&server.url("")).await;
        if m.contains("switchyard_connections_closed_total{")
            && sample(&m, "switchyard_relay_leader") == Some(1.0)
        {
            Ok(m)
        } else {
            Err(m)
        }
    })
    .await;
    let sources = recording_sources();
    let mut missing = Vec::new();
    let mut unrecorded = Vec::new();
    for name in &names {
        let in_scrape = exported.lines().any(|l| {
            l.strip_prefix(name.as_str())
                .is_some_and(|r| r.starts_with(['{', ' ']))
        });
        if !in_scrape {
            missing.push(name.clone());
        }
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        if !sources.contains(&format!("\"{family}\"")) {
            unrecorded.push(family.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard families not in /metrics: {missing:?}\n{exported}"
    );
    assert!(
        unrecorded.is_empty(),
        "dashboard families no code records: {unrecorded:?}"
    );
}
