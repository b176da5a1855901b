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
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use switchyard_auth::{Issuer, now_secs};
use switchyard_broker::state::{Cached, SharedState};
use switchyard_gateway::backend::{Backend, BackendError, ChatError, Read, Sender};
use switchyard_gateway::locations::newest;
use switchyard_protocol::chat::{ChatMessage, ChatState, NewMessage};
use switchyard_protocol::{Location, Order, Product, Revenue, Role, Room};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

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

/// How a gateway's requests to the API are bounded (`SWITCHYARD_API_*`, see
/// `crate::config::UpstreamArgs`).
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// One request's timeout.
    pub timeout: Duration,
    /// An op's whole wait for the API: a free request slot, the request, and the retries of
    /// an overloaded API's 503s. At least `timeout`.
    pub deadline: Duration,
    /// Requests in flight to the API at once, over every base; also the keep-alive pool's
    /// size. More wait for a free slot (within the deadline).
    pub max_in_flight: usize,
}

/// The first wait before a request refused with 503 and no `Retry-After` is sent again;
/// doubled per retry up to [`MAX_BACKOFF`], each wait drawn at random below it (full jitter:
/// gateways refused together do not come back together).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Rounds in which a failure that is not "not now" is tried again, within the op's deadline:
/// a 5xx other than 503 (a database error, a process restarting) or an answer whose body was
/// cut. Every request to `/internal` is idempotent (lookups; chat writes carry their
/// `client_msg_id`), so sending one again is safe; bounded, since a request the API cannot
/// serve at all keeps failing.
const FAILED_ROUNDS: u32 = 3;

/// How long an idle pooled connection to the API is kept: below the API's keep-alive idle
/// time (its `SWITCHYARD_HANDSHAKE_TIMEOUT_MS`, 5 s by default), so the gateway, not the API,
/// closes it, and a request never goes out on a connection the API is closing.
const POOL_IDLE: Duration = Duration::from_secs(3);

/// A lookup on its way to the API that later identical lookups join (see
/// [`ApiClient::get_shared`]): the body on 200, `None` on 404.
type Flight = Shared<BoxFuture<'static, Result<Option<Bytes>, String>>>;

/// The API's `/internal` routes, over one or more base URLs.
///
/// An overloaded API answers 503 (its listener over `SWITCHYARD_MAX_HTTP_CONNECTIONS`); a
/// burst of joins on a gateway must not become a burst of failed joins. So:
/// - at most `max_in_flight` requests are in flight at once, on pooled keep-alive
///   connections — a burst queues here (bounded by the op's deadline), not at the API;
/// - a 503 or 429 (from every base) and a connection refused or cut before an answer are
///   retried after the answer's `Retry-After`, or a jittered exponential backoff, as long as
///   the op's deadline allows (a timed-out request is not); other 5xx and answers cut
///   mid-body are retried too, in at most [`FAILED_ROUNDS`] rounds (the requests are
///   idempotent); every retry is counted in `switchyard_backend_api_retries_total`;
/// - identical cache-tolerant lookups (`Read::Cached` orders, products, revenue) still
///   waiting for a request slot share one request (single flight per path).
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    bases: Vec<String>,
    /// Where the next request starts, so requests spread over the API processes.
    next: AtomicUsize,
    token: ServiceToken,
    limits: ApiLimits,
    /// One permit per request in flight.
    slots: Semaphore,
    /// Lookups waiting for a request slot, by path. A flight leaves the map when it gets its
    /// slot, before its request is sent: a lookup joins only a request not sent yet, so its
    /// answer is never older than the lookup (a subscribe reads its snapshot after the room's
    /// position, and must not get one read before it). A std mutex: held for one map
    /// operation, never across an `.await`.
    flights: Mutex<HashMap<String, (u64, Flight)>>,
    /// Tells flights apart, so one leaves the map only itself.
    flight_ids: AtomicU64,
}

/// A request slot held until the answer's body has been read.
type Slot<'a> = SemaphorePermit<'a>;

