//! Test harness: real servers on port 0, real WebSocket clients over TCP, a real HTTP client.
//!
//! # Layout
//! - this file: [`TestApp`] (a `switchyard all` built from typed settings) and the
//!   [`TestServer`] it starts inside the test process, REST calls,
//!   tokens, the protocol [`Client`], raw sockets for bytes no client library would send,
//!   and [`eventually`], the one way a test waits for something to become true.
//! - [`process`]: the real binary as a child process, and running any program to completion.
//! - [`cluster`]: the distributed topology (`scripts/cluster.sh`): Redis, gateways, APIs, nginx.
//! - [`pypi`]: tools from PyPI the tests run (Schemathesis, openapi-python-client, kosoku).
//! - [`batch`]: the batch publish's contract, checked on one Redis and on a cluster.

pub mod batch;
pub mod chaos;
pub mod cluster;
pub mod gapless;
pub mod process;
pub mod pypi;
pub mod redis_cluster;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::config::{AppArgs, Server};
use switchyard::server::{self, App};
use switchyard_auth::Issuer;
use switchyard_client::socket::bearer_request;
use switchyard_client::{ConnectError, Socket};
use switchyard_protocol::{ClientOp, Role, Room};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

/// The repository's root (scripts, target/).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
/// How long a test waits for any one expected frame or response, or for [`eventually`].
/// Generous on purpose: it only bounds a failing test, and on a machine shared with builds and
/// other test runs a relay, a second process or a lock wait can take seconds.
pub const WAIT: Duration = Duration::from_secs(30);

/// A `switchyard all` to be built from typed settings, after the registry backend's
/// `TestApp`: `TestApp::embedded().with_config(|c| c.serve.limits.max_subscriptions = 3)`,
/// then [`start`](TestApp::start) it on a port-0 listener, or [`build`](TestApp::build) it
/// and drive its router with `tower::ServiceExt::oneshot`.
pub struct TestApp {
    dir: tempfile::TempDir,
    config: AppArgs,
}

impl TestApp {
    /// The embedded process at its documented defaults, on a fresh SQLite database, with
    /// [`SECRET`] as the key and a short drain.
    pub fn embedded() -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AppArgs::defaults();
        config.database.database_url = format!("sqlite://{}/test.db", dir.path().display());
        config.serve.listen = "127.0.0.1:0".parse().unwrap();
        config.serve.jwt.jwt_secret = Some(SECRET.to_owned());
        config.serve.drain_timeout_ms = 3_000;
        config.serve.drain_spread_ms = 100;
        TestApp { dir, config }
    }

    /// Changes settings (flags and environment variables are fields of [`AppArgs`]).
    pub fn with_config(mut self, change: impl FnOnce(&mut AppArgs)) -> TestApp {
        change(&mut self.config);
        self
    }

    /// Builds the process without serving it: its router answers in-process.
    pub async fn build(self) -> BuiltApp {
        let app = server::build(Server::All(self.config))
            .await
            .expect("the test app builds");
        BuiltApp { app, dir: self.dir }
    }

    /// Builds and serves it on a loopback port; returns once `/readyz` answers 200.
    pub async fn start(self) -> TestServer {
        let BuiltApp { app, dir } = self.build().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::serve(
            app,
            listener,
            shutdown.clone().cancelled_owned(),
        ));
        let server = TestServer {
            addr,
            shutdown,
            task,
            dir,
            http: reqwest::Client::new(),
        };
        server.wait_ready().await;
        server
    }
}

/// A built, unserved app and the directory of its database.
pub struct BuiltApp {
    pub app: App,
    pub dir: tempfile::TempDir,
}

