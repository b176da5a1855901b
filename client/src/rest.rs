//! The REST API (`/api`, protocol/README.md and `/api/openapi.json`) as methods.
//!
//! Every call sends `Authorization: Bearer <token>`; an error answer becomes
//! [`RestError::Api`] with the server's error body, so callers branch on its code.

use reqwest::{Method, RequestBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_protocol::catalog::{
    Product, ProductPage, ProductPageQuery, ProductPatch, ProductPut,
};
use switchyard_protocol::order::NewOrder;
use switchyard_protocol::rest::{
    Assignment, OrderPage, PageQuery, PaymentReceipt, PaymentRequest, PublishRequest, Published,
    Revocation, StatusChange,
};
use switchyard_protocol::{ErrorBody, ErrorCode, Order, OrderStatus, Revenue};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The server answered with an error status and the protocol's error body.
    #[error("HTTP {status}: {body}")]
    Api {
        status: u16,
        body: ErrorBody<'static>,
    },
    /// The server answered something this client cannot read.
    #[error("HTTP {status}: unexpected answer: {detail}")]
    Unexpected { status: u16, detail: String },
    /// The server could not be reached (or the connection broke).
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
}

impl RestError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RestError::Api { status, .. } | RestError::Unexpected { status, .. } => Some(*status),
            RestError::Transport(e) => e.status().map(|s| s.as_u16()),
        }
    }

    /// The error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RestError::Api { body, .. } => Some(body.error),
            _ => None,
        }
    }
}

/// A payment's answer, and whether it was the replay of an earlier request with the same
/// `Idempotency-Key` (which counted nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paid {
    pub receipt: PaymentReceipt,
    pub replayed: bool,
}

/// The REST API of one server, as one caller.
#[derive(Debug, Clone)]
pub struct Rest {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Rest {
    /// `base` is the server's root (`http://127.0.0.1:8080`), `token` the caller's JWT.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Rest {
        Rest::with_http(reqwest::Client::new(), base, token)
    }

    /// Shares an HTTP client (its connection pool) with other callers.
    pub fn with_http(
        http: reqwest::Client,
        base: impl Into<String>,
        token: impl Into<String>,
    ) -> Rest {
        Rest {
            base: base.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            http,
        }
    }

    /// The same server as another caller.
    pub fn as_caller(&self, token: impl Into<String>) -> Rest {
        Rest {
            base: self.base.clone(),
            token: token.into(),
            http: self.http.clone(),
        }
    }

    /// `GET /api/products?after=&limit=`: one page of the catalog.
    pub async fn products(&self, page: &ProductPageQuery) -> Result<ProductPage, RestError> {
        let request = self.request(Method::GET, "/api/products").query(page);
        answer(request).await.map(|(body, _)| body)
    }

    /// `GET /api/products/{sku}`.
    pub async fn product(&self, sku: &str) -> Result<Product, RestError> {
        self.call(Method::GET, &format!("/api/products/{sku}"), None::<&()>)
            .await
    }

    /// `PUT /api/products/{sku}` (admins): creates or replaces it.
    pub async fn put_product(&self, sku: &str, product: &ProductPut) -> Result<Product, RestError> {
        self.call(Method::PUT, &format!("/api/products/{sku}"), Some(product))
            .await
    }

    /// `PATCH /api/products/{sku}` (admins), e.g. a restock (`stock_delta`).
    pub async fn patch_product(
        &self,
        sku: &str,
        patch: &ProductPatch,
    ) -> Result<Product, RestError> {
        self.call(Method::PATCH, &format!("/api/products/{sku}"), Some(patch))
            .await
    }

    /// `POST /api/orders` (customers).
    pub async fn create_order(&self, order: &NewOrder) -> Result<Order, RestError> {
        self.call(Method::POST, "/api/orders", Some(order)).await
    }

    /// `GET /api/orders/{id}`.
    pub async fn order(&self, id: &str) -> Result<Order, RestError> {
        self.call(Method::GET, &format!("/api/orders/{id}"), None::<&()>)
            .await
    }

    /// `GET /api/orders?after=&limit=`: one page of the orders the caller may see.
    pub async fn orders(&self, page: &PageQuery) -> Result<OrderPage, RestError> {
        let request = self.request(Method::GET, "/api/orders").query(page);
        answer(request).await.map(|(body, _)| body)
    }

    /// `POST /api/orders/{id}/status`.
    pub async fn set_status(&self, id: &str, status: OrderStatus) -> Result<Order, RestError> {
        let path = format!("/api/orders/{id}/status");
        self.call(Method::POST, &path, Some(&StatusChange { status }))
            .await
    }

    /// `POST /api/orders/{id}/assign` (admins).
    pub async fn assign(&self, id: &str, partner: &str) -> Result<Order, RestError> {
        let path = format!("/api/orders/{id}/assign");
        let body = Assignment {
            partner: partner.to_owned(),
        };
        self.call(Method::POST, &path, Some(&body)).await
    }

    /// `POST /api/orders/{id}/payment` with an `Idempotency-Key`.
    pub async fn pay(&self, id: &str, amount_paise: i64, key: &str) -> Result<Paid, RestError> {
        let request = self
            .request(Method::POST, &format!("/api/orders/{id}/payment"))
            .header("idempotency-key", key)
            .json(&PaymentRequest { amount_paise });
        let (receipt, headers) = answer(request).await?;
        let replayed = headers
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes() == b"true");
        Ok(Paid { receipt, replayed })
    }

    /// `GET /api/revenue` (admins).
    pub async fn revenue(&self) -> Result<Revenue, RestError> {
        self.call(Method::GET, "/api/revenue", None::<&()>).await
    }

    /// `POST /api/publish` (services, admins).
    pub async fn publish(&self, event: &PublishRequest) -> Result<Published, RestError> {
        self.call(Method::POST, "/api/publish", Some(event)).await
    }

    /// `POST /api/users/{sub}/revoke` (admins, services).
    pub async fn revoke(&self, sub: &str) -> Result<Revocation, RestError> {
        let path = format!("/api/users/{sub}/revoke");
        self.call(Method::POST, &path, None::<&()>).await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, RestError> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        answer(request).await.map(|(body, _)| body)
    }
}

/// Sends the request; a 2xx body as `T` with the headers, anything else as an error.
async fn answer<T: DeserializeOwned>(
    request: RequestBuilder,
) -> Result<(T, reqwest::header::HeaderMap), RestError> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await?;
    if (200..300).contains(&status) {
        let body = serde_json::from_slice(&bytes).map_err(|e| RestError::Unexpected {
            status,
            detail: e.to_string(),
        })?;
        return Ok((body, headers));
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Err(RestError::Api {
            status,
            body: body.into_owned(),
        }),
        Err(_) => Err(RestError::Unexpected {
            status,
            detail: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        }),
    }
}
