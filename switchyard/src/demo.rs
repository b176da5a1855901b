//! `switchyard demo`: the embedded server plus a small simulated city, so a newcomer sees
//! orders, payments, the revenue ticker and moving delivery partners within seconds.
//!
//! The server is exactly `switchyard all` ([`server::run`] on the same listener). The
//! simulator beside it is an ordinary client of that server: it speaks only the public REST
//! API and the WebSocket protocol over loopback, with tokens signed by the embedded secret
//! (or `JWT_SECRET`), like any app would. Its actors:
//!
//! - **customers** (`demo-c1`…): each keeps a WebSocket open (its `user:` room) and places an
//!   order in turn, about one every 2 s across all of them (at most [`MAX_OPEN_PER_CUSTOMER`]
//!   open each), then pays it with an `Idempotency-Key` — sometimes twice with the same key (the
//!   second answer is a replay and counts nothing), and one order in seven never (the admin
//!   cancels it);
//! - **the admin** (`demo-admin`) watches `admin:revenue` and the customers' rooms over its
//!   WebSocket, and moves each order along over REST: placed → confirmed (once paid) → packed
//!   → assigned to a free partner → out_for_delivery → delivered;
//! - **partners** (`demo-p1`…): each keeps a WebSocket open, learns its assignments from
//!   `order.assigned` in its user room, joins the order's room (the snapshot gives the
//!   address, which the simulator's tiny "geocoder" turns into coordinates), and while the
//!   order is out for delivery sends a `location` op every tick, driving in a straight line
//!   from the store in central Bengaluru to the customer.
//!
//! Everything is bounded (fixed numbers of actors and open orders) and stops on the same
//! shutdown as the server (Ctrl-C/SIGTERM), which then drains as `all` does.

use crate::config::{DemoArgs, DemoSpeed, KeySource, Server, secret_path};
use crate::server;
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchyard_auth::{Issuer, VerifyKey, secret};
use switchyard_protocol::{OrderStatus, Role};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

/// Orders a customer may have open at once (keeps the simulation bounded).
pub const MAX_OPEN_PER_CUSTOMER: usize = 2;
/// Lifetime of the simulator's tokens; it runs for as long as the server does.
const TOKEN_TTL: u64 = 7 * 24 * 3600;
/// The dark store every order leaves from (central Bengaluru).
const STORE: (f64, f64) = (12.9716, 77.5946);
/// Customers' addresses and where they are: the simulator's whole "geocoder".
const HOMES: &[(&str, f64, f64)] = &[
    ("14 80 Feet Road, Koramangala", 12.9352, 77.6245),
    ("3 CMH Road, Indiranagar", 12.9784, 77.6408),
    ("27 Bellary Road, Hebbal", 13.0358, 77.5970),
    ("9 4th Block, Jayanagar", 12.9250, 77.5938),
    ("51 Sampige Road, Malleshwaram", 13.0031, 77.5643),
    ("8 Old Airport Road, HAL", 12.9591, 77.6974),
];
/// What customers buy: (sku, price in paise).
const CATALOG: &[(&str, i64)] = &[
    ("milk-1l", 6_500),
    ("bread-400g", 4_500),
    ("eggs-12", 9_000),
    ("bananas-1kg", 5_500),
    ("coffee-200g", 32_000),
    ("paneer-200g", 9_500),
];

/// How fast the simulated world moves.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// One simulation step: partners send one location per tick.
    pub tick: Duration,
    /// Ticks between two orders (across all customers).
    pub order_every: u64,
    /// Ticks an order stays in each of placed, confirmed, packed.
    pub step: u64,
    /// Ticks a delivery drive takes.
    pub travel: u64,
}

