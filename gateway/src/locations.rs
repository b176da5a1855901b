//! Partners' latest positions, written behind.
//!
//! A partner streams fixes at up to `SWITCHYARD_LOCATION_RATE` per second per connection;
//! every one is published at once, but only the latest per order matters to the database
//! (`orders.last_location`, read by snapshots and REST). So fixes are kept here, newest per
//! order, and written every [`FLUSH_EVERY`] in one transaction: one fsync per flush instead of
//! one per fix, and the location op never waits on the database. Snapshots served by this
//! gateway overlay what is pending here; elsewhere the stored position lags the newest
//! `partner.location` event by at most one flush interval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use switchyard_protocol::Location;
use switchyard_store::Store;
use tokio_util::sync::CancellationToken;

/// How often pending positions are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub struct Locations {
    pending: Mutex<HashMap<i64, Location>>,
}

impl Locations {
    /// Keeps `location` as order `id`'s newest position (replacing an unwritten older one).
    pub fn record(&self, id: i64, location: Location) {
        self.lock().insert(id, location);
    }

    /// The newest position of order `id` not yet written, if any.
    pub fn pending(&self, id: i64) -> Option<Location> {
        self.lock().get(&id).cloned()
    }

    /// Writes everything pending in one transaction; on failure the positions are kept for
    /// the next flush unless a newer one arrived meanwhile.
    pub async fn flush(&self, store: &Store) {
        let batch: Vec<(i64, Location)> = std::mem::take(&mut *self.lock()).into_iter().collect();
        if batch.is_empty() {
            return;
        }
        if let Err(err) = store.record_locations(&batch).await {
            tracing::warn!(%err, positions = batch.len(), "could not write positions; retrying");
            let mut pending = self.lock();
            for (id, location) in batch {
                pending.entry(id).or_insert(location);
            }
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until `stop`, then once more.
    pub async fn run(&self, store: Store, stop: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(&store).await,
                _ = stop.cancelled() => break,
            }
        }
        self.flush(&store).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Location>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}
