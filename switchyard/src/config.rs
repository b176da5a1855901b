//! Command line and environment: every setting, its variable and its default.
//!
//! Each flag has an environment variable (flags win). `switchyard --help` and
//! `switchyard <command> --help` print this same documentation.

use crate::listener::HttpConfig;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard_api::ApiConfig;
use switchyard_api::catalog::CacheConfig;
use switchyard_auth::{DEFAULT_MAX_LIFETIME_SECS, JwtConfig, VerifyKey, parse_public_algorithm};
use switchyard_broker::HistoryConfig;
use switchyard_broker::redis::RedisConfig;
use switchyard_gateway::GatewayConfig;
use switchyard_gateway::config::PresenceTiming;
use switchyard_protocol::Role;
use switchyard_protocol::order::OrderLimits;
use switchyard_store::DatabaseOptions;

/// Switchyard: a real-time WebSocket gateway with JWT handshakes, rooms and a REST API.
///
/// With no command, runs `all`: gateway + API in one process with an in-process bus and an
/// embedded SQLite database — no external services needed.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: AppArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Gateway + REST API in one process (the embedded default).
    All(AppArgs),
    /// Only the WebSocket gateway (`/ws`): no database — it reads room snapshots from Redis and
    /// asks the API (`SWITCHYARD_API_URL`) when they are missing. Requires a configured JWT key
    /// and REDIS_URL.
    Gateway(GatewayArgs),
    /// Only the REST API (`/api`, `/internal`) and its outbox relay. Requires a configured JWT
    /// key.
    Api(AppArgs),
    /// Print a signed HS256 token for local use.
    Token(TokenArgs),
    /// Publish one event into a room through the API's server publish endpoint.
    Publish(PublishArgs),
    /// Apply the database migrations (SQLite or PostgreSQL, by DATABASE_URL) and exit. API
    /// processes also migrate at start-up; run this first to migrate before a rollout.
    Migrate(DatabaseArgs),
    /// `all` plus a simulated city: customers order and pay, an admin moves the orders
    /// along, partners drive to the customers — through the public REST and WebSocket
    /// interfaces, so everything moves within seconds. Prints the dashboard URL; runs until
    /// Ctrl-C/SIGTERM, then drains like `all`.
    Demo(DemoArgs),
}

/// A server process: what it runs, with the settings only that role has.
#[derive(Debug, Clone)]
pub enum Server {
    All(AppArgs),
    Api(AppArgs),
    Gateway(GatewayArgs),
}

impl Server {
    pub fn mode(&self) -> Mode {
        match self {
            Server::All(_) => Mode::All,
            Server::Api(_) => Mode::Api,
            Server::Gateway(_) => Mode::Gateway,
        }
    }

    /// The settings every server process has.
    pub fn serve(&self) -> &ServeArgs {
        match self {
            Server::All(args) | Server::Api(args) => &args.serve,
            Server::Gateway(args) => &args.serve,
        }
    }

    /// The catalog settings (None for a gateway: it serves no catalog).
    pub fn catalog(&self) -> Option<&CatalogArgs> {
        match self {
            Server::All(args) | Server::Api(args) => Some(&args.catalog),
            Server::Gateway(_) => None,
        }
    }

    /// The chat settings (None for a gateway: it stores no message).
    pub fn chat(&self) -> Option<&ChatArgs> {
        match self {
            Server::All(args) | Server::Api(args) => Some(&args.chat),
            Server::Gateway(_) => None,
        }
    }

    /// The database settings (None for a gateway: it has no database).
    pub fn database(&self) -> Option<&DatabaseArgs> {
        match self {
            Server::All(args) | Server::Api(args) => Some(&args.database),
            Server::Gateway(_) => None,
        }
    }
}

/// What a server process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    All,
    Gateway,
    Api,
}

impl Mode {
    pub fn runs_gateway(self) -> bool {
        matches!(self, Mode::All | Mode::Gateway)
    }
    pub fn runs_api(self) -> bool {
        matches!(self, Mode::All | Mode::Api)
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::All => "all",
            Mode::Gateway => "gateway",
            Mode::Api => "api",
        }
    }
}

/// `switchyard demo`: the server settings of `all`, and the simulation's.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How fast the simulated world moves: `normal` (an order every ~2 s, partners report
    /// their position once a second, a drive takes 20 s) or `fast` (four times faster; a
    /// whole order lifecycle in about 4 s — what the tests use).
    #[arg(
        long,
        env = "SWITCHYARD_DEMO_SPEED",
        value_enum,
        default_value = "normal"
    )]
    pub demo_speed: DemoSpeed,
    /// Simulated customers (each keeps a WebSocket open and at most two orders open).
    #[arg(long, env = "SWITCHYARD_DEMO_CUSTOMERS", default_value_t = 5)]
    pub customers: usize,
    /// Simulated delivery partners (each carries one order at a time).
    #[arg(long, env = "SWITCHYARD_DEMO_PARTNERS", default_value_t = 3)]
    pub partners: usize,
    #[command(flatten)]
    pub serve: AppArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoSpeed {
    Normal,
    Fast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Settings of a process that runs the API (`all`, `api`, `demo`): the common ones and the
/// database.
#[derive(Debug, Clone, Args)]
pub struct AppArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub chat: ChatArgs,
}

