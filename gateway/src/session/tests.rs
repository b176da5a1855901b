//! A connection's whole life in paused time: sessions run over channels instead of sockets
//! (the axum testing-websockets example), on a real gateway with the in-process bus, and
//! tokio's clock jumps to the next timer whenever every task waits. So idle closes, token
//! expiry, heartbeats and the drain spread are checked at their exact moments, each test in
//! milliseconds; `switchyard/tests` keeps what needs real sockets and processes.
//!
//! The backend is the one seam a test fills in ([`Orders`]: a few orders, with a cached view
//! that can trail the source of truth). Each test records metrics into its own recorder, on the
//! current-thread runtime every task of the test runs on, and reads them back as `/metrics`
//! renders them.

use super::Session;
use crate::backend::{Backend, BackendError, ChatError, Read, Sender};
use crate::{Gateway, GatewayConfig, Shared, slot};
use async_trait::async_trait;
use axum::extract::ws::Message;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_auth::{Issuer, JwtConfig, Principal, Verifier, VerifyKey, now_secs};
use switchyard_broker::{Backplane, HistoryConfig};
use switchyard_protocol::chat::{ChatMessage, ChatState, NewMessage};
use switchyard_protocol::client::{ClientOp, LocationFix};
use switchyard_protocol::close;
use switchyard_protocol::events::PartnerLocation;
use switchyard_protocol::order::{Order, OrderStatus, Revenue};
use switchyard_protocol::{BuiltinEvent, Location, Product, Role, Room, UserId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, PollSender};

const SECRET: &[u8] = b"session-tests-secret-0123456789";

/// Asking for this order makes the backend panic (inside the session that asked).
const PANICKING_ORDER: i64 = 666;

/// Orders as the gateway sees them: `fresh` is the source of truth, `cached` what a cached
/// read returns (it may trail `fresh`, as the shared state trails the database).
#[derive(Default)]
struct Orders {
    cached: Mutex<HashMap<i64, Order>>,
    fresh: Mutex<HashMap<i64, Order>>,
    /// Chat messages stored, in order (the store's rules are the store's tests; here only
    /// membership and what the session does with the answers).
    messages: Mutex<Vec<ChatMessage>>,
}

impl Orders {
    fn order(id: i64, customer: &str, partner: Option<&str>) -> Order {
        Order {
            id: id.to_string(),
            customer: customer.to_owned(),
            partner: partner.map(str::to_owned),
            status: OrderStatus::Placed,
            items: Vec::new(),
            address: "12 MG Road".to_owned(),
            total_paise: 100,
            paid: false,
            refunded: false,
            created_at: 0,
            updated_at: 0,
            last_location: None,
        }
    }

    /// An order both views agree on.
    fn put(&self, id: i64, customer: &str, partner: Option<&str>) {
        let order = Orders::order(id, customer, partner);
        self.cached.lock().unwrap().insert(id, order.clone());
        self.fresh.lock().unwrap().insert(id, order);
    }

    /// An assignment the cached view has not seen yet.
    fn assign_fresh_only(&self, id: i64, partner: &str) {
        if let Some(order) = self.fresh.lock().unwrap().get_mut(&id) {
            order.partner = Some(partner.to_owned());
        }
    }
}

#[async_trait]
impl Backend for Orders {
    async fn order(&self, id: i64, read: Read) -> Result<Option<Order>, BackendError> {
        assert_ne!(id, PANICKING_ORDER, "the backend fails hard");
        let view = match read {
            Read::Cached => &self.cached,
            Read::Fresh => &self.fresh,
        };
        Ok(view.lock().unwrap().get(&id).cloned())
    }

    async fn product(&self, sku: &str) -> Result<Option<Product>, BackendError> {
        Ok((sku == "milk-1l").then(|| Product {
            sku: sku.to_owned(),
            name: "Milk".to_owned(),
            price_paise: 6500,
            stock: 7,
            discontinued: false,
            updated_at: 1,
        }))
    }

    async fn revenue(&self) -> Result<Revenue, BackendError> {
        Ok(Revenue {
            currency: "INR".to_owned(),
            total_paise: 4_200,
            paid_orders: 3,
        })
    }

    async fn write_positions(&self, _batch: &[(i64, Location)]) -> Result<(), BackendError> {
        Ok(())
    }

