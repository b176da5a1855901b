//! The distributed gateway's backend: the shared state in Redis first, the API second, never a
//! database.
//!
//! ```text
//! subscribe / location op
//!   └─ order(id) ─┬─ Redis: snap:order:{id} + pos:{id} (one MGET) ── hit → answer
//!                 └─ miss (never written, expired, Redis flushed or down), or a fresh read
//!                      └─ GET {api}/internal/orders/{id} with a service token → the database
//! (products alike: snap:product:{sku}, then GET {api}/internal/products/{sku})
//! ```
//!
//! The API's outbox relay writes every order's and the revenue's snapshot to Redis before it
//! publishes the events of the same commit (see `switchyard_api::relay`), so a snapshot from
//! Redis is never older than the room position a subscriber reads after joining. Partner
//! positions go to Redis in batches (`pos:{id}`, read with the snapshot, and the queue the API
//! writes to the database from).
//!
//! Chat writes (`send`, `read`) always go to the API (`POST /internal/orders/{id}/messages`,
//! `…/read`), which stores them with their events; a send is retried on the next API process
//! when one does not answer — safe, since a send is idempotent by its `client_msg_id`. The
//! read state of an order room's snapshot comes from `GET /internal/orders/{id}/chat?sub=`.
//! The `chat.typing` throttle across gateways claims a user's turn in Redis
//! (`SharedState::claim_typing`).
//!
//! Reads that go to the API are counted in `switchyard_backend_reads_total{source="api"}`
//! (those answered by Redis: `source="shared_state"`): a high API share means Redis lost its
//! data or the relay is behind.

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use switchyard_auth::{Issuer, now_secs};
use switchyard_broker::state::{Cached, SharedState};
use switchyard_gateway::backend::{Backend, BackendError, ChatError, Read, Sender};
use switchyard_gateway::locations::newest;
use switchyard_protocol::chat::{ChatMessage, ChatState, NewMessage};
use switchyard_protocol::{Location, Order, Product, Revenue, Role, Room};

/// Lifetime of a service token the gateway signs itself; renewed when a quarter is left.
const MINTED_TOKEN_TTL: u64 = 3600;

/// How the gateway authenticates to `/internal`.
pub enum ServiceToken {
    /// Given by the operator (`SWITCHYARD_SERVICE_TOKEN`).
    Fixed(String),
    /// Signed here with the HS256 secret, renewed before it expires.
    Minted {
        issuer: Issuer,
        /// The current token and its `exp`.
        current: Mutex<(String, u64)>,
    },
}

impl ServiceToken {
    pub fn minted(issuer: Issuer) -> ServiceToken {
        ServiceToken::Minted {
            issuer,
            current: Mutex::new((String::new(), 0)),
        }
    }

    fn get(&self) -> String {
        match self {
            ServiceToken::Fixed(token) => token.clone(),
            ServiceToken::Minted { issuer, current } => {
                let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
                let now = now_secs();
                if current.1 < now + MINTED_TOKEN_TTL / 4 {
                    *current = (
                        issuer.issue("switchyard-gateway", Role::Service, MINTED_TOKEN_TTL),
                        now + MINTED_TOKEN_TTL,
                    );
                }
                current.0.clone()
            }
        }
    }
}

/// The API's `/internal` routes, over one or more base URLs.
pub struct ApiClient {
    http: reqwest::Client,
    bases: Vec<String>,
    /// Where the next request starts, so requests spread over the API processes.
    next: AtomicUsize,
    token: ServiceToken,
}

impl ApiClient {
    pub fn new(
        bases: Vec<String>,
        token: ServiceToken,
        timeout: Duration,
    ) -> Result<ApiClient, String> {
        if bases.is_empty() {
            return Err("`switchyard gateway` needs SWITCHYARD_API_URL: the API processes it asks when Redis has no snapshot".into());
        }
        let bases = bases
            .into_iter()
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .collect::<Vec<_>>();
        if let Some(bad) = bases
            .iter()
            .find(|b| !(b.starts_with("http://") || b.starts_with("https://")))
        {
            return Err(format!(
                "SWITCHYARD_API_URL: {bad:?} is not an http:// or https:// URL"
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ApiClient {
            http,
            bases,
            next: AtomicUsize::new(0),
            token,
        })
    }

    /// Sends the request `build` makes for each API base in turn, starting from the next one
    /// round-robin, and returns the first answer that is not a 5xx (draining, database down),
    /// with the base that gave it. A base that does not answer is skipped too.
    async fn first_answer(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<(&str, reqwest::Response), BackendError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let token = self.token.get();
        let mut last = String::new();
        for i in 0..self.bases.len() {
            let base = &self.bases[(start + i) % self.bases.len()];
            match build(base).bearer_auth(&token).send().await {
                Err(err) => last = format!("{base}: {err}"),
                Ok(response) if response.status().is_server_error() => {
                    last = format!("{base}: {}", response.status());
                }
                Ok(response) => return Ok((base, response)),
            }
        }
        Err(BackendError(format!("no API process answered: {last}")))
    }

    /// `GET {base}{path}`: `Some` on 200, `None` on 404.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, BackendError> {
        let (base, response) = self
            .first_answer(|base| self.http.get(format!("{base}{path}")))
            .await?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(BackendError(format!("{base}{path}: {status}")));
        }
        metrics::counter!("switchyard_backend_reads_total", "source" => "api").increment(1);
        response
            .json()
            .await
            .map(Some)
            .map_err(|e| BackendError(format!("{base}{path}: {e}")))
    }