/// Order chat (processes that run the API; the store applies it, see `store/src/chat.rs`).
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// How long after an order is delivered or cancelled its members may still send chat
    /// messages, seconds (counted from the order's last change); then `forbidden` ("the chat is
    /// closed"). Reading stays allowed.
    #[arg(long, env = "SWITCHYARD_CHAT_CLOSE_GRACE_SECS", default_value_t = 1800,
          value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    pub chat_close_grace_secs: u64,
    /// How long a chat send (the socket's `send`, `POST /api/orders/{id}/messages`) waits,
    /// after the message is stored, for the outbox relay to publish its `chat.message` event,
    /// milliseconds: the answer carries the event's room `offset`. When the bus is down the
    /// wait ends and the answer comes without `offset` (the message is stored and published
    /// later; a retry with the same `client_msg_id` then has it).
    #[arg(long, env = "SWITCHYARD_CHAT_PUBLISH_WAIT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub chat_publish_wait_ms: u64,
}

/// The catalog's read cache and stock alerts (processes that run the API).
///
/// Reads of `GET /api/products[/{sku}]` are cache-aside: in the embedded mode (`all`) in this
/// process (`moka`, at most `SWITCHYARD_CATALOG_CACHE_BYTES`); in the distributed mode (`api`
/// with `REDIS_URL`) in Redis, shared by every API process (an API process keeps no values of
/// its own: another API process may write the same database). An `api` process without
/// `REDIS_URL` has no cache and reads the database (`X-Cache: miss`). Every write invalidates
/// after its commit and before its answer, by generation, so no read issued after a write's
/// answer returns the value from before it (README, "The catalog"). The cache is never
/// needed: when Redis fails, reads go to the database.
#[derive(Debug, Clone, Args)]
pub struct CatalogArgs {
    /// Serve catalog reads through the read cache (`false`: every read from the database).
    #[arg(long, env = "SWITCHYARD_CATALOG_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub catalog_cache: bool,
    /// How long a cached product or page lives, seconds (a write replaces it at once anyway).
    #[arg(long, env = "SWITCHYARD_CATALOG_CACHE_TTL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub catalog_cache_ttl_secs: u64,
    /// Most bytes of cached products and pages one process keeps in memory: the embedded
    /// cache's, and an eighth more (in both modes) for the single-flight table, where the one
    /// database read of a key at a generation waits for the concurrent misses. Default 16 MiB.
    #[arg(long, env = "SWITCHYARD_CATALOG_CACHE_BYTES", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub catalog_cache_bytes: u64,
    /// A product's stock falling to or below this (and above 0) sends `stock.low` to
    /// `admin:inventory`; reaching 0 sends `stock.out`.
    #[arg(long, env = "SWITCHYARD_LOW_STOCK_THRESHOLD", default_value_t = 10,
          value_parser = clap::value_parser!(i64).range(0..=1_000_000_000))]
    pub low_stock_threshold: i64,
}

impl CatalogArgs {
    /// The read cache's settings.
    pub fn cache(&self) -> CacheConfig {
        CacheConfig {
            enabled: self.catalog_cache,
            ttl: Duration::from_secs(self.catalog_cache_ttl_secs),
            max_bytes: self.catalog_cache_bytes,
        }
    }
}

impl AppArgs {
    /// Every setting at its documented default, whatever the environment says: what tests
    /// build a server from (`switchyard-testkit`'s `TestApp`) before changing a field.
    pub fn defaults() -> AppArgs {
        use clap::FromArgMatches;
        let command = AppArgs::augment_args(clap::Command::new("all"))
            .mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command.get_matches_from(["all"]);
        AppArgs::from_arg_matches(&matches).expect("the defaults parse")
    }
}

/// Settings of `switchyard gateway`: the common ones and where the API is. No database.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub upstream: UpstreamArgs,
}