    async fn send_message(
        &self,
        order: i64,
        from: Sender<'_>,
        message: &NewMessage,
    ) -> Result<ChatMessage, ChatError> {
        let member = self.fresh.lock().unwrap().get(&order).is_some_and(|o| {
            from.role == Role::Admin
                || o.customer == from.sub
                || o.partner.as_deref() == Some(from.sub)
        });
        if !member {
            return Err(ChatError::NotMember);
        }
        let mut messages = self.messages.lock().unwrap();
        let stored = ChatMessage {
            event_id: None,
            message_id: (messages.len() + 1).to_string(),
            order_id: order.to_string(),
            from: from.sub.to_owned(),
            role: from.role,
            text: message.text.clone(),
            client_msg_id: message.client_msg_id.clone(),
            sent_at: 1,
            offset: Some(messages.len() as u64 + 10),
        };
        messages.push(stored.clone());
        Ok(stored)
    }

    async fn mark_read(
        &self,
        _order: i64,
        _from: Sender<'_>,
        _message_id: i64,
    ) -> Result<(), ChatError> {
        Ok(())
    }

    async fn chat_state(&self, _order: i64, _sub: &str) -> Result<ChatState, BackendError> {
        Ok(ChatState {
            last_read: Some("1".into()),
            unread: 2,
        })
    }
}

/// A gateway with the in-process bus, the [`Orders`] backend and a metrics recorder of its
/// own.
struct Harness {
    gateway: Gateway,
    backplane: Backplane,
    orders: Arc<Orders>,
    shutdown: CancellationToken,
    issuer: Issuer,
    recorder: &'static PrometheusRecorder,
    _metrics: metrics::LocalRecorderGuard<'static>,
}

