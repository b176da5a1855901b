//! [`RedisLeases`]: each user's connections in a sorted set scored by lease expiry
//! (`{prefix}conns:{user:<sub>}`, in the hash slot of the user's own room, so that a handshake
//! can claim the lease and read the room's position in one script), in the bus's Redis or one
//! of their own (`SWITCHYARD_LEASE_REDIS_URL`): at a million connections the renewals are the
//! larger load.

use super::{RedisBus, eval, script, unavailable};
use crate::{BrokerError, Bus, Claim, ConnectionLeases, History};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::SortedSetsInterface;
use fred::types::scripts::Script;
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::Room;
use switchyard_protocol::client::StreamPosition;

/// Claims (or renews) a connection lease in a user's sorted set of connections, scored by
/// lease expiry in Redis's own clock; expired leases are dropped first. A Lua function, shared
/// by [`CLAIM_LUA`] and the handshake's script (`bus::ADMIT_LUA`): `claim(key, conn, lease ms,
/// limit)`, limit 0: no check (a renewal); 1 when claimed, 0 when the user is at the limit.
pub(super) const CLAIM_FN: &str = r#"
local function claim(key, conn, lease, limit)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  limit = tonumber(limit)
  if limit > 0 and not redis.call('ZSCORE', key, conn) and redis.call('ZCARD', key) >= limit then
    return 0
  end
  redis.call('ZADD', key, now + tonumber(lease), conn)
  redis.call('PEXPIRE', key, lease)
  return 1
end
"#;

/// KEYS = the user's connection set; ARGV = conn id, lease (ms), limit (0: a renewal).
const CLAIM_LUA: &str = "return claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n";

/// [`CLAIM_FN`]'s arguments for `claim` (a limit of at least 1: 0 would be a renewal).
pub(super) fn claim_args(claim: &Claim<'_>) -> [String; 3] {
    [
        claim.conn.to_owned(),
        claim.lease.as_millis().to_string(),
        claim.limit.max(1).to_string(),
    ]
}

/// Redis [`ConnectionLeases`].
pub struct RedisLeases {
    client: Client,
    claim_script: Script,
    prefix: String,
    /// The bus, when the leases live in its Redis: a handshake's claim and position read then
    /// go in one script ([`ConnectionLeases::claim_and_read`]).
    joint: Option<Arc<RedisBus>>,
}

impl RedisLeases {
    /// `joint`: the bus, when `client` is its command client.
    pub(super) async fn start(
        client: Client,
        prefix: &str,
        joint: Option<Arc<RedisBus>>,
    ) -> Result<Arc<RedisLeases>, BrokerError> {
        Ok(Arc::new(RedisLeases {
            claim_script: script(&client, &format!("{CLAIM_FN}{CLAIM_LUA}")).await?,
            client,
            prefix: prefix.to_owned(),
            joint,
        }))
    }

    /// `{prefix}conns:{user:<sub>}`: the user's connection leases across the gateways, in
    /// the hash slot of the user's room.
    fn key(&self, sub: &str) -> String {
        lease_key(&self.prefix, sub)
    }
}

/// `{prefix}conns:{user:<sub>}`, built at its exact size (one per handshake and per close).
fn lease_key(prefix: &str, sub: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + sub.len() + 13);
    for part in [prefix, "conns:{user:", sub, "}"] {
        key.push_str(part);
    }
    key
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
        let claim = Claim {
            sub,
            conn,
            limit,
            lease,
        };
        let claimed: i64 = eval(&self.client, &self.claim_script, || {
            (vec![self.key(sub)], claim_args(&claim).into())
        })
        .await
        .map_err(unavailable)?;
        Ok(claimed == 1)
    }

    /// In the bus's Redis: one script for both (the lease set shares the user room's hash
    /// slot); in a Redis of their own, the two calls at once.
    async fn claim_and_read(
        &self,
        bus: &dyn Bus,
        claim: Claim<'_>,
        room: &Room,
        since: Option<&StreamPosition>,
    ) -> Result<(bool, History), BrokerError> {
        match &self.joint {
            Some(joint) => {
                joint
                    .claim_and_read(self.key(claim.sub), &claim, room, since)
                    .await
            }
            None => crate::claim_then_read(self, bus, claim, room, since).await,
        }
    }

    async fn renew(&self, sub: &str, conn: &str, lease: Duration) {
        let renewed: Result<i64, _> = eval(&self.client, &self.claim_script, || {
            (
                vec![self.key(sub)],
                vec![conn.to_owned(), lease.as_millis().to_string(), "0".into()],
            )
        })
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_users_lease_set_is_in_its_user_rooms_hash_slot() {
        let prefix = "sy:";
        let key = super::lease_key(prefix, "u1");
        assert_eq!(key, "sy:conns:{user:u1}");
        assert_eq!(key.capacity(), key.len());
        assert_eq!(
            fred::util::redis_keyslot(key.as_bytes()),
            fred::util::redis_keyslot(super::super::room_channel(prefix, "user:u1").as_bytes())
        );
    }
}
