//! A server process's lifecycle, in one place:
//!
//! 1. **start** ([`build`]) — resolve the JWT key, open the database (not in a gateway: it
//!    has none), start the bus (Redis when `REDIS_URL` is set, in-process otherwise), build
//!    the gateway with its backend (the store in-process for `all`; Redis and the API for
//!    `gateway`) and/or the API, and compose the [`App`]: the router of everything the main
//!    listener serves. Nothing listens yet, so tests drive the router with `oneshot`;
//! 2. **serve** ([`serve`]) — start the outbox relay; one listener for `/ws`, `/api`,
//!    `/healthz`, `/readyz`, `/metrics` ([`crate::listener`]: every connection has a
//!    handshake deadline, every request a body and a request deadline); with
//!    `SWITCHYARD_ADMIN_LISTEN`, the last three move to a second listener of their own
//!    (operators' network only);
//! 3. **drain** — when `shutdown` completes: `/readyz` turns 503, every WebSocket is closed
//!    with 4000, then the listener stops accepting and open HTTP connections finish; the
//!    relay publishes what is left;
//! 4. **stop** — wait for all of it (bounded by the drain timeout), close the database.

use crate::backend::embedded::Embedded;
use crate::backend::remote::{ApiClient, ApiLimits, Remote, ServiceToken};
use crate::config::{GatewayArgs, KeySource, Mode, Server, secret_path};
use crate::health::{self, Health};
use crate::listener::{HttpConfig, HttpServer};
use anyhow::Context;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_api::{ApiState, catalog, relay};
use switchyard_auth::{Issuer, JwtConfig, Verifier, VerifyKey, secret};
use switchyard_broker::Backplane;
use switchyard_broker::redis::Redis;
use switchyard_broker::state::SharedState;
use switchyard_gateway::{Backend, Gateway};
use switchyard_protocol::Role;
use switchyard_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// HTTP connections the admin listener serves at once: probes and scrapes, a handful.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Token lifetime of the tokens the embedded mode prints at start.
const PRINTED_TOKEN_TTL: u64 = 24 * 3600;

/// A server process, built and not yet serving: what it serves and what it runs.
pub struct App {
    pub mode: Mode,
    /// Everything the main listener serves.
    pub router: Router,
    /// The WebSocket gateway (`all`, `gateway`): its connections are drained first.
    pub gateway: Option<Gateway>,
    /// The API's database (`all`, `api`), closed last.
    pub store: Option<Store>,
    /// The bus, the control channel and the connection leases.
    pub backplane: Backplane,
    /// Cancelled when the drain starts: `/readyz`, the sessions and the relay watch it.
    pub shutdown: CancellationToken,
    /// The outbox relay's state (the processes that run the API), started by [`serve`].
    relay: Option<(Store, Option<Arc<dyn SharedState>>)>,
    /// `/healthz`, `/readyz` and `/metrics` when SWITCHYARD_ADMIN_LISTEN gives them their own
    /// listener.
    admin: Option<(SocketAddr, Router)>,
    http: HttpConfig,
    /// WebSockets the process may hold, for the open-file check.
    max_websockets: usize,
    drain_timeout: Duration,
    /// The issuer of the ready-to-use tokens printed at start (embedded secret only).
    printed_tokens: Option<Issuer>,
}

