//! The distributed mode's bus, controller and leases on Redis — one server, or a Redis Cluster
//! (7.0+) — with per-room offsets assigned in Redis.
//!
//! # Publishing: one script call per event
//! The publisher encodes the event frame once, split around its offset
//! (`event_frame_parts`). One Lua script then, atomically inside Redis, checks the room's
//! epoch, increments the room's offset counter, appends the frame to the room's history and
//! publishes `"<offset> <epoch> <frame>"` on the room's channel. Offsets are therefore strictly
//! increasing per room whichever process publishes, and concurrent publishes from one process
//! are pipelined by fred on one connection (one round trip per event, never several). Every
//! key the script touches is in the room's hash slot, so on a cluster it runs on the shard
//! owning the room.
//!
//! # Sharded pub/sub on a cluster
//! Classic `PUBLISH` on a cluster is broadcast over the cluster bus to every node, so each
//! shard pays for every event of every room: adding shards would add no publish capacity. On
//! a cluster the script publishes with `SPUBLISH` (the room's channel is in the room's slot)
//! and gateways `SSUBSCRIBE` per room on the shard owning it: an event crosses one shard and
//! reaches only the gateways serving its room. Control messages (rare, for every process) stay
//! on classic pub/sub.
//!
//! # Subscribing: reference-counted and batched
//! A gateway holds a Redis subscription to a room's channel only while it has at least one
//! local member. Join/leave requests go to one manager task that counts members per room and
//! sends one `SUBSCRIBE`/`UNSUBSCRIBE` for everything that changed since its last round
//! trip, so on one Redis 10,000 joins cost a handful of commands, not 10,000 (on a cluster,
//! one `SSUBSCRIBE` per room, pipelined, and one `SUNSUBSCRIBE` per hash slot: see [`bus`]).
//! A gateway receives no traffic for rooms it does not serve. A room's position is read on
//! the subscriber connection after its subscription (RESP3): nothing published in between
//! is missed, and a handshake waits for Redis once ([`bus`]'s doc).
//!
//! # Names
//! Every key and channel starts with the configured prefix (default `sy:`). A room's keys
//! carry the room name as their hash tag (`{room}`), so they share one hash slot — one shard
//! of a cluster, which a script may touch atomically: `{prefix}room:{room}` (channel),
//! `{prefix}off:{room}` (offset counter), `{prefix}hist:{room}` (history stream),
//! `{prefix}epoch:{room}` (the room's epoch), and the
//! [`SharedState`](crate::state::SharedState)'s `{prefix}snap:{room}` (room snapshot) and
//! `{prefix}pos:{order:<id>}` (newest position, beside its room's snapshot). Not per room:
//! `{prefix}ctl` (control channel), `{prefix}conns:{user:<sub>}` (a user's connection leases, in its
//! user room's slot),
//! `{prefix}revoked` (revocation records, see [`crate::revocations`]), `{prefix}posq`
//! (positions the database has not seen yet). Room names are validated by [`Room`](switchyard_protocol::Room) before they get
//! here, so no glob or control character can reach Redis.
//!
//! # Outages and failover
//! fred reconnects with exponential backoff; WebSocket clients stay connected throughout.
//! Every room subscription is (re)made by one task, the bus's subscription manager (it alone
//! knows which rooms still have members here, so a resubscription never revives a room just
//! left): after the subscriber reconnects (on a cluster: to a node it knew, for that node's
//! rooms), and on a cluster after slots moved (a resharding, or a replica promoted after its
//! primary failed), which [`follow_slots`] notices. The manager subscribes again, *then* tells
//! exactly the rooms resubscribed `gap` — their members recover from history, and nothing
//! published after the subscription is live again can be missed. While Redis is
//! unreachable, the bus and controller are not ready (`/readyz` 503), publishes fail after
//! the command timeout, and `switchyard_bus_connected` is 0; reconnects are counted.

//! # Layout
//! - this module: the connection (commands + subscriptions), the dispatcher of incoming
//!   messages, the names;
//! - [`bus`]: [`RedisBus`] (publish, subscribe, history);
//! - [`control`]: [`RedisController`] (control channel, revocation records);
//! - [`leases`]: [`RedisLeases`] (per-user connection leases, possibly in a Redis of their own);
//! - [`state`]: [`RedisState`] (room snapshots and partner positions);
//! - [`presence`]: [`RedisPresence`] (who is in which room, `{prefix}pres*:{room}`);
//! - [`fleet`]: [`RedisFleet`] (the partners' last known positions,
//!   `{prefix}fleet:{admin:fleet}` and `{prefix}fleett:{admin:fleet}`).

