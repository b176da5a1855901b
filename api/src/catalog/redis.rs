//! [`RedisCache`]: the distributed mode's read cache, in Redis, shared by every API process.
//!
//! # Keys
//! Every key starts with the bus's prefix (default `sy:`); a SKU's two keys share a hash tag,
//! so on a Redis Cluster they live on one shard, where one script touches both atomically:
//! - `{prefix}catalog:gen:{sku:<sku>}` — the SKU's generation;
//! - `{prefix}catalog:{sku:<sku>}` — the product, `"<generation> <json>"`;
//! - `{prefix}catalog:gen:{pages}` — the list pages' generation;
//! - `{prefix}catalog:{pages}:<after>:<limit>` — one list page, `"<generation> <json>"`.
//!
//! # Three scripts, each atomic in Redis
//! - read: the generation, and the value only when its tag is that generation;
//! - fill: stores a value only when the generation is still the one the reader read before
//!   it read the database (a reader that raced a write cannot put its old value back);
//! - invalidate: bumps the generation (and deletes the SKU's value, to free it at once).
//!
//! Values expire after the configured TTL; a generation after the TTL plus an hour without a
//! write or a fill (it must outlive every value tagged with it). A generation that expired
//! starts again from the server's clock in microseconds when next bumped, never from a number
//! an old value may still carry. The cache needs a Redis that does not evict these keys under
//! memory pressure (`maxmemory-policy noeviction`, Redis's default): an evicted generation is
//! an expired one too early.
//!
//! # When Redis fails
//! The cache's own connection fails a command at once while it is disconnected (no waiting
//! for a reconnect) and after a short timeout otherwise; the caller then reads the database.

use super::{CacheError, CacheKey, ReadCache};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::FromValue;
use fred::types::scripts::Script;
use std::sync::Arc;
use std::time::Duration;

/// KEYS: generation, value. The generation (`0` when none), then the value if it is tagged
/// with it.
const READ_LUA: &str = r#"
local generation = redis.call('GET', KEYS[1]) or '0'
local value = redis.call('GET', KEYS[2])
if value then
  local space = string.find(value, ' ', 1, true)
  if space and string.sub(value, 1, space - 1) == generation then
    return {generation, string.sub(value, space + 1)}
  end
end
return {generation}
"#;

/// KEYS: generation, value. ARGV: the generation read, the value, its TTL and the
/// generation's (ms). 1 when stored, 0 when the generation moved on.
const FILL_LUA: &str = r#"
local generation = redis.call('GET', KEYS[1])
if (generation or '0') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
if generation then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"#;

/// KEYS: generation[, value]. ARGV: the generation's TTL (ms). Bumps the generation — from the
/// server's clock (µs) when it has none — and deletes the value.
const INVALIDATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCR', KEYS[1])
else
  local now = redis.call('TIME')
  redis.call('SET', KEYS[1], now[1] .. string.format('%06d', tonumber(now[2])))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if KEYS[2] then
  redis.call('DEL', KEYS[2])
end
return 1
"#;

/// How much longer than a value a generation lives (it must outlive every value tagged with
/// it, filled at most a request's lifetime after the generation was read).
const GENERATION_GRACE: Duration = Duration::from_secs(3600);

/// The catalog's cache in Redis (see the module doc).
pub struct RedisCache {
    client: Client,
    read: Script,
    fill: Script,
    invalidate: Script,
    prefix: String,
    ttl_ms: String,
    generation_ttl_ms: String,
}

impl RedisCache {
    /// Connects a client of the cache's own to `url` (the bus's Redis): a command fails after
    /// `timeout`, and at once while the connection is down. Fails when Redis cannot be reached
    /// now.
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<RedisCache, CacheError> {
        let config = Config::from_url(url).map_err(failed)?;
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .build()
            .map_err(failed)?;
        client.init().await.map_err(failed)?;
        let cache = RedisCache {
            read: Script::from_lua(READ_LUA),
            fill: Script::from_lua(FILL_LUA),
            invalidate: Script::from_lua(INVALIDATE_LUA),
            client,
            prefix: prefix.to_owned(),
            ttl_ms: ttl.as_millis().max(1).to_string(),
            generation_ttl_ms: (ttl + GENERATION_GRACE).as_millis().to_string(),
        };
        for script in [&cache.read, &cache.fill, &cache.invalidate] {
            script.load(&cache.client).await.map_err(failed)?;
        }
        Ok(cache)
    }

    /// The key's generation key and value key.
    fn keys(&self, key: &CacheKey) -> Vec<String> {
        let prefix = &self.prefix;
        match key {
            CacheKey::Product(sku) => self.product_keys(sku),
            CacheKey::Page { after, limit } => vec![
                format!("{prefix}catalog:gen:{{pages}}"),
                format!("{prefix}catalog:{{pages}}:{after}:{limit}"),
            ],
        }
    }

    fn product_keys(&self, sku: &str) -> Vec<String> {
        let prefix = &self.prefix;
        vec![
            format!("{prefix}catalog:gen:{{sku:{sku}}}"),
            format!("{prefix}catalog:{{sku:{sku}}}"),
        ]
    }

    async fn run<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, CacheError> {
        if !self.client.is_connected() {
            return Err(CacheError("redis is not connected".into()));
        }
        script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(failed)
    }
}

#[async_trait]
impl ReadCache for RedisCache {
    async fn get(&self, key: &CacheKey) -> Result<(u64, Option<Arc<[u8]>>), CacheError> {
        let reply: Vec<String> = self.run(&self.read, self.keys(key), Vec::new()).await?;
        let mut fields = reply.into_iter();
        let generation = fields
            .next()
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| CacheError("a generation that is not a number".into()))?;
        Ok((generation, fields.next().map(|v| v.into_bytes().into())))
    }

    async fn fill(
        &self,
        key: &CacheKey,
        generation: u64,
        value: Arc<[u8]>,
    ) -> Result<(), CacheError> {
        let value = String::from_utf8(value.to_vec())
            .map_err(|_| CacheError("a value that is not UTF-8".into()))?;
        let args = vec![
            generation.to_string(),
            value,
            self.ttl_ms.clone(),
            self.generation_ttl_ms.clone(),
        ];
        let _stored: i64 = self.run(&self.fill, self.keys(key), args).await?;
        Ok(())
    }

    async fn invalidate(&self, skus: &[String]) -> Result<(), CacheError> {
        let ttl = vec![self.generation_ttl_ms.clone()];
        let pages = vec![format!("{}catalog:gen:{{pages}}", self.prefix)];
        let bumps = skus
            .iter()
            .map(|sku| self.product_keys(sku))
            .chain([pages])
            .map(|keys| self.run::<i64>(&self.invalidate, keys, ttl.clone()));
        futures_util::future::try_join_all(bumps).await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

fn failed(err: fred::error::Error) -> CacheError {
    CacheError(err.to_string())
}
