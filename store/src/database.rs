//! The engine behind a database URL, the connection settings, the pool and the migrations.
//!
//! The settings are parsed and documented with the other configuration (the binary's
//! `DatabaseArgs`: `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`, `DATABASE_STATEMENT_TIMEOUT_MS`,
//! `DATABASE_ACQUIRE_TIMEOUT_MS`); this module applies them.

use crate::StoreError;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{AnyPool, ConnectOptions, Connection, Executor};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The SQL engine a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `sqlite://path.db`: one file on one machine, one writer at a time — the embedded mode,
    /// and at most one API process.
    Sqlite,
    /// `postgres://…` / `postgresql://…`: a server several API processes share.
    Postgres,
}

impl Engine {
    /// The engine of `url`, or a configuration error naming the schemes there are.
    pub fn of_url(url: &str) -> Result<Engine, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Engine::Postgres)
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            Err(StoreError::Config(format!(
                "DATABASE_URL must start with sqlite:// or postgres:// (the scheme is {scheme:?})"
            )))
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }

    /// Whether several processes (on several machines) may open this database at once.
    pub fn is_shared(self) -> bool {
        self == Engine::Postgres
    }

    /// The database server's clock in Unix milliseconds, as SQL: leases compare times taken
    /// from one clock, whichever machine the API process runs on.
    pub(crate) fn now_ms_sql(self) -> &'static str {
        match self {
            Engine::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Engine::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// The clause that locks the rows a `SELECT` read until commit. SQLite has none (and
    /// needs none: a write transaction holds the whole database).
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Engine::Sqlite => "",
            Engine::Postgres => " FOR UPDATE",
        }
    }
}

/// How to open the database. `Debug` masks the URL's password.
#[derive(Clone)]
pub struct DatabaseOptions {
    pub url: String,
    /// Connections per process (an in-memory SQLite database always has exactly one); on an
    /// SQLite file, for reads, beside the one writer connection (see `Pools`).
    pub max_connections: u32,
    /// PostgreSQL `statement_timeout` of every connection; zero turns it off. SQLite has no
    /// statement timeout; a writer waits at most [`SQLITE_BUSY_TIMEOUT`] for the lock.
    pub statement_timeout: Duration,
    /// How long a request waits for a free connection before it fails.
    pub acquire_timeout: Duration,
}

/// How long an SQLite writer waits for the database lock: first in this process's queue of
/// writers (the writer connection, see `Pools`), then, should another process hold the
/// file's lock, in SQLite's busy handler.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections of one store.
///
/// On an SQLite file, writes go through `writer`, a pool of exactly one connection: sqlx hands
/// a pool's connections out in the order they were asked for, so the process's writers queue
/// in order (first come, first served) for the database lock, each holding it from `BEGIN
/// IMMEDIATE` to commit, and at most one of them at a time asks SQLite for it. Left to
/// SQLite, every waiting writer polled the lock in its busy handler with sleeps growing to
/// 100 ms, and whoever polled right after a commit won: under load a writer could lose for
/// longer than the busy timeout and fail (`database is locked`, a 500) while newer writers
/// went first. Reads use `reader` and never wait for a writer (WAL).
///
/// On PostgreSQL, and on an in-memory SQLite database (one connection in all), `writer` is
/// `reader`.
pub(crate) struct Pools {
    pub reader: AnyPool,
    pub writer: AnyPool,
    pub engine: Engine,
}

