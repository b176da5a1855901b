//! The simulator behind `switchyard demo`: a small simulated city, so a newcomer sees orders,
//! payments, the revenue ticker and moving delivery partners within seconds.
//!
//! It is an ordinary client of the server: it speaks only the public REST API and the
//! WebSocket protocol over loopback, through `switchyard-client`, with tokens signed by the
//! server's key, like any app would. (The `switchyard` binary runs it beside the embedded
//! server; nothing here reaches into the server.) Its actors:
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
//!   address, which the simulator's tiny geocoder turns into coordinates), and while the
//!   order is out for delivery sends a `location` op every tick, driving in a straight line
//!   from the store in central Bengaluru to the customer;
//! - **the chat**: a customer greets the partner assigned to its order ("ring the bell twice"),
//!   the partner answers when it sets off, and the customer thanks it once delivered — `send`
//!   ops over their sockets (see [`say`]), each with a `client_msg_id` of its own.
//!
//! Everything is bounded (fixed numbers of actors and open orders) and stops on the shutdown
//! token (Ctrl-C/SIGTERM in the binary).
//!
//! # Layout
//! - this file: the [`Simulation`], its [`Pace`], and what every actor shares (`World`).
//! - `customer`, `admin`, `partner`: the three kinds of actor.
//! - `geo`: the city — homes, the store, the drive from one to the other.

mod admin;
mod customer;
mod geo;
mod partner;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use switchyard_auth::Issuer;
use switchyard_client::{Frame, ReadError, Rest, RestError, Socket};
use switchyard_protocol::client::ClientOp;
use switchyard_protocol::rest::PageQuery;
use switchyard_protocol::{OrderStatus, Role, Room, ServerMessage};
use tokio_util::sync::CancellationToken;

/// Orders a customer may have open at once (keeps the simulation bounded).
pub const MAX_OPEN_PER_CUSTOMER: usize = 2;
/// Lifetime of the simulator's tokens; it runs for as long as the server does.
const TOKEN_TTL: u64 = 7 * 24 * 3600;

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
    /// Locations at 1 Hz, an order every ~2 s, a drive of 20 s.
    pub const NORMAL: Pace = Pace {
        tick: Duration::from_millis(1000),
        order_every: 2,
        step: 3,
        travel: 20,
    };
    /// Four times faster (locations at 4/s, within the default 5/s location limit): a whole
    /// order, placed to delivered, takes about 4 s. For tests and impatience.
    pub const FAST: Pace = Pace {
        tick: Duration::from_millis(250),
        order_every: 2,
        step: 2,
        travel: 8,
    };
}

/// What to simulate, against which server.
pub struct Simulation {
    /// The server's address (loopback when it listens on every interface).
    pub addr: SocketAddr,
    /// Signs the actors' tokens with the server's key.
    pub issuer: Arc<Issuer>,
    pub pace: Pace,
    /// 1 to 50 each.
    pub customers: usize,
    pub partners: usize,
}

/// Runs the simulation until `shutdown`: waits for the server to be ready, prints the
/// dashboard URL, then runs every actor.
pub async fn run(simulation: Simulation, shutdown: CancellationToken) {
    let addr = simulation.addr;
    let world = World {
        base: format!("http://{addr}"),
        ws: format!("ws://{addr}/ws"),
        http: reqwest::Client::new(),
        issuer: simulation.issuer,
        pace: simulation.pace,
        shutdown,
        placed: Arc::new(AtomicU64::new(0)),
    };
    if !world.wait_ready().await {
        return;
    }
    let customers = simulation.customers.clamp(1, 50);
    let partners = simulation.partners.clamp(1, 50);
    println!(
        "\nswitchyard demo: {customers} customers, {partners} partners (one tick every {:?})\n  \
         dashboard: {}/#token={}\n  metrics:   {}/metrics\n  Ctrl-C to stop\n",
        world.pace.tick,
        world.base,
        world.token("admin", Role::Admin),
        world.base
    );
    let partner_ids: Vec<String> = (1..=partners).map(|i| format!("demo-p{i}")).collect();
    let customer_ids: Vec<String> = (1..=customers).map(|i| format!("demo-c{i}")).collect();
    let mut tasks = Vec::new();
    for (i, c) in customer_ids.iter().enumerate() {
        let actor = customer::Customer::new(world.clone(), c.clone(), i, customers);
        tasks.push(tokio::spawn(actor.run()));
    }
    for p in &partner_ids {
        tasks.push(tokio::spawn(partner::run(world.clone(), p.clone())));
    }
    tasks.push(tokio::spawn(admin::run(
        world.clone(),
        customer_ids,
        partner_ids,
    )));
    for task in tasks {
        let _ = task.await;
    }
}

