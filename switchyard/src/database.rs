//! The API's database: opened (and migrated) at start-up, or only migrated by
//! `switchyard migrate`. Its settings are documented on [`DatabaseArgs`].

use crate::config::{DatabaseArgs, Mode};
use anyhow::Context;
use switchyard_store::Store;
use switchyard_store::database::redacted;

/// The API's database, migrated. SQLite means one API process (see [`DatabaseArgs`]): an
/// `api` on SQLite says so in its log.
pub async fn open(database: &DatabaseArgs, mode: Mode) -> anyhow::Result<Store> {
    let options = database.options();
    let url = redacted(&options.url);
    let store = Store::open_with(&options)
        .await
        .with_context(|| format!("opening database {url}"))?;
    tracing::info!(engine = store.engine().name(), %url, "database ready");
    // The embedded mode starts with a small catalog, once in the life of its database, so the
    // README's first commands (and `switchyard demo`) can order something.
    if mode == Mode::All && store.seed_demo_catalog().await? {
        tracing::info!("seeded the demo catalog (GET /api/products)");
    }
    if mode == Mode::Api && !store.engine().is_shared() {
        tracing::warn!(
            "`switchyard api` on SQLite: run exactly one API process; several need PostgreSQL (DATABASE_URL=postgres://…)"
        );
    }
    Ok(store)
}

/// `switchyard migrate`: applies the pending migrations; returns what to print.
pub async fn migrate(database: &DatabaseArgs) -> anyhow::Result<String> {
    let options = database.options();
    let url = redacted(&options.url);
    let store = Store::open_with(&options)
        .await
        .with_context(|| format!("migrating database {url}"))?;
    let version = store.schema_version().await?;
    store.close().await;
    Ok(format!(
        "{url}: {} schema at version {version}",
        store.engine().name()
    ))
}
