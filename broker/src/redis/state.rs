//! [`RedisState`]: the [`SharedState`] in the bus's Redis.

use super::{script, unavailable};
use crate::BrokerError;
use crate::state::{Cached, SharedState};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::KeysInterface;
use fred::types::Expiration;
use fred::types::scripts::Script;
use std::sync::Arc;
use switchyard_protocol::Room;
use switchyard_protocol::room::RoomKind;

/// Records partner positions: each one's key (KEYS[2..], expiring after ARGV[1] ms) and the
/// queue hash (KEYS[1]) the API writes to the database from; ARGV[2..] = order id, JSON pairs.
const PUT_POSITIONS_LUA: &str = r#"
for i = 2, #KEYS do
  local id, json = ARGV[2 * i - 2], ARGV[2 * i - 1]
  redis.call('SET', KEYS[i], json, 'PX', ARGV[1])
  redis.call('HSET', KEYS[1], id, json)
end
return #KEYS - 1
"#;

/// Takes the whole position queue (KEYS[1]) atomically: `[id, json, id, json, …]`.
const TAKE_POSITIONS_LUA: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return all
"#;

/// Puts positions back on the queue (KEYS[1]) where no newer one arrived: ARGV = id, JSON pairs.
const REQUEUE_POSITIONS_LUA: &str = r#"
for i = 1, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"#;

/// Redis [`SharedState`].
pub struct RedisState {
    client: Client,
    put_positions_script: Script,
    take_positions_script: Script,
    requeue_positions_script: Script,
    prefix: String,
    offset_ttl_ms: i64,
}

impl RedisState {
    pub(super) async fn start(
        client: Client,
        config: &super::RedisConfig,
    ) -> Result<Arc<RedisState>, BrokerError> {
        Ok(Arc::new(RedisState {
            put_positions_script: script(&client, PUT_POSITIONS_LUA).await?,
            take_positions_script: script(&client, TAKE_POSITIONS_LUA).await?,
            requeue_positions_script: script(&client, REQUEUE_POSITIONS_LUA).await?,
            client,
            prefix: config.prefix.clone(),
            offset_ttl_ms: config.offset_ttl.as_millis() as i64,
        }))
    }

    /// `{prefix}snap:{room}`: the room's snapshot.
    fn snapshot_key(&self, room: &str) -> String {
        format!("{}snap:{room}", self.prefix)
    }

    /// `{prefix}pos:{order}`: the order's newest partner position.
    fn position_key(&self, order: impl std::fmt::Display) -> String {
        format!("{}pos:{order}", self.prefix)
    }

    /// `{prefix}posq`: positions not yet written to the database (order id → JSON).
    fn position_queue_key(&self) -> String {
        format!("{}posq", self.prefix)
    }
}

/// `[id, json, id, json, …]` as pairs; entries whose id is not a number are dropped.
fn pairs(flat: Vec<String>) -> Vec<(i64, String)> {
    let mut fields = flat.into_iter();
    let mut out = Vec::new();
    while let (Some(id), Some(json)) = (fields.next(), fields.next()) {
        if let Ok(id) = id.parse() {
            out.push((id, json));
        }
    }
    out
}

#[async_trait]
impl SharedState for RedisState {
    async fn put_snapshot(&self, room: &Room, json: &str) -> Result<(), BrokerError> {
        let _: () = self
            .client
            .set(
                self.snapshot_key(room.as_str()),
                json,
                Some(Expiration::PX(self.offset_ttl_ms)),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn cached(&self, room: &Room) -> Result<Cached, BrokerError> {
        let snapshot = self.snapshot_key(room.as_str());
        if room.kind() != RoomKind::Order {
            let snapshot: Option<String> = self.client.get(snapshot).await.map_err(unavailable)?;
            return Ok(Cached {
                snapshot,
                position: None,
            });
        }
        let mut values: Vec<Option<String>> = self
            .client
            .mget(vec![snapshot, self.position_key(room.id())])
            .await
            .map_err(unavailable)?;
        let position = values.pop().flatten();
        Ok(Cached {
            snapshot: values.pop().flatten(),
            position,
        })
    }

    async fn put_positions(&self, batch: &[(i64, String)]) -> Result<(), BrokerError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut keys = vec![self.position_queue_key()];
        let mut args = vec![self.offset_ttl_ms.to_string()];
        for (id, json) in batch {
            keys.push(self.position_key(id));
            args.push(id.to_string());
            args.push(json.clone());
        }
        let _: i64 = self
            .put_positions_script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn take_positions(&self) -> Result<Vec<(i64, String)>, BrokerError> {
        let flat: Vec<String> = self
            .take_positions_script
            .evalsha_with_reload(&self.client, vec![self.position_queue_key()], ())
            .await
            .map_err(unavailable)?;
        Ok(pairs(flat))
    }

    async fn requeue_positions(&self, batch: &[(i64, String)]) -> Result<(), BrokerError> {
        if batch.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = batch
            .iter()
            .flat_map(|(id, json)| [id.to_string(), json.clone()])
            .collect();
        let _: i64 = self
            .requeue_positions_script
            .evalsha_with_reload(&self.client, vec![self.position_queue_key()], args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