impl Pace {
    pub fn of(speed: DemoSpeed) -> Pace {
        match speed {
            // Locations at 1 Hz, an order every ~2 s, a drive of 20 s.
            DemoSpeed::Normal => Pace {
                tick: Duration::from_millis(1000),
                order_every: 2,
                step: 3,
                travel: 20,
            },
            // Four times faster (locations at 4/s, within the default 5/s location limit):
            // a whole order, placed to delivered, takes about 4 s. For tests and impatience.
            DemoSpeed::Fast => Pace {
                tick: Duration::from_millis(250),
                order_every: 2,
                step: 2,
                travel: 8,
            },
        }
    }
}

/// Runs the embedded server on `listener` and the simulator against it until `shutdown`.
pub async fn run(
    args: DemoArgs,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let issuer = Arc::new(demo_issuer(&args)?);
    let addr = client_addr(listener.local_addr()?);
    let pace = Pace::of(args.demo_speed);
    let customers = args.customers.clamp(1, 50);
    let partners = args.partners.clamp(1, 50);
    let server = tokio::spawn(server::run(
        Server::All(args.serve.clone()),
        listener,
        shutdown.clone(),
    ));
    let world = World {
        base: format!("http://{addr}"),
        ws: format!("ws://{addr}/ws"),
        http: reqwest::Client::new(),
        issuer,
        pace,
        shutdown: shutdown.clone(),
        placed: Arc::new(AtomicU64::new(0)),
    };
    let simulator = tokio::spawn(async move {
        if !world.wait_ready().await {
            return;
        }
        println!(
            "\nswitchyard demo: {customers} customers, {partners} partners ({:?} pace)\n  \
             dashboard: {}/#token={}\n  metrics:   {}/metrics\n  Ctrl-C to stop\n",
            args.demo_speed,
            world.base,
            world.token("admin", Role::Admin),
            world.base
        );
        let mut tasks = Vec::new();
        let partner_ids: Vec<String> = (1..=partners).map(|i| format!("demo-p{i}")).collect();
        let customer_ids: Vec<String> = (1..=customers).map(|i| format!("demo-c{i}")).collect();
        for (i, c) in customer_ids.iter().enumerate() {
            tasks.push(tokio::spawn(world.clone().customer(
                c.clone(),
                i,
                customers,
            )));
        }
        for p in &partner_ids {
            tasks.push(tokio::spawn(world.clone().partner(p.clone())));
        }
        tasks.push(tokio::spawn(world.clone().admin(customer_ids, partner_ids)));
        for task in tasks {
            let _ = task.await;
        }
    });
    let result = server.await.context("server task")?;
    // The server returns after `shutdown`: the actors have stopped or stop now.
    let _ = tokio::time::timeout(Duration::from_secs(5), simulator).await;
    result
}

/// Signs the simulator's tokens with the server's key: `JWT_SECRET`, or the embedded secret
/// beside the database (created here if it is the first start; the server then loads it).
fn demo_issuer(args: &DemoArgs) -> anyhow::Result<Issuer> {
    let jwt = &args.serve.serve.jwt;
    let secret = match jwt.key_source().map_err(anyhow::Error::msg)? {
        KeySource::Configured(config) => match config.key {
            VerifyKey::Secret(bytes) => bytes,
            VerifyKey::PublicPem { .. } => anyhow::bail!(
                "`switchyard demo` signs its own tokens: it needs JWT_SECRET (HS256) or no key \
                 at all (the embedded secret), not JWT_PUBLIC_KEY_FILE"
            ),
        },
        KeySource::Unset => {
            let path = secret_path(&args.serve.database.database_url);
            secret::load_or_create(&path)
                .with_context(|| format!("embedded JWT secret at {}", path.display()))?
                .into_bytes()
        }
    };
    Ok(Issuer::new(
        &secret,
        jwt.jwt_issuer.clone(),
        jwt.jwt_audience.clone(),
    ))
}

