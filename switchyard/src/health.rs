//! `/healthz` (the process is alive), `/readyz` (it should get traffic) and `/metrics`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::sync::{Arc, OnceLock};
use switchyard_broker::Broker;
use switchyard_store::Store;
use tokio_util::sync::CancellationToken;

/// What readiness looks at.
#[derive(Clone)]
pub struct Health {
    pub store: Store,
    pub broker: Arc<dyn Broker>,
    pub shutdown: CancellationToken,
    pub metrics: PrometheusHandle,
}

/// The process-wide Prometheus recorder (the `metrics` facade has exactly one), installed
/// on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let draining = h.shutdown.is_cancelled();
    let bus = h.broker.is_ready();
    let database = h.store.ping().await;
    let ready = !draining && bus && database;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ready, "draining": draining, "bus": bus, "database": database })),
    )
}

async fn metrics(State(h): State<Health>) -> String {
    h.metrics.render()
}