pub mod bus;
pub mod control;
pub mod fleet;
pub mod leases;
pub mod presence;
pub mod state;

pub use bus::RedisBus;
pub use control::RedisController;
pub use fleet::RedisFleet;
pub use leases::RedisLeases;
pub use presence::RedisPresence;
pub use state::RedisState;

use crate::revocations::Revocations;
use crate::{Backplane, BrokerError, Control, HistoryConfig, Listeners, Publication, Sinks};
use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::config::Server;
use fred::types::scripts::Script;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::Room;
use tokio::sync::broadcast;

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`, or a cluster: `redis-cluster://host:port?node=host:port&…`
    /// (any reachable nodes; the others are discovered).
    pub url: String,
    /// Where the connection leases live (`SWITCHYARD_LEASE_REDIS_URL`); `None`: in `url`.
    pub lease_url: Option<String>,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// How long a room's offset counter lives after its last publish.
    pub offset_ttl: Duration,
    /// How long one Redis command may take before it fails (and the publish is refused).
    pub command_timeout: Duration,
    /// How long one batch of room subscriptions may take on a cluster (one `SSUBSCRIBE` per
    /// room, up to 64 pipelined): none starts after it, and the rooms not reached fail.
    pub subscribe_timeout: Duration,
    /// Events each room keeps in its history stream (0: none), and for how long after the
    /// room's last event.
    pub history: HistoryConfig,
}

impl RedisConfig {
    /// Whether `url` names a Redis Cluster (fred's `redis-cluster://host:port?node=host:port&…`).
    pub fn is_cluster(&self) -> bool {
        Config::from_url(&self.url).is_ok_and(|c| c.server.is_clustered())
    }

    /// Defaults for everything but the URL (tests, the load generator).
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            lease_url: None,
            prefix: "sy:".into(),
            offset_ttl: Duration::from_secs(7 * 24 * 3600),
            command_timeout: Duration::from_secs(2),
            subscribe_timeout: Duration::from_secs(5),
            history: HistoryConfig::default(),
        }
    }
}

/// The Redis implementations of every job, connected.
pub struct Redis {
    pub bus: Arc<RedisBus>,
    pub controller: Arc<RedisController>,
    pub leases: Arc<RedisLeases>,
    pub state: Arc<RedisState>,
    pub presence: Arc<RedisPresence>,
    pub fleet: Arc<RedisFleet>,
}

