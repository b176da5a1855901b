//! The outbox relay: publishes committed events in the order they were written.
//!
//! It wakes on every commit that wrote outbox rows (and once a second regardless, which
//! also picks up rows another process or a previous run left). A row is deleted only after
//! the bus accepted it; when the bus refuses, the relay backs off and retries from the
//! same row, so events are never skipped or reordered. A crash between publish and delete
//! publishes that row again on restart (at-least-once from database to bus).

use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use switchyard_broker::Broker;
use switchyard_protocol::Room;
use switchyard_store::Store;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 256;
const IDLE_POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `shutdown` is cancelled, then publishes what is left (one last pass).
pub async fn run(store: Store, broker: Arc<dyn Broker>, shutdown: CancellationToken) {
    let wake = store.outbox_written();
    let mut backoff = Duration::from_millis(50);
    loop {
        let stopping = shutdown.is_cancelled();
        match relay_batch(&store, broker.as_ref()).await {
            Ok(0) => {
                backoff = Duration::from_millis(50);
                if stopping {
                    return;
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Ok(_) => backoff = Duration::from_millis(50),
            Err(err) => {
                if stopping {
                    tracing::warn!(%err, "outbox relay stopping with events left; they are published on the next start");
                    return;
                }
                tracing::warn!(%err, ?backoff, "outbox relay failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Publishes one batch; returns how many rows it consumed.
async fn relay_batch(store: &Store, broker: &dyn Broker) -> Result<usize, String> {
    let batch = store.outbox_batch(BATCH).await.map_err(|e| e.to_string())?;
    let mut done = None;
    let mut result = Ok(batch.len());
    for event in &batch {
        let parsed = Room::parse(&event.room)
            .map_err(|e| e.to_string())
            .and_then(|room| {
                Ok((
                    room,
                    RawValue::from_string(event.data.clone()).map_err(|e| e.to_string())?,
                ))
            });
        match parsed {
            Ok((room, data)) => {
                if let Err(err) = broker.publish(&room, &event.event, data).await {
                    result = Err(err.to_string());
                    break;
                }
                metrics::counter!("switchyard_events_published_total", "source" => "api")
                    .increment(1);
            }
            // A row that can never be published must not block the ones behind it.
            Err(err) => tracing::error!(id = event.id, %err, "dropping unpublishable outbox row"),
        }
        done = Some(event.id);
    }
    if let Some(id) = done {
        store.outbox_done(id).await.map_err(|e| e.to_string())?;
    }
    result
}
