//! Request metrics for `/api`: how many requests each route got, with which outcome, and
//! how long they took.
//!
//! - `switchyard_api_requests_total{route, method, status}` (counter)
//! - `switchyard_api_request_duration_seconds{route, method}` (histogram; its buckets are set
//!   where the Prometheus exporter is built, `switchyard/src/health.rs`)
//!
//! `route` is the matched route **template** (`/api/orders/{id}`), never the request path:
//! ids in paths would make one time series per order. Requests that match no route (404s,
//! scanners) share the single label `unmatched`, and methods outside the standard set share
//! `other`, so every label has a small, fixed set of values whatever clients send.

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// The middleware (`axum::middleware::from_fn(metrics::record)`). It must be a `layer` of the
/// router that holds the routes (not of an outer one), so routing has already put the
/// [`MatchedPath`] into the request when it runs.
pub async fn record(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(request.extensions().get::<MatchedPath>());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "switchyard_api_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "switchyard_api_request_duration_seconds",
        "route" => route,
        "method" => method
    )
    .record(started.elapsed().as_secs_f64());
    response
}

fn route_label(matched: Option<&MatchedPath>) -> String {
    match matched {
        // A nested router's fallback matches a private catch-all: not a route of ours.
        Some(path) if !path.as_str().contains("__private__") => path.as_str().to_owned(),
        _ => "unmatched".to_owned(),
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
