//! The outbox relay: hands committed outbox rows on in the order they were written — room
//! snapshots to the shared state, revocations to every gateway, events to the bus.
//!
//! Several API processes may share one database; only the holder of the relay lease
//! publishes, so events leave in commit order (one sequence of ids, one publisher). The
//! holder wakes on its own commits, on `OutboxWritten` control messages from the other
//! processes' commits (sent over the bus), and once a second regardless — which also picks up
//! rows a crashed process or a previous run left. A row is deleted only after the bus took
//! it; when the bus refuses, the relay backs off and retries from the same row, so events are
//! never skipped or reordered. A crash between publish and delete publishes that row again on
//! restart (at-least-once from database to bus).
//!
//! Snapshot rows come first in their transaction, so a room's snapshot in the shared state is
//! replaced before the events it covers go out; a subscriber that reads a position after
//! joining therefore never gets a snapshot older than that position. Without a shared state
//! (the embedded mode: its gateway reads the database) snapshot rows are simply consumed.
//! The holder of the lease also writes the partner positions gateways queued
//! ([`crate::positions`]).
//!
//! Chat: the offset each `chat.message` event was given is recorded on its message, after the
//! batch is published and before its rows are deleted (`Store::chat_offsets_recorded`, which
//! wakes this process's sends waiting for it), then announced to the other API processes
//! ([`Control::ChatPublished`]) — a send answers with its event's offset
//! (`switchyard_store::chat`).
//!
//! Metrics, updated every cycle (at most every [`GAUGE_INTERVAL`]): `switchyard_outbox_backlog`
//! (rows waiting) and `switchyard_outbox_oldest_age_seconds` (how long the oldest has waited)
//! — from every API process, leader or not, since the outbox is shared: a backlog that grows
//! while no process is leader is exactly what they should show (aggregate with `max`, not
//! `sum`); and `switchyard_relay_leader` (1 while this process holds the lease).

use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_broker::state::SharedState;
use switchyard_broker::{Backplane, Bus, Control, Controller, Listen, Outgoing};
use switchyard_protocol::Room;
use switchyard_protocol::events::CHAT_MESSAGE;
use switchyard_store::OutboxKind;
use switchyard_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 256;
const IDLE_POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a lease lasts; it is renewed when half of it is left.
const LEASE_MS: i64 = 5_000;
/// Least time between two backlog queries (a `COUNT(*)` over the outbox) while busy.
pub const GAUGE_INTERVAL: Duration = Duration::from_millis(500);

/// Wakes the relay when another process announces committed outbox rows, and this process's
/// chat sends when another relay announces their offsets.
struct Wake {
    relay: Arc<Notify>,
    store: Store,
}

impl Listen for Wake {
    fn control(&self, control: &Control) {
        match control {
            Control::OutboxWritten => self.relay.notify_one(),
            Control::ChatPublished { offsets } => self.store.chat_offsets_published(offsets),
            _ => {}
        }
    }
}

