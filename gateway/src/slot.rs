//! A connection's slot: its registration in the hub (counted there against the gateway's and
//! the user's connection limits) and its lease in the cluster-wide per-user count — taken at
//! the handshake ([`open`]) and given back when the [`Slot`] drops, however the session ends;
//! and its own `user:` room, joined at the handshake too ([`UserRoom`]), so that everything
//! the handshake waits for on the bus is waited for before the `101`, under one deadline.
//!
//! A lease lapses unless renewed, so a killed gateway's connections stop counting. One task
//! per gateway renews them all ([`Leases::renew_every`], one sweep per heartbeat interval)
//! instead of each connection spawning a renewal on each of its heartbeats.

use crate::Shared;
use crate::hub::{self, Registration};
use crate::outbound::{Mailbox, Outbound};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_broker::{BrokerError, Claim, ConnectionLeases, History};
use switchyard_protocol::client::StreamPosition;
use switchyard_protocol::{Room, UserId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Renewals one sweep keeps in flight at once (a Redis bus pipelines them).
const RENEWALS_IN_FLIGHT: usize = 64;

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// This gateway holds `max_connections`.
    Gateway,
    /// The user holds `max_connections_per_user` here.
    User,
    /// The user holds `max_connections_per_user` across the gateways sharing the bus.
    Cluster,
}

/// Why [`open`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Full(Full),
    /// The bus did not answer within `handshake_bus_timeout`.
    BusTimeout,
    /// The bus answered with an error (it is down, or refused).
    BusUnavailable,
}

impl From<Full> for Refused {
    fn from(full: Full) -> Refused {
        Refused::Full(full)
    }
}

/// A connection let in: its id, its handle and mailbox in the hub, its held slot, and its own
/// `user:` room — already joined, with the room's position (and, with the handshake's
/// `since`, what was missed) read after the join.
pub(crate) struct Opened {
    /// `{node}-{number in this process}`.
    pub conn_id: Arc<str>,
    pub out: Outbound,
    pub mailbox: Arc<Mailbox>,
    pub slot: Slot,
    pub user_room: UserRoom,
    pub history: History,
    /// The handshake's `since` for the user room, which `history` answers.
    pub since: Option<StreamPosition>,
}

/// Waits for `wait` until `deadline`: past it [`Refused::BusTimeout`], a bus error
/// [`Refused::BusUnavailable`] (logged at debug: an outage refuses every handshake, and
/// the metric counts them).
async fn bounded<T>(
    deadline: Instant,
    wait: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, Refused> {
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => {
            tracing::debug!(%err, "handshake refused: the bus failed");
            Err(Refused::BusUnavailable)
        }
        Err(_) => Err(Refused::BusTimeout),
    }
}

/// Lets a connection of `sub` in: registers it in the hub (the local limits), subscribes and
/// joins its `user:` room, then claims its lease in the cluster-wide per-user count and reads
/// the user room's position (with `since`, the events missed) — on Redis in one script
/// ([`ConnectionLeases::claim_and_read`]). Every wait for the bus shares one deadline,
/// `handshake_bus_timeout`, so a bus that stops answering refuses handshakes within it
/// (503, see `handshake`) instead of holding them until the listener's request timeout.
///
/// One Redis round trip on one Redis (issue #17): the subscription is batched with other
/// handshakes' by the bus and answered once its `SUBSCRIBE` is written to the subscriber
/// connection; the script follows it on that same connection, and its reply is the one wait.
/// (On a cluster the `SSUBSCRIBE`'s confirmation is waited for first: two.)
///
/// No gap — an event published to the user room is either counted in the position or reaches
/// the connection live: the subscription is made first and the connection joins the hub
/// before the position is read, and Redis runs the read after the subscription (same
/// connection, in order; `switchyard_broker::redis::bus`). So an event published before the
/// read is at or below the position (the welcome covers it: the session's cursor drops it if
/// it also comes live), and one published after it comes through the active subscription to
/// the hub, where the connection is already a member and its mailbox keeps it for after the
/// welcome. `handshakes_miss_no_event_of_their_user_room` (one Redis, and a cluster) races a
/// publisher against a burst of handshakes to check it.
///
/// Whatever was taken is given back if the handshake is refused or dropped on the way: the
/// lease by [`Slot`], the room by [`UserRoom`], the subscription by the bus (a subscribe
/// given up while waiting is undone).
pub(crate) async fn open(
    shared: &Arc<Shared>,
    sub: &UserId,
    since: Option<StreamPosition>,
) -> Result<Opened, Refused> {
    let config = &shared.config;
    let deadline = Instant::now() + config.handshake_bus_timeout;
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let conn_id: Arc<str> = format!("{}-{conn}", shared.node).into();
    let limits = hub::Limits {
        per_gateway: config.max_connections,
        per_user: config.max_connections_per_user,
    };
    let hub::Connected {
        registration,
        out,
        mailbox,
    } = shared
        .hub
        .connect(conn, sub, config.outbound_queue_bytes, limits)
        .map_err(|full| match full {
            hub::Full::Gateway => Full::Gateway,
            hub::Full::User => Full::User,
        })?;
    let mut slot = Slot {
        claims: shared.backplane.leases.clone(),
        leases: shared.leases.clone(),
        _registration: registration,
        sub: sub.clone(),
        claimed: None,
    };
    let bus = &shared.backplane.bus;
    let mut user_room = UserRoom {
        shared: shared.clone(),
        room: Room::of_user(sub),
        conn,
        subscribed: false,
    };
    bounded(deadline, bus.subscribe(&user_room.room)).await?;
    user_room.subscribed = true;
    user_room.room = shared.hub.join_shared(&user_room.room, &out).0;
    shared.hub.counts.subscriptions.increment(1.0);
    // Released when the slot drops, whatever became of the claim (a claim that timed out may
    // still be made; the release goes after it on the same connection).
    slot.claimed = Some(conn_id.clone());
    let claim = Claim {
        sub,
        conn: &conn_id,
        limit: config.max_connections_per_user,
        lease: config.connection_lease(),
    };
    let (claimed, history) = bounded(
        deadline,
        shared.backplane.leases.claim_and_read(
            bus.as_ref(),
            claim,
            &user_room.room,
            since.as_ref(),
        ),
    )
    .await?;
    if !claimed {
        slot.claimed = None;
        return Err(Full::Cluster.into());
    }
    shared.leases.add(conn_id.clone(), sub.clone());
    Ok(Opened {
        conn_id,
        out,
        mailbox,
        slot,
        user_room,
        history,
        since,
    })
}

