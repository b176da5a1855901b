//! `crudload`: the CRUD side under load — REST writes through one or more API processes, as
//! `benches/run.sh` runs it on SQLite (one API process) and on PostgreSQL (two).
//!
//! - `status`: the API end to end. An admin moves orders along
//!   (`POST /api/orders/{id}/status`, each order placed → confirmed → packed →
//!   out_for_delivery → delivered); each order's customer is connected to a gateway and
//!   subscribed to its `user:` room; the latency is REST request sent → `order.status` event
//!   received over the WebSocket.
//! - `payments`: `POST /api/orders/{id}/payment` with a fresh `Idempotency-Key` on a fresh
//!   order; the latency is the request's (an idempotent, exactly-once write with its events).
//!
//! - `reads`: `GET /api/products/{sku}` over a small catalog (20 SKUs, read once each before
//!   the first step), as `benches/run.sh` runs it with the read cache on and off; the
//!   latency is the request's.
//! - `orders`: `POST /api/orders` of one unit of a catalog SKU (price and stock from the
//!   server, the units reserved in the order's transaction); the latency is the request's.
//! - `chat`: order chat over the socket — `--customers` pairs, each an order's customer
//!   (connected to the first `--gateway`) and its assigned partner (the last `--gateway`),
//!   both in the order's room; the offered messages/s are spread over the pairs, sides taking
//!   turns; the latency is the `send` op's scheduled time → the *other* side receiving its
//!   `chat.message` event: the full durable path (the gateway hands the send to the API, which
//!   commits the message with its outbox row; the relay publishes it; the bus delivers it).
//!   Stepping stops after the first step that misses the bound.
//!
//! All offer stepped rates (open loop: requests leave on schedule, whatever is in flight) and
//! report per step the p50/p99 latency and errors; the answer is the highest rate whose p99
//! stays within `--max-p99-ms` with no error and nothing lost. Orders are created first (not
//! measured). Loopback only; bounded by `--rates` × `--step-secs` requests and `--max-in-flight`.

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_auth::Issuer;
use switchyard_benches::hist;
use switchyard_client::{Rest, Socket};
use switchyard_protocol::catalog::ProductPut;
use switchyard_protocol::client::ClientOp;
use switchyard_protocol::order::{Item, NewOrder};
use switchyard_protocol::{OrderStatus, Role, Room};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Status,
    Payments,
    Reads,
    Orders,
    Chat,
}

#[derive(Debug, Parser)]
#[command(
    name = "crudload",
    about = "REST writes through the API processes, measured"
)]
struct Cli {
    #[arg(value_enum)]
    scenario: Scenario,
    /// API base URL (repeat the flag): requests are spread round-robin.
    #[arg(long = "api", required = true)]
    apis: Vec<String>,
    /// Gateway address host:port (`status`: the customers connect there; `chat`: customers to
    /// the first, partners to the last — repeat the flag for two gateways).
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// HS256 secret the servers verify with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Offered rates, requests per second, one step each.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,400")]
    rates: Vec<u32>,
    #[arg(long, default_value_t = 4)]
    step_secs: u64,
    /// The latency bound of the answer (ms).
    #[arg(long, default_value_t = 50)]
    max_p99_ms: u64,
    /// Customers (WebSocket connections for `status`; customer/partner pairs for `chat`).
    #[arg(long, default_value_t = 200)]
    customers: usize,
    /// Requests in flight at most; beyond, a request is counted as an error (overload).
    #[arg(long, default_value_t = 2_000)]
    max_in_flight: usize,
    /// A label for the results (e.g. `postgres-2api`).
    #[arg(long)]
    label: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One step's outcome.
struct Step {
    rate: u32,
    sent: u64,
    errors: u64,
    lost: u64,
    latency: Histogram<u64>,
}

impl Step {
    fn passes(&self, max_p99_ms: u64) -> bool {
        self.errors == 0
            && self.lost == 0
            && self.latency.value_at_quantile(0.99) <= max_p99_ms * 1000
    }