/// Builds a server process from its settings: the **start** phase (see the module doc).
pub async fn build(server: Server) -> anyhow::Result<App> {
    let mode = server.mode();
    let args = server.serve();
    // The metrics recorder before anything records: what is recorded earlier is lost.
    let metrics = health::metrics_handle();
    health::register_families(mode);
    let (jwt, embedded_secret) = resolve_jwt(&server)?;
    let verifier = Arc::new(Verifier::new(&jwt).map_err(anyhow::Error::msg)?);
    if args.drain_spread_ms >= args.drain_timeout_ms {
        anyhow::bail!("SWITCHYARD_DRAIN_SPREAD_MS must be below SWITCHYARD_DRAIN_TIMEOUT_MS");
    }
    let mut gateway_config = args
        .limits
        .gateway(Duration::from_millis(args.drain_spread_ms))
        .map_err(anyhow::Error::msg)?;
    gateway_config.conformance_echo = args.conformance_echo;
    let http = args.limits.http().map_err(anyhow::Error::msg)?;
    let mut api_config = args.limits.api().map_err(anyhow::Error::msg)?;
    api_config.cache = server.catalog().map(|c| c.cache()).unwrap_or_default();
    let store = match (server.database(), server.catalog(), server.chat()) {
        (Some(database), Some(catalog), Some(chat)) => Some(
            crate::database::open(database, mode)
                .await?
                .with_low_stock_threshold(catalog.low_stock_threshold)
                .with_chat_close_grace(chat.chat_close_grace_secs as i64 * 1000)
                .with_chat_publish_wait(Duration::from_millis(chat.chat_publish_wait_ms)),
        ),
        _ => None,
    };
    let redis_config = args
        .redis
        .config(args.limits.history())
        .map_err(anyhow::Error::msg)?;
    let redis = match redis_config.clone() {
        Some(config) => Some(
            Redis::connect(config)
                .await
                .context("connecting to Redis (REDIS_URL)")?,
        ),
        None if mode == Mode::Gateway => anyhow::bail!(
            "`switchyard gateway` needs REDIS_URL: the bus to the API processes, and the room snapshots it answers subscribes from"
        ),
        None => None,
    };
    // The room snapshots and positions every process reads: the Redis beside the bus.
    let shared_state = redis
        .as_ref()
        .map(|r| r.state.clone() as Arc<dyn SharedState>);
    let backplane = match &redis {
        Some(redis) => redis.backplane(),
        None => {
            if mode != Mode::All {
                tracing::warn!(
                    "no REDIS_URL: `{}` uses the in-process bus, so events do not reach other processes",
                    mode.name()
                );
            }
            Backplane::memory(args.limits.history())
        }
    };
    let shutdown = CancellationToken::new();
    let backend: Option<Arc<dyn Backend>> = match (&server, &store) {
        (Server::Gateway(gateway), _) => {
            let state = shared_state.clone().context("shared state")?;
            Some(Arc::new(remote_backend(gateway, &jwt, state)?))
        }
        (Server::All(_), Some(store)) => Some(Arc::new(Embedded {
            store: store.clone(),
        })),
        _ => None,
    };
    let gateway = backend.map(|backend| {
        Gateway::new(
            gateway_config,
            verifier.clone(),
            backplane.clone(),
            backend,
            shutdown.clone(),
        )
    });
    let api_store = store.clone().filter(|_| mode.runs_api());
    let read_cache = match &api_store {
        Some(_) => read_cache(mode, &api_config.cache, redis_config.as_ref()).await?,
        None => None,
    };
    let api = api_store.clone().map(|store| ApiState {
        catalog: catalog::Catalog::new(store.clone(), read_cache, &api_config.cache),
        store,
        verifier: verifier.clone(),
        backplane: backplane.clone(),
        config: api_config,
    });

    let (health_routes, operations) = health::routes().split_for_parts();
    let health = health_routes.with_state(Health {
        store: store.clone(),
        backplane: backplane.clone(),
        shutdown: shutdown.clone(),
        metrics,
    });
    // With an admin listener, the operational endpoints are served there and only there.
    let (main_health, admin) = match args.admin_listen {
        Some(addr) => (None, Some((addr, health))),
        None => (Some((health, operations)), None),
    };
    let router = app(main_health, gateway.as_ref(), api);
    Ok(App {
        mode,
        router,
        max_websockets: if gateway.is_some() {
            args.limits.max_connections
        } else {
            0
        },
        gateway,
        relay: api_store.map(|store| (store, shared_state)),
        store,
        backplane,
        shutdown,
        admin,
        http,
        drain_timeout: Duration::from_millis(args.drain_timeout_ms),
        printed_tokens: embedded_secret
            .map(|secret| Issuer::new(secret.as_bytes(), jwt.issuer.clone(), jwt.audience.clone())),
    })
}