    /// `POST {base}{path}` with a JSON body, for the chat writes: the answer's body on 2xx
    /// (`null` when empty); the store's refusal on 403, 404 and 422. 5xx moves on to the
    /// next base (the writes are idempotent).
    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ChatError> {
        let (base, response) = self
            .first_answer(|base| self.http.post(format!("{base}{path}")).json(body))
            .await?;
        let status = response.status();
        if status.is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| BackendError(format!("{base}{path}: {e}")))?;
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes)
                .map_err(|e| BackendError(format!("{base}{path}: {e}")).into());
        }
        let message = response
            .json::<switchyard_protocol::ErrorBody>()
            .await
            .map(|body| body.message.to_string())
            .unwrap_or_else(|_| status.to_string());
        Err(match status.as_u16() {
            404 => ChatError::NotMember,
            403 => ChatError::Forbidden(message),
            400 | 422 => ChatError::Invalid(message),
            _ => ChatError::Failed(BackendError(format!("{base}{path}: {status}"))),
        })
    }
}

/// Shared state first, API second.
pub struct Remote {
    pub state: Arc<dyn SharedState>,
    pub api: ApiClient,
}

impl Remote {
    /// What Redis holds for `room`; nothing when Redis cannot answer (the API will).
    async fn cached(&self, room: &Room) -> Cached {
        match self.state.cached(room).await {
            Ok(cached) => cached,
            Err(err) => {
                tracing::debug!(%err, %room, "shared state unavailable; asking the API");
                Cached::default()
            }
        }
    }
}

/// A cached JSON value; an unreadable one counts as missing (and is logged).
fn parse<T: DeserializeOwned>(json: Option<&str>, what: &str) -> Option<T> {
    match serde_json::from_str(json?) {
        Ok(value) => Some(value),
        Err(err) => {
            tracing::warn!(%err, what, "ignoring an unreadable cached value");
            None
        }
    }
}

#[async_trait]
impl Backend for Remote {
    async fn order(&self, id: i64, read: Read) -> Result<Option<Order>, BackendError> {
        let room = Room::order(&id.to_string()).map_err(|e| BackendError(e.to_string()))?;
        let cached = self.cached(&room).await;
        let position: Option<Location> = parse(cached.position.as_deref(), "position");
        let hit = match read {
            Read::Cached => parse::<Order>(cached.snapshot.as_deref(), "order snapshot"),
            Read::Fresh => None,
        };
        let mut order = match hit {
            Some(order) => {
                metrics::counter!("switchyard_backend_reads_total", "source" => "shared_state")
                    .increment(1);
                Some(order)
            }
            None => self.api.get(&format!("/internal/orders/{id}")).await?,
        };
        if let Some(order) = order.as_mut() {
            order.last_location = newest(order.last_location, position);
        }
        Ok(order)
    }

    async fn product(&self, sku: &str) -> Result<Option<Product>, BackendError> {
        let room = Room::product(sku).map_err(|e| BackendError(e.to_string()))?;
        let cached = self.cached(&room).await;
        // `null`: the product was removed.
        if let Some(product) =
            parse::<Option<Product>>(cached.snapshot.as_deref(), "product snapshot")
        {
            metrics::counter!("switchyard_backend_reads_total", "source" => "shared_state")
                .increment(1);
            return Ok(product);
        }
        self.api.get(&format!("/internal/products/{sku}")).await
    }

    async fn revenue(&self) -> Result<Revenue, BackendError> {
        let cached = self.cached(&Room::admin_revenue()).await;
        if let Some(revenue) = parse(cached.snapshot.as_deref(), "revenue snapshot") {
            metrics::counter!("switchyard_backend_reads_total", "source" => "shared_state")
                .increment(1);
            return Ok(revenue);
        }
        self.api
            .get("/internal/revenue")
            .await?
            .ok_or_else(|| BackendError("/internal/revenue: 404".into()))
    }

    async fn send_message(
        &self,
        order: i64,
        from: Sender<'_>,
        message: &NewMessage,
    ) -> Result<ChatMessage, ChatError> {
        let body = serde_json::json!({
            "sub": from.sub,
            "role": from.role,
            "text": message.text,
            "client_msg_id": message.client_msg_id,
        });
        self.api
            .post(&format!("/internal/orders/{order}/messages"), &body)
            .await
    }

    async fn mark_read(
        &self,
        order: i64,
        from: Sender<'_>,
        message_id: i64,
    ) -> Result<(), ChatError> {
        let body = serde_json::json!({
            "sub": from.sub,
            "role": from.role,
            "message_id": message_id.to_string(),
        });
        self.api
            .post::<serde_json::Value>(&format!("/internal/orders/{order}/read"), &body)
            .await?;
        Ok(())
    }

    async fn chat_state(&self, order: i64, sub: &str) -> Result<ChatState, BackendError> {
        // `sub` is a validated user id (`[A-Za-z0-9_-]`): nothing to escape in a query.
        self.api
            .get(&format!("/internal/orders/{order}/chat?sub={sub}"))
            .await?
            .ok_or_else(|| BackendError(format!("/internal/orders/{order}/chat: 404")))
    }

    async fn typing_turn(&self, order: i64, sub: &str, interval: Duration) -> bool {
        let Ok(room) = Room::order(&order.to_string()) else {
            return false;
        };
        match self.state.claim_typing(&room, sub, interval).await {
            Ok(turn) => turn,
            Err(err) => {
                // This gateway's throttle still holds; typing is not worth an error.
                tracing::debug!(%err, %room, "typing claim unavailable; forwarding");
                true
            }
        }
    }

    async fn write_positions(&self, batch: &[(i64, Location)]) -> Result<(), BackendError> {
        let batch: Vec<(i64, String)> = batch
            .iter()
            .filter_map(|(id, location)| Some((*id, serde_json::to_string(location).ok()?)))
            .collect();
        self.state
            .put_positions(&batch)
            .await
            .map_err(|e| BackendError(e.to_string()))
    }
}
