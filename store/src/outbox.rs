//! The outbox: events written in the same transaction as the change that caused them.

use crate::{Store, StoreError, now_ms};
use serde::Serialize;
use sqlx::{Sqlite, Transaction};
use switchyard_protocol::Room;

/// An event waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxEvent {
    pub id: i64,
    pub room: String,
    pub event: String,
    pub data: String,
}

/// Adds an event to the outbox inside `tx`.
pub(crate) async fn enqueue(
    tx: &mut Transaction<'static, Sqlite>,
    room: &Room,
    event: &str,
    data: &impl Serialize,
) -> Result<(), StoreError> {
    let data = serde_json::to_string(data).map_err(|e| StoreError::Invalid(e.to_string()))?;
    sqlx::query("INSERT INTO outbox (room, event, data, created_at) VALUES ($1, $2, $3, $4)")
        .bind(room.as_str())
        .bind(event)
        .bind(data)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// The oldest unpublished events, in the order they were written.
    pub async fn outbox_batch(&self, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        Ok(sqlx::query_as::<_, OutboxEvent>(
            "SELECT id, room, event, data FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Removes published events up to and including `id`.
    pub async fn outbox_done(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE id <= $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes or renews the relay lease for `holder` for `ttl_ms`. True when `holder` holds it.
    /// Only the holder publishes, so events leave in commit order even with several API
    /// processes; a holder that dies loses the lease when it expires.
    pub async fn relay_lease(&self, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let current: Option<(String, i64)> =
            sqlx::query_as("SELECT holder, expires_at FROM relay_lease WHERE name = 'outbox'")
                .fetch_optional(&mut *tx)
                .await?;
        let mine = match current {
            Some((h, expires)) if h != holder && expires > now => false,
            _ => {
                sqlx::query(
                    "INSERT INTO relay_lease (name, holder, expires_at) VALUES ('outbox', $1, $2) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                )
                .bind(holder)
                .bind(now + ttl_ms)
                .execute(&mut *tx)
                .await?;
                true
            }
        };
        tx.commit().await?;
        Ok(mine)
    }

    /// Gives the lease up (clean shutdown), so another relay takes over at once.
    pub async fn release_relay_lease(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM relay_lease WHERE name = 'outbox' AND holder = $1")
            .bind(holder)
            .execute(&self.pool)
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
