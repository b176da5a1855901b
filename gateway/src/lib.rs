//! The WebSocket side of Switchyard: handshake, sessions, rooms and fan-out.
//!
//! # Layout
//! - [`config`]: every limit and timing the gateway enforces.
//! - `handshake`: `GET /ws` — token, limits, upgrade.
//! - `session`: one connection's loop (ops, outbound queue, heartbeat, expiry, shutdown),
//!   generic over its transport (a WebSocket, or channels in the paused-time tests), and what
//!   it gives back however it ends (rooms, slot, metrics, the close log line).
//! - `slot`: a connection's place in the connection limits: its hub registration and its
//!   lease in the cluster-wide per-user count (renewed by one task per gateway).
//! - `cursor`: what a connection's client has of each room's stream (offsets, epochs), so
//!   nothing goes out twice or out of order.
//! - [`hub`]: local connections by user (the connection limits, revocation, the drain) and
//!   rooms → members; fans one encoded frame out to every member.
//! - [`members`]: one room's members, in chunks: join and leave in O(1) amortized, fan-out
//!   without a lock.
//! - [`delivery`]: the bus's publications fanned out on several workers, chosen by room.
//! - [`outbound`]: a connection's bounded outbound queue, and its kick: the one way a
//!   connection is told to close (a [`Disconnect`](switchyard_protocol::close::Disconnect)).
//! - `access`: who may join which room; subscribe snapshots.
//! - [`backend`]: the one seam to the application — orders, revenue, positions — which the
//!   binary fills in (in-process in the embedded mode, Redis and the API's `/internal` routes in
//!   the distributed mode), so the gateway itself holds no database.
//! - [`locations`]: partners' newest positions, handed to the backend in batches.
//! - `fleet`: `admin:fleet`'s positions — each partner's newest fix, published there at most
//!   once a second, and kept as its last known position.
//! - `conformance`: test-only `GET /conformance/echo` for RFC 6455 conformance runs.
//! - [`write_delay`]: under load, a connection's frames gather for up to the write delay
//!   and go out in one write (one gateway-wide tick, no timer per connection).
//! - `presence`: which users this gateway holds in each room with presence; their entries
//!   held, renewed and released, and the rooms it serves swept (the bus's `Presence`).
//! - [`rate`]: the token bucket behind the op and location rate limits.
//! - `typing`: the `chat.typing` throttle, per user and room (this gateway's, then the
//!   backend's across gateways).
//!
//! # Lifecycle
//! [`Gateway::new`] attaches the hub to the bus and the controller; [`Gateway::router`] serves `/ws`.
//! Cancelling the shutdown token makes every session close with 4000 (shutdown);
//! [`Gateway::drain`] then waits (bounded) for them to finish. axum's graceful shutdown
//! does not see upgraded connections, which is why the gateway tracks them itself.

pub mod access;
pub mod backend;
pub mod config;
mod conformance;
pub mod cursor;
pub mod delivery;
mod fleet;
mod handshake;
pub mod hub;
pub mod locations;
pub mod members;
pub mod outbound;
mod presence;
pub mod rate;
mod session;
mod slot;
mod typing;
pub mod write_delay;

pub use backend::Backend;
pub use config::GatewayConfig;

use axum::Router;
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use switchyard_auth::Verifier;
use switchyard_broker::Backplane;
use switchyard_protocol::close::Disconnect;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by the handshake handler and every session.
pub(crate) struct Shared {
    config: GatewayConfig,
    verifier: Arc<Verifier>,
    /// The bus (rooms), the controller (revocations) and the connection leases.
    backplane: Backplane,
    backend: Arc<dyn Backend>,
    hub: Arc<hub::Hub>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Prefix of connection ids, unique per process.
    node: String,
    next_conn: AtomicU64,
    /// Partners' newest positions, handed to the backend behind.
    locations: Arc<locations::Locations>,
    /// The connections' leases in the cluster-wide per-user count, renewed together.
    leases: Arc<slot::Leases>,
    /// Who this gateway holds in each room with presence.
    presence: presence::LocalPresence,
    /// Who was shown typing where lately (one `chat.typing` per user and room per interval).
    typing: typing::TypingGate,
    /// Partners' newest fixes for `admin:fleet`, published once per interval.
    fleet: Arc<fleet::Fleet>,
}