    fn to_json(&self) -> Value {
        json!({
            "rate": self.rate, "sent": self.sent, "errors": self.errors, "lost": self.lost,
            "delivered": self.sent - self.errors - self.lost,
            "p50_ms": self.latency.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_ms": self.latency.value_at_quantile(0.99) as f64 / 1000.0,
            "max_ms": self.latency.max() as f64 / 1000.0,
        })
    }
}

fn new_order(price: i64) -> NewOrder {
    NewOrder {
        items: vec![Item {
            sku: "tea".into(),
            qty: 1,
            unit_price_paise: Some(price),
        }],
        address: "bench street 1".into(),
    }
}

/// Creates `count` orders spread over the customers, 64 at a time; returns (id, customer).
async fn create_orders(
    cli: &Cli,
    http: &reqwest::Client,
    issuer: &Issuer,
    count: usize,
) -> anyhow::Result<Vec<(String, usize)>> {
    // What the orders buy: `tea` in the catalog, with a unit for each order.
    let tea = ProductPut {
        name: "Tea".into(),
        price_paise: 250,
        stock: count as i64,
    };
    Rest::with_http(
        http.clone(),
        cli.apis[0].clone(),
        issuer.issue("bench-admin", Role::Admin, 7_200),
    )
    .put_product("tea", &tea)
    .await
    .map_err(|e| anyhow::anyhow!("putting tea in the catalog: {e}"))?;
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..count {
        let customer = n % cli.customers;
        let rest = Rest::with_http(
            http.clone(),
            cli.apis[n % cli.apis.len()].clone(),
            issuer.issue(&format!("bench{customer}"), Role::Customer, 7_200),
        );
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            rest.create_order(&new_order(250))
                .await
                .map(|o| (o.id, customer))
        });
    }
    let mut orders = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        orders.push(done?.map_err(|e| anyhow::anyhow!("creating an order: {e}"))?);
    }
    Ok(orders)
}

/// Events still on their way at the end of a step: waits for them (at most 5 s), then counts
/// what is still pending as lost and forgets it.
async fn lost_after_wait<K>(pending: &Mutex<HashMap<K, Instant>>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pending.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut pending = pending.lock().unwrap();
    let lost = pending.len() as u64;
    pending.clear();
    lost
}

/// When each (order, status) change was sent, until its event arrives.
type Pending = Arc<Mutex<HashMap<(String, String), Instant>>>;

