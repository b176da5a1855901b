//! The catalog's read path: cache-aside in front of the database, with no stale value after a
//! write.
//!
//! # The invalidation guarantee
//! Once a write's response has been sent, no read anywhere answers the value from before it.
//! The classic cache-aside race — a reader misses, reads the old row, a writer commits and
//! deletes the key, the reader puts the old row back — cannot happen here, because values are
//! stored under a **generation**:
//!
//! 1. every key (a SKU; all list pages together) has a generation number in the cache;
//! 2. a reader reads the generation *before* it reads the database, and stores what it read
//!    under that generation (`{sku}@{generation}`);
//! 3. a writer bumps the generation of every SKU it changed, and of the list pages, *after* its
//!    transaction committed and *before* it answers.
//!
//! A reader that read the database before the commit read the generation before the bump, so
//! it stores the old row under the old generation, where no reader that starts after the bump
//! looks. The value cached under a generation is never older than the database when that
//! generation began. Old generations' values expire with their TTL.
//!
//! **Single flight**: concurrent misses on one key at one generation share one database read
//! per process ([`moka`]'s `try_get_with`).
//!
//! **The cache is never needed**: when it fails (Redis down), reads go to the database
//! (`switchyard_catalog_cache_bypass_total`); a write whose invalidation fails is logged and
//! counted (`switchyard_catalog_cache_invalidation_failures_total`) and retried in the
//! background until it succeeds, and reads bypass the cache meanwhile.

use crate::error::ApiError;
use crate::products::CacheStatus;
use async_trait::async_trait;
use moka::future::Cache;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_protocol::Product;
use switchyard_store::Store;

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

/// A read cache shared by the API processes that read the catalog (Redis), or one process's
/// own (in memory). Values are serialized products or pages (JSON).
#[async_trait]
pub trait ReadCache: Send + Sync {
    /// The current generation of `key`, and the value cached under it, if any.
    async fn get(&self, key: &CacheKey) -> Result<(u64, Option<Arc<[u8]>>), CacheError>;
    /// Stores `value` for `key` under `generation` (read before the database was).
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
    /// Most values one process keeps in memory (the embedded cache, and the single-flight
    /// table).
    pub max_entries: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl: Duration::from_secs(60),
            max_entries: 10_000,
        }
    }
}

type Flights = Cache<(CacheKey, u64), Arc<[u8]>>;

/// The catalog's reads, through the cache.
#[derive(Clone)]
pub struct Catalog {
    store: Store,
    cache: Option<Arc<dyn ReadCache>>,
    /// One database read per key and generation at a time; what it read stays a moment, so
    /// a burst of misses at one generation is answered by one read.
    flights: Flights,
    /// Invalidations that failed, retried in the background; reads bypass the cache while
    /// any waits.
    pending: Arc<Mutex<Vec<String>>>,
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
            flights: Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(Duration::from_millis(100))
                .build(),
            pending: Arc::new(Mutex::new(Vec::new())),
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
                let products = store.list_products(&after, limit).await?;
                Ok(encode(&products))
            })
            .await?;
        Ok((decode(&bytes)?, status))
    }

    /// After a committed write that changed `sku`.
    pub async fn written(&self, sku: &str) {
        self.written_many(&[sku.to_owned()]).await
    }

    /// After a committed write that changed these SKUs (an order, a cancellation): bumps
    /// their generations before the write is answered. A failure is retried in the
    /// background; until it succeeds, reads bypass the cache.
    pub async fn written_many(&self, skus: &[String]) {
        let Some(cache) = &self.cache else { return };
        if skus.is_empty() {
            return;
        }
        if let Err(e) = cache.invalidate(skus).await {
            metrics::counter!("switchyard_catalog_cache_invalidation_failures_total").increment(1);
            tracing::warn!(error = %e, "catalog cache invalidation failed; reads bypass the cache until it succeeds");
            let start_retry = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let idle = pending.is_empty();
                pending.extend_from_slice(skus);
                idle
            };
            if start_retry {
                tokio::spawn(retry_invalidations(cache.clone(), self.pending.clone()));
            }
        }
    }

    fn invalidations_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    async fn read(
        &self,
        key: CacheKey,
        from_database: impl Future<Output = Result<Arc<[u8]>, ApiError>> + Send,
    ) -> Result<(Arc<[u8]>, CacheStatus), ApiError> {
        let Some(cache) = self
            .cache
            .as_ref()
            .filter(|_| !self.invalidations_pending())
        else {
            if self.cache.is_some() {
                metrics::counter!("switchyard_catalog_cache_bypass_total").increment(1);
            }
            return Ok((from_database.await?, CacheStatus::Miss));
        };
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

async fn retry_invalidations(cache: Arc<dyn ReadCache>, pending: Arc<Mutex<Vec<String>>>) {
    let mut delay = Duration::from_millis(50);
    loop {
        tokio::time::sleep(delay).await;
        let skus = pending.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if cache.invalidate(&skus).await.is_ok() {
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain(..skus.len());
            if pending.is_empty() {
                tracing::info!("catalog cache invalidations caught up");
                return;
            }
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Arc<[u8]> {
    // Products and pages are plain data: they always serialize.
    serde_json::to_vec(value).unwrap_or_default().into()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("catalog cache: {e}")))
}

/// The embedded mode's cache: in this process, [`moka`] for the values (bounded, TTL), a map
/// of generations beside it (one number per SKU ever written; never evicted, because a
/// forgotten generation would bring old values back).
pub struct MemoryCache {
    values: Cache<(CacheKey, u64), Arc<[u8]>>,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    products: HashMap<String, u64>,
    pages: u64,
}

impl MemoryCache {
    pub fn new(config: &CacheConfig) -> MemoryCache {
        MemoryCache {
            values: Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(config.ttl)
                .build(),
            generations: Mutex::new(Generations::default()),
        }
    }

    fn generation(&self, key: &CacheKey) -> u64 {
        let generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        match key {
            CacheKey::Product(sku) => generations.products.get(sku).copied().unwrap_or(0),
            CacheKey::Page { .. } => generations.pages,
        }
    }
}

#[async_trait]
impl ReadCache for MemoryCache {
    async fn get(&self, key: &CacheKey) -> Result<(u64, Option<Arc<[u8]>>), CacheError> {
        let generation = self.generation(key);
        Ok((
            generation,
            self.values.get(&(key.clone(), generation)).await,
        ))
    }

    async fn fill(
        &self,
        key: &CacheKey,
        generation: u64,
        value: Arc<[u8]>,
    ) -> Result<(), CacheError> {
        self.values.insert((key.clone(), generation), value).await;
        Ok(())
    }

    async fn invalidate(&self, skus: &[String]) -> Result<(), CacheError> {
        let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        for sku in skus {
            *generations.products.entry(sku.clone()).or_default() += 1;
        }
        generations.pages += 1;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
