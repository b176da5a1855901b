//! The catalog's read path: cache-aside in front of the database, with no stale value after a
//! write.
//!
//! # Where the cache is
//! - the embedded mode (`all`, the only writer of its database): in this process
//!   ([`MemoryCache`], `moka`, weighed in bytes);
//! - the distributed mode (`api` with `REDIS_URL`): in Redis ([`RedisCache`]), shared by every
//!   API process. An API process never keeps catalog values of its own: another API process
//!   may write the same database, and a process-local cache would then answer stale values.
//!
//! # The invalidation guarantee
//! Once a write's response has been sent, no read anywhere answers the value from before it.
//! The classic cache-aside race — a reader misses, reads the old row, a writer commits and
//! deletes the key, the reader puts the old row back — cannot happen here, because values are
//! stored under a **generation**:
//!
//! 1. every key (a SKU; all list pages together) has a generation number in the cache;
//! 2. a reader reads the generation *before* it reads the database, and stores what it read
//!    tagged with that generation — only if the generation is still that one (in Redis: one
//!    script, atomically);
//! 3. a writer bumps the generation of every SKU it changed, and of the list pages, *after* its
//!    transaction committed and *before* it answers; a value is answered only when its tag is
//!    the key's current generation.
//!
//! A reader that read the database before the commit read the generation before the bump, so
//! what it stores is tagged with the old generation, which no reader that starts after the
//! bump accepts. The value cached under a generation is never older than the database when
//! that generation began.
//!
//! The write and its invalidation run in a task of their own ([`Catalog::write`]): a request
//! cancelled after the commit (the client went away, the deadline passed) cannot skip the
//! bump.
//!
//! **Single flight**: concurrent misses on one key at one generation share one database read
//! per process ([`moka`]'s `try_get_with`).
//!
//! **The cache is never needed**: when it fails (Redis down), reads go to the database
//! (`switchyard_catalog_cache_bypass_total`); a write whose invalidation fails retries it for
//! up to [`INVALIDATION_PATIENCE`] before it answers — a Redis that restarted is back on the
//! writer's connection within its reconnect back-off, while another API process may already
//! read and fill it again — and if it still fails, it is logged and counted
//! (`switchyard_catalog_cache_invalidation_failures_total`) and retried in the background
//! until it succeeds, and this process's reads bypass the cache meanwhile. The limit: another
//! API process that reaches Redis while the writer has not for that long may answer the old
//! value until the retry lands (Redis being down for everyone, nobody reads it meanwhile).
//!
//! # Layout
//! - this module: [`Catalog`] (reads through the cache, writes with their invalidation), the
//!   [`ReadCache`] seam;
//! - [`memory`]: [`MemoryCache`], the embedded mode's;
//! - [`redis`]: [`RedisCache`], the distributed mode's.

mod memory;
mod redis;

pub use memory::MemoryCache;
pub use redis::RedisCache;

use crate::error::ApiError;
use crate::products::CacheStatus;
use async_trait::async_trait;
use moka::future::Cache;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_protocol::Product;
use switchyard_store::{Store, StoreError};

/// What the cache holds: one product, or one list page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    Product(String),
    /// `GET /api/products?after=&limit=` (every page shares one generation).
    Page {
        after: String,
        limit: i64,
    },
}

impl CacheKey {
    /// Roughly what the key costs in memory, bytes (for the byte-weighed caches).
    fn weight(&self) -> usize {
        match self {
            CacheKey::Product(sku) => sku.len(),
            CacheKey::Page { after, .. } => after.len() + 8,
        }
    }
}

/// A read cache shared by the API processes that read the catalog (Redis), or one process's
/// own (in memory). Values are serialized products or pages (JSON).
#[async_trait]
pub trait ReadCache: Send + Sync {
    /// The current generation of `key`, and the value cached under it, if any.
    async fn get(&self, key: &CacheKey) -> Result<(u64, Option<Arc<[u8]>>), CacheError>;
    /// Stores `value` for `key` tagged `generation` (read before the database was) — unless
    /// the generation moved on meanwhile.
    async fn fill(
        &self,
        key: &CacheKey,
        generation: u64,
        value: Arc<[u8]>,
    ) -> Result<(), CacheError>;
    /// Bumps the generation of each SKU and of the list pages (after a commit).
    async fn invalidate(&self, skus: &[String]) -> Result<(), CacheError>;
    /// `redis` or `memory`, for logs.
    fn name(&self) -> &'static str;
}

/// The cache did not answer (Redis down, a timeout).
#[derive(Debug, thiserror::Error)]
#[error("read cache: {0}")]
pub struct CacheError(pub String);

