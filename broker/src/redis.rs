//! The distributed mode's bus: Redis pub/sub, with per-room offsets assigned in Redis.
//!
//! # Publishing: one script call per event
//! The publisher encodes the event frame once, split around its offset
//! ([`event_frame_parts`]). One Lua script then, atomically inside Redis, increments the
//! room's offset counter, refreshes its expiry, and publishes `"<offset> <epoch> <frame>"` on the
//! room's channel. Offsets are therefore strictly increasing per room whichever process
//! publishes, and concurrent publishes from one process are pipelined by fred on one
//! connection (one round trip per event, never several).
//!
//! # Subscribing: reference-counted and batched
//! A gateway holds a Redis subscription to a room's channel only while it has at least one
//! local member. Join/leave requests go to one manager task that counts members per room and
//! sends one `SUBSCRIBE`/`UNSUBSCRIBE` for everything that changed since its last round
//! trip, so 10,000 joins cost a handful of commands, not 10,000. A gateway receives no
//! traffic for rooms it does not serve.
//!
//! # Names
//! Every key and channel starts with the configured prefix (default `sy:`):
//! `{prefix}room:{room}` (channel), `{prefix}off:{room}` (offset counter), `{prefix}hist:{room}`
//! (history stream), `{prefix}ctl` (control channel), `{prefix}conns:{sub}` (a user's
//! connection leases), `{prefix}revoked` (revocation records, see [`crate::revocations`]), and the [`SharedState`]: `{prefix}snap:{room}` (room snapshot),
//! `{prefix}pos:{order}` (newest position), `{prefix}posq` (positions the database has not
//! seen yet). Room names are validated by [`Room`] before they get here, so no glob
//! or control character can reach Redis.
//!
//! # Outages
//! fred reconnects with exponential backoff and re-subscribes every tracked channel
//! (`manage_subscriptions`); WebSocket clients stay connected throughout. While Redis is
//! unreachable, [`Broker::is_ready`] is false (`/readyz` 503), publishes fail after the
//! command timeout, and `switchyard_bus_connected` is 0; reconnects are counted. Events published
//! to Redis while a gateway's subscriber was disconnected are not seen by that gateway.

use crate::revocations::Revocations;
use crate::state::{Cached, SharedState};
use crate::{Broker, BrokerError, Control, Deliver, History, Publication, Sinks};
use async_trait::async_trait;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{
    ClientLike, EventInterface, KeysInterface, PubsubInterface, SortedSetsInterface,
};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::Expiration;
use fred::types::scripts::Script;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::Room;
use switchyard_protocol::client::StreamPosition;
use switchyard_protocol::room::RoomKind;
use switchyard_protocol::server::event_frame_parts;
use tokio::sync::{broadcast, mpsc, oneshot};

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

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// How long a room's offset counter lives after its last publish.
    pub offset_ttl: Duration,
    /// How long one Redis command may take before it fails (and the publish is refused).
    pub command_timeout: Duration,
    /// Events each room keeps in its history stream (0: none), and for how long after the
    /// room's last event.
    pub history: crate::memory::HistoryConfig,
}

enum Interest {
    Join(String, oneshot::Sender<Result<(), String>>),
    Leave(String),
}

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

/// Stores a revocation record and announces it, atomically: whoever reads the records after
/// the announcement finds this one. Records are members `"<sub> <at>"` scored by the moment
/// they end; ended ones are dropped first, and the set expires with its last record.
/// KEYS = the records; ARGV = member, end (s), control channel, control message.
const REVOKE_LUA: &str = r#"
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ttl = tonumber(ARGV[2]) - now
if ttl > 0 and redis.call('TTL', KEYS[1]) < ttl then
  redis.call('EXPIRE', KEYS[1], ttl)
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"#;

/// The revocation records that have not ended: `member, end, member, end, …`.
/// KEYS = the records.
const REVOCATIONS_LUA: &str = r#"
local now = redis.call('TIME')[1]
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
"#;

