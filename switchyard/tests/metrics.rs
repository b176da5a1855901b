//! `/metrics`: the families the code exports, their labels, and the Grafana dashboard that
//! reads them (deploy/grafana/dashboards/switchyard.json).

mod common;

use common::process::ServerProcess;
use common::*;
use serde_json::json;
use switchyard_protocol::Role;

/// The value of the sample `series` (name and labels exactly as rendered) in a scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

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
    let body = json!({"items":[{"sku":"milk-1l","qty":1,"unit_price_paise":700}],"address":"x"});
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
        assert!(
            !line.contains(&format!("/{id}\""))
                && !line.contains("999999")
                && !line.contains("12345"),
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
    let body = json!({"items":[{"sku":"a","qty":1,"unit_price_paise":100}],"address":"x"});
    for _ in 0..3 {
        let (status, _) = server
            .call("POST", "/api/orders", &c1, Some(body.clone()))
            .await;
        assert_eq!(status, 201);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let metrics = eventually_scrape(&server.url(""), |m| {
        sample(m, "switchyard_outbox_backlog") == Some(3.0)
            && sample(m, "switchyard_outbox_oldest_age_seconds").is_some_and(|age| age >= 1.0)
    })
    .await;
    assert_eq!(
        sample(&metrics, "switchyard_relay_leader"),
        Some(0.0),
        "{metrics}"
    );

    store.release_relay_lease("someone-else").await.unwrap();
    let metrics = eventually_scrape(&server.url(""), |m| {
        sample(m, "switchyard_relay_leader") == Some(1.0)
            && sample(m, "switchyard_outbox_backlog") == Some(0.0)
    })
    .await;
    assert_eq!(
        sample(&metrics, "switchyard_outbox_oldest_age_seconds"),
        Some(0.0)
    );
    store.close().await;
}

/// Scrapes until `pred` holds (or fails after WAIT).
async fn eventually_scrape(base: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = scrape(base).await;
        if pred(&metrics) {
            return metrics;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
