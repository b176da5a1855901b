//! [`RedisPresence`]: the distributed mode's [`Presence`], cluster-wide, in the room's hash
//! slot beside its offsets (every key carries the room as its hash tag, so one script sees
//! them all, on the shard that owns the room):
//!
//! - `{prefix}pres:{room}` — sorted set of entries `"<node> <sub>"`, scored by when the entry
//!   expires (Redis's clock, ms): a gateway renews its entries every heartbeat;
//! - `{prefix}presn:{room}` — hash `sub → entries`, so "does the user have any entry left" is
//!   one lookup whatever the room's size;
//! - `{prefix}presa:{room}` — hash `sub → "<role> <since>"`: the users announced present;
//! - `{prefix}presg:{room}` — sorted set of announced users without any entry, scored by
//!   since when (the leave goes out once the debounce has passed);
//! - `{prefix}presl:{room}` — the announcement lock (see [`crate::presence`]): a random token
//!   with a short expiry, taken by the script that decides a transition, deleted once its
//!   events are published.
//!
//! The keys expire `KEEP` after the room's last presence change or renewal: a room whose
//! gateways all died leaves nothing behind for long. After a Redis restart (or a flush) the
//! keys are gone: the next renewal of each gateway writes its entries again and announces
//! its users (`presence.join` in the room's new epoch), so presence is rebuilt from the live
//! connections within one heartbeat.

use super::{room_key, script, unavailable};
use crate::presence::{Holder, Presence, announce};
use crate::{BrokerError, Bus};
use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::HashesInterface;
use fred::types::scripts::Script;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::presence::Present;
use switchyard_protocol::{Role, Room};

/// How long a room's presence keys outlive its last change or renewal.
const KEEP: Duration = Duration::from_secs(24 * 3600);

/// How long an announcement lock lives if its holder never deletes it (it died).
const LOCK_MS: u64 = 5_000;

/// How often, and how long apart, a transition waits for another node's announcement.
const LOCK_TRIES: u32 = 50;
const LOCK_PAUSE: Duration = Duration::from_millis(10);

/// `now` in ms from Redis's clock, at the head of every script.
const NOW_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// Records or renews entries; announces users not present yet.
/// KEYS = entries, counts, announced, gone, lock; ARGV = node, ttl ms, keep ms, lock token,
/// lock ms, then `sub role` pairs. Returns `{}` (nothing to announce), `{"busy"}` (another
/// node is announcing: entries are recorded, try again) or `{"ok", now, sub, role, …}` with
/// the lock taken (publish the joins, then unlock).
const HOLD_LUA: &str = r#"
local ttl = tonumber(ARGV[2])
local new = {}
for i = 6, #ARGV, 2 do
  local sub, role = ARGV[i], ARGV[i + 1]
  if redis.call('ZADD', KEYS[1], now + ttl, ARGV[1] .. ' ' .. sub) == 1 then
    redis.call('HINCRBY', KEYS[2], sub, 1)
  end
  redis.call('ZREM', KEYS[4], sub)
  if redis.call('HEXISTS', KEYS[3], sub) == 0 then
    table.insert(new, sub)
    table.insert(new, role)
  end
end
for k = 1, 4 do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
if #new == 0 then return {} end
if not redis.call('SET', KEYS[5], ARGV[4], 'NX', 'PX', ARGV[5]) then return {'busy'} end
local out = {'ok', tostring(now)}
for i = 1, #new, 2 do
  redis.call('HSET', KEYS[3], new[i], new[i + 1] .. ' ' .. now)
  table.insert(out, new[i])
  table.insert(out, new[i + 1])
end
return out
"#;

/// Drops one entry; a user left without entries is gone from now.
/// KEYS = entries, counts, announced, gone; ARGV = node, sub.
const RELEASE_LUA: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1] .. ' ' .. ARGV[2]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
      redis.call('ZADD', KEYS[4], 'NX', now, ARGV[2])
    end
  end
end
return 1
"#;

/// Drops expired entries (a user left without entries is gone since its entry expired), then
/// takes the users gone for at least the debounce. KEYS = entries, counts, announced, gone,
/// lock; ARGV = debounce ms, lock token, lock ms. Returns `{}`, `{"busy"}` or
/// `{"ok", sub, role, …}` with the lock taken (publish the leaves, then unlock).
const SWEEP_LUA: &str = r#"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES')
for i = 1, #expired, 2 do
  local entry, at = expired[i], expired[i + 1]
  redis.call('ZREM', KEYS[1], entry)
  local sub = string.match(entry, '^[^ ]+ (.+)$')
  if sub and redis.call('HINCRBY', KEYS[2], sub, -1) <= 0 then
    redis.call('HDEL', KEYS[2], sub)
    if redis.call('HEXISTS', KEYS[3], sub) == 1 then
      redis.call('ZADD', KEYS[4], 'NX', at, sub)
    end
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[1]))
if #due == 0 then return {} end
if not redis.call('SET', KEYS[5], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'busy'} end
local out = {'ok'}
for _, sub in ipairs(due) do
  redis.call('ZREM', KEYS[4], sub)
  local announced = redis.call('HGET', KEYS[3], sub)
  if announced then
    redis.call('HDEL', KEYS[3], sub)
    table.insert(out, sub)
    table.insert(out, string.match(announced, '^(%S+)'))
  end
end
return out
"#;