/// A connection's own `user:` room, subscribed on the bus and joined in the hub at the
/// handshake. A session takes it over ([`UserRoom::keep`]) and leaves it when it ends;
/// dropped before that (the handshake was refused, the upgrade failed, the conformance
/// route), it leaves the room itself.
pub(crate) struct UserRoom {
    shared: Arc<Shared>,
    room: Room,
    conn: u64,
    /// Whether the subscription (and so the hub membership) is held.
    subscribed: bool,
}

impl UserRoom {
    /// The room, now the session's to leave.
    pub fn keep(mut self) -> Room {
        self.subscribed = false;
        self.room.clone()
    }
}

impl Drop for UserRoom {
    fn drop(&mut self) {
        if !self.subscribed {
            return;
        }
        if self.shared.hub.leave(self.room.as_str(), self.conn) {
            self.shared.hub.counts.subscriptions.decrement(1.0);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (bus, room) = (self.shared.backplane.bus.clone(), self.room.clone());
            runtime.spawn(async move { bus.unsubscribe(&room).await });
        }
    }
}

/// A held connection slot: the hub registration and, once claimed, the lease; both given back
/// when dropped.
pub(crate) struct Slot {
    claims: Arc<dyn ConnectionLeases>,
    leases: Arc<Leases>,
    _registration: Registration,
    sub: UserId,
    /// The lease's connection id, once claimed (released on drop).
    claimed: Option<Arc<str>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(conn) = self.claimed.take() else {
            return;
        };
        self.leases.remove(&conn);
        // Released off the caller's path; without a runtime (the process is ending) the lease
        // lapses by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (claims, sub) = (self.claims.clone(), self.sub.clone());
            runtime.spawn(async move { claims.release(&sub, &conn).await });
        }
    }
}

/// The leases this gateway holds, by connection id.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    claimed: Mutex<HashMap<Arc<str>, UserId>>,
    /// Renewals made, for the tests.
    #[cfg(test)]
    pub renewals: std::sync::atomic::AtomicUsize,
}

impl Leases {
    fn add(&self, conn: Arc<str>, sub: UserId) {
        self.lock().insert(conn, sub);
    }

    fn remove(&self, conn: &str) {
        self.lock().remove(conn);
    }

    /// Leases held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Renews every held lease for `lease`, once per `every`, until `stop`.
    pub async fn renew_every(
        &self,
        claims: &dyn ConnectionLeases,
        every: Duration,
        lease: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.renew(claims, lease).await,
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One sweep: the held leases are copied out (the lock is not held across the renewals).
    async fn renew(&self, claims: &dyn ConnectionLeases, lease: Duration) {
        let held: Vec<(Arc<str>, UserId)> = self
            .lock()
            .iter()
            .map(|(conn, sub)| (conn.clone(), sub.clone()))
            .collect();
        futures_util::stream::iter(held)
            .for_each_concurrent(RENEWALS_IN_FLIGHT, |(conn, sub)| async move {
                claims.renew(&sub, &conn, lease).await;
                #[cfg(test)]
                self.renewals.fetch_add(1, Ordering::Relaxed);
            })
            .await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, UserId>> {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }
}