impl ApiClient {
    pub fn new(
        bases: Vec<String>,
        token: ServiceToken,
        limits: ApiLimits,
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
        let limits = ApiLimits {
            max_in_flight: limits.max_in_flight.max(1),
            deadline: limits.deadline.max(limits.timeout),
            ..limits
        };
        let http = reqwest::Client::builder()
            .timeout(limits.timeout)
            .connect_timeout(limits.timeout)
            .pool_max_idle_per_host(limits.max_in_flight)
            .pool_idle_timeout(POOL_IDLE)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ApiClient {
            inner: Arc::new(Inner {
                http,
                bases,
                next: AtomicUsize::new(0),
                token,
                slots: Semaphore::new(limits.max_in_flight),
                limits,
                flights: Mutex::default(),
                flight_ids: AtomicU64::new(0),
            }),
        })
    }

    /// `GET {base}{path}`: `Some` on 200, `None` on 404. One request per call (a fresh read).
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, BackendError> {
        let deadline = Instant::now() + self.inner.limits.deadline;
        let slot = self.inner.slot(deadline).await?;
        let body = self.inner.fetch(path, slot, deadline).await?;
        decode(path, body)
    }

    /// Like [`get`](Self::get), but joins an identical lookup still waiting for its request
    /// slot: for reads a cached answer may serve.
    async fn get_shared<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, BackendError> {
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(path) {
                Some((_, flight)) => {
                    metrics::counter!("switchyard_backend_api_coalesced_total").increment(1);
                    flight.clone()
                }
                None => {
                    let id = self.inner.flight_ids.fetch_add(1, Ordering::Relaxed);
                    let flight = self.inner.clone().fly(path.to_owned(), id);
                    flights.insert(path.to_owned(), (id, flight.clone()));
                    flight
                }
            }
        };
        let body = flight.await.map_err(BackendError)?;
        decode(path, body)
    }

    /// `POST {base}{path}` with a JSON body, for the chat writes: the answer's body on 2xx
    /// (`null` when empty); the store's refusal on 403, 404 and 422. 5xx moves on to the
    /// next base, and to another round (the writes are idempotent).
    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ChatError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.limits.deadline;
        let slot = inner.slot(deadline).await?;
        let (base, response, _slot) = inner
            .first_answer(slot, deadline, |base| {
                inner.http.post(format!("{base}{path}")).json(body)
            })
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

/// A fetched body as `T`.
fn decode<T: DeserializeOwned>(path: &str, body: Option<Bytes>) -> Result<Option<T>, BackendError> {
    body.map(|bytes| serde_json::from_slice(&bytes))
        .transpose()
        .map_err(|e| BackendError(format!("{path}: {e}")))
}