/// Runs until `shutdown` is cancelled, then publishes what is left (one last pass) and
/// releases the lease. `state` is the shared state of the distributed mode (None: embedded).
pub async fn run(
    store: Store,
    backplane: Backplane,
    state: Option<Arc<dyn SharedState>>,
    shutdown: CancellationToken,
) {
    if std::env::var("SWITCHYARD_FAILPOINT").as_deref() == Ok("relay-off") {
        // Test-only fail point: behave like a process that dies right after each commit,
        // before publishing. The outbox keeps every event for the next start.
        tracing::warn!("fail point relay-off: the outbox relay does not run");
        return;
    }
    let local = store.outbox_written();
    let remote = Arc::new(Notify::new());
    let Backplane {
        bus, controller, ..
    } = backplane;
    controller.listen(Arc::new(Wake {
        relay: remote.clone(),
        store: store.clone(),
    }));
    let holder = format!(
        "relay-{}-{:x}",
        std::process::id(),
        switchyard_store::now_ms()
    );
    let mut lease_until: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    let mut gauges_at: Option<Instant> = None;
    let mut positions_at = Instant::now();
    metrics::gauge!("switchyard_relay_leader").set(0.0);
    loop {
        let stopping = shutdown.is_cancelled();
        // Renew when less than half the lease is left (one small write every ~2.5 s).
        let renew = lease_until.is_none_or(|t| {
            t.saturating_duration_since(Instant::now()) < Duration::from_millis(LEASE_MS as u64 / 2)
        });
        if renew {
            let asked = Instant::now();
            lease_until = match store.relay_lease(&holder, LEASE_MS).await {
                Ok(true) => Some(asked + Duration::from_millis(LEASE_MS as u64)),
                Ok(false) => None,
                Err(err) => {
                    tracing::warn!(%err, "relay lease check failed");
                    None
                }
            };
        }
        let leader = lease_until.is_some();
        metrics::gauge!("switchyard_relay_leader").set(if leader { 1.0 } else { 0.0 });
        let result = if leader {
            relay_batch(&store, bus.as_ref(), controller.as_ref(), state.as_deref()).await
        } else {
            Ok(0)
        };
        if let Some(state) = state.as_deref()
            && leader
            && (stopping || positions_at.elapsed() >= crate::positions::PERSIST_EVERY)
        {
            crate::positions::persist(&store, state).await;
            positions_at = Instant::now();
        }
        // While draining a backlog, at most every GAUGE_INTERVAL; always once caught up, so
        // the gauges read 0 as soon as the outbox is empty.
        if matches!(result, Ok(0)) || gauges_at.is_none_or(|t| t.elapsed() >= GAUGE_INTERVAL) {
            update_backlog_gauges(&store).await;
            gauges_at = Some(Instant::now());
        }
        match result {
            Ok(0) => {
                backoff = Duration::from_millis(50);
                if stopping {
                    break;
                }
                tokio::select! {
                    _ = local.notified() => {
                        if !leader {
                            // Our commit, someone else's lease: wake the holder.
                            let _ = controller.broadcast(Control::OutboxWritten).await;
                        }
                    }
                    _ = remote.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Ok(_) => backoff = Duration::from_millis(50),
            Err(err) => {
                if stopping {
                    tracing::warn!(%err, "outbox relay stopping with events left; they are published on the next start");
                    break;
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
    if lease_until.is_some() {
        let _ = store.release_relay_lease(&holder).await;
    }
    metrics::gauge!("switchyard_relay_leader").set(0.0);
}

async fn update_backlog_gauges(store: &Store) {
    match store.outbox_backlog().await {
        Ok((rows, oldest_ms)) => {
            metrics::gauge!("switchyard_outbox_backlog").set(rows as f64);
            metrics::gauge!("switchyard_outbox_oldest_age_seconds").set(oldest_ms as f64 / 1000.0);
        }
        Err(err) => tracing::debug!(%err, "outbox backlog query failed"),
    }
}

/// Adds `"event_id":<outbox id>` to an event's data object: the same id however often a
/// crash makes the relay publish the row, so a client can drop a republished duplicate
/// (which has a new offset) by it.
fn with_event_id(id: i64, data: &str) -> String {
    match data.trim_start().strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"event_id\":{id}}}"),
        Some(rest) => format!("{{\"event_id\":{id},{rest}"),
        None => data.to_owned(),
    }
}

/// Hands one snapshot or revocation row on: `Ok(false)` when the row can never be handled
/// (skipped, logged). Event rows go through [`publish_events`].
async fn relay_row(
    event: &switchyard_store::OutboxEvent,
    controller: &dyn Controller,
    state: Option<&dyn SharedState>,
) -> Result<bool, String> {
    let Ok(room) = Room::parse(&event.room) else {
        return Ok(false);
    };
    match event.kind {
        OutboxKind::Snapshot => {
            if let Some(state) = state {
                state
                    .put_snapshot(&room, &event.data)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        OutboxKind::Revoke => {
            #[derive(serde::Deserialize)]
            struct Revoke {
                sub: String,
                reason: String,
            }
            let Ok(Revoke { sub, reason }) = serde_json::from_str(&event.data) else {
                return Ok(false);
            };
            let control = Control::Revoke {
                room: room.as_str().to_owned(),
                sub,
                reason,
            };
            controller
                .broadcast(control)
                .await
                .map_err(|e| e.to_string())?;
        }
        OutboxKind::Event => unreachable!("event rows are published in batches"),
    }
    Ok(true)
}

/// An event row as the bus takes it (`None`: unreadable, never publishable).
fn outgoing(event: &switchyard_store::OutboxEvent) -> Option<Outgoing> {
    let room = Room::parse(&event.room).ok()?;
    let data = RawValue::from_string(with_event_id(event.id, &event.data)).ok()?;
    Some(Outgoing {
        room,
        event: event.event.clone(),
        data,
    })
}

/// Publishes a run of consecutive event rows in one [`Bus::publish_batch`] (one script call
/// on Redis, per hash slot on a cluster; offsets still atomic per room, in commit order
/// within a room). Pushes the ids consumed onto `done`, in order, up to the first that the
/// bus refused: that one and every later row are tried again (a later row of another slot
/// that did go out is then published once more — at least once, as after a crash; clients
/// drop the duplicate by its `event_id`).
/// The `(message_id, offset)` of each `chat.message` published goes onto `chat`.
async fn publish_events(
    rows: &[&switchyard_store::OutboxEvent],
    bus: &dyn Bus,
    done: &mut Vec<i64>,
    chat: &mut Vec<(i64, u64)>,
) -> Result<(), String> {
    let mut batch = Vec::with_capacity(rows.len());
    let mut readable = Vec::with_capacity(rows.len());
    for row in rows {
        match outgoing(row) {
            Some(out) => {
                batch.push(out);
                readable.push(Some(row.id));
            }
            None => readable.push(None),
        }
    }
    let mut results = bus.publish_batch(batch).await.into_iter();
    for (row, id) in rows.iter().zip(readable) {
        match id {
            // A row that can never be handled must not block the ones behind it.
            None => tracing::error!(id = row.id, "dropping an unreadable outbox row"),
            Some(_) => match results.next() {
                Some(Ok(offset)) => {
                    metrics::counter!("switchyard_events_published_total", "source" => "api")
                        .increment(1);
                    if let Some(message_id) = chat_message_id(row) {
                        chat.push((message_id, offset));
                    }
                }
                Some(Err(err)) => return Err(err.to_string()),
                None => return Err("the bus answered fewer events than it was given".into()),
            },
        }
        done.push(row.id);
    }
    Ok(())
}

/// The message id of a `chat.message` row (None for any other row).
fn chat_message_id(event: &switchyard_store::OutboxEvent) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Message {
        message_id: String,
    }
    if event.event != CHAT_MESSAGE {
        return None;
    }
    let message: Message = serde_json::from_str(&event.data).ok()?;
    message.message_id.parse().ok()
}

/// Hands on one batch; returns how many rows it consumed. Consecutive event rows go to the
/// bus together; a snapshot or revocation row is handed on alone, after the events before it
/// (a room's snapshot is in place before the events its transaction wrote go out).
async fn relay_batch(
    store: &Store,
    bus: &dyn Bus,
    controller: &dyn Controller,
    state: Option<&dyn SharedState>,
) -> Result<usize, String> {
    let batch = store.outbox_batch(BATCH).await.map_err(|e| e.to_string())?;
    let mut done = Vec::with_capacity(batch.len());
    let mut chat = Vec::new();
    let mut result = Ok(batch.len());
    let mut events: Vec<&switchyard_store::OutboxEvent> = Vec::new();
    for (i, row) in batch.iter().enumerate() {
        if row.kind == OutboxKind::Event {
            events.push(row);
            let next_is_event = batch
                .get(i + 1)
                .is_some_and(|n| n.kind == OutboxKind::Event);
            if next_is_event {
                continue;
            }
            if let Err(err) = publish_events(&events, bus, &mut done, &mut chat).await {
                result = Err(err);
                break;
            }
            events.clear();
            continue;
        }
        match relay_row(row, controller, state).await {
            Ok(true) => {}
            // A row that can never be handled must not block the ones behind it.
            Ok(false) => tracing::error!(id = row.id, "dropping an unreadable outbox row"),
            Err(err) => {
                result = Err(err);
                break;
            }
        }
        done.push(row.id);
    }
    // Recorded before the rows go: a failure here publishes them again, and the offsets of
    // that publication are recorded instead.
    store
        .chat_offsets_recorded(&chat)
        .await
        .map_err(|e| e.to_string())?;
    store.outbox_done(&done).await.map_err(|e| e.to_string())?;
    if !chat.is_empty() {
        // The sends waiting in other API processes (this one's were told above); one lost
        // announcement costs them a poll of the database.
        let _ = controller
            .broadcast(Control::ChatPublished { offsets: chat })
            .await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::with_event_id;

    #[test]
    fn event_ids_go_first_in_the_data_object() {
        assert_eq!(with_event_id(7, "{}"), r#"{"event_id":7}"#);
        assert_eq!(with_event_id(7, r#"{"a":1}"#), r#"{"event_id":7,"a":1}"#);
        let v: serde_json::Value =
            serde_json::from_str(&with_event_id(9, r#" { "a" : [1] } "#)).unwrap();
        assert_eq!(
            (v["event_id"].as_i64(), v["a"][0].as_i64()),
            (Some(9), Some(1))
        );
    }
}
