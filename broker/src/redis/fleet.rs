//! [`RedisFleet`]: the distributed mode's [`FleetPositions`], in `admin:fleet`'s hash slot
//! (both keys carry the room as their hash tag, so one script sees both on a Redis Cluster):
//!
//! - `{prefix}fleet:{admin:fleet}` — hash `partner → partner.location data (JSON)`;
//! - `{prefix}fleett:{admin:fleet}` — sorted set `partner`, scored by the kept position's
//!   `received_at`: the newer-wins check, and the age order positions are dropped in after
//!   [`KEEP`].
//!
//! A gateway writes its batch (the positions it put in `admin:fleet` in the last interval)
//! in one script call; a snapshot reads the online partners' positions with `HMGET`.

use super::{room_key, script, unavailable};
use crate::BrokerError;
use crate::fleet::{FleetPositions, KEEP};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::HashesInterface;
use fred::types::scripts::Script;
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_protocol::Room;
use switchyard_protocol::events::PartnerLocation;

/// Positions written (or read) per Redis call.
const CHUNK: usize = 1_000;

/// Positions dropped per call once older than KEEP, at most (the rest go with later calls).
const PRUNE: usize = 1_000;

/// Keeps the newer positions. KEEPS = positions, ages; ARGV = keep ms, prune count, then
/// `partner received_at json` triples. Returns how many were kept.
const KEEP_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kept = 0
for i = 3, #ARGV, 3 do
  local partner, at = ARGV[i], tonumber(ARGV[i + 1])
  local old = redis.call('ZSCORE', KEYS[2], partner)
  if not old or tonumber(old) <= at then
    redis.call('HSET', KEYS[1], partner, ARGV[i + 2])
    redis.call('ZADD', KEYS[2], at, partner)
    kept = kept + 1
  end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
for _, partner in ipairs(stale) do
  redis.call('HDEL', KEYS[1], partner)
  redis.call('ZREM', KEYS[2], partner)
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return kept
"#;

/// Redis [`FleetPositions`].
pub struct RedisFleet {
    client: Client,
    keep_script: Script,
    positions: String,
    ages: String,
}

impl RedisFleet {
    pub(super) async fn start(
        client: Client,
        prefix: &str,
    ) -> Result<Arc<RedisFleet>, BrokerError> {
        let room = Room::admin_fleet();
        Ok(Arc::new(RedisFleet {
            keep_script: script(&client, KEEP_LUA).await?,
            client,
            positions: room_key(prefix, "fleet", room.as_str()),
            ages: room_key(prefix, "fleett", room.as_str()),
        }))
    }
}

#[async_trait]
impl FleetPositions for RedisFleet {
    async fn keep(&self, batch: &[PartnerLocation]) -> Result<(), BrokerError> {
        for chunk in batch.chunks(CHUNK) {
            let mut args = Vec::with_capacity(2 + 3 * chunk.len());
            args.push(KEEP.as_millis().to_string());
            args.push(PRUNE.to_string());
            for position in chunk {
                let json = serde_json::to_string(position)
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                args.push(position.partner.clone());
                args.push(position.location.received_at.to_string());
                args.push(json);
            }
            let _: i64 = self
                .keep_script
                .evalsha_with_reload(
                    &self.client,
                    vec![self.positions.clone(), self.ages.clone()],
                    args,
                )
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn latest(
        &self,
        partners: &[String],
    ) -> Result<HashMap<String, PartnerLocation>, BrokerError> {
        let mut latest = HashMap::new();
        for chunk in partners.chunks(CHUNK) {
            let values: Vec<Option<String>> = self
                .client
                .hmget(&self.positions, chunk.to_vec())
                .await
                .map_err(unavailable)?;
            for (sub, value) in chunk.iter().zip(values) {
                if let Some(position) = value.and_then(|v| serde_json::from_str(&v).ok()) {
                    latest.insert(sub.clone(), position);
                }
            }
        }
        Ok(latest)
    }
}
