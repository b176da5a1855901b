//! The fleet's last known positions (issue #16, `admin:fleet`): each partner's newest
//! `partner.location`, kept by the gateways at most once a second per partner (the same
//! throttled stream `admin:fleet` carries), read for the room's subscribe snapshot.
//!
//! A position is kept [`KEEP`] after it was accepted, so what is kept is bounded by the
//! partners active in that window; the snapshot lists only the partners online (presence).
//!
//! # Layout
//! - this module: the [`FleetPositions`] trait, and [`MemoryFleet`] for the embedded mode;
//! - [`crate::redis::fleet`]: the distributed mode's, in Redis in `admin:fleet`'s hash slot.

use crate::BrokerError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use switchyard_protocol::events::PartnerLocation;

/// How long a partner's last position is kept after it was accepted.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);

/// The partners' last known positions, shared by every process of a deployment.
#[async_trait]
pub trait FleetPositions: Send + Sync + 'static {
    /// Keeps each position as its partner's newest, unless a newer one (by `received_at`) is
    /// already kept.
    async fn keep(&self, batch: &[PartnerLocation]) -> Result<(), BrokerError>;

    /// The last known positions of `partners` (those that have one).
    async fn latest(
        &self,
        partners: &[String],
    ) -> Result<HashMap<String, PartnerLocation>, BrokerError>;

    /// Claims each partner's turn in `admin:fleet` in the current window of `interval` (wall
    /// clock windows, `⌊now / interval⌋`): true for a partner no process claimed it for in
    /// this window — the room's one position per partner per interval, across gateways. In
    /// order of `partners`.
    async fn claim_turns(
        &self,
        partners: &[&str],
        interval: Duration,
    ) -> Result<Vec<bool>, BrokerError>;
}

/// The newer of two positions of one partner (by when a gateway accepted them).
pub fn newer(a: PartnerLocation, b: PartnerLocation) -> PartnerLocation {
    if b.location.received_at > a.location.received_at {
        b
    } else {
        a
    }
}

/// In-process [`FleetPositions`] (embedded mode).
#[derive(Default)]
pub struct MemoryFleet {
    positions: Mutex<HashMap<String, PartnerLocation>>,
}

#[async_trait]
impl FleetPositions for MemoryFleet {
    async fn keep(&self, batch: &[PartnerLocation]) -> Result<(), BrokerError> {
        let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        for position in batch {
            let kept = match positions.remove(&position.partner) {
                Some(old) => newer(old, position.clone()),
                None => position.clone(),
            };
            positions.insert(kept.partner.clone(), kept);
        }
        let oldest = crate::presence::now_ms() - KEEP.as_millis() as i64;
        positions.retain(|_, p| p.location.received_at >= oldest);
        Ok(())
    }

    async fn latest(
        &self,
        partners: &[String],
    ) -> Result<HashMap<String, PartnerLocation>, BrokerError> {
        let positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        Ok(partners
            .iter()
            .filter_map(|sub| positions.get(sub).map(|p| (sub.clone(), p.clone())))
            .collect())
    }

    /// Every turn is ours: the embedded mode is one process, whose gateway publishes each
    /// partner at most once per interval already.
    async fn claim_turns(
        &self,
        partners: &[&str],
        _interval: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        Ok(vec![true; partners.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_protocol::Location;

    fn at(partner: &str, received_at: i64) -> PartnerLocation {
        PartnerLocation {
            order_id: "1".into(),
            partner: partner.into(),
            location: Location {
                lat: 1.0,
                lng: 2.0,
                heading: None,
                speed: None,
                ts: None,
                received_at,
            },
        }
    }

    /// The newest position stands (an older one arriving late does not replace it); only the
    /// partners asked for are answered; positions older than KEEP are dropped.
    #[tokio::test]
    async fn newest_wins_and_old_ones_go() {
        let fleet = MemoryFleet::default();
        let now = crate::presence::now_ms();
        fleet.keep(&[at("p1", now), at("p2", now)]).await.unwrap();
        fleet.keep(&[at("p1", now - 10)]).await.unwrap();
        let latest = fleet.latest(&["p1".into(), "p3".into()]).await.unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest["p1"].location.received_at, now);
        fleet
            .keep(&[at("p3", now - KEEP.as_millis() as i64 - 1)])
            .await
            .unwrap();
        assert!(fleet.latest(&["p3".into()]).await.unwrap().is_empty());
    }
}