impl Harness {
    fn new(config: GatewayConfig) -> Harness {
        // Leaked: one small recorder per test, alive as long as the guard that installs it.
        let recorder: &'static PrometheusRecorder =
            Box::leak(Box::new(PrometheusBuilder::new().build_recorder()));
        let guard = metrics::set_default_local_recorder(recorder);
        let verifier = Verifier::new(&JwtConfig {
            key: VerifyKey::Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
            leeway_secs: 0,
            max_lifetime_secs: 7 * 24 * 3600,
        })
        .unwrap();
        let backplane = Backplane::memory(HistoryConfig::default());
        let orders = Arc::new(Orders::default());
        let shutdown = CancellationToken::new();
        let gateway = Gateway::new(
            config,
            Arc::new(verifier),
            backplane.clone(),
            orders.clone(),
            shutdown.clone(),
        );
        Harness {
            gateway,
            backplane,
            orders,
            shutdown,
            issuer: Issuer::new(SECRET, None, None),
            recorder,
            _metrics: guard,
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.gateway.shared
    }

    /// Connects `sub` with `role`, its token valid for `ttl` seconds.
    async fn connect(&self, sub: &str, role: Role, ttl: u64) -> Client {
        self.connect_with(sub, role, ttl, 64).await
    }

    /// Connects a client whose transport holds only `window` unread frames: a client that
    /// stops reading blocks the session's writes after that many.
    async fn connect_with(&self, sub: &str, role: Role, ttl: u64, window: usize) -> Client {
        let who = Principal {
            sub: UserId::parse(sub).unwrap(),
            role,
            exp: now_secs() + ttl,
            iat: None,
        };
        self.open(who, window).await
    }

    /// Runs a session for `who` as it was admitted (whatever its `exp`).
    async fn open(&self, who: Principal, window: usize) -> Client {
        let opened = slot::open(self.shared(), &who.sub, None)
            .await
            .expect("a slot");
        let session = Box::new(Session::new(self.shared().clone(), who, opened));
        let (to_client, from_server) = mpsc::channel(window);
        let (to_server, mut inbound) = mpsc::channel(64);
        let stream = futures_util::stream::poll_fn(move |cx| inbound.poll_recv(cx));
        let task = tokio::spawn(session.run(PollSender::new(to_client), stream));
        let mut client = Client {
            to_server: Some(to_server),
            from_server,
            task,
            next_id: 0,
            welcome: Value::Null,
        };
        client.welcome = client.json().await;
        assert_eq!(client.welcome["type"], "welcome");
        client
    }

    fn token(&self, sub: &str, role: Role, ttl: u64) -> String {
        self.issuer.issue(sub, role, ttl)
    }

    /// A sample's value as `/metrics` renders it (0 when absent).
    fn metric(&self, sample: &str) -> f64 {
        self.recorder
            .handle()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn publish(&self, room: &str, event: &str, data: Value) -> u64 {
        let room = Room::parse(room).unwrap();
        let data = serde_json::value::to_raw_value(&data).unwrap();
        self.backplane
            .bus
            .publish(&room, event, data)
            .await
            .unwrap()
    }
}

/// The client end of a session's transport.
struct Client {
    /// Dropping it ends the session's stream (the peer went away).
    to_server: Option<mpsc::Sender<Result<Message, axum::Error>>>,
    from_server: mpsc::Receiver<Message>,
    task: JoinHandle<()>,
    next_id: i64,
    welcome: Value,
}

impl Client {
    /// The next frame; `None` once the session ended.
    async fn next(&mut self) -> Option<Message> {
        self.from_server.recv().await
    }

    /// The next text frame as JSON (pings skipped).
    async fn json(&mut self) -> Value {
        loop {
            match self.next().await.expect("the session ended") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn send(&mut self, message: Message) {
        let to_server = self.to_server.as_ref().expect("still connected");
        to_server.send(Ok(message)).await.unwrap();
    }

    /// Sends `op` with a fresh id; returns the reply to it (frames before it dropped).
    async fn request(&mut self, op: ClientOp) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let frame = op.with_id(id).encode();
        self.send(Message::Text(frame.into())).await;
        loop {
            let reply = self.json().await;
            if reply["id"] == id {
                return reply;
            }
        }
    }

    async fn subscribe(&mut self, room: &str) -> Value {
        let room = Room::parse(room).unwrap();
        self.request(ClientOp::Subscribe { room, since: None })
            .await
    }

    /// Reads until the close frame and answers it (as WebSocket clients do); returns its code.
    /// Pongs every ping on the way when `pong` (a live client), text frames are dropped.
    async fn closed(&mut self, pong: bool) -> u16 {
        loop {
            match self.next().await.expect("ended without a close frame") {
                Message::Close(frame) => {
                    if let Some(to_server) = &self.to_server {
                        // The session may already have stopped waiting for the answer.
                        let _ = to_server.send(Ok(Message::Close(None))).await;
                    }
                    return frame.expect("a close code").code;
                }
                Message::Ping(_) if pong => self.send(Message::Pong(Default::default())).await,
                _ => {}
            }
        }
    }

    /// The connection number in `{node}-{n}`.
    fn conn(&self) -> u64 {
        let id = self.welcome["conn"].as_str().unwrap();
        id.rsplit('-').next().unwrap().parse().unwrap()
    }
}

fn ok(reply: &Value) -> bool {
    reply["type"] == "ok"
}

fn error(reply: &Value) -> &str {
    reply["error"].as_str().unwrap_or("")
}

const HOUR: u64 = 3600;

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_each_heartbeat_then_closed_idle_and_a_live_one_stays() {
    let config = GatewayConfig {
        heartbeat_interval: Duration::from_secs(25),
        idle_timeout: Duration::from_secs(60),
        ..GatewayConfig::default()
    };
    let h = Harness::new(config);
    let start = Instant::now();
    let mut silent = h.connect("u1", Role::Customer, HOUR).await;
    let mut live = h.connect("u2", Role::Customer, HOUR).await;
    let silent_side = async {
        let mut pings = Vec::new();
        loop {
            match silent.next().await.expect("a frame") {
                Message::Ping(_) => pings.push(start.elapsed()),
                Message::Close(frame) => return (frame.unwrap().code, pings, start.elapsed()),
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    // A client that answers each ping is never idle.
    let live_side = async {
        for _ in 0..10 {
            match live.next().await.unwrap() {
                Message::Ping(_) => live.send(Message::Pong(Default::default())).await,
                other => panic!("unexpected {other:?}"),
            }
        }
        live.request(ClientOp::Ping).await
    };
    let ((code, pings, closed_at), live_reply) = tokio::join!(silent_side, live_side);
    assert_eq!(code, close::IDLE_TIMEOUT);
    let secs = Duration::from_secs;
    assert_eq!(pings, [secs(25), secs(50)], "a ping every heartbeat");
    // Closed at the first heartbeat more than the idle timeout after the last frame.
    assert_eq!(closed_at, secs(75));
    assert!(ok(&live_reply));
    assert_eq!(start.elapsed(), secs(250), "ten heartbeats later");
}

#[tokio::test(start_paused = true)]
async fn a_connection_ends_at_its_tokens_exp() {
    let h = Harness::new(GatewayConfig::default());
    let start = Instant::now();
    let mut c = h.connect("u1", Role::Customer, 90).await;
    assert_eq!(c.closed(true).await, close::TOKEN_EXPIRED);
    // `exp` is in whole seconds of the wall clock, which may have ticked once since.
    let lived = start.elapsed();
    assert!(
        (Duration::from_secs(89)..=Duration::from_secs(90)).contains(&lived),
        "{lived:?}"
    );
}

/// Issue #19 §5: the session's end is computed with saturating arithmetic, so an `exp` the
/// clock cannot represent (2^64 − 1: the handshake refuses it, but the session does not rely
/// on that) neither panics the session (which used to skip its cleanup) nor keeps it from
/// closing with 4000 at the drain.
#[tokio::test(start_paused = true)]
async fn a_token_that_never_expires_neither_panics_the_session_nor_escapes_the_drain() {
    let h = Harness::new(GatewayConfig::default());
    let who = Principal {
        sub: UserId::parse("u1").unwrap(),
        role: Role::Customer,
        exp: u64::MAX,
        iat: None,
    };
    let mut c = h.open(who, 64).await;
    h.orders.put(1, "u1", None);
    assert!(ok(&c.subscribe("order:1").await));
    assert!(ok(&c.request(ClientOp::Ping).await));
    h.shutdown.cancel();
    assert_eq!(c.closed(true).await, close::SHUTDOWN);
    c.task.await.expect("the session ended without a panic");
    assert!(h.gateway.drain(Duration::from_secs(1)).await);
    assert_eq!(h.metric("switchyard_subscriptions"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn refresh_moves_the_end_to_the_new_exp_and_a_token_for_someone_else_ends_it() {
    let h = Harness::new(GatewayConfig::default());
    let start = Instant::now();
    let mut c = h.connect("u1", Role::Customer, 30).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let token = "not.a.token".to_owned();
    let reply = c.request(ClientOp::Refresh { token }).await;
    assert_eq!(error(&reply), "forbidden", "{reply}");
    let token = h.token("u1", Role::Customer, HOUR);
    assert!(ok(&c.request(ClientOp::Refresh { token }).await));
    // Well past the first token's exp: still open.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(ok(&c.request(ClientOp::Ping).await));
    assert_eq!(h.metric("switchyard_token_refreshes_total"), 1.0);

    // A refresh for the same user in another role, or for another user: do not reconnect.
    let token = h.token("u1", Role::Admin, HOUR);
    let reply = c.request(ClientOp::Refresh { token }).await;
    assert_eq!(error(&reply), "forbidden", "{reply}");
    assert_eq!(c.closed(false).await, close::POLICY_VIOLATION);
    let mut other = h.connect("u2", Role::Customer, HOUR).await;
    let token = h.token("u3", Role::Customer, HOUR);
    let reply = other.request(ClientOp::Refresh { token }).await;
    assert_eq!(error(&reply), "forbidden", "{reply}");
    assert_eq!(other.closed(false).await, close::POLICY_VIOLATION);
    // The refreshed connection lived on for the 70 s of this test, and it is now.
    assert_eq!(start.elapsed(), Duration::from_secs(70));
}

#[tokio::test(start_paused = true)]
async fn leases_are_held_while_connections_live_and_renewed_in_one_sweep_per_heartbeat() {
    let config = GatewayConfig {
        heartbeat_interval: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        ..GatewayConfig::default()
    };
    let h = Harness::new(config);
    let leases = h.shared().leases.clone();
    let start = Instant::now();
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(h.connect(&format!("u{i}"), Role::Customer, HOUR).await);
    }
    assert_eq!(leases.len(), 5);
    // Three heartbeats: each session pings its client, and one sweep renews every lease.
    for _ in 0..3 {
        for client in &mut clients {
            assert!(matches!(client.next().await, Some(Message::Ping(_))));
            client.send(Message::Pong(Default::default())).await;
        }
    }
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    assert_eq!(leases.renewals.load(Ordering::Relaxed), 15);
    for client in &mut clients {
        client.to_server = None;
    }
    for client in clients {
        client.task.await.unwrap();
    }
    assert_eq!(leases.len(), 0, "released as each connection closed");
}

#[tokio::test(start_paused = true)]
async fn the_drain_closes_each_connection_at_its_own_moment_within_the_spread() {
    let spread = Duration::from_secs(2);
    let config = GatewayConfig {
        drain_spread: spread,
        ..GatewayConfig::default()
    };
    let h = Harness::new(config);
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(h.connect(&format!("u{i}"), Role::Customer, HOUR).await);
    }
    let start = Instant::now();
    h.shutdown.cancel();
    let closes = futures_util::future::join_all(clients.iter_mut().map(|c| async {
        let code = c.closed(true).await;
        (c.conn(), code, start.elapsed())
    }))
    .await;
    for (conn, code, at) in &closes {
        assert_eq!(*code, close::SHUTDOWN);
        assert_eq!(*at, super::spread_delay(*conn, spread), "conn {conn}");
        assert!(*at >= spread / 20 && *at < spread, "{at:?}");
    }
    let first = closes.iter().map(|c| c.2).min().unwrap();
    let last = closes.iter().map(|c| c.2).max().unwrap();
    assert!(
        last - first >= spread / 2,
        "spread out: {first:?}..{last:?}"
    );
    assert!(h.gateway.drain(Duration::from_secs(1)).await, "all drained");
}

#[tokio::test(start_paused = true)]
async fn ops_locations_and_pings_are_rate_limited() {
    // The defaults: ops 50/s (burst 100), locations 5/s (burst 10), pings 10/s (burst 50).
    let h = Harness::new(GatewayConfig::default());
    let config = &h.shared().config;
    let (op_burst, location_burst) = (config.op_burst as usize, config.location_burst as usize);
    let (op_rate, ping_burst) = (config.op_rate as usize, config.ping_burst as usize);
    // Ops: the burst, then `rate_limited` without a disconnect; refilled at the rate.
    let mut c = h.connect("c1", Role::Customer, HOUR).await;
    let mut limited = 0;
    for _ in 0..op_burst + 20 {
        let reply = c.request(ClientOp::Ping).await;
        if error(&reply) == "rate_limited" {
            limited += 1;
        }
    }
    assert_eq!(limited, 20);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..op_rate {
        assert!(ok(&c.request(ClientOp::Ping).await));
    }
    assert_eq!(error(&c.request(ClientOp::Ping).await), "rate_limited");

    // Locations: their own, smaller budget.
    h.orders.put(7, "c1", Some("p1"));
    let mut p = h.connect("p1", Role::Partner, HOUR).await;
    let fix = || ClientOp::Location {
        order_id: "7".to_owned(),
        fix: LocationFix {
            lat: 12.97,
            lng: 77.59,
            heading: None,
            speed: None,
            ts: None,
        },
    };
    let mut replies = Vec::new();
    for _ in 0..location_burst + 2 {
        replies.push(p.request(fix()).await);
    }
    assert!(replies[..location_burst].iter().all(ok), "{replies:?}");
    assert!(
        replies[location_burst..]
            .iter()
            .all(|r| error(r) == "rate_limited")
    );
    tokio::time::sleep(Duration::from_secs_f64(1.0 / config.location_rate)).await;
    assert!(ok(&p.request(fix()).await), "one more a token's time later");

    // WebSocket pings: beyond the burst the connection is closed (4500).
    for _ in 0..=ping_burst {
        p.send(Message::Ping(Default::default())).await;
    }
    assert_eq!(p.closed(false).await, close::POLICY_VIOLATION);
    assert!(ok(&c.request(ClientOp::Ping).await), "others unaffected");
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_gets_the_newest_position_not_a_backlog_and_ordered_events_overflow() {
    let config = GatewayConfig {
        outbound_queue_bytes: 16 * 1024,
        ..GatewayConfig::default()
    };
    let h = Harness::new(config);
    h.orders.put(7, "c1", Some("p1"));
    // One frame in flight: a client that does not read blocks the session's next write.
    let mut c = h.connect_with("c1", Role::Customer, HOUR, 1).await;
    assert!(ok(&c.subscribe("order:7").await));
    let location = |i: i64| {
        json!(PartnerLocation {
            order_id: "7".to_owned(),
            partner: "p1".to_owned(),
            location: Location {
                lat: 12.0,
                lng: 77.0,
                heading: None,
                speed: None,
                ts: Some(i),
                received_at: i,
            },
        })
    };
    let mut last = 0;
    for i in 0..500 {
        last = h
            .publish("order:7", PartnerLocation::NAME, location(i))
            .await;
    }
    // Many times the queue's size was published; what arrives is a few, in order, ending
    // with the newest.
    let mut offsets = Vec::new();
    while offsets.last() != Some(&last) {
        let event = c.json().await;
        assert_eq!(event["event"], PartnerLocation::NAME, "{event}");
        offsets.push(event["offset"].as_u64().unwrap());
    }
    assert!(offsets.len() < 10, "{offsets:?}");
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert!(h.metric("switchyard_events_conflated_total") > 400.0);

    // Ordered events are never conflated: the queue overflows, the client is told to
    // reconnect and recover (4003).
    for i in 0..500 {
        h.publish(
            "order:7",
            "order.note",
            json!({ "n": i, "pad": "x".repeat(100) }),
        )
        .await;
    }
    assert_eq!(c.closed(false).await, close::SLOW_CONSUMER);
    assert_eq!(h.metric("switchyard_slow_consumer_closes_total"), 1.0);
    assert_eq!(h.metric("switchyard_outbound_queue_bytes"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn chat_sends_are_rate_limited_typing_is_throttled_and_snapshots_carry_the_read_state() {
    let config = GatewayConfig {
        chat_rate: 5.0,
        chat_burst: 10.0,
        ..GatewayConfig::default()
    };
    let h = Harness::new(config);
    h.orders.put(7, "c1", Some("p1"));
    let room = || Room::parse("order:7").unwrap();
    let mut c1 = h.connect("c1", Role::Customer, HOUR).await;
    let mut p1 = h.connect("p1", Role::Partner, HOUR).await;
    let snapshot = c1.subscribe("order:7").await;
    assert_eq!(
        snapshot["snapshot"]["chat"],
        json!({"last_read":"1","unread":2})
    );
    assert!(ok(&p1.subscribe("order:7").await));
    let send = |i: usize| ClientOp::Send {
        room: room(),
        text: format!("message {i}"),
        client_msg_id: format!("m{i}"),
    };
    // The burst, then `rate_limited` until the bucket refills.
    for i in 0..10 {
        let reply = c1.request(send(i)).await;
        assert!(ok(&reply), "{reply}");
        assert_eq!(reply["message"]["text"], format!("message {i}"));
        assert_eq!(reply["message"]["offset"], i + 10, "the backend's offset");
        assert_eq!(reply["room"], "order:7");
    }
    assert_eq!(error(&c1.request(send(10)).await), "rate_limited");
    tokio::time::advance(Duration::from_millis(400)).await;
    assert!(ok(&c1.request(send(11)).await));
    assert_eq!(h.orders.messages.lock().unwrap().len(), 11);
    // Not a member: refused by the backend's rules.
    let mut c2 = h.connect("c2", Role::Customer, HOUR).await;
    assert_eq!(error(&c2.request(send(0)).await), "forbidden");
    assert_eq!(
        error(&c2.request(ClientOp::Typing { room: room() }).await),
        "forbidden",
        "typing needs the room joined"
    );
    // Typing: the first goes out, the next within 2 s is answered but not forwarded — per
    // user, whichever of its connections types.
    let mut c1_again = h.connect("c1", Role::Customer, HOUR).await;
    assert!(ok(&c1_again.subscribe("order:7").await));
    for _ in 0..3 {
        assert!(ok(&c1.request(ClientOp::Typing { room: room() }).await));
        assert!(ok(&c1_again
            .request(ClientOp::Typing { room: room() })
            .await));
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(ok(&c1_again
        .request(ClientOp::Typing { room: room() })
        .await));
    assert!(ok(&c1.request(ClientOp::Typing { room: room() }).await));
    // Events of one room arrive in order: everything typed is in before this one.
    h.publish("order:7", "sentinel", json!({})).await;
    let mut typing = 0;
    loop {
        let frame = p1.json().await;
        if frame["event"] == "chat.typing" {
            assert_eq!(frame["data"]["from"], "c1");
            typing += 1;
        }
        if frame["event"] == "sentinel" {
            break;
        }
    }
    assert_eq!(typing, 2, "one per 2 s");
    let read = ClientOp::Read {
        room: room(),
        message_id: "3".into(),
    };
    assert!(ok(&c1.request(read).await));
}

#[tokio::test(start_paused = true)]
async fn who_may_join_which_room() {
    let config = GatewayConfig {
        max_subscriptions: 4,
        ..GatewayConfig::default()
    };
    let h = Harness::new(config);
    h.orders.put(1, "c1", Some("p1"));
    h.orders.put(2, "c2", None);
    h.orders.put(3, "c2", None);
    let forbidden = |reply: &Value| error(reply) == "forbidden";

    let mut c1 = h.connect("c1", Role::Customer, HOUR).await;
    assert_eq!(c1.welcome["rooms"], json!(["user:c1"]));
    assert!(ok(&c1.subscribe("user:c1").await));
    let reply = c1.subscribe("order:1").await;
    assert!(ok(&reply), "{reply}");
    assert_eq!(reply["snapshot"]["customer"], "c1");
    // A product's room: anyone signed in; the snapshot is the product (null: none).
    let mut c2 = h.connect("c2", Role::Customer, HOUR).await;
    let reply = c2.subscribe("product:milk-1l").await;
    assert!(ok(&reply), "{reply}");
    assert_eq!(reply["snapshot"]["stock"], 7);
    let reply = c2.subscribe("product:nothing").await;
    assert!(ok(&reply), "{reply}");
    assert_eq!(reply["snapshot"], Value::Null);
    for room in [
        "user:c2",
        "admin:revenue",
        "admin:inventory",
        "order:2",
        "order:999",
        "order:01",
    ] {
        let reply = c1.subscribe(room).await;
        assert!(forbidden(&reply), "{room}: {reply}");
    }

    // A partner: the order assigned to them — also when only the source of truth knows yet.
    let mut p1 = h.connect("p1", Role::Partner, HOUR).await;
    assert!(ok(&p1.subscribe("order:1").await));
    assert!(forbidden(&p1.subscribe("order:2").await));
    h.orders.assign_fresh_only(3, "p1");
    assert!(ok(&p1.subscribe("order:3").await), "assigned a moment ago");
    assert!(forbidden(&p1.subscribe("user:c1").await));

    // An admin: every room, up to the subscription limit (its own room counts).
    let mut admin = h.connect("admin", Role::Admin, HOUR).await;
    let reply = admin.subscribe("admin:revenue").await;
    assert!(ok(&reply), "{reply}");
    assert_eq!(reply["snapshot"]["total_paise"], 4_200);
    assert!(ok(&admin.subscribe("user:c1").await));
    assert!(ok(&admin.subscribe("admin:inventory").await));
    let reply = admin.subscribe("order:3").await;
    assert_eq!(error(&reply), "limit_exceeded", "{reply}");
    assert_eq!(h.shared().hub.member_count("user:c1"), 2);
}

/// Issue #20 §2: a session that panics still gives back everything it held — its rooms (no
/// dead member stays in the hub), its slot and lease, the gauges — and is logged as closed.
#[tokio::test(start_paused = true)]
async fn a_panicking_session_leaves_no_trace() {
    let h = Harness::new(GatewayConfig::default());
    h.orders.put(1, "c1", None);
    let mut admin = h.connect("admin", Role::Admin, HOUR).await;
    assert!(ok(&admin.subscribe("order:1").await));
    let mut c1 = h.connect("c1", Role::Customer, HOUR).await;
    assert!(ok(&c1.subscribe("order:1").await));
    let hub = &h.shared().hub;
    assert_eq!(hub.member_count("order:1"), 2);
    assert_eq!(h.metric("switchyard_subscriptions"), 4.0);
    assert_eq!(h.metric("switchyard_connections"), 2.0);

    // Subscribing to this order makes the backend panic inside c1's session.
    c1.next_id += 1;
    let frame = ClientOp::Subscribe {
        room: Room::parse(&format!("order:{PANICKING_ORDER}")).unwrap(),
        since: None,
    }
    .with_id(c1.next_id)
    .encode();
    c1.send(Message::Text(frame.into())).await;
    let Client { task, .. } = c1;
    assert!(task.await.unwrap_err().is_panic());
    tokio::task::yield_now().await;

    assert_eq!(hub.member_count("order:1"), 1, "no dead member");
    assert_eq!(hub.member_count("user:c1"), 0);
    assert_eq!(hub.connections(), 1);
    assert_eq!(h.shared().leases.len(), 1);
    assert_eq!(h.metric("switchyard_subscriptions"), 2.0);
    assert_eq!(h.metric("switchyard_rooms"), 2.0);
    assert_eq!(h.metric("switchyard_connections"), 1.0);
    assert_eq!(
        h.metric("switchyard_connections_closed_total{code=\"0\"}"),
        1.0
    );
    // The room still works for the member that is left.
    h.publish("order:1", "order.note", json!({ "n": 1 })).await;
    // (After c1's presence in the room: its join, and its leave once the debounce passed.)
    loop {
        let event = admin.json().await;
        if event["event"] == "order.note" {
            break;
        }
        assert!(
            event["event"].as_str().unwrap().starts_with("presence."),
            "{event}"
        );
    }

    admin.to_server = None;
    let Client { task, .. } = admin;
    task.await.unwrap();
    assert_eq!(hub.room_count(), 0);
    assert_eq!(hub.connections(), 0);
    for gauge in [
        "switchyard_subscriptions",
        "switchyard_rooms",
        "switchyard_connections",
    ] {
        assert_eq!(h.metric(gauge), 0.0, "{gauge}");
    }
    assert!(h.gateway.drain(Duration::from_secs(1)).await);
}

/// What one idle connection's structures weigh (issue #17, idle memory): printed with
/// `cargo test -p switchyard-gateway sizes -- --nocapture`. The heap each one points to is
/// not counted here (see benches/analysis.md for the whole account).
#[tokio::test]
async fn sizes() {
    use std::mem::size_of;
    let h = Harness::new(GatewayConfig::default());
    let who = Principal {
        sub: UserId::parse("u1").unwrap(),
        role: Role::Customer,
        exp: now_secs() + 60,
        iat: None,
    };
    let opened = slot::open(h.shared(), &who.sub, None).await.unwrap();
    let session = Box::new(Session::new(h.shared().clone(), who, opened));
    let (to_client, _from_server) = mpsc::channel::<Message>(1);
    let (_to_server, mut inbound) = mpsc::channel::<Result<Message, axum::Error>>(1);
    let stream = futures_util::stream::poll_fn(move |cx| inbound.poll_recv(cx));
    let run = session.run(PollSender::new(to_client), stream);
    // The future a connection's task holds (tokio adds ~104 B and rounds the task up to a
    // multiple of 128 B on x86_64): its type named through a closure that makes it.
    fn made_by<A, R>(_: &impl FnOnce(A) -> R) -> usize {
        size_of::<R>()
    }
    type Ws = axum::extract::ws::WebSocket;
    type Halves = (
        futures_util::stream::SplitSink<Ws, Message>,
        futures_util::stream::SplitStream<Ws>,
    );
    let websocket_run =
        made_by(&|(session, (sink, stream)): (Box<Session>, Halves)| session.run(sink, stream));
    let sizes = [
        ("Session", size_of::<Session>()),
        ("Session::run future (WebSocket)", websocket_run),
        ("Session::run future (channel transport)", size_of_val(&run)),
        ("axum WebSocket", size_of::<axum::extract::ws::WebSocket>()),
        ("Message", size_of::<Message>()),
        ("outbound::Mailbox", size_of::<crate::outbound::Mailbox>()),
        ("outbound::Outbound", size_of::<crate::outbound::Outbound>()),
        ("cursor::Cursor", size_of::<crate::cursor::Cursor>()),
        ("Room", size_of::<Room>()),
        ("members::Members", size_of::<crate::members::Members>()),
        ("rate::TokenBucket", size_of::<crate::rate::TokenBucket>()),
        ("Principal", size_of::<Principal>()),
        ("slot::Slot", size_of::<slot::Slot>()),
        ("tokio Sleep", size_of::<tokio::time::Sleep>()),
        ("tokio Interval", size_of::<tokio::time::Interval>()),
        ("tokio Notify", size_of::<tokio::sync::Notify>()),
    ];
    for (name, size) in sizes {
        println!("{name:>45}: {size:>5} B");
    }
    drop(run);
}