/// A gateway: cheap to clone, all clones share the same hub and sessions.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Builds a gateway and attaches its hub to the bus and the controller.
    pub fn new(
        config: GatewayConfig,
        verifier: Arc<Verifier>,
        backplane: Backplane,
        backend: Arc<dyn Backend>,
        shutdown: CancellationToken,
    ) -> Gateway {
        let write_delay = write_delay::WriteDelay::new(config.write_delay);
        tokio::spawn(write_delay.clone().run());
        let hub = Arc::new(hub::Hub::with_write_delay(write_delay));
        let delivery = Arc::new(delivery::Delivery::start(
            hub.clone(),
            delivery::Delivery::default_workers(),
        ));
        backplane.bus.attach(delivery.clone());
        backplane.controller.listen(delivery);
        // The drain reaches every session as a kick through its mailbox; sessions that join
        // after this sweep see the cancelled token themselves.
        let sweep = (hub.clone(), shutdown.clone());
        tokio::spawn(async move {
            let (hub, shutdown) = sweep;
            shutdown.cancelled().await;
            let kicked = hub.kick_all(Disconnect::SHUTDOWN);
            tracing::info!(
                kicked,
                "draining: every connection closes within the spread"
            );
        });
        let node = format!("{:08x}", rand_node());
        let presence = presence::LocalPresence::start(
            backplane.presence.clone(),
            hub.clone(),
            node.clone(),
            config.presence,
        );
        let locations = Arc::new(locations::Locations::default());
        {
            let (locations, backend, shutdown) =
                (locations.clone(), backend.clone(), shutdown.clone());
            tokio::spawn(async move { locations.run(backend.as_ref(), shutdown).await });
        }
        let fleet = Arc::new(fleet::Fleet::default());
        {
            let (fleet, bus, positions, shutdown) = (
                fleet.clone(),
                backplane.bus.clone(),
                backplane.fleet.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move { fleet.run(bus, positions, shutdown).await });
        }
        let leases = Arc::new(slot::Leases::default());
        {
            let (leases, claims, shutdown) =
                (leases.clone(), backplane.leases.clone(), shutdown.clone());
            let (every, lease) = (config.heartbeat_interval, config.connection_lease());
            tokio::spawn(async move {
                leases
                    .renew_every(claims.as_ref(), every, lease, shutdown)
                    .await
            });
        }
        Gateway {
            shared: Arc::new(Shared {
                config,
                verifier,
                backplane,
                backend,
                hub,
                shutdown,
                tracker: TaskTracker::new(),
                node,
                next_conn: AtomicU64::new(1),
                locations,
                leases,
                presence,
                typing: Default::default(),
                fleet,
            }),
        }
    }

    /// `GET /ws`, and `GET /conformance/echo` when `conformance_echo` is set (test-only).
    pub fn router(&self) -> Router {
        let mut router = Router::new().route("/ws", get(handshake::upgrade));
        if self.shared.config.conformance_echo {
            router = router.route("/conformance/echo", get(conformance::echo));
        }
        router.with_state(self.shared.clone())
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.shared.hub.connections()
    }

    /// Waits until every session has closed (after the shutdown token was cancelled),
    /// at most `deadline`. Returns false if some were still open.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.shared.tracker.close();
        let drained = tokio::time::timeout(deadline, self.shared.tracker.wait())
            .await
            .is_ok();
        // Positions the last sessions recorded after the periodic writer stopped.
        let backend = self.shared.backend.as_ref();
        self.shared.locations.flush(backend).await;
        drained
    }
}

/// A per-process id for connection ids, from the clock and the pid (no RNG needed).
fn rand_node() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    nanos.rotate_left(16) ^ std::process::id()
}
