//! Persistence: orders, payments, idempotency keys, revenue totals and the outbox.
//!
//! Every change and the events it causes are written in one transaction (the `outbox`
//! table); a relay (in `switchyard-api`) publishes them in order. A crash between commit
//! and publish therefore loses no event: the relay finds the rows on the next start.
//!
//! SQLite (via sqlx) is the embedded database. Writers open `BEGIN IMMEDIATE`
//! transactions, so concurrent writers queue on the database lock (bounded by the
//! busy timeout) instead of failing with `SQLITE_BUSY` on lock upgrade. The SQL is kept
//! portable (`$n` placeholders, `RETURNING`, no SQLite-only functions) for PostgreSQL.
//!
//! # Layout
//! - [`checks`]: the order of checks every write makes (404 → 403 → 409 → payload).
//! - [`orders`]: create, read, list, status changes, assignment, partner locations.
//! - [`payments`]: idempotent payments, refunds and revenue totals (checked money).
//! - [`outbox`]: the relay's side of the outbox.

pub mod checks;
pub mod orders;
pub mod outbox;
pub mod payments;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_protocol::Role;
use tokio::sync::Notify;

pub use checks::Change;
pub use orders::Scope;
pub use outbox::{OutboxEvent, OutboxKind};
pub use payments::PaymentOutcome;

/// Why a store operation failed; the API maps each variant to one HTTP status.
///
/// The caller's fault (`NotFound`, `Forbidden`, `Conflict`, `Invalid`: 4xx, the message is
/// shown to the caller) is kept apart from the server's (`Corrupt`, `Database`, `Migrate`:
/// 500, the message is logged and never shown).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unknown, or not visible to the caller (no existence leak).
    #[error("order not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller's input is invalid (422).
    #[error("{0}")]
    Invalid(String),
    /// Data in the database does not decode (or ours does not encode): a bug or a damaged
    /// database, never the caller's fault (500).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Who is asking, as the store needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub sub: &'a str,
    pub role: Role,
}

/// The database handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Woken after every commit that wrote outbox rows, so the relay publishes at once.
    outbox_written: Arc<Notify>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if missing) the database at `url` (`sqlite://path.db`,
    /// `sqlite::memory:`) and applies migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed payment survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:");
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists per connection: keep exactly one.
            .max_connections(if in_memory { 1 } else { 8 })
            .min_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store {
            pool,
            outbox_written: Arc::new(Notify::new()),
        })
    }

    /// Whether the database answers (`/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Notified after every commit that wrote outbox rows.
    pub fn outbox_written(&self) -> Arc<Notify> {
        self.outbox_written.clone()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction that takes the database lock up front.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
