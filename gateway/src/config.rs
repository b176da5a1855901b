//! Gateway limits and timings. Parsed from flags and environment by the `switchyard`
//! binary (see its `config` module, where each variable is documented); the defaults here
//! are the documented defaults.

use std::time::Duration;

/// Everything a gateway enforces, in one place.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest accepted WebSocket frame and message, bytes. Larger → close 1009.
    pub max_frame_bytes: usize,
    /// Rooms one connection may be in at once, its own `user:` room included.
    pub max_subscriptions: usize,
    /// Concurrent connections per user (`sub`) on this gateway and, with Redis, across every
    /// gateway (leases in Redis). Beyond → HTTP 429.
    pub max_connections_per_user: usize,
    /// Concurrent connections on this gateway. Beyond → HTTP 503.
    pub max_connections: usize,
    /// Bytes that may wait in one connection's outbound queue. Latest-value events are
    /// conflated; an ordered event that does not fit closes the client with 4003.
    pub outbound_queue_bytes: usize,
    /// How long a handshake may wait for the bus in all (the user room's subscription, its
    /// position, the cluster-wide connection lease). Past it the handshake is refused with
    /// HTTP 503 and `Retry-After`, never left waiting for the listener's request timeout.
    pub handshake_bus_timeout: Duration,
    /// How long one write to a client may block before the client counts as slow.
    pub write_timeout: Duration,
    /// Under load (a connection written to more often than this), its frames gather for up to
    /// this long and go out in one write; zero writes every event at once.
    pub write_delay: Duration,
    /// Interval between server pings.
    pub heartbeat_interval: Duration,
    /// A connection with no inbound traffic (frames or pongs) for this long is closed (4002).
    pub idle_timeout: Duration,
    /// Presence's timings (see [`crate::presence`]).
    pub presence: PresenceTiming,
    /// Whether partners' fixes are published in `admin:fleet` too (at most once a second per
    /// partner, see `crate::fleet`); otherwise only to their order rooms.
    pub fleet_positions: bool,
    /// Ops per second per connection (token bucket rate) and burst size.
    pub op_rate: f64,
    pub op_burst: f64,
    /// Location ops per second per connection, and burst. Excess → `rate_limited`.
    pub location_rate: f64,
    pub location_burst: f64,
    /// Chat messages (`send` ops) per second per connection, and burst. Excess →
    /// `rate_limited`.
    pub chat_rate: f64,
    pub chat_burst: f64,
    /// At most one `chat.typing` per user and order room in this interval (the rest are
    /// answered `ok` and dropped; see `crate::typing`).
    pub typing_interval: Duration,
    /// Pings (and pongs) a client may send per second, and burst. The WebSocket layer answers
    /// each ping, so a flood costs the server; beyond the burst → close 4500.
    pub ping_rate: f64,
    pub ping_burst: f64,
    /// tungstenite's read buffer per connection, bytes (its default is 128 KiB).
    pub read_buffer_bytes: usize,
    /// tungstenite's write buffer: frames are flushed once this many bytes are buffered.
    pub write_buffer_bytes: usize,
    /// Allowed `Origin` header values; empty allows any (and requests without Origin).
    pub allowed_origins: Vec<String>,
    /// On shutdown each connection is closed at its own moment in
    /// `[drain_spread / 20, drain_spread)`, so clients do not all reconnect at once.
    pub drain_spread: Duration,
    /// Test-only: also serve `GET /conformance/echo`, an echo endpoint behind the same
    /// handshake and limits as `/ws`, for RFC 6455 conformance runs. Off in production.
    pub conformance_echo: bool,
}

/// How presence is kept (protocol/README.md, "Presence").
#[derive(Debug, Clone, Copy)]
pub struct PresenceTiming {
    /// How often this gateway renews its users' entries; an entry lives three of these.
    pub heartbeat: Duration,
    /// A user gone for less than this, and back, publishes nothing.
    pub debounce: Duration,
    /// How often the rooms this gateway serves are swept (expired entries, due leaves).
    pub sweep: Duration,
}

impl PresenceTiming {
    /// How long an entry lives without a renewal.
    pub fn ttl(&self) -> Duration {
        self.heartbeat * 3
    }
}

impl Default for PresenceTiming {
    fn default() -> Self {
        PresenceTiming {
            heartbeat: Duration::from_secs(15),
            debounce: Duration::from_secs(2),
            sweep: Duration::from_secs(5),
        }
    }
}

impl GatewayConfig {
    /// How long a connection's cluster-wide claim lives without a heartbeat renewing it:
    /// three heartbeats, so a killed gateway's connections stop counting soon after.
    pub fn connection_lease(&self) -> Duration {
        (self.heartbeat_interval * 3).max(Duration::from_secs(10))
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 100,
            max_connections_per_user: 16,
            max_connections: 19_000,
            outbound_queue_bytes: 1024 * 1024,
            handshake_bus_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            write_delay: Duration::from_millis(20),
            heartbeat_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            presence: PresenceTiming::default(),
            fleet_positions: true,
            op_rate: 50.0,
            op_burst: 100.0,
            location_rate: 5.0,
            location_burst: 10.0,
            chat_rate: 5.0,
            chat_burst: 10.0,
            typing_interval: crate::typing::TYPING_INTERVAL,
            ping_rate: 10.0,
            ping_burst: 50.0,
            read_buffer_bytes: 512,
            write_buffer_bytes: 16 * 1024,
            allowed_origins: Vec::new(),
            drain_spread: Duration::from_secs(2),
            conformance_echo: false,
        }
    }
}
