//! [`MemoryCache`]: the embedded mode's read cache, in this process.

use super::{CacheConfig, CacheError, CacheKey, ReadCache, byte_weighed};
use async_trait::async_trait;
use moka::future::Cache;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Generation counters the SKUs share (by hash). A fixed number, so the table never grows
/// with the catalog and never forgets a bump (a forgotten generation would bring old values
/// back); two SKUs that share a counter only invalidate each other's values now and then.
const GENERATION_STRIPES: usize = 4096;

/// The values in [`moka`] (weighed in bytes, with a TTL), keyed by key and generation; the
/// generations beside them ([`GENERATION_STRIPES`] counters for the SKUs, one for the pages).
pub struct MemoryCache {
    values: Cache<(CacheKey, u64), Arc<[u8]>>,
    products: Box<[AtomicU64]>,
    pages: AtomicU64,
    hasher: RandomState,
}

impl MemoryCache {
    pub fn new(config: &CacheConfig) -> MemoryCache {
        MemoryCache {
            values: byte_weighed(config.max_bytes, config.ttl),
            products: (0..GENERATION_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            pages: AtomicU64::new(0),
            hasher: RandomState::new(),
        }
    }

    fn counter(&self, key: &CacheKey) -> &AtomicU64 {
        match key {
            CacheKey::Product(sku) => self.stripe(sku),
            CacheKey::Page { .. } => &self.pages,
        }
    }

    fn stripe(&self, sku: &str) -> &AtomicU64 {
        let index = self.hasher.hash_one(sku) as usize % GENERATION_STRIPES;
        &self.products[index]
    }
}

#[async_trait]
impl ReadCache for MemoryCache {
    async fn get(&self, key: &CacheKey) -> Result<(u64, Option<Arc<[u8]>>), CacheError> {
        let generation = self.counter(key).load(Ordering::SeqCst);
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
        // A value tagged with a generation that moved on is never looked up again (readers
        // look under the current one): storing it would only take room.
        if self.counter(key).load(Ordering::SeqCst) == generation {
            self.values.insert((key.clone(), generation), value).await;
        }
        Ok(())
    }

    async fn invalidate(&self, skus: &[String]) -> Result<(), CacheError> {
        for sku in skus {
            self.stripe(sku).fetch_add(1, Ordering::SeqCst);
        }
        self.pages.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
