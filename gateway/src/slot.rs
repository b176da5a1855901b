//! A connection's slot: its registration in the hub (counted there against the gateway's and
//! the user's connection limits) and its lease in the cluster-wide per-user count — taken at
//! the handshake ([`open`]) and given back when the [`Slot`] drops, however the session ends.
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
use switchyard_broker::ConnectionLeases;
use switchyard_protocol::UserId;
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

/// A connection let in: its id, its handle and mailbox in the hub, and its held slot.
pub(crate) struct Opened {
    /// `{node}-{number in this process}`.
    pub conn_id: Arc<str>,
    pub out: Outbound,
    pub mailbox: Arc<Mailbox>,
    pub slot: Slot,
}

/// Registers a new connection of `sub` in the hub and claims its lease. A bus that cannot
/// answer does not lock users out: the claim is skipped (logged), and the local limit holds.
pub(crate) async fn open(shared: &Arc<Shared>, sub: &UserId) -> Result<Opened, Full> {
    let config = &shared.config;
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
    let claim = shared
        .backplane
        .leases
        .claim(
            sub,
            &conn_id,
            config.max_connections_per_user,
            config.connection_lease(),
        )
        .await;
    match claim {
        Ok(true) => {
            shared.leases.add(conn_id.clone(), sub.clone());
            slot.claimed = Some(conn_id.clone());
        }
        Ok(false) => return Err(Full::Cluster),
        Err(err) => {
            tracing::warn!(%err, "cluster-wide connection count unavailable; local limit only");
        }
    }
    Ok(Opened {
        conn_id,
        out,
        mailbox,
        slot,
    })
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
