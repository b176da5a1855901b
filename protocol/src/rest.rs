//! Bodies of the REST API (`/api`) that are not orders themselves: requests, pages, receipts,
//! the publish API. The server deserializes the requests and serializes the answers with
//! these types, Rust clients the other way round, and the OpenAPI document is generated from
//! them (feature `schema`).

use crate::error::ErrorBody;
use crate::order::{Order, OrderStatus, Payment};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Query of `GET /api/orders`: keyset pagination, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "schema", into_params(parameter_in = Query))]
pub struct PageQuery {
    /// Only orders with an id greater than this: the previous page's `next_after` (empty or
    /// absent: from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", param(pattern = "^(|0|[1-9][0-9]{0,17})$"))]
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", param(minimum = 1, maximum = 200))]
    pub limit: Option<i64>,
}

/// One page of `GET /api/orders`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct OrderPage {
    pub orders: Vec<Order>,
    /// Pass as `after` for the next page; `null` when this page is the last.
    pub next_after: Option<String>,
}

/// Body of `POST /api/orders/{id}/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub status: OrderStatus,
}

/// Body of `POST /api/orders/{id}/assign`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The partner's user id (`sub`).
    #[cfg_attr(feature = "schema", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub partner: String,
}

/// Body of `POST /api/orders/{id}/payment`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// Must equal the order's `total_paise`.
    #[cfg_attr(feature = "schema", schema(minimum = 1))]
    pub amount_paise: i64,
}

/// What a payment's outcome says about it: always `paid` (failures are errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Paid,
}

/// Answer of `POST /api/orders/{id}/payment` (201, and the same body on a replay). It carries
/// no revenue totals: those are admins' (`GET /api/revenue`, `admin:revenue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PaymentReceipt {
    #[serde(flatten)]
    pub payment: Payment,
    pub status: PaymentStatus,
}

/// Answer of `POST /api/users/{sub}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Revocation {
    pub sub: String,
    /// Always `true`: every open WebSocket of the user is being closed with 4501.
    pub revoked: bool,
    /// The revocation's second (since the Unix epoch): every token of the user issued up to
    /// it is refused from now on; a token issued later works.
    pub revoked_at: u64,
}

/// Body of `POST /api/publish`, and one item of a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// A room of the room grammar (`user:{id}`, `order:{id}`, `product:{sku}`, `admin:revenue`,
    /// `admin:inventory`, `admin:orders`).
    #[cfg_attr(
        feature = "schema",
        schema(
            pattern = "^((user|order|product):[A-Za-z0-9_-]{1,64}|admin:revenue|admin:inventory|admin:orders|admin:fleet)$"
        )
    )]
    pub room: String,
    /// `[a-z][a-z0-9_.-]{0,63}`, outside the reserved `order.*`, `revenue.*`, `partner.*`,
    /// `stock.*`, `chat.*`.
    #[cfg_attr(feature = "schema", schema(pattern = "^[a-z][a-z0-9_.-]{0,63}$"))]
    pub event: String,
    /// A JSON object, published as the event's `data` unchanged.
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub data: Box<RawValue>,
}

/// Body of `POST /api/publish/batch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1,000 events, each shaped like a `PublishRequest`; items of one room are
    /// published in the order given. Each item is checked on its own: one that is not a valid
    /// `PublishRequest` (any JSON value is accepted here) gets an error result in its place,
    /// the others are published.
    #[cfg_attr(
        feature = "schema",
        schema(value_type = Vec<serde_json::Value>, min_items = 1, max_items = 1000)
    )]
    pub items: Vec<Box<RawValue>>,
}

/// A published event's room and offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Published {
    pub room: String,
    pub offset: u64,
}

/// One item's outcome in a batch: published, or the error that item got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum BatchResult {
    Published(Published),
    Failed(ErrorBody<'static>),
}

/// Answer of `POST /api/publish/batch`: one result per item, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct BatchResults {
    pub results: Vec<BatchResult>,
}
