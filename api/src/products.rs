//! `/api/products`: the catalog. Reads for any authenticated caller (through the read cache:
//! `X-Cache: hit|miss`), writes for admins.
//!
//! Every write that changes stock — here, an order, a cancellation — publishes
//! `stock.updated` through the outbox, and invalidates the read cache after its commit.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{Caller, Payload};
use crate::orders::{DEFAULT_PAGE, MAX_PAGE};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use switchyard_protocol::catalog::{
    ProductPage, ProductPageQuery, ProductPatch, ProductPut, SKU_GRAMMAR, is_valid_sku,
};
use switchyard_protocol::{ErrorBody, Product, Role};
use switchyard_store::catalog::Deleted;

/// The header that says whether a read was answered from the cache.
pub const X_CACHE: &str = "x-cache";

/// Whether a read came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
        }
    }
}

fn with_cache_status(status: CacheStatus, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(status.as_str()));
    response
}

/// No such product (404).
pub(crate) fn not_found() -> ApiError {
    ApiError::not_found("product not found")
}

/// A SKU from the path: one outside the grammar names no product (404), like an unknown one.
pub(crate) fn sku(sku: &str) -> Result<&str, ApiError> {
    if is_valid_sku(sku) {
        Ok(sku)
    } else {
        Err(not_found())
    }
}

/// List products, in SKU order
///
/// Any authenticated caller. Keyset pages: pass the page's `next_after` as `after` for the
/// next one. `X-Cache` says whether the page came from the read cache.
#[utoipa::path(
    get,
    path = "/products",
    tag = "catalog",
    operation_id = "listProducts",
    security(("bearer" = ["customer", "partner", "admin", "service"])),
    params(ProductPageQuery),
    responses(
        (status = 200, description = "A page of products", body = ProductPage,
            headers(("X-Cache" = String, description = "`hit` or `miss`: answered from the read cache or the database"))),
        (status = 422, description = "`invalid`: `limit` out of range, `after` not a SKU", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<ApiState>,
    _caller: Caller,
    page: Result<Query<ProductPageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let after = page.after.unwrap_or_default();
    if !after.is_empty() && !is_valid_sku(&after) {
        return Err(ApiError::invalid(format!("after: {SKU_GRAMMAR}")));
    }
    let (products, status) = state.catalog.list(&after, limit).await?;
    let next_after = (products.len() as i64 == limit)
        .then(|| products.last().map(|p| p.sku.clone()))
        .flatten();
    Ok(with_cache_status(
        status,
        Json(ProductPage {
            products: products.to_vec(),
            next_after,
        }),
    ))
}

/// Read a product
///
/// Any authenticated caller. A product deleted while open orders held it is still shown,
/// `discontinued`. `X-Cache` says whether it came from the read cache.
#[utoipa::path(
    get,
    path = "/products/{sku}",
    tag = "catalog",
    operation_id = "getProduct",
    security(("bearer" = ["customer", "partner", "admin", "service"])),
    params(("sku" = String, Path, description = "The SKU", pattern = "^[A-Za-z0-9_-]{1,64}$", example = "milk-1l")),
    responses(
        (status = 200, description = "The product", body = Product,
            headers(("X-Cache" = String, description = "`hit` or `miss`: answered from the read cache or the database"))),
        (status = 404, description = "`not_found`: no such product", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<ApiState>,
    _caller: Caller,
    Path(sku_path): Path<String>,
) -> Result<Response, ApiError> {
    let sku = sku(&sku_path)?;
    let (product, status) = state.catalog.product(sku).await?;
    match product {
        Some(product) => Ok(with_cache_status(status, Json(product.as_ref().clone()))),
        None => Err(not_found()),
    }
}

/// Create or replace a product
///
/// Admins only. Sets the name, price and stock (a discontinued product is sold again).
/// A stock change publishes `stock.updated`.
#[utoipa::path(
    put,
    path = "/products/{sku}",
    tag = "catalog",
    operation_id = "putProduct",
    security(("bearer" = ["admin"])),
    params(("sku" = String, Path, description = "The SKU: 1 to 64 of A-Z a-z 0-9 _ -", pattern = "^[A-Za-z0-9_-]{1,64}$", example = "milk-1l")),
    request_body = ProductPut,
    responses(
        (status = 200, description = "Replaced", body = Product),
        (status = 201, description = "Created", body = Product),
        (status = 403, description = "`forbidden`: admins only", body = ErrorBody),
        (status = 409, description = "`conflict`: a concurrent first `PUT` of the same SKU was still being written; retry", body = ErrorBody),
        (status = 422, description = "`invalid`: a SKU outside the grammar, a blank name, a price of 0 or over the cap, a negative stock, an unknown field", body = ErrorBody),
    ),
)]
pub async fn put(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sku): Path<String>,
    body: Payload,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    caller.require(&[Role::Admin])?;
    let put: ProductPut = body.parse()?;
    if !is_valid_sku(&sku) {
        return Err(ApiError::invalid(SKU_GRAMMAR));
    }
    put.validate(state.config.order_limits.max_unit_price_paise)
        .map_err(ApiError::invalid)?;
    let store = state.store.clone();
    let written = sku.clone();
    let (product, created) = state
        .catalog
        .write(
            async move { store.put_product(&written, &put).await },
            move |_| vec![sku],
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(product)))
}

