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
//!
//! Turns (the room's 1 Hz per partner across gateways, like the chat's typing turns):
//! `{prefix}fleetturn:{<partner>}:<window>` set with `SET … NX PX` by the gateway that
//! publishes the partner in that window (`⌊now ms / interval⌋`); one claim per partner per
//! window wins. Hashed by the partner, so on a Redis Cluster the claims spread over the
//! shards; a gateway sends its claims of a tick pipelined (per node on a cluster).

use super::{room_key, script, unavailable};
use crate::BrokerError;
use crate::fleet::{FleetPositions, KEEP};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{HashesInterface, KeysInterface};
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::Room;
use switchyard_protocol::events::PartnerLocation;

/// Positions written (or read) per Redis call, and turns claimed per pipeline.
const CHUNK: usize = 1_000;

/// A turn's key outlives its window by this many windows (clock skew between gateways: a
/// gateway whose clock is behind still finds the key of a window another one claimed).
const TURN_WINDOWS_KEPT: u32 = 3;

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
    prefix: String,
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
            prefix: prefix.to_owned(),
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

    async fn claim_turns(
        &self,
        partners: &[&str],
        interval: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        let every = interval.as_millis().max(1) as i64;
        let window = crate::presence::now_ms() / every;
        let ttl = Expiration::PX(every * i64::from(TURN_WINDOWS_KEPT));
        let mut turns = Vec::with_capacity(partners.len());
        for chunk in partners.chunks(CHUNK) {
            let pipeline = self.client.pipeline();
            for partner in chunk {
                let key = format!("{}:{window}", room_key(&self.prefix, "fleetturn", partner));
                // Queued in memory: sent with the rest by `try_all`.
                let _: () = pipeline
                    .set(key, "1", Some(ttl.clone()), Some(SetOptions::NX), false)
                    .await
                    .map_err(unavailable)?;
            }
            // `SET … NX`: "OK" when the key was free (the turn is ours), nil when taken.
            for reply in pipeline.try_all::<Value>().await {
                turns.push(!reply.map_err(unavailable)?.is_null());
            }
        }
        Ok(turns)
    }
}