/// Where the simulator connects: the listening address, or loopback when it listens on
/// every interface.
fn client_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// What every actor shares: where the server is, how to sign, how fast to go.
#[derive(Clone)]
struct World {
    base: String,
    ws: String,
    http: reqwest::Client,
    issuer: Arc<Issuer>,
    pace: Pace,
    shutdown: CancellationToken,
    /// Orders placed so far (decides which ones go unpaid or get paid twice).
    placed: Arc<AtomicU64>,
}

impl World {
    fn token(&self, sub: &str, role: Role) -> String {
        self.issuer.issue(sub, role, TOKEN_TTL)
    }

    async fn wait_ready(&self) -> bool {
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    /// A REST call; the status and the JSON body (`null` when there is none), or `None` when
    /// the server could not be reached.
    async fn call(
        &self,
        token: &str,
        path: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> Option<(u16, Value)> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            tracing::debug!(path, status, %body, "demo: request refused");
        }
        Some((status, body))
    }

    /// The caller's orders that are not finished (admin: all of them), through the paged
    /// `GET /api/orders`.
    async fn open_orders(&self, token: &str) -> Vec<OpenOrder> {
        let mut open = Vec::new();
        let mut after = String::new();
        // Bounded: 50 pages of 200.
        for _ in 0..50 {
            let Ok(response) = self
                .http
                .get(format!("{}/api/orders?limit=200{after}", self.base))
                .bearer_auth(token)
                .send()
                .await
            else {
                break;
            };
            let Ok(page) = response.json::<Value>().await else {
                break;
            };
            for order in page["orders"].as_array().into_iter().flatten() {
                let stage = match serde_json::from_value::<OrderStatus>(order["status"].clone()) {
                    Ok(status) if !status.is_final() => status,
                    _ => continue,
                };
                if let Some(id) = order["id"].as_str() {
                    open.push(OpenOrder {
                        id: id.to_owned(),
                        stage,
                        paid: order["paid"] == true,
                        partner: order["partner"].as_str().map(str::to_owned),
                    });
                }
            }
            match page["next_after"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
        open
    }

    /// Opens a WebSocket as `sub`, retrying until it succeeds or the demo stops.
    async fn connect(&self, sub: &str, role: Role) -> Option<Socket> {
        loop {
            let mut request = self.ws.as_str().into_client_request().ok()?;
            let bearer = format!("Bearer {}", self.token(sub, role));
            request
                .headers_mut()
                .insert("authorization", HeaderValue::from_str(&bearer).ok()?);
            tokio::select! {
                connected = tokio_tungstenite::connect_async(request) => match connected {
                    Ok((ws, _)) => return Some(Socket {
                        ws,
                        next_id: 1,
                        early: Default::default(),
                    }),
                    Err(err) => tracing::debug!(sub, %err, "demo: cannot connect; retrying"),
                },
                _ = self.shutdown.cancelled() => return None,
            }
            tokio::select! {
                _ = tokio::time::sleep(self.pace.tick * 4) => {}
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// A customer: an order every `order_every × customers` ticks (staggered by `index`),
    /// paid one tick later.
    async fn customer(self, me: String, index: usize, customers: usize) {
        let token = self.token(&me, Role::Customer);
        let home = HOMES[index % HOMES.len()];
        let every = self.pace.order_every * customers as u64;
        let mut tick = tokio::time::interval(self.pace.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        // (order id, total, key, pay twice) to pay at the next tick.
        let mut to_pay: Vec<(String, i64, bool)> = Vec::new();
        let mut open: Vec<String>;
        while let Some(mut socket) = self.connect(&me, Role::Customer).await {
            // Orders left open by an earlier run or before a reconnect count too.
            open = self
                .open_orders(&token)
                .await
                .into_iter()
                .map(|o| o.id)
                .collect();
            loop {
                tokio::select! {
                    frame = socket.next() => {
                        let Some(frame) = frame else { break };
                        // Its own orders finishing make room for the next.
                        if frame["event"] == "order.status"
                            && matches!(frame["data"]["status"].as_str(), Some("delivered" | "cancelled"))
                        {
                            let id = frame["data"]["order_id"].as_str().unwrap_or_default();
                            open.retain(|o| o != id);
                        }
                    }
                    _ = tick.tick() => {
                        for (order, total, twice) in std::mem::take(&mut to_pay) {
                            self.pay(&token, &order, total, twice).await;
                        }
                        let turn = n % every == (index as u64 * self.pace.order_every) % every;
                        n += 1;
                        if turn
                            && open.len() < MAX_OPEN_PER_CUSTOMER
                            && let Some((order, total)) = self.place(&token, &me, home.0).await
                        {
                            let k = self.placed.fetch_add(1, Ordering::Relaxed);
                            // One order in seven is never paid (the admin cancels it).
                            if k % 7 != 6 {
                                to_pay.push((order.clone(), total, k % 4 == 1));
                            }
                            open.push(order);
                        }
                    }
                    _ = self.shutdown.cancelled() => {
                        socket.close().await;
                        return;
                    }
                }
            }
        }
    }

    /// Places an order of one to three catalog items; returns its id and total.
    async fn place(&self, token: &str, me: &str, address: &str) -> Option<(String, i64)> {
        let seed = self.placed.load(Ordering::Relaxed) * 7 + me.len() as u64;
        let items: Vec<Value> = (0..1 + seed % 3)
            .map(|i| {
                let (sku, price) = CATALOG[((seed + i * 5) % CATALOG.len() as u64) as usize];
                json!({ "sku": sku, "qty": 1 + (seed + i) % 2, "unit_price_paise": price })
            })
            .collect();
        let (status, order) = self
            .call(
                token,
                "/api/orders",
                json!({ "items": items, "address": address }),
                None,
            )
            .await?;
        if status != 201 {
            return None;
        }
        let id = order["id"].as_str()?.to_owned();
        tracing::info!(order = %id, customer = me, total_paise = order["total_paise"].as_i64(), "demo: order placed");
        Some((id, order["total_paise"].as_i64()?))
    }

    /// Pays an order with an idempotency key; `twice` sends the very same request again, as
    /// a phone retrying after a timeout would (the answer is a replay, revenue counts once).
    async fn pay(&self, token: &str, order: &str, total: i64, twice: bool) {
        let key = format!("demo-pay-{order}");
        let body = json!({ "amount_paise": total });
        for _ in 0..if twice { 2 } else { 1 } {
            let path = format!("/api/orders/{order}/payment");
            if let Some((status, answer)) = self.call(token, &path, body.clone(), Some(&key)).await
                && status == 201
            {
                tracing::info!(
                    order,
                    amount_paise = total,
                    payment = answer["payment_id"].as_str(),
                    "demo: order paid"
                );
            }
        }
    }

    /// The admin: follows the customers' rooms (orders created and paid) and moves every
    /// order on over REST, one step each `step` ticks.
    async fn admin(self, customers: Vec<String>, partners: Vec<String>) {
        let token = self.token("demo-admin", Role::Admin);
        let mut orders: HashMap<String, Tracked> = HashMap::new();
        let mut busy: HashMap<String, usize> = partners.iter().map(|p| (p.clone(), 0)).collect();
        let mut tick = tokio::time::interval(self.pace.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut now: u64 = 0;
        while let Some(mut socket) = self.connect("demo-admin", Role::Admin).await {
            socket.subscribe("admin:revenue").await;
            for c in &customers {
                socket.subscribe(&format!("user:{c}")).await;
            }
            // Subscribed for real before listing: an order created in between is in the list
            // or in the events, never in neither.
            if !socket.settle().await {
                continue;
            }
            // Orders created before the subscriptions (or by an earlier run) are taken over
            // from the list; the events cover everything after.
            for o in self.open_orders(&token).await {
                orders.entry(o.id).or_insert_with(|| {
                    if let Some(p) = &o.partner {
                        *busy.entry(p.clone()).or_default() += 1;
                    }
                    Tracked {
                        stage: o.stage,
                        since: now,
                        paid: o.paid,
                        partner: o.partner,
                    }
                });
            }
            loop {
                tokio::select! {
                    frame = socket.next() => {
                        let Some(frame) = frame else { break };
                        let data = &frame["data"];
                        match frame["event"].as_str() {
                            Some("order.created") => {
                                if let Some(id) = data["id"].as_str() {
                                    orders.entry(id.to_owned()).or_insert(Tracked {
                                        stage: OrderStatus::Placed,
                                        since: now,
                                        paid: false,
                                        partner: None,
                                    });
                                }
                            }
                            Some("order.paid") => {
                                if let Some(o) = data["order_id"].as_str().and_then(|id| orders.get_mut(id)) {
                                    o.paid = true;
                                }
                            }
                            Some("revenue.updated") => tracing::debug!(
                                total_paise = data["total_paise"].as_i64(),
                                paid_orders = data["paid_orders"].as_i64(),
                                "demo: revenue"
                            ),
                            _ => {}
                        }
                    }
                    _ = tick.tick() => {
                        now += 1;
                        let due: Vec<String> = orders
                            .iter()
                            .filter(|(_, o)| now >= o.since + ticks(o.stage, &self.pace))
                            .map(|(id, _)| id.clone())
                            .collect();
                        for id in due {
                            let Some(o) = orders.get_mut(&id) else { continue };
                            if let Some(next) = self.advance(&token, &id, o, &mut busy).await {
                                o.stage = next;
                                o.since = now;
                            }
                            if o.stage.is_final() {
                                if let Some(p) = o.partner.take() {
                                    busy.entry(p).and_modify(|n| *n = n.saturating_sub(1));
                                }
                                orders.remove(&id);
                            }
                        }
                    }
                    _ = self.shutdown.cancelled() => {
                        socket.close().await;
                        return;
                    }
                }
            }
        }
    }

    /// One step of an order's life; the stage it reached, or `None` to try again next tick.
    async fn advance(
        &self,
        token: &str,
        id: &str,
        order: &mut Tracked,
        busy: &mut HashMap<String, usize>,
    ) -> Option<OrderStatus> {
        let next = match order.stage {
            OrderStatus::Placed if order.paid => OrderStatus::Confirmed,
            // Unpaid for three steps: payment timed out.
            OrderStatus::Placed => OrderStatus::Cancelled,
            OrderStatus::Confirmed => OrderStatus::Packed,
            OrderStatus::Packed => {
                // Hand it to the least busy partner who is free.
                let (partner, _) = busy
                    .iter()
                    .filter(|(_, n)| **n == 0)
                    .min_by_key(|(p, _)| p.as_str())?;
                let partner = partner.clone();
                let path = format!("/api/orders/{id}/assign");
                let (status, _) = self
                    .call(token, &path, json!({ "partner": partner }), None)
                    .await?;
                if status != 200 {
                    return None;
                }
                *busy.entry(partner.clone()).or_default() += 1;
                order.partner = Some(partner);
                OrderStatus::OutForDelivery
            }
            OrderStatus::OutForDelivery => OrderStatus::Delivered,
            OrderStatus::Delivered | OrderStatus::Cancelled => return None,
        };
        let path = format!("/api/orders/{id}/status");
        let (status, _) = self
            .call(token, &path, json!({ "status": next.as_str() }), None)
            .await?;
        match status {
            200 => {
                if next.is_final() {
                    tracing::info!(order = id, status = next.as_str(), "demo: order finished");
                }
                Some(next)
            }
            // Someone else moved it (e.g. the order is already finished): stop tracking.
            409 => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }

    /// A partner: deliveries come from `order.assigned` in its user room; while one is out for
    /// delivery, a location every tick along the way.
    async fn partner(self, me: String) {
        let mut deliveries: HashMap<String, Delivery> = HashMap::new();
        let mut tick = tokio::time::interval(self.pace.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let drive = self.pace.tick * self.pace.travel as u32;
        let token = self.token(&me, Role::Partner);
        while let Some(mut socket) = self.connect(&me, Role::Partner).await {
            // At start or after a reconnect: the open orders it carries, rooms joined again.
            for o in self.open_orders(&token).await {
                deliveries.entry(o.id).or_insert(Delivery {
                    to: None,
                    started: None,
                });
            }
            for id in deliveries.keys() {
                socket.subscribe(&format!("order:{id}")).await;
            }
            loop {
                tokio::select! {
                    frame = socket.next() => {
                        let Some(frame) = frame else { break };
                        let data = &frame["data"];
                        match (frame["type"].as_str(), frame["event"].as_str()) {
                            (Some("event"), Some("order.assigned")) => {
                                let id = data["order_id"].as_str().unwrap_or_default().to_owned();
                                if data["partner"] == me.as_str() {
                                    socket.subscribe(&format!("order:{id}")).await;
                                    deliveries.insert(id, Delivery { to: None, started: None });
                                } else {
                                    deliveries.remove(&id);
                                }
                            }
                            (Some("event"), Some("order.status")) => {
                                let id = data["order_id"].as_str().unwrap_or_default();
                                match data["status"].as_str() {
                                    Some("out_for_delivery") => {
                                        if let Some(d) = deliveries.get_mut(id) {
                                            d.started = Some(Instant::now());
                                        }
                                    }
                                    Some("delivered" | "cancelled") if deliveries.remove(id).is_some() => {
                                        socket.send(json!({"op":"unsubscribe","room":format!("order:{id}")})).await;
                                    }
                                    _ => {}
                                }
                            }
                            // The subscribe reply's snapshot: where to, and whether it is
                            // already on its way.
                            (Some("ok"), _) if frame["op"] == "subscribe" => {
                                let snapshot = &frame["snapshot"];
                                if let Some(id) = snapshot["id"].as_str()
                                    && let Some(d) = deliveries.get_mut(id)
                                {
                                    d.to = geocode(snapshot["address"].as_str().unwrap_or_default());
                                    if snapshot["status"] == "out_for_delivery" && d.started.is_none() {
                                        d.started = Some(Instant::now());
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    _ = tick.tick() => {
                        for (id, d) in &deliveries {
                            let (Some(to), Some(started)) = (d.to, d.started) else { continue };
                            let progress = (started.elapsed().as_secs_f64() / drive.as_secs_f64()).min(1.0);
                            socket.send(location(id, to, progress, drive)).await;
                        }
                    }
                    _ = self.shutdown.cancelled() => {
                        socket.close().await;
                        return;
                    }
                }
            }
        }
    }
}

/// An unfinished order, as listed by the API.
struct OpenOrder {
    id: String,
    stage: OrderStatus,
    paid: bool,
    partner: Option<String>,
}

/// An order the admin is moving along.
struct Tracked {
    stage: OrderStatus,
    /// The admin tick at which it reached `stage`.
    since: u64,
    paid: bool,
    partner: Option<String>,
}

/// Ticks an order spends in `status` before the admin moves it on.
fn ticks(status: OrderStatus, pace: &Pace) -> u64 {
    match status {
        // A payment has `step` ticks; unpaid after three steps, it is cancelled.
        OrderStatus::Placed => pace.step,
        OrderStatus::Confirmed | OrderStatus::Packed => pace.step,
        // The drive, and one tick for the partner's last position to arrive.
        OrderStatus::OutForDelivery => pace.travel + 1,
        OrderStatus::Delivered | OrderStatus::Cancelled => 0,
    }
}

/// A partner's delivery: where to (from the order room's snapshot) and since when.
struct Delivery {
    to: Option<(f64, f64)>,
    started: Option<Instant>,
}

/// The simulator's geocoder: the known homes, or somewhere near the store.
fn geocode(address: &str) -> Option<(f64, f64)> {
    HOMES
        .iter()
        .find(|(a, _, _)| *a == address)
        .map(|(_, lat, lng)| (*lat, *lng))
        .or(Some((STORE.0 + 0.02, STORE.1 + 0.02)))
}

/// The `location` op for a partner `progress` (0 to 1) of the way from the store to `to`.
fn location(order: &str, to: (f64, f64), progress: f64, drive: Duration) -> Value {
    let (lat, lng) = (
        STORE.0 + (to.0 - STORE.0) * progress,
        STORE.1 + (to.1 - STORE.1) * progress,
    );
    // Flat-earth bearing and speed: good enough across a city.
    let (north_m, east_m) = (
        (to.0 - STORE.0) * 111_320.0,
        (to.1 - STORE.1) * 111_320.0 * STORE.0.to_radians().cos(),
    );
    let heading = east_m.atan2(north_m).to_degrees().rem_euclid(360.0);
    let speed = if progress < 1.0 {
        north_m.hypot(east_m) / drive.as_secs_f64()
    } else {
        0.0
    };
    let round = |v: f64, digits: i32| (v * 10f64.powi(digits)).round() / 10f64.powi(digits);
    json!({
        "op": "location",
        "order_id": order,
        "lat": round(lat, 6),
        "lng": round(lng, 6),
        "heading": round(heading, 1),
        "speed": round(speed, 1),
        "ts": switchyard_store::now_ms(),
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One simulated client's WebSocket.
struct Socket {
    ws: Ws,
    next_id: u64,
    /// Frames read by [`Socket::settle`] before the reply it waited for, not yet handed out.
    early: std::collections::VecDeque<Value>,
}

impl Socket {
    /// The next JSON frame, or `None` when the connection ended (the actor reconnects).
    async fn next(&mut self) -> Option<Value> {
        if let Some(frame) = self.early.pop_front() {
            return Some(frame);
        }
        let frame = self.next_frame().await?;
        if frame["type"] == "error" {
            tracing::debug!(%frame, "demo: error frame");
        }
        Some(frame)
    }

    async fn send(&mut self, mut op: Value) {
        op["id"] = json!(self.next_id);
        self.next_id += 1;
        let _ = self.ws.send(Message::Text(op.to_string().into())).await;
    }

    async fn subscribe(&mut self, room: &str) {
        self.send(json!({ "op": "subscribe", "room": room })).await;
    }

    /// Waits until the server has handled every op sent so far (ops are answered in order, so
    /// a ping's reply comes after theirs); frames read meanwhile stay queued for `next`.
    async fn settle(&mut self) -> bool {
        let id = self.next_id;
        self.send(json!({ "op": "ping" })).await;
        loop {
            let Some(frame) = self.next_frame().await else {
                return false;
            };
            if frame["type"] == "ok" && frame["id"] == id {
                return true;
            }
            self.early.push_back(frame);
        }
    }

    async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).unwrap_or(Value::Null));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drive_goes_from_the_store_to_the_customer() {
        let to = geocode(HOMES[0].0).unwrap();
        let drive = Duration::from_secs(20);
        let start = location("1", to, 0.0, drive);
        let end = location("1", to, 1.0, drive);
        let at = |v: &Value| (v["lat"].as_f64().unwrap(), v["lng"].as_f64().unwrap());
        assert_eq!(at(&start), STORE);
        assert_eq!(at(&end), to);
        // Koramangala is south-east of the centre.
        let heading = start["heading"].as_f64().unwrap();
        assert!((90.0..180.0).contains(&heading), "{heading}");
        assert!(start["speed"].as_f64().unwrap() > 0.0);
        assert_eq!(end["speed"], json!(0.0));
    }
}
