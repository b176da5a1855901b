//! [`RedisLeases`]: each user's connections in a sorted set scored by lease expiry
//! (`{prefix}conns:{user:<sub>}`, in the hash slot of the user's own room, so that a handshake
//! can claim the lease and read the room's position in one script), in the bus's Redis or one
//! of their own (`SWITCHYARD_LEASE_REDIS_URL`): at a million connections the renewals are the
//! larger load.

use super::{script, unavailable};
use crate::{BrokerError, ConnectionLeases};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::SortedSetsInterface;
use fred::types::scripts::Script;
use std::sync::Arc;
use std::time::Duration;

/// Claims (or renews) a connection lease in a user's sorted set of connections, scored by
/// lease expiry in Redis's own clock; expired leases are dropped first.
/// KEYS = the user's connection set; ARGV = conn id, lease (ms), limit (0: no check, a renewal).
const CLAIM_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[3])
if limit > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Redis [`ConnectionLeases`].
pub struct RedisLeases {
    client: Client,
    claim_script: Script,
    prefix: String,
}

impl RedisLeases {
    pub(super) async fn start(
        client: Client,
        prefix: &str,
    ) -> Result<Arc<RedisLeases>, BrokerError> {
        Ok(Arc::new(RedisLeases {
            claim_script: script(&client, CLAIM_LUA).await?,
            client,
            prefix: prefix.to_owned(),
        }))
    }

    /// `{prefix}conns:{user:<sub>}`: the user's connection leases across the gateways, in
    /// the hash slot of the user's room.
    fn key(&self, sub: &str) -> String {
        format!("{}conns:{{user:{sub}}}", self.prefix)
    }
}

#[async_trait]
impl ConnectionLeases for RedisLeases {
    async fn claim(
        &self,
        sub: &str,
        conn: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<bool, BrokerError> {
        let claimed: i64 = self
            .claim_script
            .evalsha_with_reload(
                &self.client,
                vec![self.key(sub)],
                vec![
                    conn.to_owned(),
                    lease.as_millis().to_string(),
                    limit.max(1).to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(claimed == 1)
    }

    async fn renew(&self, sub: &str, conn: &str, lease: Duration) {
        let renewed: Result<i64, _> = self
            .claim_script
            .evalsha_with_reload(
                &self.client,
                vec![self.key(sub)],
                vec![conn.to_owned(), lease.as_millis().to_string(), "0".into()],
            )
            .await;
        if let Err(err) = renewed {
            tracing::debug!(%err, "connection lease renewal failed");
        }
    }

    async fn release(&self, sub: &str, conn: &str) {
        let removed: Result<i64, _> = self.client.zrem(self.key(sub), conn).await;
        if let Err(err) = removed {
            tracing::debug!(%err, "connection lease release failed");
        }
    }
}