/// Reads the revocation records stored in Redis into this process's.
#[derive(Clone)]
struct RevocationLoader {
    client: Client,
    script: Arc<Script>,
    key: String,
    records: Arc<Revocations>,
}

impl RevocationLoader {
    /// Loads every record; returns the ones this process did not know, as the control
    /// messages it missed.
    async fn load(&self) -> Result<Vec<Control>, fred::error::Error> {
        let flat: Vec<String> = self
            .script
            .evalsha_with_reload(&self.client, vec![self.key.clone()], Vec::<String>::new())
            .await?;
        let mut news = Vec::new();
        for pair in flat.chunks_exact(2) {
            let Some((sub, at)) = pair[0].split_once(' ') else {
                continue;
            };
            let (Ok(at), Ok(until)) = (at.parse::<u64>(), pair[1].parse::<f64>()) else {
                continue;
            };
            let until = until as u64;
            if self.records.record(sub, at, until) {
                news.push(Control::RevokeUser {
                    sub: sub.to_owned(),
                    at,
                    until,
                });
            }
        }
        Ok(news)
    }
}

/// Redis [`Broker`] and [`SharedState`].
pub struct RedisBroker {
    client: Client,
    subscriber: SubscriberClient,
    script: Script,
    position_script: Script,
    claim_script: Script,
    put_positions_script: Script,
    take_positions_script: Script,
    requeue_positions_script: Script,
    prefix: String,
    offset_ttl_ms: i64,
    history: crate::memory::HistoryConfig,
    interest: mpsc::Sender<Interest>,
    sinks: Sinks,
    revoke_script: Script,
    revocations: RevocationLoader,
}