/// A `switchyard all` server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl TestServer {
    /// `TestApp::embedded().start()`: the defaults.
    pub async fn start() -> TestServer {
        TestApp::embedded().start().await
    }

    async fn wait_ready(&self) {
        eventually("the server is ready", async || {
            self.http
                .get(self.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }

    /// A REST call; returns status and JSON body (`Value::Null` when the body is empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        http_call(&self.http, method, &self.url(path), token, body).await
    }

    /// Creates an order for `customer` of `qty` units of a product costing `price` paise (one
    /// created for the price when the catalog has none, see [`TestServer::product_at`]) and
    /// returns its id.
    pub async fn create_order(&self, customer: &str, qty: i64, price: i64) -> String {
        let sku = self.product_at(price).await;
        let (status, body) = self
            .call(
                "POST",
                "/api/orders",
                &token(customer, Role::Customer),
                Some(json!({"items":[{"sku":sku,"qty":qty,"unit_price_paise":price}],"address":"12 MG Road"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// The SKU `item-{price}`, put in the catalog at `price` paise with plenty of stock unless
    /// it is there already.
    pub async fn product_at(&self, price: i64) -> String {
        let sku = format!("item-{price}");
        let path = format!("/api/products/{sku}");
        let (status, _) = self.call("GET", &path, &admin(), None).await;
        if status == 404 {
            let product = json!({"name": sku, "price_paise": price, "stock": 1_000_000});
            let (status, body) = self.call("PUT", &path, &admin(), Some(product)).await;
            assert!(status == 201 || status == 200, "{body}");
        }
        sku
    }

    pub async fn assign(&self, order: &str, partner: &str) {
        let (status, body) = self
            .call(
                "POST",
                &format!("/api/orders/{order}/assign"),
                &admin(),
                Some(json!({ "partner": partner })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn set_status(&self, order: &str, token: &str, status: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/api/orders/{order}/status"),
            token,
            Some(json!({ "status": status })),
        )
        .await
    }
}

/// Pays `order` with an `Idempotency-Key`; returns the status and the JSON body.
pub async fn pay(
    server: &TestServer,
    order: &str,
    token: &str,
    key: &str,
    amount: i64,
) -> (u16, Value) {
    let resp = server
        .http
        .post(server.url(&format!("/api/orders/{order}/payment")))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({ "amount_paise": amount }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Polls `check` every 20 ms until it is done, and returns what it found; fails after
/// [`WAIT`], naming `what` and the last thing `check` saw. A check answers `bool`,
/// `Option<T>`, or `Result<T, E>` (the error is what it saw instead).
pub async fn eventually<C: Check>(what: &str, mut check: impl AsyncFnMut() -> C) -> C::Done {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = match check().await.done() {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}{}{seen}",
            if seen.is_empty() { "" } else { "; last saw: " }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The answer of one [`eventually`] check: done with a value, or not yet with what it saw.
pub trait Check {
    type Done;
    fn done(self) -> Result<Self::Done, String>;
}

impl Check for bool {
    type Done = ();
    fn done(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl<T> Check for Option<T> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: std::fmt::Display> Check for Result<T, E> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|seen| seen.to_string())
    }
}

/// The next `presence.*` event of `room` (earlier frames are dropped: the room also carries
/// other events).
pub async fn next_presence_event(client: &mut Client, room: &str) -> Value {
    client
        .recv_until(|v| {
            v["type"] == "event"
                && v["room"] == room
                && v["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("presence."))
        })
        .await
}

/// One REST call with a bearer token; returns the status and the JSON body (`null` when the
/// body is not JSON).
pub async fn http_call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http
        .request(method.parse().unwrap(), url)
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The Prometheus text a process serves at `base` + `/metrics`.
pub async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `series` (name and labels exactly as rendered) in a scrape
/// (families are registered at 0 on start, so "present" says nothing; the value does).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

pub fn token(sub: &str, role: Role) -> String {
    Issuer::new(SECRET.as_bytes(), None, None).issue(sub, role, 3600)
}

pub fn admin() -> String {
    token("admin", Role::Admin)
}

/// A WebSocket client speaking the Switchyard protocol: `switchyard-client`'s [`Socket`]
/// (connect, welcome, typed ops with ids), read as JSON values so that tests assert on
/// exactly what the server put on the wire, every read bounded by [`WAIT`].
pub struct Client {
    pub socket: Socket,
    /// The `welcome`, as JSON.
    pub welcome: Value,
    capture: Option<Capture>,
}

/// The frames a client exchanged, written to a file of `$SWITCHYARD_FRAME_LOG` when set, one
/// per line (`in\t<frame>` from the server, `out\t<frame>` for typed ops): the AsyncAPI check
/// (`tests/asyncapi.rs`) validates every one after the suite. At most `MAX` per connection.
struct Capture {
    out: std::io::BufWriter<std::fs::File>,
    left: usize,
}

impl Capture {
    const MAX: usize = 2_000;

    fn open() -> Option<Capture> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::path::PathBuf::from(std::env::var_os("SWITCHYARD_FRAME_LOG")?);
        std::fs::create_dir_all(&dir).ok()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let file = std::fs::File::create(dir.join(format!("{}-{n}.log", std::process::id())));
        Some(Capture {
            out: std::io::BufWriter::new(file.ok()?),
            left: Capture::MAX,
        })
    }

    fn record(&mut self, direction: &str, frame: &str) {
        use std::io::Write;
        if self.left > 0 {
            self.left -= 1;
            let _ = writeln!(self.out, "{direction}\t{frame}");
        }
    }
}

/// What a test sends as an op: a typed [`ClientOp`], or raw JSON for frames no client
/// library would build (bad fields, unknown ops).
pub trait Op {
    fn frame(self, id: i64) -> String;
    /// A frame of the protocol, built from its types (raw JSON may break it on purpose).
    fn typed(&self) -> bool {
        false
    }
}

impl Op for ClientOp {
    fn frame(self, id: i64) -> String {
        self.with_id(id).encode()
    }
    /// (Not a location a test builds out of range on purpose.)
    fn typed(&self) -> bool {
        match self {
            ClientOp::Location { fix, .. } => fix.validate().is_ok(),
            _ => true,
        }
    }
}

impl Op for Value {
    fn frame(mut self, id: i64) -> String {
        self["id"] = json!(id);
        self.to_string()
    }
}

/// Connects with `Authorization: Bearer`; panics unless the upgrade succeeds.
pub async fn connect(url: &str, token: &str) -> Client {
    let req = bearer_request(url, token).unwrap();
    connect_request(req).await.expect("upgrade refused")
}

/// Connects with a prepared request.
pub async fn connect_request(
    req: tungstenite::handshake::client::Request,
) -> Result<Client, ConnectError> {
    Ok(Client::welcomed(Socket::connect_with(req).await?))
}

impl Client {
    fn welcomed(socket: Socket) -> Client {
        let mut capture = Capture::open();
        if let Some(capture) = &mut capture {
            capture.record("in", socket.welcome_text());
        }
        Client {
            welcome: serde_json::from_str(socket.welcome_text()).unwrap(),
            socket,
            capture,
        }
    }

    /// The server's answer to the upgrade.
    pub fn response(&self) -> &tungstenite::handshake::client::Response {
        self.socket.response()
    }
}

/// Connects over a socket whose receive buffer is only `recv_buffer` bytes, so that a
/// client that stops reading backs the server up after a few KiB instead of megabytes.
pub async fn connect_small_window(url: &str, token: &str, recv_buffer: u32) -> Client {
    let req = bearer_request(url, token).unwrap();
    let host = req.uri().authority().unwrap().as_str().to_owned();
    let addr: SocketAddr = host.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(recv_buffer).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let socket = Socket::connect_on(tcp, req).await.expect("upgrade refused");
    Client::welcomed(socket)
}

/// Tries to upgrade and expects an HTTP refusal; returns its status and JSON body.
pub async fn refused(req: tungstenite::handshake::client::Request) -> (u16, Value) {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("upgrade unexpectedly accepted"),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            (status, body)
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

impl Client {
    /// The next text frame as JSON.
    pub async fn recv(&mut self) -> Value {
        let text = tokio::time::timeout(WAIT, self.socket.next_text())
            .await
            .expect("timed out waiting for a frame")
            .expect("connection ended");
        if let Some(capture) = &mut self.capture {
            capture.record("in", &text);
        }
        serde_json::from_str(&text).unwrap()
    }

    /// Frames until one matches `pred` (earlier ones are dropped).
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// The next event in `room` with name `event`.
    pub async fn event(&mut self, room: &str, event: &str) -> Value {
        self.recv_until(|v| v["type"] == "event" && v["room"] == room && v["event"] == event)
            .await
    }

    /// Sends raw JSON as it is (no id added).
    pub async fn send(&mut self, v: Value) {
        self.socket.send_text(v.to_string()).await.unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.socket.send_message(msg).await.unwrap();
    }

    /// Sends an op with a fresh id and returns the reply carrying that id (frames before it
    /// are dropped).
    pub async fn request(&mut self, op: impl Op) -> Value {
        let id = self.socket.take_id();
        let typed = op.typed();
        let frame = op.frame(id);
        if let (true, Some(capture)) = (typed, &mut self.capture) {
            capture.record("out", &frame);
        }
        self.socket.send_text(frame).await.unwrap();
        self.recv_until(|v| v["id"] == id && (v["type"] == "ok" || v["type"] == "error"))
            .await
    }

    pub async fn subscribe(&mut self, room: &str) -> Value {
        match Room::parse(room) {
            Ok(room) => {
                self.request(ClientOp::Subscribe { room, since: None })
                    .await
            }
            // Tests of the room grammar subscribe to names no typed op can hold.
            Err(_) => self.request(json!({"op":"subscribe","room":room})).await,
        }
    }

    /// Re-subscribes (idempotent) until the room's position reaches `offset` (the outbox
    /// relay publishes shortly after each REST call returns); returns that reply.
    pub async fn subscribe_until(&mut self, room: &str, offset: u64) -> Value {
        eventually(&format!("{room} at offset {offset}"), async || {
            let reply = self.subscribe(room).await;
            if reply["position"]["offset"].as_u64() >= Some(offset) {
                Ok(reply)
            } else {
                Err(reply)
            }
        })
        .await
    }

    pub async fn ping(&mut self) -> Value {
        self.request(ClientOp::Ping).await
    }

    /// Reads until the server closes; returns the close frame (None if the TCP stream just ended).
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        tokio::time::timeout(WAIT, self.socket.closed())
            .await
            .expect("timed out waiting for close")
    }

    /// Starts a normal close.
    pub async fn close(&mut self) {
        let _ = self.socket.close().await;
    }
}

/// A raw TCP connection that has sent a WebSocket upgrade request with `token` and nothing
/// else: for tests that must write bytes no WebSocket client library would.
pub async fn raw_upgrade(addr: SocketAddr, token: &str) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// Everything the server sends until it closes the connection.
pub async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut received))
        .await
        .expect("the server never closed the connection")
        .ok();
    received
}

/// Where an unmasked server close frame (0x88) carrying `code` starts in raw bytes.
pub fn close_frame_at(bytes: &[u8], code: u16) -> Option<usize> {
    let [hi, lo] = code.to_be_bytes();
    bytes
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2] == hi && w[3] == lo)
}

/// Reads until the server ends the connection (EOF or reset); returns how long that took
/// and what was received. Panics if the server keeps it open for `limit`.
pub async fn server_closes_within(tcp: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            tcp.read(&mut buf),
        )
        .await
        {
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}
