//! Partners' latest positions, handed on behind.
//!
//! A partner streams fixes at up to `SWITCHYARD_LOCATION_RATE` per second per connection;
//! every one is published at once, but only the latest per order matters to snapshots and
//! REST reads. So fixes are kept here, newest per order, and handed to the [`Backend`] every
//! [`FLUSH_EVERY`] in one batch: the location op never waits for storage, and storage sees one
//! write per order per interval. Snapshots served by this gateway overlay what is pending
//! here; elsewhere the position lags the newest `partner.location` event by at most one flush
//! interval.

use crate::backend::Backend;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use switchyard_protocol::Location;
use tokio_util::sync::CancellationToken;

/// How often pending positions are handed on.
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

    /// The newest position of order `id` not yet handed on, if any.
    pub fn pending(&self, id: i64) -> Option<Location> {
        self.lock().get(&id).cloned()
    }

    /// Hands everything pending on in one batch. A position stays pending until the backend
    /// has it, so a snapshot taken during the hand-over still overlays it (taking it out first
    /// left a window in which a snapshot saw it in neither place); once written it is dropped,
    /// unless a newer one arrived meanwhile (that one waits for the next flush). On failure
    /// everything stays for the next flush.
    pub async fn flush(&self, backend: &dyn Backend) {
        let batch: Vec<(i64, Location)> = self.lock().iter().map(|(id, l)| (*id, *l)).collect();
        if batch.is_empty() {
            return;
        }
        if let Err(err) = backend.write_positions(&batch).await {
            tracing::warn!(%err, positions = batch.len(), "could not hand positions on; retrying");
            return;
        }
        let mut pending = self.lock();
        for (id, written) in &batch {
            if pending.get(id) == Some(written) {
                pending.remove(id);
            }
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until `stop`, then once more.
    pub async fn run(&self, backend: &dyn Backend, stop: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(backend).await,
                _ = stop.cancelled() => break,
            }
        }
        self.flush(backend).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Location>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The newer of two positions by when a gateway accepted them.
pub fn newest(a: Option<Location>, b: Option<Location>) -> Option<Location> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.received_at > a.received_at { b } else { a }),
        (a, b) => a.or(b),
    }
}