impl RedisBroker {
    /// Connects both clients (commands and subscriptions) and starts the subscription
    /// manager and the message dispatcher. Fails when Redis cannot be reached at start.
    pub async fn connect(config: RedisConfig) -> Result<Arc<RedisBroker>, BrokerError> {
        let unavailable = |e: fred::error::Error| BrokerError::Unavailable(e.to_string());
        let redis_config = Config::from_url(&config.url).map_err(unavailable)?;
        let mut builder = Builder::from_config(redis_config);
        let timeout = config.command_timeout;
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            });
        // fred preallocates every one of a client's ~9 notification channels at this
        // capacity (tokio broadcast slots): the command client keeps the small default, and
        // only the subscriber, whose room messages wait there for the dispatcher, gets room
        // for bursts. A dispatcher that still lags loses the oldest: counted in
        // switchyard_bus_lagged_total and told to clients as a gap.
        let client = builder.build().map_err(unavailable)?;
        builder.with_performance_config(|p| p.broadcast_channel_capacity = 1 << 14);
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        client.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        let script = Script::from_lua(PUBLISH_LUA);
        script.load(&client).await.map_err(unavailable)?;
        let position_script = Script::from_lua(POSITION_LUA);
        position_script.load(&client).await.map_err(unavailable)?;
        let claim_script = Script::from_lua(CLAIM_LUA);
        claim_script.load(&client).await.map_err(unavailable)?;
        let put_positions_script = Script::from_lua(PUT_POSITIONS_LUA);
        put_positions_script
            .load(&client)
            .await
            .map_err(unavailable)?;
        let take_positions_script = Script::from_lua(TAKE_POSITIONS_LUA);
        take_positions_script
            .load(&client)
            .await
            .map_err(unavailable)?;
        let requeue_positions_script = Script::from_lua(REQUEUE_POSITIONS_LUA);
        requeue_positions_script
            .load(&client)
            .await
            .map_err(unavailable)?;

        let revoke_script = Script::from_lua(REVOKE_LUA);
        revoke_script.load(&client).await.map_err(unavailable)?;
        let revocations_script = Script::from_lua(REVOCATIONS_LUA);
        revocations_script
            .load(&client)
            .await
            .map_err(unavailable)?;

        let prefix = config.prefix.clone();
        // The records other processes stored before this one started.
        let revocations = RevocationLoader {
            client: client.clone(),
            script: Arc::new(revocations_script),
            key: format!("{prefix}revoked"),
            records: Arc::new(Revocations::default()),
        };
        revocations.load().await.map_err(unavailable)?;
        let sinks = Sinks::default();
        let messages = subscriber.message_rx();
        // Re-subscribe every tracked channel after a reconnect. These listener tasks live as
        // long as the clients; dropping their handles detaches them.
        drop(subscriber.manage_subscriptions());
        subscriber
            .subscribe(control_channel(&prefix))
            .await
            .map_err(unavailable)?;
        // The subscriber's reconnection is a gap: whatever was published while it was away
        // never reached this node's clients. Revocations announced meanwhile are read back
        // from Redis, and their users' connections closed as the announcement would have.
        let (gap_sinks, reload) = (sinks.clone(), revocations.clone());
        drop(subscriber.on_reconnect(move |_| {
            let (sinks, reload) = (gap_sinks.clone(), reload.clone());
            async move {
                sinks.gap();
                match reload.load().await {
                    Ok(missed) => missed.iter().for_each(|control| sinks.control(control)),
                    Err(err) => tracing::warn!(%err, "could not read revocations back"),
                }
                Ok(())
            }
        }));
        for c in [client.clone(), subscriber.to_client()] {
            drop(c.on_reconnect(|server| async move {
                tracing::info!(%server, "redis reconnected");
                metrics::counter!("switchyard_bus_reconnects_total").increment(1);
                Ok(())
            }));
            drop(c.on_error(|(err, _)| async move {
                tracing::warn!(%err, "redis connection error");
                Ok(())
            }));
        }
        tokio::spawn(dispatch(
            messages,
            prefix.clone(),
            sinks.clone(),
            revocations.records.clone(),
        ));

        let (interest, requests) = mpsc::channel(4096);
        tokio::spawn(manage(subscriber.clone(), requests, prefix.clone()));
        tracing::info!(url = %redact(&config.url), %prefix, "connected to redis");
        let broker = Arc::new(RedisBroker {
            client,
            subscriber,
            script,
            position_script,
            claim_script,
            put_positions_script,
            take_positions_script,
            requeue_positions_script,
            prefix,
            offset_ttl_ms: config.offset_ttl.as_millis() as i64,
            history: config.history,
            interest,
            sinks,
            revoke_script,
            revocations,
        });
        // `switchyard_bus_connected` follows both connections, scraped or not, for as long
        // as the broker lives.
        let watched = Arc::downgrade(&broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match watched.upgrade() {
                    Some(broker) => {
                        broker.is_ready();
                    }
                    None => return,
                }
            }
        });
        Ok(broker)
    }
}