impl Redis {
    /// Connects the command client, the subscriber (room and control messages) and, when
    /// leases live elsewhere, the lease client; starts the subscription manager and the
    /// message dispatcher. Fails when Redis cannot be reached at start.
    pub async fn connect(config: RedisConfig) -> Result<Redis, BrokerError> {
        let mut builder = builder(&config.url, config.command_timeout)?;
        // fred preallocates every one of a client's ~9 notification channels at this
        // capacity (tokio broadcast slots): the command client keeps the small default, and
        // only the subscriber, whose room messages wait there for the dispatcher, gets room
        // for bursts. A dispatcher that still lags loses the oldest: counted in
        // switchyard_bus_lagged_total and told to clients as a gap.
        let client = builder.build().map_err(unavailable)?;
        builder.with_performance_config(|p| p.broadcast_channel_capacity = 1 << 14);
        // RESP3 on the subscriber connection: it runs commands while subscribed (RESP2 allows
        // only (un)subscribe and PING there), so a room's position is read on the very
        // connection its subscription was made on, after it (see `bus`: no gap).
        builder.with_config(|c| c.version = fred::types::RespVersion::RESP3);
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        client.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        for c in [client.clone(), subscriber.to_client()] {
            watch(&c);
        }
        let prefix = config.prefix.clone();
        let sinks = Sinks::default();
        let listeners = Listeners::default();
        let records = Arc::new(Revocations::default());
        let messages = subscriber.message_rx();
        let controller = RedisController::connect(
            client.clone(),
            subscriber.clone(),
            &prefix,
            records.clone(),
            listeners.clone(),
        )
        .await?;
        tokio::spawn(dispatch(
            messages,
            prefix.clone(),
            sinks.clone(),
            listeners,
            records,
        ));
        let bus =
            RedisBus::start(client.clone(), subscriber.clone(), &config, sinks.clone()).await?;
        // The subscriber's reconnection: the control channel and the rooms are subscribed
        // again (their members told `gap` once it is live), and revocations announced meanwhile
        // are read back. On a cluster, a reconnect to a node not known before is a node that
        // took slots over (a promoted replica): follow_slots resubscribes those slots' rooms,
        // once their new owner is agreed on. These listener tasks live as long as the
        // clients; dropping their handles detaches them.
        let clustered = config.is_cluster();
        let known_nodes: Arc<std::sync::Mutex<HashSet<Server>>> = Arc::new(
            match clustered {
                true => slot_map(&client, None)
                    .await
                    .map(|map| map.into_iter().map(|range| range.primary).collect())
                    .unwrap_or_default(),
                false => HashSet::new(),
            }
            .into(),
        );
        let (resubscriber, resume, slots_from) =
            (bus.resubscriber(), controller.clone(), client.clone());
        drop(subscriber.on_reconnect(move |server| {
            let (resubscriber, resume, slots_from, known_nodes) = (
                resubscriber.clone(),
                resume.clone(),
                slots_from.clone(),
                known_nodes.clone(),
            );
            async move {
                resume.resume().await;
                if !clustered {
                    resubscriber.resubscribe(None).await;
                    return Ok(());
                }
                let known = !known_nodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(server.clone());
                if known {
                    // That node's slots' rooms; all rooms when the map cannot be read.
                    let slots = slot_map(&slots_from, None).await.map(|map| {
                        map.iter()
                            .filter(|range| range.primary == server)
                            .flat_map(|range| range.first..=range.last)
                            .collect()
                    });
                    resubscriber.resubscribe(slots).await;
                }
                Ok(())
            }
        }));
        if clustered {
            tokio::spawn(follow_slots(
                client.clone(),
                bus.resubscriber(),
                Arc::downgrade(&bus),
            ));
        }
        let leases = match &config.lease_url {
            Some(url) if *url != config.url => {
                let leases = builder_client(url, config.command_timeout).await?;
                tracing::info!(url = %redact(url), "connection leases in their own redis");
                RedisLeases::start(leases, &prefix, None).await?
            }
            _ => RedisLeases::start(client.clone(), &prefix, Some(bus.clone())).await?,
        };
        let presence = RedisPresence::start(client.clone(), bus.clone(), &prefix).await?;
        let fleet = RedisFleet::start(client.clone(), &prefix).await?;
        let state = RedisState::start(client, &config).await?;
        tracing::info!(url = %redact(&config.url), %prefix, "connected to redis");
        crate::follow_readiness(bus.clone(), controller.clone());
        Ok(Redis {
            bus,
            controller,
            leases,
            state,
            presence,
            fleet,
        })
    }

    pub fn backplane(&self) -> Backplane {
        Backplane {
            bus: self.bus.clone(),
            controller: self.controller.clone(),
            leases: self.leases.clone(),
            presence: self.presence.clone(),
            fleet: self.fleet.clone(),
        }
    }
}

/// A client builder for `url`: reconnects forever with backoff, one attempt per command.
fn builder(url: &str, timeout: Duration) -> Result<Builder, BrokerError> {
    let redis_config = Config::from_url(url).map_err(unavailable)?;
    let mut builder = Builder::from_config(redis_config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 1;
        });
    Ok(builder)
}

/// A connected command client for `url`.
async fn builder_client(url: &str, timeout: Duration) -> Result<Client, BrokerError> {
    let client = builder(url, timeout)?.build().map_err(unavailable)?;
    client.init().await.map_err(unavailable)?;
    watch(&client);
    Ok(client)
}

/// Logs and counts the client's reconnects and connection errors.
fn watch(client: &Client) {
    drop(client.on_reconnect(|server| async move {
        tracing::info!(%server, "redis reconnected");
        metrics::counter!("switchyard_bus_reconnects_total").increment(1);
        Ok(())
    }));
    drop(client.on_error(|(err, _)| async move {
        tracing::warn!(%err, "redis connection error");
        Ok(())
    }));
}

/// A script, loaded into Redis.
async fn script(client: &Client, lua: &str) -> Result<Script, BrokerError> {
    let script = Script::from_lua(lua);
    script.load(client).await.map_err(unavailable)?;
    Ok(script)
}

