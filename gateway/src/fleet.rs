//! This gateway's share of `admin:fleet` (issue #16): every partner's newest position, at most
//! once per [`FLEET_INTERVAL_MS`] per partner, whatever the partner's own send rate.
//!
//! A partner's location op publishes to its order room at once, as always, and hands the fix
//! here ([`Fleet::offer`]): the newest per partner replaces the one before (latest wins). Once
//! per interval, one task takes what gathered and publishes it — one `partner.location` per
//! partner — in `admin:fleet`, then keeps the batch as the partners' last known positions
//! (the room's snapshot, [`FleetPositions`]). So a partner sending 10 Hz costs the room one
//! event a second, and the gateway one map insert per fix plus one event per partner per
//! interval, published in batches (on Redis one script call per 256 events); 10,000 partners
//! cost 10,000 events a second, whatever they send.
//!
//! Across gateways (a partner connected through two, or whose fixes reach two): before each
//! publish the gateway claims its partners' turns for the current interval in the shared state
//! (`FleetPositions::claim_turns`: in Redis one `SET … NX PX` per partner, all of a tick's
//! pipelined), and publishes only those it won; the others wait, newest first, for the next
//! interval. So a partner appears at most once per interval in `admin:fleet` whatever number of
//! gateways it reaches. Embedded, the one gateway's interval is the throttle.

use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_broker::fleet::{FleetPositions, newer};
use switchyard_broker::{BrokerError, Bus, Outgoing};
use switchyard_protocol::events::PartnerLocation;
use switchyard_protocol::presence::{FLEET_INTERVAL_MS, FleetPartner, FleetSnapshot, Present};
use switchyard_protocol::{BuiltinEvent, Room};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub(crate) struct Fleet {
    /// Partner → its newest fix of this interval.
    pending: Mutex<HashMap<Arc<str>, PartnerLocation>>,
}

impl Fleet {
    /// `partner`'s newest fix: replaces one not published yet.
    pub fn offer(&self, partner: &Arc<str>, position: PartnerLocation) {
        self.lock().insert(partner.clone(), position);
    }

    /// `partner`'s fix not published yet, if any (the snapshot overlays it).
    pub fn pending(&self, partner: &str) -> Option<PartnerLocation> {
        self.lock().get(partner).cloned()
    }

    /// Publishes and keeps what gathered, every interval, until `stop`.
    pub async fn run(
        &self,
        bus: Arc<dyn Bus>,
        positions: Arc<dyn FleetPositions>,
        stop: CancellationToken,
    ) {
        let every = Duration::from_millis(FLEET_INTERVAL_MS);
        let mut tick = tokio::time::interval(every);
        // A late tick waits the whole interval after it: never two publishes of one partner
        // closer than the interval.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.publish(&bus, positions.as_ref()).await,
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One interval's worth: each partner's newest fix published in `admin:fleet`, then kept.
    /// First the partners' turns are claimed for this interval (one pipeline; in the
    /// distributed mode another gateway may have had a partner's turn already): a partner
    /// whose turn was taken keeps its fix pending for the next interval, unless a newer one
    /// replaces it meanwhile (latest wins). The events go to the bus as one batch (on Redis
    /// one script call per `MAX_PUBLISH_BATCH` events, pipelined), not one round trip per
    /// partner.
    async fn publish(&self, bus: &Arc<dyn Bus>, positions: &dyn FleetPositions) {
        let gathered: Vec<(Arc<str>, PartnerLocation)> =
            std::mem::take(&mut *self.lock()).into_iter().collect();
        if gathered.is_empty() {
            return;
        }
        let partners: Vec<&str> = gathered.iter().map(|(sub, _)| &**sub).collect();
        let every = Duration::from_millis(FLEET_INTERVAL_MS);
        let turns = match positions.claim_turns(&partners, every).await {
            Ok(turns) if turns.len() == gathered.len() => turns,
            Ok(_) => vec![true; gathered.len()],
            Err(err) => {
                // This gateway's interval still holds; the publish below meets the same bus.
                tracing::warn!(%err, "admin:fleet turns unavailable; publishing");
                vec![true; gathered.len()]
            }
        };
        let mut batch = Vec::with_capacity(gathered.len());
        let mut waiting = 0usize;
        {
            let mut pending = self.lock();
            for ((sub, position), ours) in gathered.into_iter().zip(turns) {
                if ours {
                    batch.push(position);
                } else {
                    // A fix that arrived since is newer: it stays.
                    pending.entry(sub).or_insert(position);
                    waiting += 1;
                }
            }
        }
        if waiting > 0 {
            metrics::counter!("switchyard_fleet_turns_taken_total").increment(waiting as u64);
        }
        if batch.is_empty() {
            return;
        }
        let room = Room::admin_fleet();
        let events: Vec<Outgoing> = batch
            .iter()
            .filter_map(|position| {
                Some(Outgoing {
                    room: room.clone(),
                    event: PartnerLocation::NAME.to_owned(),
                    data: serde_json::value::to_raw_value(position).ok()?,
                })
            })
            .collect();
        let failed = bus
            .publish_batch(events)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect::<Vec<_>>();
        if let Some(err) = failed.first() {
            // Once per interval, not once per partner (Redis may be down for them all).
            tracing::warn!(%err, failed = failed.len(), "admin:fleet publish failed");
        }
        metrics::counter!("switchyard_fleet_positions_total").increment(batch.len() as u64);
        if let Err(err) = positions.keep(&batch).await {
            tracing::warn!(%err, positions = batch.len(), "could not keep the fleet's positions");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, PartnerLocation>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `admin:fleet` snapshot: the partners `present`, each with its last known position (the
/// kept one, or a newer one this gateway has not published yet).
pub(crate) async fn snapshot(
    present: &[Present],
    positions: &dyn FleetPositions,
    local: &Fleet,
) -> Result<Box<RawValue>, BrokerError> {
    let subs: Vec<String> = present.iter().map(|p| p.sub.clone()).collect();
    let mut kept = positions.latest(&subs).await?;
    let partners = present
        .iter()
        .map(|p| {
            let location = match (kept.remove(&p.sub), local.pending(&p.sub)) {
                (Some(a), Some(b)) => Some(newer(a, b)),
                (a, b) => a.or(b),
            };
            FleetPartner {
                sub: p.sub.clone(),
                since: p.since,
                location,
            }
        })
        .collect();
    serde_json::value::to_raw_value(&FleetSnapshot { partners })
        .map_err(|e| BrokerError::Unavailable(e.to_string()))
}