/// The database of the processes that run the API. `Debug` masks the URL's password.
///
/// The URL's scheme selects the engine:
/// - `sqlite://path/to/file.db` (relative to the working directory; `sqlite:///abs/file.db`):
///   the embedded database, created if missing. One file on one machine with one writer at a
///   time, so **SQLite means exactly one process with the API** (`all`, or one `api`): a second
///   API process on another machine cannot reach the file, and two on one machine would
///   share a lock file instead of a database server. Run several API processes on PostgreSQL.
/// - `postgres://user:password@host:5432/database` (or `postgresql://`): a shared PostgreSQL
///   server (the database must exist; the schema is migrated at start-up). libpq-style query
///   parameters pass through: `sslmode` = `disable` | `prefer` (default) | `require` |
///   `verify-ca` | `verify-full` (TLS is rustls with the Mozilla root certificates, or
///   `sslrootcert=/path/ca.pem`), `sslcert` and `sslkey` (client certificate),
///   `application_name`, `options` (e.g. `-c search_path=switchyard`).
///
/// Migrations (`store/migrations/{sqlite,postgres}`) are applied at start-up by every API
/// process (one at a time: they take a lock) and by `switchyard migrate`.
#[derive(Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: `sqlite://path/file.db` or `postgres://user:password@host/db?sslmode=…`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://switchyard.db")]
    pub database_url: String,
    /// Connections in this process's pool. On PostgreSQL, size it so that
    /// (API processes × this) stays below the server's `max_connections`. On an SQLite file
    /// these serve reads; writes take turns, in the order they came, on one more connection
    /// of their own (waiting for it at most 10 s, or `DATABASE_ACQUIRE_TIMEOUT_MS` if longer).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
    /// PostgreSQL `statement_timeout` of every connection, in milliseconds (0: none): a
    /// statement that runs longer — a lock wait included — fails, and the request answers 500
    /// instead of hanging. (SQLite writers wait at most 10 s for the database lock.)
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 5_000)]
    pub database_statement_timeout_ms: u64,
    /// How long a request waits for a free pooled connection (ms). Past it the request is
    /// answered 503 `unavailable` with `Retry-After` (every connection busy is an overload
    /// that passes, not a failure), counted in `switchyard_database_pool_timeouts_total`.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub database_acquire_timeout_ms: u64,
}

impl DatabaseArgs {
    /// The store's settings.
    pub fn options(&self) -> DatabaseOptions {
        DatabaseOptions {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
            statement_timeout: Duration::from_millis(self.database_statement_timeout_ms),
            acquire_timeout: Duration::from_millis(self.database_acquire_timeout_ms),
        }
    }
}

impl std::fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.options().fmt(f)
    }
}

/// How a gateway reaches the API when the shared state in Redis cannot answer (a snapshot
/// missing or possibly stale). `Debug` masks the token.
#[derive(Clone, Args)]
pub struct UpstreamArgs {
    /// Base URLs of the API processes (comma-separated, e.g. `http://api:8080`); the gateway asks
    /// their `/internal` routes, trying the next URL when one does not answer.
    #[arg(long = "api-url", env = "SWITCHYARD_API_URL", value_delimiter = ',')]
    pub api_urls: Vec<String>,
    /// A `service` JWT the gateway presents to `/internal`. Default: one the gateway signs itself
    /// with JWT_SECRET; required when only a public key (JWT_PUBLIC_KEY_FILE) is configured.
    #[arg(long, env = "SWITCHYARD_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
    /// How long one request to the API may take before the op is refused with `internal` (ms).
    #[arg(long, env = "SWITCHYARD_API_TIMEOUT_MS", default_value_t = 2_000)]
    pub api_timeout_ms: u64,
    /// How long an op (a subscribe's access check or snapshot, a chat write) may wait for the
    /// API in all (ms): for a free request slot (SWITCHYARD_API_MAX_IN_FLIGHT), the request,
    /// and the retries of an overloaded API's `503`/`429` answers (after their `Retry-After`,
    /// or a jittered backoff from 50 ms up to 1 s). Past it the op is refused with `internal`
    /// (the client retries). At least SWITCHYARD_API_TIMEOUT_MS.
    #[arg(long, env = "SWITCHYARD_API_DEADLINE_MS", default_value_t = 5_000)]
    pub api_deadline_ms: u64,
    /// Requests this gateway has in flight to the API at once (over every URL of
    /// SWITCHYARD_API_URL); more wait for a slot, within SWITCHYARD_API_DEADLINE_MS. Also how
    /// many idle keep-alive connections it keeps. Keep (this × the number of gateways) well
    /// below the API's SWITCHYARD_MAX_HTTP_CONNECTIONS (512 by default): beyond it the API
    /// answers 503 and a burst of joins (a fleet reconnecting, Redis lost its snapshots) turns
    /// into retries.
    #[arg(long, env = "SWITCHYARD_API_MAX_IN_FLIGHT", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub api_max_in_flight: u64,
}

impl std::fmt::Debug for UpstreamArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamArgs")
            .field("api_urls", &self.api_urls)
            .field("service_token", &masked(&self.service_token))
            .field("api_timeout_ms", &self.api_timeout_ms)
            .field("api_deadline_ms", &self.api_deadline_ms)
            .field("api_max_in_flight", &self.api_max_in_flight)
            .finish()
    }
}