/// `EVALSHA` of `script` with the keys and arguments `call` makes, and once more after
/// loading the script when Redis does not know it (flushed, restarted, a new node). Unlike
/// fred's `evalsha_with_reload`, which clones every key and argument for that rare retry,
/// they are only made again when it happens.
async fn eval<R: fred::types::FromValue>(
    client: &Client,
    script: &Script,
    call: impl Fn() -> (Vec<String>, Vec<String>),
) -> Result<R, fred::error::Error> {
    use fred::interfaces::LuaInterface;
    let (keys, args) = call();
    match client.evalsha(script.sha1().clone(), keys, args).await {
        Err(error) if error.details().starts_with("NOSCRIPT") => {
            script.load(client).await?;
            let (keys, args) = call();
            client.evalsha(script.sha1().clone(), keys, args).await
        }
        result => result,
    }
}

fn unavailable(err: fred::error::Error) -> BrokerError {
    BrokerError::Unavailable(err.to_string())
}

/// `{prefix}{kind}:{{room}}`: a key of the room's, in the room's hash slot (the hash tag is
/// the room name; prefixes cannot contain braces). Built at its exact size: a handshake makes
/// several (its script's keys, its channel), and `format!` would grow each once or twice.
fn room_key(prefix: &str, kind: &str, room: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + kind.len() + room.len() + 3);
    for part in [prefix, kind, ":{", room, "}"] {
        key.push_str(part);
    }
    key
}

/// `{prefix}room:{{room}}`: the room's channel, in the room's hash slot (sharded pub/sub
/// routes it with the room's keys).
fn room_channel(prefix: &str, room: &str) -> String {
    room_key(prefix, "room", room)
}

/// The room a room channel is for.
fn channel_room<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    channel
        .strip_prefix(prefix)?
        .strip_prefix("room:{")?
        .strip_suffix('}')
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

/// How often a cluster's slot map is compared with the last one seen.
const SLOT_CHECK: Duration = Duration::from_secs(5);

/// How soon a changed slot map is looked at again while the primaries disagree about it, and
/// how many times within one SLOT_CHECK.
const SETTLE: Duration = Duration::from_millis(250);
const SETTLE_CHECKS: usize = 16;

/// One range of a cluster's slots and the primary owning it.
#[derive(Debug, Clone, PartialEq)]
struct SlotRange {
    first: u16,
    last: u16,
    /// The primary's node id.
    id: String,
    primary: Server,
}

/// A cluster's slot ranges, sorted.
type SlotMap = Vec<SlotRange>;

/// `CLUSTER SLOTS` from `node` (any node: `None`).
async fn slot_map(client: &Client, node: Option<&Server>) -> Option<SlotMap> {
    use fred::types::{ClusterHash, CustomCommand, Value};
    let command = CustomCommand::new("CLUSTER", ClusterHash::Random, false);
    let reply: Result<Value, _> = match node {
        Some(node) => {
            client
                .with_cluster_node(node.clone())
                .custom(command, vec!["SLOTS"])
                .await
        }
        None => client.custom(command, vec!["SLOTS"]).await,
    };
    let Ok(Value::Array(ranges)) = reply else {
        return None;
    };
    let mut map = SlotMap::new();
    for range in &ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let Some(Value::Array(primary)) = fields.get(2) else {
            return None;
        };
        let slot = |i: usize| fields.get(i)?.as_i64().and_then(|n| u16::try_from(n).ok());
        let (Some(first), Some(last), Some(host), Some(port), Some(id)) = (
            slot(0),
            slot(1),
            primary.first().and_then(|h| h.as_string()),
            primary
                .get(1)
                .and_then(|p| p.as_i64())
                .and_then(|p| u16::try_from(p).ok()),
            primary.get(2).and_then(|id| id.as_string()),
        ) else {
            return None;
        };
        map.push(SlotRange {
            first,
            last,
            id,
            primary: Server::new(host, port),
        });
    }
    map.sort_by_key(|range| range.first);
    Some(map)
}

/// The slots whose primary differs between two maps (a slot nobody owns counts as owned by
/// nobody).
fn moved_slots(before: &SlotMap, after: &SlotMap) -> HashSet<u16> {
    fn owners(map: &SlotMap) -> Vec<Option<&str>> {
        let mut owner: Vec<Option<&str>> = vec![None; 16_384];
        for range in map {
            for slot in range.first..=range.last.min(16_383) {
                owner[slot as usize] = Some(range.id.as_str());
            }
        }
        owner
    }
    let (before, after) = (owners(before), owners(after));
    (0..16_384u16)
        .filter(|slot| before[*slot as usize] != after[*slot as usize])
        .collect()
}