/// Connects every customer to the gateway, subscribed to its `user:` room; each received
/// `order.status` event records its latency into `latencies` (the current step's).
async fn connect_customers(
    cli: &Cli,
    issuer: &Issuer,
    pending: Pending,
    latencies: Arc<Mutex<Histogram<u64>>>,
) -> anyhow::Result<()> {
    let gateway = cli
        .gateways
        .first()
        .context("--gateway is required for `status`")?;
    for customer in 0..cli.customers {
        let sub = format!("bench{customer}");
        let url = format!("ws://{gateway}/ws");
        let mut socket = Socket::connect(&url, &issuer.issue(&sub, Role::Customer, 7_200))
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {url}: {e}"))?;
        let room = Room::parse(&format!("user:{sub}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        socket
            .request(ClientOp::Subscribe { room, since: None })
            .await
            .map_err(|e| anyhow::anyhow!("subscribing: {e}"))?
            .map_err(|e| anyhow::anyhow!("subscribe refused: {e:?}"))?;
        let (pending, latencies) = (pending.clone(), latencies.clone());
        tokio::spawn(async move {
            while let Ok(text) = socket.next_text().await {
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if frame["type"] != "event" || frame["event"] != "order.status" {
                    continue;
                }
                let data = &frame["data"];
                let key = (
                    data["order_id"].as_str().unwrap_or_default().to_owned(),
                    data["status"].as_str().unwrap_or_default().to_owned(),
                );
                let sent = pending.lock().unwrap().remove(&key);
                if let Some(sent) = sent {
                    let us = sent.elapsed().as_micros() as u64;
                    let _ = latencies.lock().unwrap().record(us.clamp(1, hist::MAX_US));
                }
            }
        });
    }
    Ok(())
}

const MOVES: [OrderStatus; 4] = [
    OrderStatus::Confirmed,
    OrderStatus::Packed,
    OrderStatus::OutForDelivery,
    OrderStatus::Delivered,
];

/// The catalog's SKUs for `reads` and `orders`.
const CATALOG_SKUS: usize = 20;

fn catalog_sku(n: u64) -> String {
    format!("bench-{}", n % CATALOG_SKUS as u64)
}

/// `reads` and `orders`: each request is one REST call, its latency the call's.
async fn run_catalog(cli: &Cli) -> anyhow::Result<Vec<Step>> {
    let issuer = Issuer::new(cli.jwt_secret.as_bytes(), None, None);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1_024)
        .build()?;
    let admin = Rest::with_http(
        http.clone(),
        cli.apis[0].clone(),
        issuer.issue("bench-admin", Role::Admin, 7_200),
    );
    let total: u64 = cli
        .rates
        .iter()
        .map(|r| u64::from(*r) * cli.step_secs)
        .sum();
    for n in 0..CATALOG_SKUS as u64 {
        let product = ProductPut {
            name: format!("Bench product {n}"),
            price_paise: 100 + n as i64,
            // Every order may buy from one SKU without running out.
            stock: total as i64 + 1,
        };
        admin
            .put_product(&catalog_sku(n), &product)
            .await
            .map_err(|e| anyhow::anyhow!("putting {} in the catalog: {e}", catalog_sku(n)))?;
    }
    // Callers, one Rest per (API, caller), made once.
    let callers: Vec<Rest> = (0..cli.customers)
        .flat_map(|c| {
            let token = match cli.scenario {
                Scenario::Orders => issuer.issue(&format!("bench{c}"), Role::Customer, 7_200),
                _ => issuer.issue(&format!("reader{c}"), Role::Customer, 7_200),
            };
            let http = http.clone();
            cli.apis
                .iter()
                .map(move |api| Rest::with_http(http.clone(), api.clone(), token.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    if cli.scenario == Scenario::Reads {
        for n in 0..CATALOG_SKUS as u64 {
            // The first caller's Rest on every API process.
            for rest in callers.iter().take(cli.apis.len()) {
                rest.product(&catalog_sku(n)).await.ok();
            }
        }
    }
    let in_flight = Arc::new(Semaphore::new(cli.max_in_flight));
    let mut steps = Vec::new();
    for &rate in &cli.rates {
        let errors = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(hist::new_histogram()));
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let start = tokio::time::Instant::now();
        let count = u64::from(rate) * cli.step_secs;
        let mut requests = tokio::task::JoinSet::new();
        for n in 0..count {
            tokio::time::sleep_until(start + period.mul_f64(n as f64)).await;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let rest = callers[n as usize % callers.len()].clone();
            let (errors, latencies, scenario) = (errors.clone(), latencies.clone(), cli.scenario);
            requests.spawn(async move {
                let _permit = permit;
                let sku = catalog_sku(n);
                let began = Instant::now();
                let ok = match scenario {
                    Scenario::Orders => {
                        let order = NewOrder {
                            items: vec![Item {
                                sku,
                                qty: 1,
                                unit_price_paise: None,
                            }],
                            address: "bench street 1".into(),
                        };
                        rest.create_order(&order).await.is_ok()
                    }
                    _ => rest.product(&sku).await.is_ok(),
                };
                if ok {
                    let us = began.elapsed().as_micros() as u64;
                    let _ = latencies.lock().unwrap().record(us.clamp(1, hist::MAX_US));
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while requests.join_next().await.is_some() {}
        let step = Step {
            rate,
            sent: count,
            errors: errors.load(Ordering::Relaxed),
            lost: 0,
            latency: latencies.lock().unwrap().clone(),
        };
        eprintln!("[{}] {}", cli.label, step.to_json());
        steps.push(step);
    }
    Ok(steps)
}

/// One side of a chat pair: its socket's task takes `client_msg_id`s to send and records the
/// other side's messages it receives.
struct ChatSide {
    sends: tokio::sync::mpsc::Sender<String>,
}

/// Messages sent and not yet received by the other side: `client_msg_id` → scheduled time.
type ChatPending = Arc<Mutex<HashMap<String, Instant>>>;

/// Connects `sub` to `gateway`, joins `room`, and runs the socket in a task of its own.
async fn chat_side(
    gateway: &str,
    token: &str,
    sub: String,
    room: Room,
    pending: ChatPending,
    latencies: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<AtomicU64>,
) -> anyhow::Result<ChatSide> {
    let url = format!("ws://{gateway}/ws");
    let mut socket = Socket::connect(&url, token)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {url}: {e}"))?;
    socket
        .request(ClientOp::Subscribe {
            room: room.clone(),
            since: None,
        })
        .await
        .map_err(|e| anyhow::anyhow!("subscribing: {e}"))?
        .map_err(|e| anyhow::anyhow!("subscribe refused: {e:?}"))?;
    // A step's worth of sends for one side is small; a full queue counts as an error.
    let (sends, mut to_send) = tokio::sync::mpsc::channel::<String>(1_024);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                id = to_send.recv() => {
                    let Some(client_msg_id) = id else { break };
                    let op = ClientOp::Send {
                        room: room.clone(),
                        text: format!("bench message {client_msg_id}"),
                        client_msg_id,
                    };
                    if socket.send(op).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                text = socket.next_text() => {
                    let Ok(text) = text else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    if frame["type"] == "error" {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let data = &frame["data"];
                    if frame["type"] != "event"
                        || frame["event"] != "chat.message"
                        || data["from"] == sub.as_str()
                    {
                        continue;
                    }
                    let id = data["client_msg_id"].as_str().unwrap_or_default();
                    let sent = pending.lock().unwrap().remove(id);
                    if let Some(sent) = sent {
                        let us = sent.elapsed().as_micros() as u64;
                        let _ = latencies.lock().unwrap().record(us.clamp(1, hist::MAX_US));
                    }
                }
            }
        }
    });
    Ok(ChatSide { sends })
}

/// `chat`: see the module's doc.
async fn run_chat(cli: &Cli) -> anyhow::Result<Vec<Step>> {
    let issuer = Issuer::new(cli.jwt_secret.as_bytes(), None, None);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1_024)
        .build()?;
    let (Some(first), Some(last)) = (cli.gateways.first(), cli.gateways.last()) else {
        bail!("--gateway is required for `chat`");
    };
    eprintln!("[{}] creating {} orders", cli.label, cli.customers);
    let orders = create_orders(cli, &http, &issuer, cli.customers).await?;
    let admin = Rest::with_http(
        http.clone(),
        cli.apis[0].clone(),
        issuer.issue("bench-admin", Role::Admin, 7_200),
    );
    let pending: ChatPending = Arc::default();
    let latencies = Arc::new(Mutex::new(hist::new_histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    // sides[2n]: pair n's customer, sides[2n + 1]: its partner.
    let mut sides = Vec::with_capacity(2 * orders.len());
    for (order, customer) in &orders {
        let partner = format!("rider{customer}");
        admin
            .assign(order, &partner)
            .await
            .map_err(|e| anyhow::anyhow!("assigning order {order}: {e}"))?;
        let room = Room::parse(&format!("order:{order}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let customer = format!("bench{customer}");
        for (gateway, sub, role) in [
            (first, customer, Role::Customer),
            (last, partner.clone(), Role::Partner),
        ] {
            let token = issuer.issue(&sub, role, 7_200);
            let side = chat_side(
                gateway,
                &token,
                sub,
                room.clone(),
                pending.clone(),
                latencies.clone(),
                errors.clone(),
            )
            .await?;
            sides.push(side);
        }
    }
    let mut steps = Vec::new();
    for (n, &rate) in cli.rates.iter().enumerate() {
        *latencies.lock().unwrap() = hist::new_histogram();
        let errors_before = errors.load(Ordering::Relaxed);
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let start = tokio::time::Instant::now();
        let count = u64::from(rate) * cli.step_secs;
        let mut refused = 0;
        for i in 0..count {
            tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
            // Pair i % pairs; its customer and partner take turns.
            let pair = i as usize % orders.len();
            let side = &sides[2 * pair + (i as usize / orders.len()) % 2];
            let client_msg_id = format!("s{n}-{i}");
            pending
                .lock()
                .unwrap()
                .insert(client_msg_id.clone(), Instant::now());
            if side.sends.try_send(client_msg_id.clone()).is_err() {
                pending.lock().unwrap().remove(&client_msg_id);
                refused += 1;
            }
        }
        let lost = lost_after_wait(&pending).await;
        let step = Step {
            rate,
            sent: count,
            errors: refused + errors.load(Ordering::Relaxed) - errors_before,
            lost,
            latency: latencies.lock().unwrap().clone(),
        };
        eprintln!("[{}] {}", cli.label, step.to_json());
        let passed = step.passes(cli.max_p99_ms);
        steps.push(step);
        if !passed {
            break;
        }
    }
    Ok(steps)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let steps = match cli.scenario {
        Scenario::Status | Scenario::Payments => run_writes(&cli).await?,
        Scenario::Reads | Scenario::Orders => run_catalog(&cli).await?,
        Scenario::Chat => run_chat(&cli).await?,
    };
    report(&cli, &steps)
}

/// `status` and `payments` (any other scenario is run as `payments`).
async fn run_writes(cli: &Cli) -> anyhow::Result<Vec<Step>> {
    let issuer = Issuer::new(cli.jwt_secret.as_bytes(), None, None);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1_024)
        .build()?;
    let total: u64 = cli
        .rates
        .iter()
        .map(|r| u64::from(*r) * cli.step_secs)
        .sum();
    let orders_needed = match cli.scenario {
        // Four moves per order; a margin for orders still moving when a step ends.
        Scenario::Status => {
            (total / 4) as usize + 2 * cli.rates.iter().max().copied().unwrap_or(1) as usize
        }
        _ => total as usize,
    };
    eprintln!("[{}] creating {orders_needed} orders", cli.label);
    let orders = create_orders(cli, &http, &issuer, orders_needed).await?;
    let pending: Pending = Arc::default();
    let latencies = Arc::new(Mutex::new(hist::new_histogram()));
    if cli.scenario == Scenario::Status {
        connect_customers(cli, &issuer, pending.clone(), latencies.clone()).await?;
    }
    // Orders ready for their next move (status) or their payment, in order.
    let ready: Arc<Mutex<VecDeque<(String, usize, usize)>>> = Arc::new(Mutex::new(
        orders.into_iter().map(|(id, c)| (id, c, 0)).collect(),
    ));
    let admin = issuer.issue("bench-admin", Role::Admin, 7_200);
    let in_flight = Arc::new(Semaphore::new(cli.max_in_flight));
    let next_api = AtomicU64::new(0);
    let mut steps = Vec::new();
    for &rate in &cli.rates {
        let errors = Arc::new(AtomicU64::new(0));
        let mut sent = 0u64;
        *latencies.lock().unwrap() = hist::new_histogram();
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let start = tokio::time::Instant::now();
        let count = u64::from(rate) * cli.step_secs;
        let mut requests = tokio::task::JoinSet::new();
        for n in 0..count {
            tokio::time::sleep_until(start + period.mul_f64(n as f64)).await;
            sent += 1;
            let Some((order, customer, moves)) = ready.lock().unwrap().pop_front() else {
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let api = cli.apis[next_api.fetch_add(1, Ordering::Relaxed) as usize % cli.apis.len()]
                .clone();
            let (http, errors, ready) = (http.clone(), errors.clone(), ready.clone());
            let (pending, latencies) = (pending.clone(), latencies.clone());
            let scenario = cli.scenario;
            let token = match scenario {
                Scenario::Status => admin.clone(),
                _ => issuer.issue(&format!("bench{customer}"), Role::Customer, 7_200),
            };
            requests.spawn(async move {
                let _permit = permit;
                let rest = Rest::with_http(http, api, token);
                let began = Instant::now();
                match scenario {
                    Scenario::Status => {
                        let to = MOVES[moves];
                        pending
                            .lock()
                            .unwrap()
                            .insert((order.clone(), to.as_str().to_owned()), began);
                        if rest.set_status(&order, to).await.is_err() {
                            pending
                                .lock()
                                .unwrap()
                                .remove(&(order, to.as_str().to_owned()));
                            errors.fetch_add(1, Ordering::Relaxed);
                        } else if moves + 1 < MOVES.len() {
                            ready
                                .lock()
                                .unwrap()
                                .push_back((order, customer, moves + 1));
                        }
                    }
                    _ => {
                        let key = format!("bench-{order}");
                        match rest.pay(&order, 250, &key).await {
                            Ok(_) => {
                                let us = began.elapsed().as_micros() as u64;
                                let _ = latencies.lock().unwrap().record(us.clamp(1, hist::MAX_US));
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
        while requests.join_next().await.is_some() {}
        let lost = lost_after_wait(&pending).await;
        let step = Step {
            rate,
            sent,
            errors: errors.load(Ordering::Relaxed),
            lost,
            latency: latencies.lock().unwrap().clone(),
        };
        eprintln!("[{}] {}", cli.label, step.to_json());
        steps.push(step);
    }
    Ok(steps)
}

/// Prints the result (and writes it to `--json`): every step, and the highest rate whose p99
/// stays within `--max-p99-ms` with no error and nothing lost.
fn report(cli: &Cli, steps: &[Step]) -> anyhow::Result<()> {
    let best = steps
        .iter()
        .filter(|s| s.passes(cli.max_p99_ms))
        .map(|s| s.rate)
        .max()
        .unwrap_or(0);
    let result = json!({
        "scenario": format!("{:?}", cli.scenario).to_lowercase(),
        "label": cli.label,
        "apis": cli.apis.len(),
        "max_p99_ms": cli.max_p99_ms,
        "pairs": (cli.scenario == Scenario::Chat).then_some(cli.customers),
        "best_rate": best,
        "steps": steps.iter().map(Step::to_json).collect::<Vec<_>>(),
    });
    println!("{result}");
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    if steps.is_empty() {
        bail!("no rates given");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Cli::parse()).await
}