/// What every actor shares: where the server is, how to sign, how fast to go.
#[derive(Clone)]
pub(crate) struct World {
    base: String,
    ws: String,
    http: reqwest::Client,
    issuer: Arc<Issuer>,
    pub pace: Pace,
    pub shutdown: CancellationToken,
    /// Orders placed so far (decides which ones go unpaid or get paid twice).
    pub placed: Arc<AtomicU64>,
}

impl World {
    fn token(&self, sub: &str, role: Role) -> String {
        self.issuer.issue(sub, role, TOKEN_TTL)
    }

    /// The REST API as `sub`.
    pub fn rest(&self, sub: &str, role: Role) -> Rest {
        Rest::with_http(self.http.clone(), &self.base, self.token(sub, role))
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

    /// Opens a WebSocket as `sub`, retrying until it succeeds or the demo stops.
    pub async fn connect(&self, sub: &str, role: Role) -> Option<Socket> {
        loop {
            let token = self.token(sub, role);
            tokio::select! {
                connected = Socket::connect(&self.ws, &token) => match connected {
                    Ok(socket) => return Some(socket),
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
}

/// An unfinished order, as listed by the API.
pub(crate) struct OpenOrder {
    pub id: String,
    pub stage: OrderStatus,
    pub paid: bool,
    pub partner: Option<String>,
}

/// The caller's orders that are not finished (admin: all of them), through the paged
/// `GET /api/orders`.
pub(crate) async fn open_orders(rest: &Rest) -> Vec<OpenOrder> {
    let mut open = Vec::new();
    let mut page = PageQuery {
        after: None,
        limit: Some(200),
    };
    // Bounded: 50 pages of 200.
    for _ in 0..50 {
        let Ok(listed) = rest.orders(&page).await else {
            break;
        };
        open.extend(
            listed
                .orders
                .into_iter()
                .filter(|o| !o.status.is_final())
                .map(|o| OpenOrder {
                    id: o.id,
                    stage: o.status,
                    paid: o.paid,
                    partner: o.partner,
                }),
        );
        match listed.next_after {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    open
}

/// Logs a refused call at debug level (the simulation carries on) and drops the error.
pub(crate) fn refused<T>(what: &str, result: Result<T, RestError>) -> Option<T> {
    result
        .inspect_err(|err| tracing::debug!(what, %err, "demo: request refused"))
        .ok()
}

/// The next frame, or `None` when the connection ended (the actor then reconnects). Error
/// frames are logged; a frame this version cannot decode is skipped.
/// Says `text` in order `order`'s chat over `socket`; `key` makes the `client_msg_id` (one per
/// order and line, so a resend after a reconnect stores nothing twice). The reply is not
/// waited for: the actor's loop skips it like every reply.
pub(crate) async fn say(socket: &mut Socket, order: &str, key: &str, text: &str) {
    let Ok(room) = Room::order(order) else { return };
    let op = ClientOp::Send {
        room,
        text: text.to_owned(),
        client_msg_id: format!("demo-{order}-{key}"),
    };
    let _ = socket.send(op).await;
}

pub(crate) async fn next_frame(socket: &mut Socket) -> Option<Frame> {
    loop {
        match socket.next().await {
            Ok(ServerMessage::Error(error)) => {
                tracing::debug!(error = %error.error, message = %error.message, "demo: error frame");
            }
            Ok(frame) => return Some(frame),
            Err(ReadError::Frame(err)) => tracing::debug!(%err, "demo: undecodable frame"),
            Err(_) => return None,
        }
    }
}