/// On a cluster: when a slot moves to another primary (a resharding, or a replica promoted
/// after its primary failed), Redis ends the shard subscriptions of its channels on the old
/// owner (a server-sent `SUNSUBSCRIBE`, which fred does not surface). So every SLOT_CHECK the
/// slot map (`CLUSTER SLOTS`) is compared with the last one seen; once it changed *and every
/// primary in it reports the same map* (the nodes learn a slot's new owner one by one; a
/// subscription made before the old owner learned would be ended by it), the rooms of the
/// slots that moved are subscribed again by the manager, which then tells exactly those rooms
/// `gap`. Runs while `alive` does.
async fn follow_slots(
    client: Client,
    resubscriber: bus::Resubscriber,
    alive: std::sync::Weak<RedisBus>,
) {
    let mut known: Option<SlotMap> = None;
    let mut tick = tokio::time::interval(SLOT_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.strong_count() == 0 {
            return;
        }
        // A change is looked at again every SETTLE until every primary reports it (a move is
        // spreading, or a primary is down), for at most SETTLE_CHECKS, then at the next tick.
        for _ in 0..SETTLE_CHECKS {
            let Some(map) = slot_map(&client, None).await else {
                break;
            };
            if known.as_ref() == Some(&map) {
                break;
            }
            let mut primaries: Vec<&Server> = Vec::new();
            for range in &map {
                if !primaries.contains(&&range.primary) {
                    primaries.push(&range.primary);
                }
            }
            let mut agreed = true;
            for primary in primaries {
                if slot_map(&client, Some(primary)).await.as_ref() != Some(&map) {
                    agreed = false;
                    break;
                }
            }
            if !agreed {
                tokio::time::sleep(SETTLE).await;
                continue;
            }
            let moved = known
                .as_ref()
                .map(|before| moved_slots(before, &map))
                .unwrap_or_default();
            known = Some(map);
            if !moved.is_empty() {
                tracing::warn!(
                    slots = moved.len(),
                    "redis cluster slots moved: subscribing their rooms again"
                );
                resubscriber.resubscribe(Some(moved)).await;
            }
            break;
        }
    }
}

/// Turns Redis messages into publications for the sinks and control messages for the
/// listeners.
async fn dispatch(
    mut messages: broadcast::Receiver<fred::types::Message>,
    prefix: String,
    sinks: Sinks,
    listeners: Listeners,
    revocations: Arc<Revocations>,
) {
    let control = control_channel(&prefix);
    // Each room's epoch, shared by its publications (one allocation per epoch, not per
    // message); bounded by starting over when it grows past EPOCHS.
    const EPOCHS: usize = 65_536;
    let mut epochs: HashMap<Box<str>, Arc<str>> = HashMap::new();
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
        if let Some(room) = channel_room(&prefix, &message.channel) {
            let Some((offset, rest)) = payload.split_once(' ') else {
                continue;
            };
            let (Ok(offset), Some((message_epoch, frame))) =
                (offset.parse::<u64>(), rest.split_once(' '))
            else {
                continue;
            };
            let epoch = match epochs.get(message_epoch) {
                Some(epoch) => epoch.clone(),
                None => {
                    if epochs.len() >= EPOCHS {
                        epochs.clear();
                    }
                    let epoch: Arc<str> = message_epoch.into();
                    epochs.insert(message_epoch.into(), epoch.clone());
                    epoch
                }
            };
            let Ok(room) = Room::parse(room) else {
                continue;
            };
            sinks.deliver(Publication {
                room,
                epoch,
                offset,
                frame: frame.to_owned().into(),
            });
        } else if *message.channel == *control {
            match serde_json::from_str::<Control>(&payload) {
                Ok(control) => {
                    revocations.observe(&control);
                    listeners.control(&control);
                }
                Err(err) => tracing::warn!(%err, "ignoring a malformed control message"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{channel_room, redact, room_channel, room_key};

    #[test]
    fn room_names_carry_the_room_as_their_hash_tag() {
        assert_eq!(room_key("sy:", "off", "order:1"), "sy:off:{order:1}");
        assert_eq!(room_channel("p:", "user:u1"), "p:room:{user:u1}");
        assert_eq!(channel_room("p:", "p:room:{user:u1}"), Some("user:u1"));
    }

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redact("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