/// Settings of every server process.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (HTTP, `/ws`, `/api`, and `/healthz`, `/readyz`, `/metrics` unless
    /// SWITCHYARD_ADMIN_LISTEN moves them).
    /// Port 0 picks a free port; the chosen address is printed as `listening on ADDR`.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Optional separate address for `/metrics`, `/readyz` and `/healthz` (e.g.
    /// `127.0.0.1:9091`, reachable by operators and probes only). When set, the public
    /// listener stops serving them. Port 0 picks a free port, printed as
    /// `admin listening on ADDR`.
    #[arg(long, env = "SWITCHYARD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Kernel send buffer of every accepted socket, bytes (`SO_SNDBUF`); 0 keeps Linux's
    /// autotuning, which on loopback grows to megabytes per connection. A fixed size bounds
    /// what a client that stops reading can pin in the kernel; the outbound queue
    /// (`SWITCHYARD_OUTBOUND_QUEUE_BYTES`) bounds the rest.
    #[arg(long, env = "SWITCHYARD_SOCKET_SEND_BUFFER_BYTES", default_value_t = 0)]
    pub socket_send_buffer_bytes: u32,

    #[command(flatten)]
    pub jwt: JwtArgs,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Log format on stderr. Tokens and query strings are never logged.
    #[arg(
        long,
        env = "SWITCHYARD_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, how long to wait for connections to close before exiting (ms).
    #[arg(long, env = "SWITCHYARD_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    /// On SIGTERM/SIGINT, WebSockets are closed (4000) at moments spread over this window (ms),
    /// so thousands of clients do not reconnect in the same second. Must be below the drain
    /// timeout.
    #[arg(long, env = "SWITCHYARD_DRAIN_SPREAD_MS", default_value_t = 2_000)]
    pub drain_spread_ms: u64,

    /// Test-only: RFC 6455 conformance runs. Also serves `GET /conformance/echo`, which echoes
    /// text and binary messages behind the same handshake and limits as `/ws`
    /// (switchyard/tests/autobahn.rs). Never enable in production.
    #[arg(long, env = "SWITCHYARD_CONFORMANCE_ECHO")]
    pub conformance_echo: bool,
}

/// The bus. Without REDIS_URL the bus is in-process (embedded mode): events never leave
/// the process, so split `gateway`/`api` processes need Redis. `Debug` masks the URL (it may
/// carry a password).
#[derive(Clone, Args)]
pub struct RedisArgs {
    /// Redis URL: turns on the distributed mode's Redis bus. One server: `redis://host:port/db`;
    /// a Redis Cluster (7.0+, sharded pub/sub): `redis-cluster://host:port?node=host:port&…`
    /// (any reachable nodes, the others are discovered).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis URL of the per-user connection leases (claimed at every handshake, renewed every
    /// heartbeat interval: at a million connections the larger load). Default: REDIS_URL.
    #[arg(long, env = "SWITCHYARD_LEASE_REDIS_URL", hide_env_values = true)]
    pub lease_redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    #[arg(long, env = "SWITCHYARD_REDIS_PREFIX", default_value = "sy:")]
    pub redis_prefix: String,
    /// How long a room's offset counter lives in Redis after its last event (s).
    #[arg(long, env = "SWITCHYARD_REDIS_OFFSET_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub redis_offset_ttl_secs: u64,
    /// How long one Redis command may take before it fails (ms).
    #[arg(long, env = "SWITCHYARD_REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,
    /// How long one batch of room subscriptions may take on a Redis Cluster (ms): one
    /// `SSUBSCRIBE` per room, up to 64 pipelined; none starts after this, and the
    /// subscribes not reached fail (the client gets an error and may retry).
    #[arg(
        long,
        env = "SWITCHYARD_REDIS_SUBSCRIBE_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub redis_subscribe_timeout_ms: u64,
}

impl RedisArgs {
    pub fn config(&self, history: HistoryConfig) -> Result<Option<RedisConfig>, String> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let prefix_ok = !self.redis_prefix.is_empty()
            && self.redis_prefix.len() <= 32
            && self
                .redis_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:.".contains(&b));
        if !prefix_ok {
            return Err("SWITCHYARD_REDIS_PREFIX must be 1 to 32 of A-Z a-z 0-9 _ - : .".into());
        }
        Ok(Some(RedisConfig {
            url: url.clone(),
            lease_url: self.lease_redis_url.clone(),
            prefix: self.redis_prefix.clone(),
            offset_ttl: Duration::from_secs(self.redis_offset_ttl_secs.max(60)),
            command_timeout: Duration::from_millis(self.redis_timeout_ms.max(10)),
            subscribe_timeout: Duration::from_millis(self.redis_subscribe_timeout_ms.max(10)),
            history,
        }))
    }
}

