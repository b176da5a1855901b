//! [`RedisState`]: the [`SharedState`] in the bus's Redis.

use super::{room_key, script, unavailable};
use crate::BrokerError;
use crate::state::{Cached, SharedState};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{HashesInterface, KeysInterface};
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::Room;
use switchyard_protocol::room::RoomKind;

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
            take_positions_script: script(&client, TAKE_POSITIONS_LUA).await?,
            requeue_positions_script: script(&client, REQUEUE_POSITIONS_LUA).await?,
            client,
            prefix: config.prefix.clone(),
            offset_ttl_ms: config.offset_ttl.as_millis() as i64,
        }))
    }

    /// `{prefix}snap:{room}`: the room's snapshot, in the room's hash slot.
    fn snapshot_key(&self, room: &str) -> String {
        room_key(&self.prefix, "snap", room)
    }

    /// `{prefix}pos:{order:<id>}`: the order's newest partner position, in the order room's
    /// hash slot (read with its snapshot in one `MGET`).
    fn position_key(&self, order: impl std::fmt::Display) -> String {
        room_key(&self.prefix, "pos", &format!("order:{order}"))
    }

    /// `{prefix}typing:{room}:{sub}`: `sub` was shown typing in the room lately (expires with
    /// the interval), in the room's hash slot.
    fn typing_key(&self, room: &str, sub: &str) -> String {
        format!("{}:{sub}", room_key(&self.prefix, "typing", room))
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

    async fn claim_typing(
        &self,
        room: &Room,
        sub: &str,
        interval: Duration,
    ) -> Result<bool, BrokerError> {
        // `SET … NX PX`: "OK" when the key was free (the turn is ours), nil when taken.
        let set: Option<String> = self
            .client
            .set(
                self.typing_key(room.as_str(), sub),
                "1",
                Some(Expiration::PX(interval.as_millis().max(1) as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
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
        // Each position beside its room's snapshot (its own hash slot), then the queue: one
        // command per key, pipelined on the connection (a script could not span the slots of
        // a cluster). A reader may see a position before it is queued, never the reverse
        // order's harm: the queue only feeds the database.
        let ttl = Some(Expiration::PX(self.offset_ttl_ms));
        let sets = batch.iter().map(|(id, json)| {
            self.client.set::<(), _, _>(
                self.position_key(id),
                json.as_str(),
                ttl.clone(),
                None,
                false,
            )
        });
        futures_util::future::try_join_all(sets)
            .await
            .map_err(unavailable)?;
        let queued: Vec<(String, String)> = batch
            .iter()
            .map(|(id, json)| (id.to_string(), json.clone()))
            .collect();
        let _: i64 = self
            .client
            .hset(self.position_queue_key(), queued)
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
