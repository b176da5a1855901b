//! The REST side of Switchyard: orders, status, assignment, payments, revenue.
//!
//! Every change is committed together with its events (the store's outbox); the
//! [`relay`] publishes them to the bus in order.
//!
//! # Layout
//! - [`error`]: the error policy — every status code and JSON body in one table; internal
//!   errors logged once, by a middleware.
//! - [`extract`]: the bearer-token caller and JSON bodies with JSON rejections.
//! - [`in_flight`]: the bound on one user's requests in flight (429 beyond).
//! - [`products`], [`orders`], [`payments`], [`chat`]: the handlers.
//! - [`catalog`]: the catalog's read path, cache-aside with generations (no stale read after a
//!   write), in Redis or in memory.
//! - [`publish`]: the server publish API for other backend services.
//! - [`presence`]: `GET /api/presence?room=`, who is present in a room.
//! - [`internal`]: what gateways ask when the shared state cannot answer (`/internal`,
//!   service tokens only).
//! - [`relay`]: outbox → shared state, revocations and the bus.
//! - [`positions`]: partners' newest positions, gathered by gateways, into the database.
//! - [`openapi`]: the OpenAPI 3.1 document generated from the handlers, served at
//!   `/api/openapi.json`, and its reference page `/api/docs`.
//! - [`metrics`]: per-route request counts and latencies.
//! - [`web`]: the live dashboard (`/`, `/track`), embedded in the binary.

pub mod catalog;
pub mod chat;
pub mod error;
pub mod extract;
pub mod in_flight;
pub mod internal;
pub mod metrics;
pub mod openapi;
pub mod orders;
pub mod payments;
pub mod positions;
pub mod presence;
pub mod products;
pub mod publish;
pub mod relay;
pub mod sessions;
pub mod web;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Extension, Router};
use error::ApiError;
use std::sync::Arc;
use switchyard_auth::Verifier;
use switchyard_broker::Backplane;
use switchyard_protocol::ErrorCode;
use switchyard_protocol::order::OrderLimits;
use switchyard_store::Store;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Limits of the REST API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body, bytes. Larger → 413.
    pub max_body_bytes: usize,
    /// Largest `data` of one published event, bytes. Larger → 413.
    pub max_publish_data_bytes: usize,
    /// Largest `POST /api/publish/batch` body, bytes. Larger → 413.
    pub max_batch_body_bytes: usize,
    /// Caps on a new order's quantities, unit prices and total. Beyond → 422.
    pub order_limits: OrderLimits,
    /// Requests one user (`sub`) may have in flight at once; 0: no bound. Beyond → 429.
    pub max_requests_per_user: usize,
    /// The catalog's read cache.
    pub cache: catalog::CacheConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 64 * 1024,
            max_publish_data_bytes: 16 * 1024,
            max_batch_body_bytes: 4 * 1024 * 1024,
            order_limits: OrderLimits::default(),
            max_requests_per_user: 64,
            cache: catalog::CacheConfig::default(),
        }
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub verifier: Arc<Verifier>,
    /// For control messages (revocations) and for refusing writes while the bus is down.
    pub backplane: Backplane,
    pub config: ApiConfig,
    /// The catalog's reads, through the read cache.
    pub catalog: catalog::Catalog,
}

/// The `/api` routes, each registered with its description (`routes!` reads the handler's
/// `#[utoipa::path]`): a route cannot be added here without being in the document.
pub fn routes(config: &ApiConfig) -> OpenApiRouter<ApiState> {
    // The batch endpoint carries up to 1,000 events: its own, larger body limit.
    let batch = OpenApiRouter::new()
        .routes(routes!(publish::publish_batch))
        .layer(DefaultBodyLimit::max(config.max_batch_body_bytes));
    OpenApiRouter::new()
        .routes(routes!(publish::publish))
        .routes(routes!(products::list))
        .routes(routes!(
            products::get,
            products::put,
            products::patch,
            products::delete
        ))
        .routes(routes!(orders::create, orders::list))
        .routes(routes!(orders::get))
        .routes(routes!(orders::set_status))
        .routes(routes!(orders::assign))
        .routes(routes!(chat::send, chat::list))
        .routes(routes!(payments::pay))
        .routes(routes!(payments::revenue))
        .routes(routes!(sessions::revoke))
        .routes(routes!(presence::get))
        .routes(routes!(openapi::json))
        .routes(routes!(openapi::docs))
        .routes(routes!(openapi::redoc))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .merge(batch)
}

/// The `/api` and `/internal` routes and the dashboard. `operations` documents the process's
/// routes served beside these (health, readiness, metrics), for the served OpenAPI document.
pub fn router(state: ApiState, operations: utoipa::openapi::OpenApi) -> Router {
    let (api, paths) = routes(&state.config).split_for_parts();
    let document = openapi::Served::new(
        &openapi::document(paths, operations),
        &state.config.order_limits,
    );
    let api = api
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(document))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            writes_need_the_bus,
        ))
        .layer(middleware::from_fn_with_state(
            (
                state.clone(),
                in_flight::InFlight::new(state.config.max_requests_per_user),
            ),
            in_flight::limit,
        ))
        // Outermost, so the 503s above and the 413s of the body limits are counted too.
        .layer(middleware::from_fn(metrics::record))
        .layer(middleware::from_fn(error::log_failures))
        .with_state(state.clone());
    let internal = internal::routes()
        .fallback(not_found)
        .layer(middleware::from_fn(metrics::record))
        .layer(middleware::from_fn(error::log_failures))
        .with_state(state);
    Router::new()
        .nest("/api", api)
        .nest("/internal", internal)
        .merge(web::router())
}

/// Changes are refused with 503 while the bus is down rather than piling up events nobody
/// can deliver: a client retries, a committed change is never silently undelivered.
/// (Committed events wait in the outbox and go out when the bus is back.) Only callers with a
/// valid token learn that the bus is down: the others get their 401 from the handler.
async fn writes_need_the_bus(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let authenticated = |request: &Request| {
        // `in_flight::limit`, the layer around this one, hands on the caller it verified.
        request.extensions().get::<extract::Caller>().is_some()
            || extract::Caller::from_headers(request.headers(), &state).is_ok()
    };
    if request.method() != Method::GET && !state.backplane.is_ready() && authenticated(&request) {
        return Err(ApiError::unavailable(
            "the event bus is unavailable; retry shortly",
        ));
    }
    Ok(next.run(request).await)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}