/// Change a product, or restock it
///
/// Admins only. Any of `name`, `price_paise`, `stock`; or `stock_delta` to add units to (or
/// take them from) the stock as it is now. A stock change publishes `stock.updated`.
#[utoipa::path(
    patch,
    path = "/products/{sku}",
    tag = "catalog",
    operation_id = "patchProduct",
    security(("bearer" = ["admin"])),
    params(("sku" = String, Path, description = "The SKU", pattern = "^[A-Za-z0-9_-]{1,64}$", example = "milk-1l")),
    request_body = ProductPatch,
    responses(
        (status = 200, description = "The product as changed", body = Product),
        (status = 403, description = "`forbidden`: admins only", body = ErrorBody),
        (status = 404, description = "`not_found`: no such product", body = ErrorBody),
        (status = 409, description = "`conflict`: `stock_delta` would take the stock below 0 or over the maximum", body = ErrorBody),
        (status = 422, description = "`invalid`: no field, a blank name, a price of 0 or over the cap, a negative stock, `stock` with `stock_delta`, an unknown field", body = ErrorBody),
    ),
)]
pub async fn patch(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sku_path): Path<String>,
    body: Payload,
) -> Result<Json<Product>, ApiError> {
    caller.require(&[Role::Admin])?;
    let sku = sku(&sku_path)?;
    let parsed = body.parse::<ProductPatch>().and_then(|patch| {
        patch
            .validate(state.config.order_limits.max_unit_price_paise)
            .map(|()| patch)
            .map_err(ApiError::invalid)
    });
    // The order of checks: an unknown product is 404 whatever the body.
    let patch = match parsed {
        Ok(patch) => patch,
        Err(invalid) => {
            return match state.store.product(sku).await? {
                None => Err(not_found()),
                Some(_) => Err(invalid),
            };
        }
    };
    let (store, written) = (state.store.clone(), sku.to_owned());
    let product = state
        .catalog
        .write(
            async move { store.patch_product(&written, &patch).await },
            |product: &Product| vec![product.sku.clone()],
        )
        .await?;
    Ok(Json(product))
}

/// Delete a product
///
/// Admins only. A product no open order holds is removed (404 from then on); one that open
/// orders hold stays readable, `discontinued`, and can no longer be ordered (a `PUT` sells
/// it again).
#[utoipa::path(
    delete,
    path = "/products/{sku}",
    tag = "catalog",
    operation_id = "deleteProduct",
    security(("bearer" = ["admin"])),
    params(("sku" = String, Path, description = "The SKU", pattern = "^[A-Za-z0-9_-]{1,64}$", example = "milk-1l")),
    responses(
        (status = 200, description = "Open orders hold it: kept, `discontinued`", body = Product),
        (status = 204, description = "Removed"),
        (status = 403, description = "`forbidden`: admins only", body = ErrorBody),
        (status = 404, description = "`not_found`: no such product", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sku_path): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let sku = sku(&sku_path)?;
    let (store, written) = (state.store.clone(), sku.to_owned());
    let changed = written.clone();
    let deleted = state
        .catalog
        .write(
            async move { store.delete_product(&written).await },
            move |_| vec![changed],
        )
        .await?;
    Ok(match deleted {
        Deleted::Removed => StatusCode::NO_CONTENT.into_response(),
        Deleted::Discontinued(product) => Json(product).into_response(),
    })
}