impl DatabaseOptions {
    /// `url` with the default settings (10 connections, 5 s statement and acquire timeouts).
    pub fn new(url: &str) -> DatabaseOptions {
        DatabaseOptions {
            url: url.to_owned(),
            max_connections: 10,
            statement_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for DatabaseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseOptions")
            .field("url", &redacted(&self.url))
            .field("max_connections", &self.max_connections)
            .field("statement_timeout", &self.statement_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// `url` with its password (if any) replaced by `***`, for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// The pools for `options`, each connection set up for its engine.
pub(crate) async fn connect(options: &DatabaseOptions) -> Result<Pools, StoreError> {
    sqlx::any::install_default_drivers();
    let engine = Engine::of_url(&options.url)?;
    let in_memory = engine == Engine::Sqlite && is_in_memory(&options.url);
    // One connection first, so a wrong host, password or database name is reported as such
    // rather than as a pool that timed out waiting for a connection.
    match engine {
        Engine::Sqlite if in_memory => {}
        Engine::Sqlite => prepare_sqlite_file(&options.url).await?,
        Engine::Postgres => {
            let conn = sqlx::PgConnection::connect(&options.url).await?;
            conn.close().await?;
        }
    }
    // Per connection: SQLite's settings do not persist in the file (except WAL, set above);
    // PostgreSQL's statement timeout is a session setting.
    let setup: Arc<[String]> = match engine {
        Engine::Sqlite => vec![
            format!("PRAGMA busy_timeout = {}", SQLITE_BUSY_TIMEOUT.as_millis()),
            // FULL: a committed payment survives power loss, not only a process crash.
            "PRAGMA synchronous = FULL".into(),
            "PRAGMA foreign_keys = ON".into(),
        ],
        Engine::Postgres => vec![format!(
            "SET statement_timeout = {}",
            options.statement_timeout.as_millis()
        )],
    }
    .into();
    let pool = |max_connections: u32, acquire_timeout: Duration| {
        let setup = setup.clone();
        AnyPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(acquire_timeout)
            .after_connect(move |conn, _| {
                let setup = setup.clone();
                Box::pin(async move {
                    for statement in setup.iter() {
                        conn.execute(statement.as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect(&options.url)
    };
    // An in-memory SQLite database exists per connection: keep exactly one.
    let reader = if in_memory {
        pool(1, options.acquire_timeout).await?
    } else {
        pool(options.max_connections.max(1), options.acquire_timeout).await?
    };
    let writer = if engine == Engine::Sqlite && !in_memory {
        // The queue of writers: waiting here is waiting for the database lock, as long as
        // SQLite's busy handler would (or the acquire timeout, if longer).
        pool(1, options.acquire_timeout.max(SQLITE_BUSY_TIMEOUT)).await?
    } else {
        reader.clone()
    };
    Ok(Pools {
        reader,
        writer,
        engine,
    })
}

/// Creates the SQLite file if it is missing and switches it to WAL (a setting the file keeps):
/// readers never block the writer.
async fn prepare_sqlite_file(url: &str) -> Result<(), StoreError> {
    let conn = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .connect()
        .await?;
    conn.close().await?;
    Ok(())
}

/// Applies the engine's pending migrations. Several processes starting at once are safe: sqlx
/// takes a lock first (an advisory lock on PostgreSQL, the write lock on SQLite).
pub(crate) async fn migrate(pool: &AnyPool, engine: Engine) -> Result<(), StoreError> {
    migrator(engine).run(pool).await?;
    Ok(())
}

/// The migrations of `engine`.
pub fn migrator(engine: Engine) -> &'static Migrator {
    match engine {
        Engine::Sqlite => &SQLITE_MIGRATIONS,
        Engine::Postgres => &POSTGRES_MIGRATIONS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;
    use std::collections::{BTreeMap, BTreeSet};

    /// A schema as both engines can report it: table → column → (integer or text, nullable),
    /// and table → its unique column sets (primary keys included).
    #[derive(Debug, PartialEq, Eq)]
    struct Schema {
        columns: BTreeMap<String, BTreeMap<String, (String, bool)>>,
        unique: BTreeMap<String, BTreeSet<String>>,
    }

    fn kind(sql_type: &str) -> String {
        let t = sql_type.to_ascii_uppercase();
        if t.contains("INT") {
            "integer".into()
        } else if t.contains("TEXT") || t.contains("CHAR") {
            "text".into()
        } else {
            t
        }
    }

    fn sorted(columns: &str) -> String {
        let mut names: Vec<&str> = columns.split(',').collect();
        names.sort();
        names.join(",")
    }

    async fn schema(pool: &AnyPool, engine: Engine) -> Schema {
        // sqlx's own bookkeeping table differs by engine by design.
        let (columns_sql, unique_sql) = match engine {
            Engine::Sqlite => (
                "SELECT m.name, p.name, p.type, p.\"notnull\" = 0 AND p.pk = 0 \
                 FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%' AND m.name <> '_sqlx_migrations'",
                "SELECT m.name, (SELECT group_concat(ii.name) FROM pragma_index_info(il.name) ii) \
                 FROM sqlite_master m JOIN pragma_index_list(m.name) il \
                 WHERE m.type = 'table' AND il.\"unique\" = 1 AND m.name <> '_sqlx_migrations' \
                 UNION ALL \
                 SELECT m.name, (SELECT group_concat(p.name) FROM pragma_table_info(m.name) p WHERE p.pk > 0) \
                 FROM sqlite_master m \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%' AND m.name <> '_sqlx_migrations'",
            ),
            Engine::Postgres => (
                "SELECT table_name::text, column_name::text, data_type::text, CASE WHEN is_nullable = 'YES' THEN 1 ELSE 0 END \
                 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'",
                "SELECT t.relname::text, string_agg(a.attname::text, ',') \
                 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                 JOIN pg_namespace n ON n.oid = t.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indisunique AND n.nspname = current_schema() AND t.relname <> '_sqlx_migrations' \
                 GROUP BY t.relname, i.indexrelid",
            ),
        };
        let mut columns: BTreeMap<String, BTreeMap<String, (String, bool)>> = BTreeMap::new();
        let rows: Vec<(String, String, String, i64)> =
            sqlx::query_as(columns_sql).fetch_all(pool).await.unwrap();
        for (table, column, sql_type, nullable) in rows {
            columns
                .entry(table)
                .or_default()
                .insert(column, (kind(&sql_type), nullable != 0));
        }
        let mut unique: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as(unique_sql).fetch_all(pool).await.unwrap();
        for (table, set) in rows {
            if let Some(set) = set {
                unique.entry(table).or_default().insert(sorted(&set));
            }
        }
        Schema { columns, unique }
    }

    /// The two engines' migrations end in the same tables, columns (kind and nullability) and
    /// unique keys: a migration added for one engine only fails here.
    #[tokio::test]
    async fn both_engines_migrate_to_the_same_schema() {
        let [sqlite, postgres] = TestDatabase::each_engine().await;
        let sqlite = sqlite.open().await;
        let postgres = postgres.open().await;
        let a = schema(&sqlite.pool, Engine::Sqlite).await;
        let b = schema(&postgres.pool, Engine::Postgres).await;
        assert!(a.columns.contains_key("orders") && a.unique.contains_key("idempotency_keys"));
        assert_eq!(a, b, "the SQLite and PostgreSQL schemas drifted");
        let versions = |m: &Migrator| m.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(
            versions(migrator(Engine::Sqlite)),
            versions(migrator(Engine::Postgres)),
            "each migration must exist for both engines"
        );
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redacted("postgres://sy:secret@db:5432/sy?sslmode=require"),
            "postgres://sy:***@db:5432/sy?sslmode=require"
        );
        assert_eq!(redacted("postgres://sy@db/sy"), "postgres://sy@db/sy");
        assert_eq!(redacted("sqlite://data/sy.db"), "sqlite://data/sy.db");
    }

    #[test]
    fn the_scheme_selects_the_engine() {
        assert_eq!(Engine::of_url("sqlite://a.db").unwrap(), Engine::Sqlite);
        assert_eq!(Engine::of_url("sqlite::memory:").unwrap(), Engine::Sqlite);
        assert_eq!(
            Engine::of_url("postgresql://h/d").unwrap(),
            Engine::Postgres
        );
        let err = Engine::of_url("mysql://h/d").unwrap_err().to_string();
        assert!(err.contains("sqlite:// or postgres://"), "{err}");
    }
}