impl RedisBroker {
    /// `{prefix}conns:{sub}`: the user's connection leases across the cluster.
    fn connections_key(&self, sub: &str) -> String {
        format!("{}conns:{sub}", self.prefix)
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

fn room_channel(prefix: &str, room: &str) -> String {
    format!("{prefix}room:{room}")
}

fn control_channel(prefix: &str) -> String {
    format!("{prefix}ctl")
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[async_trait]
impl Broker for RedisBroker {
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
            crate::memory::new_epoch(),
            self.history.size.to_string(),
            self.history.ttl.as_millis().max(1).to_string(),
        ];
        let offset: i64 = self
            .script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
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

    async fn claim_connection(
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
                vec![self.connections_key(sub)],
                vec![
                    conn.to_owned(),
                    lease.as_millis().to_string(),
                    limit.max(1).to_string(),
                ],
            )
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        Ok(claimed == 1)
    }

    async fn renew_connection(&self, sub: &str, conn: &str, lease: Duration) {
        let renewed: Result<i64, _> = self
            .claim_script
            .evalsha_with_reload(
                &self.client,
                vec![self.connections_key(sub)],
                vec![conn.to_owned(), lease.as_millis().to_string(), "0".into()],
            )
            .await;
        if let Err(err) = renewed {
            tracing::debug!(%err, "connection lease renewal failed");
        }
    }

    async fn release_connection(&self, sub: &str, conn: &str) {
        let removed: Result<i64, _> = self.client.zrem(self.connections_key(sub), conn).await;
        if let Err(err) = removed {
            tracing::debug!(%err, "connection lease release failed");
        }
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
            crate::memory::new_epoch(),
            since.map(|s| s.offset.to_string()).unwrap_or_default(),
        ];
        let reply: Vec<String> = self
            .position_script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
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

    async fn broadcast(&self, control: Control) -> Result<(), BrokerError> {
        let payload =
            serde_json::to_string(&control).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let _: i64 = self
            .client
            .publish(control_channel(&self.prefix), payload)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        Ok(())
    }

    async fn revoke_user(&self, sub: &str, at: u64, until: u64) -> Result<(), BrokerError> {
        let control = Control::RevokeUser {
            sub: sub.to_owned(),
            at,
            until,
        };
        let payload =
            serde_json::to_string(&control).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let _: i64 = self
            .revoke_script
            .evalsha_with_reload(
                &self.client,
                vec![self.revocations.key.clone()],
                vec![
                    format!("{sub} {at}"),
                    until.to_string(),
                    control_channel(&self.prefix),
                    payload,
                ],
            )
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        // Here at once, not only when the announcement comes back through the subscriber.
        self.revocations.records.observe(&control);
        Ok(())
    }

    fn revoked_at(&self, sub: &str) -> Option<u64> {
        self.revocations.records.revoked_at(sub)
    }

    fn attach(&self, sink: Arc<dyn Deliver>) {
        self.sinks.attach(sink);
    }

    fn is_ready(&self) -> bool {
        let up = self.client.is_connected() && self.subscriber.is_connected();
        metrics::gauge!("switchyard_bus_connected").set(if up { 1.0 } else { 0.0 });
        up
    }
}

fn unavailable(err: fred::error::Error) -> BrokerError {
    BrokerError::Unavailable(err.to_string())
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
impl SharedState for RedisBroker {
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

/// Turns Redis messages into publications and control messages for the sinks.
async fn dispatch(
    mut messages: broadcast::Receiver<fred::types::Message>,
    prefix: String,
    sinks: Sinks,
    revocations: Arc<Revocations>,
) {
    let room_prefix = format!("{prefix}room:");
    let control = control_channel(&prefix);
    // The epoch of the last message, reused while it does not change (one allocation per
    // epoch, not per message).
    let mut epoch: Arc<str> = Arc::from("");
    loop {
        let message = match messages.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                tracing::warn!(lost, "redis message dispatcher lagged; messages lost");
                metrics::counter!("switchyard_bus_lagged_total").increment(lost);
                sinks.gap();
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        metrics::counter!("switchyard_bus_messages_received_total").increment(1);
        let Some(payload) = message.value.as_str() else {
            continue;
        };
        if let Some(room) = message.channel.strip_prefix(room_prefix.as_str()) {
            let Some((offset, rest)) = payload.split_once(' ') else {
                continue;
            };
            let (Ok(offset), Some((message_epoch, frame))) =
                (offset.parse::<u64>(), rest.split_once(' '))
            else {
                continue;
            };
            if *epoch != *message_epoch {
                epoch = message_epoch.into();
            }
            sinks.deliver(Publication {
                room: room.to_owned(),
                epoch: epoch.clone(),
                offset,
                frame: frame.to_owned().into(),
            });
        } else if *message.channel == *control {
            match serde_json::from_str::<Control>(&payload) {
                Ok(control) => {
                    revocations.observe(&control);
                    sinks.control(&control);
                }
                Err(err) => tracing::warn!(%err, "ignoring a malformed control message"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redact("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