/// JWT verification settings. `Debug` masks the secret.
#[derive(Clone, Args)]
pub struct JwtArgs {
    /// HS256 shared secret (at least 16 bytes). When neither this nor a public key is set,
    /// `all` generates a per-installation secret once and stores it beside the database
    /// (`switchyard.secret`); `gateway` and `api` refuse to start.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key for RS256/ES256 verification (production). Overrides JWT_SECRET.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Algorithm of JWT_PUBLIC_KEY_FILE: RS256 or ES256.
    #[arg(long, env = "JWT_ALGORITHM", default_value = "RS256")]
    pub jwt_algorithm: String,

    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp`, `nbf` and `iat`, seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,

    /// The longest a token may still have to live (`exp - now`), seconds: a token with a
    /// later `exp` is refused at the handshake, on `refresh` and on REST. Revocation records
    /// are kept this long (plus the leeway).
    #[arg(long, env = "JWT_MAX_LIFETIME_SECS", default_value_t = DEFAULT_MAX_LIFETIME_SECS)]
    pub jwt_max_lifetime_secs: u64,
}

/// Limits and timings. Each hit limit answers with a documented error (see protocol/README.md).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// A TCP connection must send a complete HTTP request head (the WebSocket handshake
    /// included) within this long, or it is closed without a response (slowloris). Also how
    /// long an idle keep-alive HTTP connection is kept (ms).
    #[arg(long, env = "SWITCHYARD_HANDSHAKE_TIMEOUT_MS", default_value_t = 5_000)]
    pub handshake_timeout_ms: u64,
    /// A REST request's whole body must arrive within this long of its head, or the request
    /// is answered 408 and the connection closed (a slowly trickled or stalled body) (ms).
    #[arg(long, env = "SWITCHYARD_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// A REST request must be answered within this long of its head, or it is answered 503
    /// and the connection closed (ms). Must be at least the body timeout.
    #[arg(long, env = "SWITCHYARD_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// HTTP connections served at once per listener, before any WebSocket upgrade (upgraded
    /// connections count against SWITCHYARD_MAX_CONNECTIONS instead). Beyond: answered 503 at
    /// once and closed. Keep it and SWITCHYARD_MAX_CONNECTIONS below the process's open-file
    /// limit (a warning at start says when they are not).
    #[arg(long, env = "SWITCHYARD_MAX_HTTP_CONNECTIONS", default_value_t = 512)]
    pub max_http_connections: usize,
    /// HTTP connections served at once from one client IP address; 0: no per-address bound
    /// (the default: behind nginx every client has nginx's address). Beyond: 429 and closed.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_HTTP_CONNECTIONS_PER_IP",
        default_value_t = 0
    )]
    pub max_http_connections_per_ip: usize,
    /// REST requests one user (`sub`) may have in flight at once, counted from the request's
    /// head to its answer (a slowly sent body included); 0: no bound. Beyond: 429
    /// `limit_exceeded` at once, before the body is read. `service` tokens are not bound.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_REQUESTS_PER_USER",
        default_value_t = ApiConfig::default().max_requests_per_user
    )]
    pub max_requests_per_user: usize,
    /// Largest WebSocket frame/message accepted, bytes (larger → close 1009).
    #[arg(long, env = "SWITCHYARD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Rooms per connection, including its own user room (beyond → `limit_exceeded`).
    #[arg(long, env = "SWITCHYARD_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,
    /// Connections per gateway process (beyond → HTTP 503 at the handshake).
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,
    /// Connections per user (`sub`) per gateway (beyond → HTTP 429 at the handshake).
    #[arg(
        long,
        env = "SWITCHYARD_MAX_CONNECTIONS_PER_USER",
        default_value_t = 16
    )]
    pub max_connections_per_user: usize,
    /// Bytes of events that may wait in one connection's outbound queue (at least 16 KiB).
    /// Latest-value events (partner locations, revenue totals) are conflated to the newest
    /// per room; an ordered event that does not fit closes the client with 4003 (slow
    /// consumer: reconnect and recover).
    #[arg(long, env = "SWITCHYARD_OUTBOUND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub outbound_queue_bytes: usize,
    /// How long a WebSocket handshake may wait for the bus in all — the user room's
    /// subscription, its position and the cluster-wide connection lease (ms). Past it the
    /// handshake is answered 503 `unavailable` with `Retry-After` (counted in
    /// `switchyard_handshake_rejections_total{reason="bus_timeout"}`); a bus that answers with
    /// an error is refused the same way at once (`reason="bus_unavailable"`). Must be below
    /// SWITCHYARD_REQUEST_TIMEOUT_MS.
    #[arg(
        long,
        env = "SWITCHYARD_HANDSHAKE_BUS_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub handshake_bus_timeout_ms: u64,
    /// A write to a client blocked this long makes it a slow consumer (ms).
    #[arg(long, env = "SWITCHYARD_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// Write delay under load (ms, at most 1,000; 0 turns it off): a connection written to
    /// more often than this lets its frames gather for up to this long and gets them in one
    /// write. Connections written to less often, and the first event after a connection was
    /// quiet for longer than this, are never delayed.
    #[arg(long, env = "SWITCHYARD_WRITE_DELAY_MS", default_value_t = 20)]
    pub write_delay_ms: u64,
    /// Server ping interval (ms).
    #[arg(
        long,
        env = "SWITCHYARD_HEARTBEAT_INTERVAL_MS",
        default_value_t = 25_000
    )]
    pub heartbeat_interval_ms: u64,
    /// Close a connection silent for this long (no frames, no pongs) with 4002 (ms).
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Presence (who is in a room, protocol/README.md "Presence"): how often a gateway renews
    /// its users' presence entries (ms). An entry lives three of these, so the users of a
    /// gateway that died (SIGKILL) are announced gone within 3 × this + the sweep interval +
    /// the debounce (with the defaults, 45 + 5 + 2 = 52 s).
    #[arg(
        long,
        env = "SWITCHYARD_PRESENCE_HEARTBEAT_MS",
        default_value_t = 15_000
    )]
    pub presence_heartbeat_ms: u64,
    /// Presence: a user gone for less than this (ms) and back publishes nothing (phones flap).
    #[arg(long, env = "SWITCHYARD_PRESENCE_DEBOUNCE_MS", default_value_t = 2_000)]
    pub presence_debounce_ms: u64,
    /// Presence: how often each gateway looks for expired entries and due leaves in the rooms it
    /// serves (ms).
    #[arg(long, env = "SWITCHYARD_PRESENCE_SWEEP_MS", default_value_t = 5_000)]
    pub presence_sweep_ms: u64,
    /// `admin:fleet` positions (protocol/README.md, "The fleet"): each partner's newest fix
    /// published there at most once a second and kept as its last known position. `false`:
    /// fixes go to their order rooms only, and `admin:fleet` carries partners' presence alone
    /// (the baseline of the fleet benchmark; a deployment without a fleet map).
    #[arg(
        long,
        env = "SWITCHYARD_FLEET_POSITIONS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub fleet_positions: bool,
    /// Ops per second per connection (token bucket), and the burst allowed.
    #[arg(long, env = "SWITCHYARD_OP_RATE", default_value_t = 50.0)]
    pub op_rate: f64,
    #[arg(long, env = "SWITCHYARD_OP_BURST", default_value_t = 100.0)]
    pub op_burst: f64,
    /// Location ops per second per connection, and the burst allowed (excess → `rate_limited`).
    #[arg(long, env = "SWITCHYARD_LOCATION_RATE", default_value_t = 5.0)]
    pub location_rate: f64,
    #[arg(long, env = "SWITCHYARD_LOCATION_BURST", default_value_t = 10.0)]
    pub location_burst: f64,
    /// Chat messages (`send` ops) per second per connection, and the burst allowed (excess →
    /// `rate_limited`; the message is not stored and may be sent again).
    #[arg(long, env = "SWITCHYARD_CHAT_RATE", default_value_t = 5.0)]
    pub chat_rate: f64,
    #[arg(long, env = "SWITCHYARD_CHAT_BURST", default_value_t = 10.0)]
    pub chat_burst: f64,
    /// At most one `chat.typing` per user and order room forwarded in this interval,
    /// milliseconds, whichever of the user's connections (and gateways) types; the rest are
    /// answered `ok` and dropped.
    #[arg(long, env = "SWITCHYARD_CHAT_TYPING_INTERVAL_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub chat_typing_interval_ms: u64,
    /// WebSocket pings (and pongs) a client may send per second, and the burst allowed. Each
    /// ping is answered by the server, so a flood beyond the burst closes the connection with
    /// 4500 (policy violation); a client pinging every few seconds never comes near it.
    #[arg(long, env = "SWITCHYARD_PING_RATE", default_value_t = 10.0)]
    pub ping_rate: f64,
    #[arg(long, env = "SWITCHYARD_PING_BURST", default_value_t = 50.0)]
    pub ping_burst: f64,
    /// WebSocket read buffer per connection, bytes (allocated up front for every connection,
    /// so it dominates idle memory; client frames are small, and a bigger frame grows it).
    #[arg(long, env = "SWITCHYARD_READ_BUFFER_BYTES", default_value_t = 512)]
    pub read_buffer_bytes: usize,
    /// WebSocket write buffer per connection, bytes.
    #[arg(long, env = "SWITCHYARD_WRITE_BUFFER_BYTES", default_value_t = 16 * 1024)]
    pub write_buffer_bytes: usize,
    /// Comma-separated allowed `Origin`s for `/ws`; empty allows any.
    #[arg(long, env = "SWITCHYARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Largest REST request body, bytes (larger → 413).
    #[arg(long, env = "SWITCHYARD_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Events each room keeps for recovery (`subscribe` with `since`): in memory on the
    /// embedded bus, in a Redis stream per room on the Redis bus.
    #[arg(long, env = "SWITCHYARD_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,
    /// How long an event stays recoverable (s); on Redis, counted from the room's last event.
    #[arg(long, env = "SWITCHYARD_HISTORY_TTL_SECS", default_value_t = 300)]
    pub history_ttl_secs: u64,
    /// Largest `data` of one event sent to `/api/publish`, bytes (larger → 413).
    #[arg(long, env = "SWITCHYARD_MAX_PUBLISH_DATA_BYTES", default_value_t = 16 * 1024)]
    pub max_publish_data_bytes: usize,
    /// Largest `/api/publish/batch` body, bytes (larger → 413).
    #[arg(long, env = "SWITCHYARD_MAX_BATCH_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_batch_body_bytes: usize,
    /// Largest `qty` of one order line (beyond → 422).
    #[arg(long, env = "SWITCHYARD_MAX_ITEM_QTY", default_value_t = OrderLimits::default().max_qty)]
    pub max_item_qty: i64,
    /// Largest `unit_price_paise` of one order line (beyond → 422). Default ₹5 lakh.
    #[arg(long, env = "SWITCHYARD_MAX_UNIT_PRICE_PAISE", default_value_t = OrderLimits::default().max_unit_price_paise)]
    pub max_unit_price_paise: i64,
    /// Largest order total, paise (beyond → 422). Default ₹10 lakh; at most ₹10 crore
    /// (1,000,000,000), so the revenue total (an i64 of paise) stays out of reach.
    #[arg(long, env = "SWITCHYARD_MAX_ORDER_TOTAL_PAISE", default_value_t = OrderLimits::default().max_total_paise)]
    pub max_order_total_paise: i64,
}

/// `switchyard publish`. `Debug` masks the token.
#[derive(Clone, Args)]
pub struct PublishArgs {
    /// Room, e.g. `order:42` or `user:u1`.
    #[arg(long)]
    pub room: String,
    /// Event name, `[a-z][a-z0-9_.-]{0,63}` outside order.*, revenue.*, partner.*.
    #[arg(long)]
    pub event: String,
    /// Event data: a JSON object.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// Base URL of an API process (or nginx).
    #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A `service` (or admin) token. Default: a service token signed with JWT_SECRET or the
    /// embedded secret beside DATABASE_URL.
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub signer: SignerArgs,
}

/// `switchyard token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub`): 1 to 64 of A-Z, a-z, 0-9, '_', '-'.
    #[arg(long)]
    pub sub: String,
    /// customer, partner, admin or service.
    #[arg(long)]
    pub role: Role,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    #[command(flatten)]
    pub signer: SignerArgs,
}

/// Which key signs locally made tokens. `Debug` masks the secret.
#[derive(Clone, Args)]
pub struct SignerArgs {
    /// Finds the embedded secret beside this database when JWT_SECRET is unset.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://switchyard.db")]
    pub database_url: String,
    /// HS256 secret to sign with (default: the embedded per-installation secret).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

fn masked<T>(value: &Option<T>) -> &'static str {
    if value.is_some() { "Some(***)" } else { "None" }
}

impl std::fmt::Debug for JwtArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtArgs")
            .field("jwt_secret", &masked(&self.jwt_secret))
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_algorithm", &self.jwt_algorithm)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_leeway_secs", &self.jwt_leeway_secs)
            .field("jwt_max_lifetime_secs", &self.jwt_max_lifetime_secs)
            .finish()
    }
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis_url", &masked(&self.redis_url))
            .field("lease_redis_url", &masked(&self.lease_redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("redis_offset_ttl_secs", &self.redis_offset_ttl_secs)
            .field("redis_timeout_ms", &self.redis_timeout_ms)
            .finish()
    }
}

impl std::fmt::Debug for SignerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerArgs")
            .field("database_url", &self.database_url)
            .field("jwt_secret", &masked(&self.jwt_secret))
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish()
    }
}

impl std::fmt::Debug for PublishArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishArgs")
            .field("room", &self.room)
            .field("event", &self.event)
            .field("url", &self.url)
            .field("token", &masked(&self.token))
            .field("signer", &self.signer)
            .finish()
    }
}

impl LimitArgs {
    pub fn gateway(&self, drain_spread: Duration) -> Result<GatewayConfig, String> {
        let ms = Duration::from_millis;
        if self.idle_timeout_ms <= self.heartbeat_interval_ms {
            return Err(
                "SWITCHYARD_IDLE_TIMEOUT_MS must exceed SWITCHYARD_HEARTBEAT_INTERVAL_MS".into(),
            );
        }
        if self.handshake_bus_timeout_ms >= self.request_timeout_ms {
            return Err(
                "SWITCHYARD_HANDSHAKE_BUS_TIMEOUT_MS must be below SWITCHYARD_REQUEST_TIMEOUT_MS"
                    .into(),
            );
        }
        if self.max_frame_bytes < 1024 {
            return Err("SWITCHYARD_MAX_FRAME_BYTES must be at least 1024".into());
        }
        Ok(GatewayConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_subscriptions: self.max_subscriptions.max(1),
            max_connections_per_user: self.max_connections_per_user.max(1),
            max_connections: self.max_connections.max(1),
            outbound_queue_bytes: self.outbound_queue_bytes.max(16 * 1024),
            handshake_bus_timeout: ms(self.handshake_bus_timeout_ms.max(10)),
            write_timeout: ms(self.write_timeout_ms.max(1)),
            write_delay: ms(self.write_delay_ms.min(1000)),
            heartbeat_interval: ms(self.heartbeat_interval_ms.max(10)),
            idle_timeout: ms(self.idle_timeout_ms),
            presence: PresenceTiming {
                heartbeat: ms(self.presence_heartbeat_ms.max(10)),
                debounce: ms(self.presence_debounce_ms),
                sweep: ms(self.presence_sweep_ms.max(10)),
            },
            fleet_positions: self.fleet_positions,
            op_rate: self.op_rate,
            op_burst: self.op_burst,
            location_rate: self.location_rate,
            location_burst: self.location_burst,
            chat_rate: self.chat_rate,
            chat_burst: self.chat_burst,
            typing_interval: ms(self.chat_typing_interval_ms),
            ping_rate: self.ping_rate,
            ping_burst: self.ping_burst,
            read_buffer_bytes: self.read_buffer_bytes.max(256),
            write_buffer_bytes: self.write_buffer_bytes,
            drain_spread,
            // A ServeArgs flag, not a limit: `server::build` sets it.
            conformance_echo: false,
            allowed_origins: self
                .allowed_origins
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        })
    }

    pub fn history(&self) -> HistoryConfig {
        HistoryConfig {
            size: self.history_size.min(100_000),
            ttl: Duration::from_secs(self.history_ttl_secs),
        }
    }

    pub fn http(&self) -> Result<HttpConfig, String> {
        let ms = Duration::from_millis;
        if self.request_timeout_ms < self.body_timeout_ms {
            return Err(
                "SWITCHYARD_REQUEST_TIMEOUT_MS must be at least SWITCHYARD_BODY_TIMEOUT_MS".into(),
            );
        }
        Ok(HttpConfig {
            handshake_timeout: ms(self.handshake_timeout_ms.max(10)),
            body_timeout: ms(self.body_timeout_ms.max(10)),
            request_timeout: ms(self.request_timeout_ms.max(10)),
            max_connections: self.max_http_connections.max(1),
            max_connections_per_ip: self.max_http_connections_per_ip,
        })
    }

    pub fn api(&self) -> Result<ApiConfig, String> {
        let order_limits = OrderLimits {
            max_qty: self.max_item_qty,
            max_unit_price_paise: self.max_unit_price_paise,
            max_total_paise: self.max_order_total_paise,
        };
        order_limits.check()?;
        Ok(ApiConfig {
            max_body_bytes: self.max_body_bytes,
            max_publish_data_bytes: self.max_publish_data_bytes,
            max_batch_body_bytes: self.max_batch_body_bytes,
            order_limits,
            max_requests_per_user: self.max_requests_per_user,
            cache: CacheConfig::default(),
        })
    }
}

/// Where the embedded per-installation secret lives: beside the SQLite file.
pub fn secret_path(database_url: &str) -> PathBuf {
    let Some(path) = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
    else {
        // A database server: the working directory.
        return PathBuf::from("switchyard.secret");
    };
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.contains(":memory:") {
        return PathBuf::from("switchyard.secret");
    }
    Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.join("switchyard.secret"))
        .unwrap_or_else(|| PathBuf::from("switchyard.secret"))
}

/// The JWT key source that was configured.
pub enum KeySource {
    /// JWT_SECRET or JWT_PUBLIC_KEY_FILE.
    Configured(JwtConfig),
    /// Neither: only the embedded mode may then make its own secret.
    Unset,
}

impl JwtArgs {
    pub fn key_source(&self) -> Result<KeySource, String> {
        let key = if let Some(file) = &self.jwt_public_key_file {
            let pem = std::fs::read(file)
                .map_err(|e| format!("JWT_PUBLIC_KEY_FILE {}: {e}", file.display()))?;
            VerifyKey::PublicPem {
                algorithm: parse_public_algorithm(&self.jwt_algorithm)?,
                pem,
            }
        } else if let Some(secret) = &self.jwt_secret {
            VerifyKey::Secret(secret.as_bytes().to_vec())
        } else {
            return Ok(KeySource::Unset);
        };
        Ok(KeySource::Configured(self.with_key(key)))
    }

    pub fn with_key(&self, key: VerifyKey) -> JwtConfig {
        JwtConfig {
            key,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway_secs: self.jwt_leeway_secs,
            max_lifetime_secs: self.jwt_max_lifetime_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_lives_beside_the_database() {
        assert_eq!(
            secret_path("sqlite://data/sy.db"),
            PathBuf::from("data/switchyard.secret")
        );
        assert_eq!(
            secret_path("sqlite://sy.db?mode=rwc"),
            PathBuf::from("switchyard.secret")
        );
        assert_eq!(
            secret_path("sqlite:///var/lib/sy/sy.db"),
            PathBuf::from("/var/lib/sy/switchyard.secret")
        );
        assert_eq!(
            secret_path("postgres://sy:pw@db/sy"),
            PathBuf::from("switchyard.secret")
        );
        assert_eq!(
            secret_path("sqlite::memory:"),
            PathBuf::from("switchyard.secret")
        );
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let cli = Cli::try_parse_from([
            "switchyard",
            "all",
            "--jwt-secret",
            "super-secret-value-123",
            "--redis-url",
            "redis://:pw@127.0.0.1:1",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("super-secret-value-123"), "{shown}");
        assert!(!shown.contains(":pw@"), "{shown}");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