/// Settings of the read cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Off: every read goes to the database (`X-Cache: miss`).
    pub enabled: bool,
    /// How long a cached value lives.
    pub ttl: Duration,
    /// Most bytes of values one process keeps in memory: the embedded cache's (and an eighth
    /// more for the single-flight table, in both modes).
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl: Duration::from_secs(60),
            max_bytes: 16 << 20,
        }
    }
}

/// A moka cache of values weighed in bytes (key and value), at most `max_bytes`.
fn byte_weighed(max_bytes: u64, ttl: Duration) -> Cache<(CacheKey, u64), Arc<[u8]>> {
    Cache::builder()
        .weigher(|(key, _): &(CacheKey, u64), value: &Arc<[u8]>| {
            // The entry's own bookkeeping is a few dozen bytes more.
            u32::try_from(key.weight() + value.len() + 64).unwrap_or(u32::MAX)
        })
        .max_capacity(max_bytes)
        .time_to_live(ttl)
        .build()
}

/// The catalog's reads, through the cache, and the invalidation of its writes.
#[derive(Clone)]
pub struct Catalog {
    store: Store,
    cache: Option<Arc<dyn ReadCache>>,
    /// Single flight: one database read per key and generation in this process. What it
    /// read stays for the TTL (at most an eighth of the cache's bytes), so every miss at that
    /// generation — those that raced the fill into the cache, those when the fill failed — is
    /// answered by that one read. It cannot be stale: it is only looked up under the
    /// generation the cache says is current.
    flights: Cache<(CacheKey, u64), Arc<[u8]>>,
    /// Invalidations that failed, retried in the background; this process's reads bypass the
    /// cache while any waits.
    failed: Arc<Mutex<FailedInvalidations>>,
}

/// SKUs whose invalidation failed, each with the number of the last failure that named it.
#[derive(Default)]
struct FailedInvalidations {
    skus: HashMap<String, u64>,
    failures: u64,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("cache", &self.cache.as_ref().map(|c| c.name()))
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// Reads through `cache` (none: straight to the database).
    pub fn new(store: Store, cache: Option<Arc<dyn ReadCache>>, config: &CacheConfig) -> Catalog {
        Catalog {
            store,
            cache: cache.filter(|_| config.enabled),
            flights: byte_weighed(config.max_bytes / 8, config.ttl),
            failed: Arc::default(),
        }
    }

    /// The product `sku`, and whether the cache answered.
    pub async fn product(
        &self,
        sku: &str,
    ) -> Result<(Option<Arc<Product>>, CacheStatus), ApiError> {
        let key = CacheKey::Product(sku.to_owned());
        let store = self.store.clone();
        let sku = sku.to_owned();
        let (bytes, status) = self
            .read(key, async move {
                database_read();
                let product = store.product(&sku).await?;
                Ok(encode(&product))
            })
            .await?;
        Ok((decode::<Option<Product>>(&bytes)?.map(Arc::new), status))
    }