/// Deletes the lock if it is still ours. KEYS = lock; ARGV = token.
const UNLOCK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Redis [`Presence`]; publishes on the Redis bus.
pub struct RedisPresence {
    client: Client,
    bus: Arc<dyn Bus>,
    prefix: String,
    hold_script: Script,
    release_script: Script,
    sweep_script: Script,
    unlock_script: Script,
}

impl RedisPresence {
    pub(super) async fn start(
        client: Client,
        bus: Arc<dyn Bus>,
        prefix: &str,
    ) -> Result<Arc<RedisPresence>, BrokerError> {
        Ok(Arc::new(RedisPresence {
            hold_script: script(&client, &format!("{NOW_LUA}{HOLD_LUA}")).await?,
            release_script: script(&client, &format!("{NOW_LUA}{RELEASE_LUA}")).await?,
            sweep_script: script(&client, &format!("{NOW_LUA}{SWEEP_LUA}")).await?,
            unlock_script: script(&client, UNLOCK_LUA).await?,
            client,
            bus,
            prefix: prefix.to_owned(),
        }))
    }

    fn key(&self, kind: &str, room: &Room) -> String {
        room_key(&self.prefix, kind, room.as_str())
    }

    /// Entries, counts, announced, gone, lock.
    fn keys(&self, room: &Room) -> Vec<String> {
        ["pres", "presn", "presa", "presg", "presl"]
            .iter()
            .map(|kind| self.key(kind, room))
            .collect()
    }

    /// Runs a transition script until it is not `busy` (bounded); returns its answer when
    /// it took the lock, with the token to unlock.
    async fn transition(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: impl Fn(&str) -> Vec<String>,
    ) -> Result<Option<(Vec<String>, String)>, BrokerError> {
        for _ in 0..LOCK_TRIES {
            let token = format!("{:x}", rand_token());
            let answer: Vec<String> = script
                .evalsha_with_reload(&self.client, keys.clone(), args(&token))
                .await
                .map_err(unavailable)?;
            match answer.first().map(String::as_str) {
                None => return Ok(None),
                Some("busy") => tokio::time::sleep(LOCK_PAUSE).await,
                Some(_) => return Ok(Some((answer, token))),
            }
        }
        Err(BrokerError::Unavailable(
            "presence: another gateway holds the room's announcement lock".into(),
        ))
    }

    async fn unlock(&self, room: &Room, token: String) {
        let unlocked: Result<i64, _> = self
            .unlock_script
            .evalsha_with_reload(&self.client, vec![self.key("presl", room)], vec![token])
            .await;
        if let Err(err) = unlocked {
            tracing::debug!(%err, "presence unlock failed (it expires)");
        }
    }

    /// Publishes `(sub, role)` pairs as joins or leaves, then unlocks.
    async fn announce_all(
        &self,
        room: &Room,
        pairs: &[String],
        joined: bool,
        token: String,
    ) -> Result<(), BrokerError> {
        let mut result = Ok(());
        for pair in pairs.chunks_exact(2) {
            let Ok(role) = pair[1].parse::<Role>() else {
                continue;
            };
            if let Err(err) = announce(self.bus.as_ref(), room, &pair[0], role, joined).await {
                result = Err(err);
                break;
            }
        }
        self.unlock(room, token).await;
        result
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn hold(
        &self,
        room: &Room,
        node: &str,
        holders: &[Holder],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        if holders.is_empty() {
            return Ok(());
        }
        let args = |token: &str| {
            let mut args = vec![
                node.to_owned(),
                ttl.as_millis().to_string(),
                KEEP.as_millis().to_string(),
                token.to_owned(),
                LOCK_MS.to_string(),
            ];
            for holder in holders {
                args.push(holder.sub.clone());
                args.push(holder.role.as_str().to_owned());
            }
            args
        };
        if let Some((answer, token)) = self
            .transition(&self.hold_script, self.keys(room), args)
            .await?
        {
            // "ok", now, then the pairs.
            self.announce_all(room, &answer[2..], true, token).await?;
        }
        Ok(())
    }

    async fn release(&self, room: &Room, node: &str, sub: &str) -> Result<(), BrokerError> {
        let mut keys = self.keys(room);
        keys.pop();
        let _: i64 = self
            .release_script
            .evalsha_with_reload(&self.client, keys, vec![node.to_owned(), sub.to_owned()])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn sweep(&self, room: &Room, debounce: Duration) -> Result<(), BrokerError> {
        let args = |token: &str| {
            vec![
                debounce.as_millis().to_string(),
                token.to_owned(),
                LOCK_MS.to_string(),
            ]
        };
        if let Some((answer, token)) = self
            .transition(&self.sweep_script, self.keys(room), args)
            .await?
        {
            self.announce_all(room, &answer[1..], false, token).await?;
        }
        Ok(())
    }

    async fn present(&self, room: &Room) -> Result<Vec<Present>, BrokerError> {
        let announced: HashMap<String, String> = self
            .client
            .hgetall(self.key("presa", room))
            .await
            .map_err(unavailable)?;
        let mut present: Vec<Present> = announced
            .into_iter()
            .filter_map(|(sub, value)| {
                let (role, since) = value.split_once(' ')?;
                Some(Present {
                    sub,
                    role: role.parse().ok()?,
                    since: since.parse().ok()?,
                })
            })
            .collect();
        present.sort_by(|a, b| a.sub.cmp(&b.sub));
        Ok(present)
    }
}

/// A lock token: unique enough per call (the clock, the pid, a counter).
fn rand_token() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    nanos ^ ((std::process::id() as u128) << 64) ^ NEXT.fetch_add(1, Ordering::Relaxed) as u128
}
