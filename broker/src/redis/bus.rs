//! [`RedisBus`]: publish (one script call per event), reference-counted subscriptions,
//! history from the room's stream.

use super::{room_channel, script, unavailable};
use crate::{BrokerError, Bus, Deliver, History, HistoryConfig, Publication, Sinks};
use async_trait::async_trait;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::scripts::Script;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use switchyard_protocol::Room;
use switchyard_protocol::client::StreamPosition;
use switchyard_protocol::server::event_frame_parts;
use tokio::sync::{mpsc, oneshot};

/// Publishes one event atomically: makes sure the Redis-wide epoch exists, increments the
/// room's offset, appends the frame to the room's history stream (entry id `<offset>-1`, at
/// most ARGV[6] entries, the stream expiring ARGV[7] ms after the room's last event) and
/// publishes `"<offset> <epoch> <frame>"` on the room's channel (the epoch travels with
/// every message: a gateway learns a new epoch from the first event counted in it).
/// KEYS = offset key, history key, epoch key;
/// ARGV = channel, frame head, frame tail, offset TTL (ms), fresh epoch, history size, history TTL (ms).
const PUBLISH_LUA: &str = r#"
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  redis.call('SET', KEYS[3], ARGV[5])
  epoch = ARGV[5]
end
local offset = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local frame = ARGV[2] .. offset .. ARGV[3]
if tonumber(ARGV[6]) > 0 then
  -- pcall: a history that cannot take the entry (ids out of order after an eviction) must
  -- not stop the publish; recovery then finds the gap and answers "resync".
  redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[6], offset .. '-1', 'f', frame)
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
redis.call('PUBLISH', ARGV[1], offset .. ' ' .. epoch .. ' ' .. frame)
return offset
"#;

/// The room's position — the Redis-wide epoch (created when missing, so a flushed or
/// restarted Redis gets a new one) and the room's last offset — and, when ARGV[2] is a
/// number, the history entries after that offset, all read atomically.
/// KEYS = epoch key, offset key, history key; ARGV = fresh epoch, since offset or "".
const POSITION_LUA: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  epoch = ARGV[1]
end
local offset = redis.call('GET', KEYS[2]) or '0'
local result = {epoch, offset}
if ARGV[2] ~= '' then
  local entries = redis.call('XRANGE', KEYS[3], (tonumber(ARGV[2]) + 1) .. '-1', '+')
  for _, entry in ipairs(entries) do
    table.insert(result, entry[1])
    table.insert(result, entry[2][2])
  end
end
return result
"#;

enum Interest {
    Join(String, oneshot::Sender<Result<(), String>>),
    Leave(String),
}

/// Redis [`Bus`].
pub struct RedisBus {
    client: Client,
    subscriber: SubscriberClient,
    publish_script: Script,
    position_script: Script,
    prefix: String,
    offset_ttl_ms: i64,
    history: HistoryConfig,
    interest: mpsc::Sender<Interest>,
    sinks: Sinks,
}

impl RedisBus {
    pub(super) async fn start(
        client: Client,
        subscriber: SubscriberClient,
        config: &super::RedisConfig,
        sinks: Sinks,
    ) -> Result<Arc<RedisBus>, BrokerError> {
        let (interest, requests) = mpsc::channel(4096);
        tokio::spawn(manage(subscriber.clone(), requests, config.prefix.clone()));
        Ok(Arc::new(RedisBus {
            publish_script: script(&client, PUBLISH_LUA).await?,
            position_script: script(&client, POSITION_LUA).await?,
            client,
            subscriber,
            prefix: config.prefix.clone(),
            offset_ttl_ms: config.offset_ttl.as_millis() as i64,
            history: config.history,
            interest,
            sinks,
        }))
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(
        &self,
        room: &Room,
        event: &str,
        data: Box<RawValue>,
    ) -> Result<u64, BrokerError> {
        let (head, tail) = event_frame_parts(room.as_str(), event, &data);
        let keys = vec![
            format!("{}off:{}", self.prefix, room),
            format!("{}hist:{}", self.prefix, room),
            format!("{}epoch", self.prefix),
        ];
        let args = vec![
            room_channel(&self.prefix, room.as_str()),
            head,
            tail,
            self.offset_ttl_ms.to_string(),
            crate::new_epoch(),
            self.history.size.to_string(),
            self.history.ttl.as_millis().max(1).to_string(),
        ];
        let offset: i64 = self
            .publish_script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(unavailable)?;
        Ok(offset as u64)
    }

    async fn subscribe(&self, room: &Room) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.interest
            .send(Interest::Join(room.as_str().to_owned(), tx))
            .await
            .map_err(|_| BrokerError::Closed)?;
        rx.await
            .map_err(|_| BrokerError::Closed)?
            .map_err(BrokerError::Unavailable)
    }

    async fn unsubscribe(&self, room: &Room) {
        let _ = self
            .interest
            .send(Interest::Leave(room.as_str().to_owned()))
            .await;
    }

