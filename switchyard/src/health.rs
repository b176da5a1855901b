//! `/healthz` (the process is alive), `/readyz` (it should get traffic) and `/metrics`,
//! registered with their OpenAPI descriptions (the API process serves them in its document).

use crate::config::Mode;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use std::sync::OnceLock;
use std::time::Duration;
use switchyard_broker::Backplane;
use switchyard_store::Store;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What readiness looks at.
#[derive(Clone)]
pub struct Health {
    /// None in a gateway, which has no database.
    pub store: Option<Store>,
    pub backplane: Backplane,
    pub shutdown: CancellationToken,
    pub metrics: PrometheusHandle,
}

/// Buckets of the API request latency histogram, seconds: 1 ms to 10 s.
pub const API_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of the fan-out latency histogram (publish received → written to the socket),
/// seconds: 100 µs to 2.5 s.
pub const FANOUT_LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Buckets of any other histogram (seconds-shaped): 1 ms to 10 s.
const DEFAULT_BUCKETS: &[f64] = API_LATENCY_BUCKETS;
/// How often histogram samples are folded into their buckets when nobody scrapes: the
/// exporter buffers raw samples until a render or an upkeep, so without it an unscraped
/// process would grow with every recorded request.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The exporter's configuration. With buckets, histograms render as Prometheus histograms
/// (`_bucket{le=…}`, `_sum`, `_count`, aggregatable across processes with
/// `histogram_quantile`) rather than as per-process summaries.
pub fn prometheus_builder() -> PrometheusBuilder {
    let full = |name: &str| Matcher::Full(name.to_owned());
    PrometheusBuilder::new()
        .set_buckets(DEFAULT_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                full("switchyard_api_request_duration_seconds"),
                API_LATENCY_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                full("switchyard_fanout_latency_seconds"),
                FANOUT_LATENCY_BUCKETS,
            )
        })
        .expect("bucket lists are non-empty")
}

/// The process-wide Prometheus recorder (the `metrics` facade has exactly one), installed
/// on first use, with a thread that runs its upkeep.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = prometheus_builder()
                .install_recorder()
                .unwrap_or_else(|_| prometheus_builder().build_recorder().handle());
            let upkeep = handle.clone();
            // A thread, not a task: the handle outlives any one runtime (tests run several).
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            handle
        })
        .clone()
}

/// Registers the families this process exports at zero, so they are in `/metrics` from the
/// start: a dashboard shows 0 rather than "no data", and `rate()`/`increase()` count the
/// first event too (a series that appears at 1 hides it). Only families whose zero is true
/// at start are listed (no bus state: it is set when known), and only unlabeled series or
/// labels with a fixed set of values; the others appear with their first event.
pub fn register_families(mode: Mode) {
    use metrics::{counter, gauge};
    if mode.runs_gateway() {
        for name in [
            "switchyard_connections_opened_total",
            "switchyard_events_delivered_total",
            "switchyard_events_conflated_total",
            "switchyard_events_dropped_total",
            "switchyard_slow_consumer_closes_total",
            "switchyard_bus_gaps_total",
            "switchyard_delivery_overflows_total",
            "switchyard_token_refreshes_total",
        ] {
            counter!(name).increment(0);
        }
        for recovered in ["true", "false"] {
            counter!("switchyard_recoveries_total", "recovered" => recovered).increment(0);
        }
        counter!("switchyard_events_published_total", "source" => "partner").increment(0);
        if mode == Mode::Gateway {
            for source in ["shared_state", "api"] {
                counter!("switchyard_backend_reads_total", "source" => source).increment(0);
            }
        }
        for name in [
            "switchyard_connections",
            "switchyard_subscriptions",
            "switchyard_outbound_queue_bytes",
        ] {
            gauge!(name).increment(0.0);
        }
    }
    if mode.runs_api() {
        counter!("switchyard_payments_total").increment(0);
        for result in ["hit", "miss"] {
            counter!("switchyard_catalog_cache_reads_total", "result" => result).increment(0);
        }
        for name in [
            "switchyard_catalog_cache_bypass_total",
            "switchyard_catalog_cache_invalidation_failures_total",
            "switchyard_catalog_database_reads_total",
        ] {
            counter!(name).increment(0);
        }
        for source in ["api", "service"] {
            counter!("switchyard_events_published_total", "source" => source).increment(0);
        }
    }
    counter!("switchyard_handshake_timeouts_total").increment(0);
    counter!("switchyard_accept_errors_total").increment(0);
    for reason in ["connections", "per_ip", "body_timeout", "request_timeout"] {
        counter!("switchyard_http_rejections_total", "reason" => reason).increment(0);
    }
    // Counted by the Redis bus; 0 is also the truth of the in-process bus.
    counter!("switchyard_bus_reconnects_total").increment(0);
}

/// The routes and their descriptions (`split_for_parts` gives both).
pub fn routes() -> OpenApiRouter<Health> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: &'static str,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Whether the process should get traffic: not draining, bus up, database answering.
    pub ready: bool,
    /// SIGTERM received: closing connections before it exits.
    pub draining: bool,
    /// The event bus (in-process or Redis) is connected.
    pub bus: bool,
    /// The database answered a ping; `null` in a gateway, which has none.
    pub database: Option<bool>,
}

/// The process is alive
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "Alive", body = Liveness)),
)]
async fn healthz() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// The process should get traffic
///
/// 503 while draining (SIGTERM), while the event bus is down, or while the database does not
/// answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (see the fields)", body = Readiness),
    ),
)]
async fn readyz(State(h): State<Health>) -> (StatusCode, Json<Readiness>) {
    let draining = h.shutdown.is_cancelled();
    let bus = h.backplane.is_ready();
    let database = match &h.store {
        Some(store) => Some(store.ping().await),
        None => None,
    };
    let ready = !draining && bus && database != Some(false);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let readiness = Readiness {
        ready,
        draining,
        bus,
        database,
    };
    (status, Json(readiness))
}

/// Prometheus metrics (text format); README's "Metrics" lists the families.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)),
)]
async fn metrics(State(h): State<Health>) -> String {
    h.metrics.render()
}
