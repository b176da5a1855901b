//! Partners' newest positions, from the shared state into the database.
//!
//! A gateway publishes every fix at once and records each order's newest position in the
//! shared state (Redis), where snapshots read it; it never writes the database. The API
//! process that holds the relay lease takes the queued positions every [`PERSIST_EVERY`] and
//! writes them in one transaction (`orders.last_location`, read by the REST API), so the
//! database sees one write per order per interval however fast partners report. A single
//! writer keeps an older position from overwriting a newer one. When the write fails, the
//! positions go back on the queue unless a newer one arrived meanwhile.

use std::time::Duration;
use switchyard_broker::state::SharedState;
use switchyard_protocol::Location;
use switchyard_store::Store;

/// How often the relay leader writes queued positions.
pub const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Takes the queued positions and writes them; returns how many were written.
pub async fn persist(store: &Store, state: &dyn SharedState) -> usize {
    let taken = match state.take_positions().await {
        Ok(taken) if !taken.is_empty() => taken,
        Ok(_) => return 0,
        Err(err) => {
            tracing::debug!(%err, "could not take queued positions");
            return 0;
        }
    };
    let batch: Vec<(i64, Location)> = taken
        .iter()
        .filter_map(|(id, json)| match serde_json::from_str(json) {
            Ok(location) => Some((*id, location)),
            Err(err) => {
                tracing::warn!(order = id, %err, "dropping an unreadable queued position");
                None
            }
        })
        .collect();
    match store.record_locations(&batch).await {
        Ok(()) => batch.len(),
        Err(err) => {
            tracing::warn!(%err, positions = batch.len(), "could not write positions; requeued");
            if let Err(err) = state.requeue_positions(&taken).await {
                tracing::warn!(%err, "could not requeue positions; they are lost for the database (still in the shared state)");
            }
            0
        }
    }
}