    /// Position and history come from Redis in one atomic script call. A recovery is
    /// complete only when the epoch matches and the stream still holds the entry right after
    /// `since` (and every one after it, which the stream's consecutive ids guarantee).
    async fn history(
        &self,
        room: &Room,
        since: Option<&StreamPosition>,
    ) -> Result<History, BrokerError> {
        let keys = vec![
            format!("{}epoch", self.prefix),
            format!("{}off:{}", self.prefix, room),
            format!("{}hist:{}", self.prefix, room),
        ];
        let args = vec![
            crate::new_epoch(),
            since.map(|s| s.offset.to_string()).unwrap_or_default(),
        ];
        let reply: Vec<String> = self
            .position_script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(unavailable)?;
        let mut fields = reply.into_iter();
        let epoch = fields.next().unwrap_or_default();
        let offset: u64 = fields.next().and_then(|o| o.parse().ok()).unwrap_or(0);
        let shared_epoch: Arc<str> = epoch.as_str().into();
        let mut entries = Vec::new();
        while let (Some(id), Some(frame)) = (fields.next(), fields.next()) {
            let entry_offset = id.split('-').next().and_then(|o| o.parse::<u64>().ok());
            if let Some(entry_offset) = entry_offset {
                entries.push(Publication {
                    room: room.as_str().to_owned(),
                    epoch: shared_epoch.clone(),
                    offset: entry_offset,
                    frame: frame.into(),
                });
            }
        }
        let position = StreamPosition { epoch, offset };
        let missed = since.and_then(|since| {
            if since.epoch != position.epoch || since.offset > position.offset {
                return None;
            }
            if since.offset == position.offset {
                return Some(Vec::new());
            }
            // Consecutive from since+1 up to the position, or nothing.
            let complete = entries
                .iter()
                .enumerate()
                .all(|(i, p)| p.offset == since.offset + 1 + i as u64)
                && entries.last().map(|p| p.offset) == Some(position.offset);
            complete.then_some(entries)
        });
        Ok(History { position, missed })
    }

    fn attach(&self, sink: Arc<dyn Deliver>) {
        self.sinks.attach(sink);
    }

    fn is_ready(&self) -> bool {
        self.client.is_connected() && self.subscriber.is_connected()
    }
}

/// Counts local members per room and turns changes into batched SUBSCRIBE/UNSUBSCRIBE.
async fn manage(
    subscriber: SubscriberClient,
    mut requests: mpsc::Receiver<Interest>,
    prefix: String,
) {
    let mut members: HashMap<String, usize> = HashMap::new();
    // What Redis has been told: rooms with a live subscription.
    let mut subscribed: HashSet<String> = HashSet::new();
    const MAX_BATCH: usize = 10_000;
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut touched: HashSet<String> = HashSet::new();
        let mut waiters: Vec<(String, oneshot::Sender<Result<(), String>>)> = Vec::new();
        for request in batch {
            match request {
                Interest::Join(room, reply) => {
                    *members.entry(room.clone()).or_insert(0) += 1;
                    touched.insert(room.clone());
                    waiters.push((room, reply));
                }
                Interest::Leave(room) => {
                    if let Some(count) = members.get_mut(&room) {
                        *count -= 1;
                        if *count == 0 {
                            members.remove(&room);
                        }
                    }
                    touched.insert(room);
                }
            }
        }
        let join: Vec<String> = touched
            .iter()
            .filter(|r| members.contains_key(*r) && !subscribed.contains(*r))
            .cloned()
            .collect();
        let leave: Vec<String> = touched
            .iter()
            .filter(|r| !members.contains_key(*r) && subscribed.contains(*r))
            .cloned()
            .collect();
        let mut failed: HashSet<String> = HashSet::new();
        let mut failure = String::new();
        if !join.is_empty() {
            let channels: Vec<String> = join.iter().map(|r| room_channel(&prefix, r)).collect();
            match subscriber.subscribe(channels).await {
                Ok(()) => subscribed.extend(join.iter().cloned()),
                Err(err) => {
                    tracing::warn!(%err, rooms = join.len(), "redis SUBSCRIBE failed");
                    failure = err.to_string();
                    failed.extend(join.iter().cloned());
                }
            }
        }
        if !leave.is_empty() {
            let channels: Vec<String> = leave.iter().map(|r| room_channel(&prefix, r)).collect();
            // Forgotten either way: a failed UNSUBSCRIBE only costs unwanted traffic until
            // the next reconnect, which re-subscribes tracked channels only.
            if let Err(err) = subscriber.unsubscribe(channels).await {
                tracing::warn!(%err, rooms = leave.len(), "redis UNSUBSCRIBE failed");
            }
            for room in &leave {
                subscribed.remove(room);
            }
        }
        for (room, reply) in waiters {
            if failed.contains(&room) {
                // The joiner gets an error and will not call Leave: undo its count.
                if let Some(count) = members.get_mut(&room) {
                    *count -= 1;
                    if *count == 0 {
                        members.remove(&room);
                    }
                }
                let _ = reply.send(Err(failure.clone()));
            } else {
                let _ = reply.send(Ok(()));
            }
        }
        metrics::gauge!("switchyard_bus_subscribed_rooms").set(subscribed.len() as f64);
    }
}
