//! The outbox: what a change must tell the world, written in the same transaction as the
//! change.
//!
//! Rows are handled by the relay in id order, one kind at a time:
//! - `snapshot`: the room's new state (the order, the revenue totals), for the shared state
//!   gateways answer subscribes from; written first in a transaction, so a snapshot is in place
//!   before the events it covers are published;
//! - `revoke`: a user loses the room on every gateway (the former partner of a reassigned
//!   order), after the snapshot that no longer names them;
//! - `event`: an event published into its room.

use crate::{Store, StoreError, Tx, now_ms};
use serde::Serialize;
use serde_json::json;
use switchyard_protocol::{BuiltinEvent, Room};

/// What the relay does with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    Event,
    Snapshot,
    Revoke,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Event => "event",
            OutboxKind::Snapshot => "snapshot",
            OutboxKind::Revoke => "revoke",
        }
    }
}

/// A row waiting for the relay.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub id: i64,
    pub kind: OutboxKind,
    pub room: String,
    /// The event name (`event` rows).
    pub event: String,
    /// JSON: the event's data, the snapshot, or `{"sub", "reason"}` of a revoke.
    pub data: String,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    kind: String,
    room: String,
    event: String,
    data: String,
}

impl OutboxRow {
    fn into_event(self) -> OutboxEvent {
        let kind = match self.kind.as_str() {
            "snapshot" => OutboxKind::Snapshot,
            "revoke" => OutboxKind::Revoke,
            _ => OutboxKind::Event,
        };
        OutboxEvent {
            id: self.id,
            kind,
            room: self.room,
            event: self.event,
            data: self.data,
        }
    }
}

async fn insert(
    tx: &mut Tx,
    kind: OutboxKind,
    room: &Room,
    event: &str,
    data: &impl Serialize,
) -> Result<(), StoreError> {
    let data = serde_json::to_string(data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO outbox (kind, room, event, data, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(kind.as_str())
    .bind(room.as_str())
    .bind(event)
    .bind(data)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Adds a built-in event to the outbox inside `tx`.
pub(crate) async fn enqueue<E: BuiltinEvent>(
    tx: &mut Tx,
    room: &Room,
    data: &E,
) -> Result<(), StoreError> {
    insert(tx, OutboxKind::Event, room, E::NAME, data).await
}

/// Records `room`'s new state inside `tx` (before the transaction's events).
pub(crate) async fn enqueue_snapshot(
    tx: &mut Tx,
    room: &Room,
    state: &impl Serialize,
) -> Result<(), StoreError> {
    insert(tx, OutboxKind::Snapshot, room, "", state).await
}

/// Ends `sub`'s membership of `room` on every gateway once `tx` commits.
pub(crate) async fn enqueue_revoke(
    tx: &mut Tx,
    room: &Room,
    sub: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let data = json!({ "sub": sub, "reason": reason });
    insert(tx, OutboxKind::Revoke, room, "", &data).await
}

impl Store {
    /// The oldest rows the relay has not handled, in the order they were written.
    pub async fn outbox_batch(&self, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = sqlx::query_as::<_, OutboxRow>(
            "SELECT id, kind, room, event, data FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(OutboxRow::into_event).collect())
    }

    /// Removes handled rows, by id. Exactly these: a range (`id <= last`) could take a row
    /// whose transaction committed after the batch was read, with a lower id than its last
    /// (ids are allocated at insert, not at commit), before it was ever published.
    pub async fn outbox_done(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // `$1, $2, …` by hand: sqlx's QueryBuilder writes `?` for the `Any` driver, which
        // PostgreSQL does not read.
        let list: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!("DELETE FROM outbox WHERE id IN ({})", list.join(", "));
        let mut delete = sqlx::query(&sql);
        for id in ids {
            delete = delete.bind(*id);
        }
        delete.execute(&self.writer).await?;
        Ok(())
    }

    /// Takes or renews the relay lease for `holder` for `ttl_ms`. True when `holder` holds it.
    /// Only the holder publishes, so events leave in commit order even with several API
    /// processes; a holder that dies (SIGKILL, a lost machine) loses the lease when it
    /// expires, and the next relay takes over its rows.
    ///
    /// One statement decides: an upsert that overwrites the row only when it is ours or
    /// expired. PostgreSQL locks the conflicting row for that check, so two relays asking at
    /// once cannot both win; times come from the database's clock, so API processes on
    /// machines with different clocks agree on when a lease ends.
    pub async fn relay_lease(&self, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let now = self.engine.now_ms_sql();
        let sql = format!(
            "INSERT INTO relay_lease (name, holder, expires_at) VALUES ('outbox', $1, {now} + $2) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE relay_lease.holder = excluded.holder OR relay_lease.expires_at <= {now} \
             RETURNING holder"
        );
        let won: Option<(String,)> = sqlx::query_as(&sql)
            .bind(holder)
            .bind(ttl_ms)
            .fetch_optional(&self.writer)
            .await?;
        Ok(won.is_some())
    }

    /// Gives the lease up (clean shutdown), so another relay takes over at once.
    pub async fn release_relay_lease(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM relay_lease WHERE name = 'outbox' AND holder = $1")
            .bind(holder)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Unpublished events and the age of the oldest, in milliseconds.
    pub async fn outbox_backlog(&self) -> Result<(i64, i64), StoreError> {
        let (count, oldest): (i64, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox")
                .fetch_one(&self.pool)
                .await?;
        Ok((count, oldest.map(|t| now_ms() - t).unwrap_or(0)))
    }
}