    /// A page of products after `after`, and whether the cache answered.
    pub async fn list(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<(Vec<Product>, CacheStatus), ApiError> {
        let key = CacheKey::Page {
            after: after.to_owned(),
            limit,
        };
        let store = self.store.clone();
        let after = after.to_owned();
        let (bytes, status) = self
            .read(key, async move {
                database_read();
                let products = store.list_products(&after, limit).await?;
                Ok(encode(&products))
            })
            .await?;
        Ok((decode(&bytes)?, status))
    }

    /// Runs `write` (a store write that may change the catalog) to its end, then invalidates
    /// the SKUs `changed` names — both in a task of their own, so a request cancelled
    /// mid-way (the client went away, the request deadline passed) can neither skip the
    /// invalidation of a write that committed nor leave the write half-done. The caller gets
    /// the write's result after the invalidation.
    pub async fn write<T, W, C>(&self, write: W, changed: C) -> Result<T, ApiError>
    where
        T: Send + 'static,
        W: Future<Output = Result<T, StoreError>> + Send + 'static,
        C: FnOnce(&T) -> Vec<String> + Send + 'static,
    {
        let catalog = self.clone();
        tokio::spawn(async move {
            let done = write.await?;
            catalog.invalidate(changed(&done)).await;
            Ok(done)
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// After a committed write that changed these SKUs: bumps their generations (and the
    /// pages'), retrying a failure for up to [`INVALIDATION_PATIENCE`] before the write
    /// answers. A failure beyond is retried in the background; until it succeeds, this
    /// process's reads bypass the cache.
    async fn invalidate(&self, skus: Vec<String>) {
        let Some(cache) = &self.cache else { return };
        if skus.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + INVALIDATION_PATIENCE;
        let mut pause = Duration::from_millis(50);
        let e = loop {
            match cache.invalidate(&skus).await {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() + pause >= deadline => break e,
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        };
        metrics::counter!("switchyard_catalog_cache_invalidation_failures_total").increment(1);
        tracing::warn!(error = %e, "catalog cache invalidation failed; reads bypass the cache until it succeeds");
        let start_retry = {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            let idle = failed.skus.is_empty();
            failed.failures += 1;
            let failure = failed.failures;
            for sku in skus {
                failed.skus.insert(sku, failure);
            }
            idle
        };
        if start_retry {
            tokio::spawn(retry_invalidations(cache.clone(), self.failed.clone()));
        }
    }

    fn invalidations_failed(&self) -> bool {
        !self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .skus
            .is_empty()
    }

    async fn read(
        &self,
        key: CacheKey,
        from_database: impl Future<Output = Result<Arc<[u8]>, ApiError>> + Send,
    ) -> Result<(Arc<[u8]>, CacheStatus), ApiError> {
        let Some(cache) = self.cache.as_ref() else {
            return Ok((from_database.await?, CacheStatus::Miss));
        };
        if self.invalidations_failed() {
            metrics::counter!("switchyard_catalog_cache_bypass_total").increment(1);
            return Ok((from_database.await?, CacheStatus::Miss));
        }
        let generation = match cache.get(&key).await {
            Ok((_, Some(value))) => {
                metrics::counter!("switchyard_catalog_cache_reads_total", "result" => "hit")
                    .increment(1);
                return Ok((value, CacheStatus::Hit));
            }
            Ok((generation, None)) => generation,
            Err(e) => {
                metrics::counter!("switchyard_catalog_cache_bypass_total").increment(1);
                tracing::debug!(error = %e, "catalog cache unavailable; reading the database");
                return Ok((from_database.await?, CacheStatus::Miss));
            }
        };
        metrics::counter!("switchyard_catalog_cache_reads_total", "result" => "miss").increment(1);
        let value = self
            .flights
            .try_get_with((key.clone(), generation), async {
                let value = from_database.await?;
                if let Err(e) = cache.fill(&key, generation, value.clone()).await {
                    tracing::debug!(error = %e, "catalog cache fill failed");
                }
                Ok::<_, ApiError>(value)
            })
            .await
            .map_err(Arc::unwrap_or_clone)?;
        Ok((value, CacheStatus::Miss))
    }
}

/// How long a write retries a failed invalidation before it answers (and leaves the rest to
/// [`retry_invalidations`]): longer than the Redis cache connection's reconnect back-off (2 s).
///
/// The gap past it (README, "The catalog"): when this process cannot reach Redis for longer
/// while another API process can, the write still answers its success (committed, about this
/// much late) and this process reads the database, but the others may answer the value cached
/// before the write (`X-Cache: hit`) until the background retry lands — at most the cache TTL
/// (`SWITCHYARD_CATALOG_CACHE_TTL_SECS`) after the commit, plus one racing read: no value from
/// before the commit is stored later than that read, and every value lives the TTL at most.
pub const INVALIDATION_PATIENCE: Duration = Duration::from_secs(5);

/// Retries the failed invalidations (all of them at once, backing off up to 2 s) until one
/// attempt succeeds with none newer waiting.
async fn retry_invalidations(cache: Arc<dyn ReadCache>, failed: Arc<Mutex<FailedInvalidations>>) {
    let mut delay = Duration::from_millis(50);
    loop {
        tokio::time::sleep(delay).await;
        let (skus, as_of) = {
            let failed = failed.lock().unwrap_or_else(|p| p.into_inner());
            (
                failed.skus.keys().cloned().collect::<Vec<_>>(),
                failed.failures,
            )
        };
        if cache.invalidate(&skus).await.is_ok() {
            let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
            // A SKU that failed again since the snapshot stays: its newer write may have
            // committed after this attempt's bump.
            failed.skus.retain(|_, failure| *failure > as_of);
            if failed.skus.is_empty() {
                tracing::info!("catalog cache invalidations caught up");
                return;
            }
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Counts a catalog read that reached the database (a miss, a bypass, no cache).
fn database_read() {
    metrics::counter!("switchyard_catalog_database_reads_total").increment(1);
}

fn encode<T: serde::Serialize>(value: &T) -> Arc<[u8]> {
    // Products and pages are plain data: they always serialize.
    serde_json::to_vec(value).unwrap_or_default().into()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("catalog cache: {e}")))
}