/// Serves `app` on `listener` until `shutdown` completes, then drains and stops: the
/// **serve**, **drain** and **stop** phases (see the module doc).
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // ── serve ──────────────────────────────────────────────────────────────────────────
    let App {
        mode,
        router,
        gateway,
        store,
        backplane,
        shutdown: draining,
        relay,
        admin,
        http,
        max_websockets,
        drain_timeout,
        printed_tokens,
    } = app;
    let relay = relay.map(|(store, shared_state)| {
        tokio::spawn(relay::run(store, backplane, shared_state, draining.clone()))
    });
    let addr = listener.local_addr()?;
    let probes = if admin.is_some() {
        ADMIN_MAX_CONNECTIONS
    } else {
        0
    };
    crate::listener::warn_if_over_open_files(max_websockets + http.max_connections + probes);
    let admin = match admin {
        Some((addr, health)) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding SWITCHYARD_ADMIN_LISTEN {addr}"))?;
            // Printed before `listening on`, which tests and scripts wait for.
            println!("admin listening on {}", listener.local_addr()?);
            let probes = HttpConfig {
                max_connections: ADMIN_MAX_CONNECTIONS,
                max_connections_per_ip: 0,
                ..http.clone()
            };
            Some(HttpServer::spawn(listener, health, probes))
        }
        None => None,
    };
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("listening on {addr}");
    if let Some(issuer) = printed_tokens {
        print_tokens(&issuer, addr);
    }
    tracing::info!(%addr, mode = mode.name(), "serving");
    // The listener keeps accepting while the WebSockets drain, so `/readyz` answers 503 (and
    // new handshakes are refused with 503) until the sockets are closed; only then it stops.
    let server = HttpServer::spawn(listener, router, http);
    shutdown.await;

    // ── drain ──────────────────────────────────────────────────────────────────────────
    // /readyz is 503 from this instant, and every session closes with 4000 at its own moment
    // within the drain spread.
    draining.cancel();
    tracing::info!(deadline = ?drain_timeout, "draining");
    if let Some(gateway) = &gateway {
        let open = gateway.connections();
        if !gateway.drain(drain_timeout).await {
            tracing::warn!(open, "drain deadline passed with connections still open");
        }
    }
    // Stop accepting; in-flight requests finish, idle keep-alive connections close now, and
    // whatever is still open at the deadline is dropped rather than holding the process.
    let mut left = server.shutdown(drain_timeout).await;
    if let Some(admin) = admin {
        left += admin.shutdown(drain_timeout).await;
    }
    if left > 0 {
        tracing::warn!(left, "HTTP connections closed at the drain deadline");
    }
    if let Some(relay) = relay
        && tokio::time::timeout(drain_timeout, relay).await.is_err()
    {
        tracing::warn!("outbox relay did not finish; unsent events stay in the outbox");
    }

    // ── stop ───────────────────────────────────────────────────────────────────────────
    if let Some(store) = &store {
        store.close().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// [`build`] then [`serve`]: a whole server process on `listener`, until `shutdown`.
pub async fn run(
    server: Server,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(build(server).await?, listener, shutdown).await
}

/// The catalog's read cache: the process's own in the embedded mode (`all`: the only writer);
/// for `switchyard api`, the Redis of `REDIS_URL`, shared by every API process. An API process
/// never keeps values of its own — another API process may write the same database, and a
/// process-local cache would then answer stale values (switchyard/tests/catalog.rs caught
/// exactly that) — so without Redis it reads the database.
async fn read_cache(
    mode: Mode,
    config: &catalog::CacheConfig,
    redis: Option<&switchyard_broker::redis::RedisConfig>,
) -> anyhow::Result<Option<Arc<dyn catalog::ReadCache>>> {
    if !config.enabled {
        return Ok(None);
    }
    Ok(match (mode, redis) {
        (Mode::All, _) => Some(Arc::new(catalog::MemoryCache::new(config))),
        (Mode::Api, Some(redis)) => {
            let timeout = redis.command_timeout.min(CATALOG_CACHE_TIMEOUT);
            let cache =
                catalog::RedisCache::connect(&redis.url, &redis.prefix, config.ttl, timeout)
                    .await
                    .context("connecting the catalog cache to Redis (REDIS_URL)")?;
            Some(Arc::new(cache))
        }
        (Mode::Api, None) | (Mode::Gateway, _) => None,
    })
}

/// The longest a catalog read waits for the Redis cache: a slow cache is a miss, not a slow
/// read.
const CATALOG_CACHE_TIMEOUT: Duration = Duration::from_millis(500);

/// Everything the main listener serves: the health routes with their OpenAPI description
/// (unless an admin listener has them), the gateway's routes, the API's (whose document then
/// describes the health routes too). The OpenAPI drift check (`tests/openapi.rs`) reads
/// [`App::router`], so it sees exactly what a process serves.
fn app(
    health: Option<(Router, utoipa::openapi::OpenApi)>,
    gateway: Option<&Gateway>,
    api: Option<ApiState>,
) -> Router {
    let (mut app, operations) = health.unwrap_or_default();
    if let Some(gateway) = gateway {
        app = app.merge(gateway.router());
    }
    if let Some(state) = api {
        app = app.merge(switchyard_api::router(state, operations));
    }
    app
}

/// The configured key, or — for `all` only — the per-installation secret beside the
/// database, created on first start. Returns the secret too when it is the embedded one,
/// so ready-to-use tokens can be printed.
fn resolve_jwt(server: &Server) -> anyhow::Result<(JwtConfig, Option<String>)> {
    let jwt = &server.serve().jwt;
    match (jwt.key_source().map_err(anyhow::Error::msg)?, server) {
        (KeySource::Configured(config), _) => Ok((config, None)),
        (KeySource::Unset, Server::All(args)) => {
            let path = secret_path(&args.database.database_url);
            let secret = secret::load_or_create(&path)
                .with_context(|| format!("embedded JWT secret at {}", path.display()))?;
            let config = jwt.with_key(VerifyKey::Secret(secret.as_bytes().to_vec()));
            Ok((config, Some(secret)))
        }
        (KeySource::Unset, _) => anyhow::bail!(
            "`switchyard {}` needs a JWT key: set JWT_SECRET (HS256) or JWT_PUBLIC_KEY_FILE (RS256/ES256)",
            server.mode().name()
        ),
    }
}

/// A distributed gateway's backend: the shared state, then the API's `/internal` routes with a
/// service token (given, or signed with the HS256 secret).
fn remote_backend(
    args: &GatewayArgs,
    jwt: &JwtConfig,
    state: Arc<dyn SharedState>,
) -> anyhow::Result<Remote> {
    let upstream = &args.upstream;
    let token = match (&upstream.service_token, &jwt.key) {
        (Some(token), _) => ServiceToken::Fixed(token.clone()),
        (None, VerifyKey::Secret(secret)) => ServiceToken::minted(Issuer::new(
            secret,
            jwt.issuer.clone(),
            jwt.audience.clone(),
        )),
        (None, VerifyKey::PublicPem { .. }) => anyhow::bail!(
            "with JWT_PUBLIC_KEY_FILE, `switchyard gateway` needs SWITCHYARD_SERVICE_TOKEN (a token with role service) to ask the API"
        ),
    };
    let api = ApiClient::new(
        upstream.api_urls.clone(),
        token,
        ApiLimits {
            timeout: Duration::from_millis(upstream.api_timeout_ms.max(10)),
            deadline: Duration::from_millis(upstream.api_deadline_ms),
            max_in_flight: usize::try_from(upstream.api_max_in_flight).unwrap_or(1),
        },
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Remote { state, api })
}

fn print_tokens(issuer: &Issuer, addr: SocketAddr) {
    let admin = issuer.issue("admin", Role::Admin, PRINTED_TOKEN_TTL);
    let customer = issuer.issue("c1", Role::Customer, PRINTED_TOKEN_TTL);
    let partner = issuer.issue("p1", Role::Partner, PRINTED_TOKEN_TTL);
    println!(
        "\nSwitchyard (embedded) is up: REST on http://{addr}/api, WebSocket on ws://{addr}/ws\n\
         Tokens valid for 24 h (make more with `switchyard token --sub ID --role ROLE`):\n  \
         admin     (sub admin): {admin}\n  \
         customer  (sub c1):    {customer}\n  \
         partner   (sub p1):    {partner}\n\n\
         Dashboard (admin):        http://{addr}/#token={admin}\n\
         Tracking (customer c1):   http://{addr}/track#order=ORDER_ID&token={customer}\n"
    );
}