impl Inner {
    /// A request slot, waiting for one at most until `deadline`.
    async fn slot(&self, deadline: Instant) -> Result<Slot<'_>, BackendError> {
        match tokio::time::timeout_at(deadline, self.slots.acquire()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => {
                metrics::counter!("switchyard_backend_api_slot_timeouts_total").increment(1);
                Err(BackendError(format!(
                    "no free request slot to the API within {:?} (SWITCHYARD_API_MAX_IN_FLIGHT = {})",
                    self.limits.deadline, self.limits.max_in_flight
                )))
            }
        }
    }

    /// A lookup others may join until it has its request slot (see [`Inner::flights`]). It
    /// runs in a task of its own, so it completes (and leaves the map) even when every
    /// lookup waiting for it is dropped (their connections closed).
    fn fly(self: Arc<Inner>, path: String, id: u64) -> Flight {
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + self.limits.deadline;
            let slot = self.slot(deadline).await;
            {
                let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
                if flights
                    .get(&path)
                    .is_some_and(|(current, _)| *current == id)
                {
                    flights.remove(&path);
                }
            }
            match slot {
                Ok(slot) => self.fetch(&path, slot, deadline).await.map_err(|e| e.0),
                Err(err) => Err(err.0),
            }
        });
        task.map(|joined| joined.unwrap_or_else(|e| Err(format!("API lookup failed: {e}"))))
            .boxed()
            .shared()
    }

    /// `GET {base}{path}` on `slot`: the body on 200, `None` on 404. An answer whose body is
    /// cut is asked for again (a lookup is idempotent), in at most [`FAILED_ROUNDS`] rounds
    /// within `deadline`.
    async fn fetch(
        &self,
        path: &str,
        slot: Slot<'_>,
        deadline: Instant,
    ) -> Result<Option<Bytes>, BackendError> {
        let mut slot = Some(slot);
        let mut rounds = 0;
        loop {
            let held = match slot.take() {
                Some(held) => held,
                None => self.slot(deadline).await?,
            };
            let (base, response, _held) = self
                .first_answer(held, deadline, |base| {
                    self.http.get(format!("{base}{path}"))
                })
                .await?;
            let status = response.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(BackendError(format!("{base}{path}: {status}")));
            }
            match response.bytes().await {
                Ok(body) => {
                    metrics::counter!("switchyard_backend_reads_total", "source" => "api")
                        .increment(1);
                    return Ok(Some(body));
                }
                Err(err) => {
                    rounds += 1;
                    let failed = BackendError(format!("{base}{path}: {}", chain(&err)));
                    if rounds >= FAILED_ROUNDS || Instant::now() >= deadline {
                        return Err(failed);
                    }
                    metrics::counter!("switchyard_backend_api_retries_total").increment(1);
                    tracing::debug!(%failed, "answer cut; asking again");
                }
            }
        }
    }

    /// Sends the request `build` makes for each API base in turn, starting from the next one
    /// round-robin, and returns the first answer that is not a 5xx (draining, database down),
    /// with the base that gave it and the slot it holds. A base that does not answer is
    /// skipped too. When every base refused with 503/429 or a connection refused or cut
    /// (overloaded, restarting), the round is tried again after `Retry-After` or a backoff,
    /// until `deadline`; when they failed with other 5xx, in at most [`FAILED_ROUNDS`] rounds.
    /// `slot` is held for each request and released while waiting.
    async fn first_answer<'a>(
        &'a self,
        slot: Slot<'a>,
        deadline: Instant,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<(&'a str, reqwest::Response, Slot<'a>), BackendError> {
        let token = self.token.get();
        let mut slot = Some(slot);
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let mut last = String::new();
            let mut again = false;
            let mut retry_after = None;
            for i in 0..self.bases.len() {
                let base = &self.bases[(start + i) % self.bases.len()];
                let held = match slot.take() {
                    Some(held) => held,
                    None => self.slot(deadline).await?,
                };
                let left = deadline.saturating_duration_since(Instant::now());
                let request = build(base).bearer_auth(&token);
                match request.timeout(self.limits.timeout.min(left)).send().await {
                    // Refused or cut before an answer: a full API's listener answers 503
                    // before it reads the request and closes, which the client may see as
                    // the connection closing under its request. A timeout is not retried:
                    // it already took its time (and may have been served).
                    Err(err) => {
                        again |= !err.is_timeout();
                        last = format!("{base}: {}", chain(&err));
                    }
                    Ok(response) if overloaded(response.status()) => {
                        again = true;
                        retry_after = retry_after.max(retry_after_header(&response));
                        last = format!("{base}: {}", response.status());
                    }
                    Ok(response) if response.status().is_server_error() => {
                        again |= attempts + 1 < FAILED_ROUNDS;
                        last = format!("{base}: {}", response.status());
                    }
                    Ok(response) => return Ok((base, response, held)),
                }
            }
            attempts += 1;
            let wait = match retry_after {
                // A little later than asked, spread so the refused do not come back at once.
                Some(after) => after + jitter(after / 2),
                None => jitter(backoff),
            };
            if !again || Instant::now() + wait >= deadline {
                return Err(BackendError(format!(
                    "no API process answered ({attempts} attempts): {last}"
                )));
            }
            metrics::counter!("switchyard_backend_api_retries_total").increment(1);
            tracing::debug!(%last, ?wait, "API overloaded; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// An answer that says "not now": the API's listener over its connection limit, a draining
/// process, a request over its deadline (503); a per-address limit (429).
fn overloaded(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::SERVICE_UNAVAILABLE
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Switchyard), at most the
/// longest backoff's worth of seconds a deadline can hold.
fn retry_after_header(response: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

/// An error with its causes (reqwest's own text is only "error sending request").
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A random duration in `[0, up_to]`.
fn jitter(up_to: Duration) -> Duration {
    up_to.mul_f64(rand::random::<f64>())
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
            // A cached read may share a lookup not sent yet; a fresh one asks on its own.
            None if read == Read::Cached => {
                self.api
                    .get_shared(&format!("/internal/orders/{id}"))
                    .await?
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
        self.api
            .get_shared(&format!("/internal/products/{sku}"))
            .await
    }

    async fn revenue(&self) -> Result<Revenue, BackendError> {
        let cached = self.cached(&Room::admin_revenue()).await;
        if let Some(revenue) = parse(cached.snapshot.as_deref(), "revenue snapshot") {
            metrics::counter!("switchyard_backend_reads_total", "source" => "shared_state")
                .increment(1);
            return Ok(revenue);
        }
        self.api
            .get_shared("/internal/revenue")
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
