//! Persistence: the catalog, orders, payments, idempotency keys, revenue totals and the outbox.
//!
//! Every change and the events it causes are written in one transaction (the `outbox`
//! table); a relay (in `switchyard-api`) publishes them in order. A crash between commit
//! and publish therefore loses no event: the relay finds the rows on the next start.
//!
//! # Two engines, one API
//! The URL chooses the engine ([`Engine`]): `sqlite://path.db` is the embedded database of
//! `switchyard all` (one process), `postgres://…` the shared database of several API
//! processes. Queries go through sqlx's `Any` driver, so every statement is written once, in
//! SQL both engines run (`$n` placeholders, `RETURNING`, `ON CONFLICT`, integer milliseconds,
//! integer paise, JSON as TEXT); the few places where they differ ask [`Engine`]. Each engine
//! has its own migrations (`migrations/sqlite`, `migrations/postgres`), applied at start-up
//! and by `switchyard migrate`; a test (`database::tests`) fails when their schemas drift.
//!
//! How writers stay correct on each:
//! - SQLite: one writer at a time. A process's writers queue in order for its one writer
//!   connection (see `database::Pools`), and each opens a `BEGIN IMMEDIATE` transaction on it,
//!   so it takes the database lock up front instead of failing with `SQLITE_BUSY` on lock
//!   upgrade; the wait is bounded by the busy timeout. Reads never wait for a writer (WAL).
//! - PostgreSQL: `READ COMMITTED` transactions; a write first locks the order row it changes
//!   (`SELECT … FOR UPDATE`) and the revenue row is moved by a
//!   guarded `UPDATE` (a row lock until commit), so writers to one order or to the totals
//!   queue on the row while writers to different orders run side by side. A write that loses a
//!   race on a unique key (two first uses of one `Idempotency-Key`) is retried once, and then
//!   sees the winner's row.
//!
//! # Layout
//! - [`catalog`]: products, the stock an order reserves and a cancellation gives back.
//! - [`chat`]: order chat: messages (with their events, idempotent by `client_msg_id`) and
//!   read markers.
//! - [`database`]: the engine, connection settings, the pool and the migrations.
//! - [`checks`]: the order of checks every write makes (404 → 403 → 409 → payload).
//! - [`orders`]: create, read, list, status changes, assignment, partner locations.
//! - [`payments`]: idempotent payments, refunds and revenue totals (checked money).
//! - [`outbox`]: the relay's side of the outbox and its lease.
//! - `testing` (feature `testing`): fresh test databases on both engines.

pub mod catalog;
#[cfg(test)]
mod catalog_tests;
pub mod chat;
pub mod checks;
pub mod database;
pub mod orders;
pub mod outbox;
pub mod payments;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use sqlx::{Any, AnyPool, Transaction};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use switchyard_protocol::Role;
use tokio::sync::Notify;

pub use checks::Change;
pub use database::{DatabaseOptions, Engine};
pub use orders::Scope;
pub use outbox::{OutboxEvent, OutboxKind};
pub use payments::PaymentOutcome;

/// The default of `SWITCHYARD_LOW_STOCK_THRESHOLD`.
pub const DEFAULT_LOW_STOCK_THRESHOLD: i64 = 10;

/// A transaction on either engine.
pub(crate) type Tx = Transaction<'static, Any>;

/// Why a store operation failed; the API maps each variant to one HTTP status.
///
/// The caller's fault (`NotFound`, `Forbidden`, `Conflict`, `Invalid`: 4xx, the message is
/// shown to the caller) is kept apart from the server's (`Corrupt`, `Config`, `Database`, `Migrate`:
/// 500, the message is logged and never shown).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unknown, or not visible to the caller (no existence leak).
    #[error("order not found")]
    NotFound,
    /// No product with this SKU (404).
    #[error("product not found")]
    UnknownProduct,
    /// The catalog refuses an order: a changed price or too little stock (409, with the
    /// lines at fault).
    #[error("{}", .0.message)]
    Refused(switchyard_protocol::catalog::CatalogRefusal),
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
    /// The database settings are unusable (an unknown URL scheme): a start-up error.
    #[error("{0}")]
    Config(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Every pooled connection stayed busy past the pool's acquire timeout
    /// (`DATABASE_ACQUIRE_TIMEOUT_MS`): the database is overloaded or held by slow
    /// transactions, not broken — the caller should retry (the API answers 503).
    pub fn pool_timed_out(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::PoolTimedOut))
    }
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
    /// Reads, and every statement on PostgreSQL.
    pool: AnyPool,
    /// Writes: on an SQLite file the one writer connection writers queue for in order, else
    /// `pool` (see `database::Pools`).
    writer: AnyPool,
    engine: Engine,
    /// Woken after every commit that wrote outbox rows, so the relay publishes at once.
    outbox_written: Arc<Notify>,
    /// A product's stock falling to or below this sends `stock.low` (see [`catalog`]).
    low_stock_threshold: i64,
    /// How long a finished order's chat stays open to new messages (see [`chat`]).
    chat_close_grace_ms: i64,
    /// The room offsets the relay gave chat messages (message id, offset), batch by batch;
    /// an empty batch: some were published, look in the database (see [`chat`]).
    chat_published: tokio::sync::broadcast::Sender<Arc<[(i64, u64)]>>,
    /// How long a send waits for its event's offset (see [`Store::send_message_published`]).
    chat_publish_wait: std::time::Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the database at `url` with default settings (see [`DatabaseOptions`]) and
    /// applies migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(&DatabaseOptions::new(url)).await
    }

    /// Opens the database `options` name (an SQLite file is created if missing) and applies
    /// the engine's migrations.
    pub async fn open_with(options: &DatabaseOptions) -> Result<Store, StoreError> {
        let pools = database::connect(options).await?;
        database::migrate(&pools.writer, pools.engine).await?;
        Ok(Store {
            pool: pools.reader,
            writer: pools.writer,
            engine: pools.engine,
            outbox_written: Arc::new(Notify::new()),
            low_stock_threshold: DEFAULT_LOW_STOCK_THRESHOLD,
            chat_close_grace_ms: chat::DEFAULT_CLOSE_GRACE_MS,
            chat_published: tokio::sync::broadcast::channel(chat::PUBLISHED_BATCHES).0,
            chat_publish_wait: chat::DEFAULT_PUBLISH_WAIT,
        })
    }

    /// The same store, sending `stock.low` when a product's stock falls to or below
    /// `threshold` (default [`DEFAULT_LOW_STOCK_THRESHOLD`]).
    pub fn with_low_stock_threshold(mut self, threshold: i64) -> Store {
        self.low_stock_threshold = threshold;
        self
    }

    /// Which engine this store runs on.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The version of the last migration applied.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let (version,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(version.unwrap_or(0))
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
        self.writer.close().await;
        self.pool.close().await;
    }

    /// The pool, for tests that need to reach under the API (damage a row, move a total to
    /// its cap).
    #[doc(hidden)]
    pub fn pool_for_tests(&self) -> &AnyPool {
        &self.pool
    }

    /// A write transaction: on SQLite it waits its turn for the writer connection and takes
    /// the database lock up front (`BEGIN IMMEDIATE`), both held until it ends; on PostgreSQL
    /// each write locks the rows it changes.
    async fn write_tx(&self) -> Result<Tx, StoreError> {
        Ok(match self.engine {
            Engine::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Engine::Postgres => self.pool.begin().await?,
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
