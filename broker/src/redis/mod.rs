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
//! trip (on a cluster, one `SSUBSCRIBE` per hash slot), so 10,000 joins cost a handful of
//! commands, not 10,000. A gateway receives no traffic for rooms it does not serve.
//!
//! # Names
//! Every key and channel starts with the configured prefix (default `sy:`). A room's keys
//! carry the room name as their hash tag (`{room}`), so they share one hash slot — one shard
//! of a cluster, which a script may touch atomically: `{prefix}room:{room}` (channel),
//! `{prefix}off:{room}` (offset counter), `{prefix}hist:{room}` (history stream),
//! `{prefix}epoch:{room}` (the room's epoch), and the
//! [`SharedState`](crate::state::SharedState)'s `{prefix}snap:{room}` (room snapshot) and
//! `{prefix}pos:{order:<id>}` (newest position, beside its room's snapshot). Not per room:
//! `{prefix}ctl` (control channel), `{prefix}conns:{sub}` (a user's connection leases),
//! `{prefix}revoked` (revocation records, see [`crate::revocations`]), `{prefix}posq`
//! (positions the database has not seen yet). Room names are validated by [`Room`](switchyard_protocol::Room) before they get
//! here, so no glob or control character can reach Redis.
//!
//! # Outages and failover
//! fred reconnects with exponential backoff and re-subscribes every tracked channel
//! (`manage_subscriptions`; on a cluster, each shard channel on its slot's current owner, also
//! after a slot moved or a replica was promoted); WebSocket clients stay connected throughout. While Redis is
//! unreachable, the bus and controller are not ready (`/readyz` 503), publishes fail after
//! the command timeout, and `switchyard_bus_connected` is 0; reconnects are counted. Events
//! published to Redis while a gateway's subscriber was disconnected are not seen by that
//! gateway: its sinks are told `gap`.
//!
//! # Layout
//! - this module: the connection (commands + subscriptions), the dispatcher of incoming
//!   messages, the names;
//! - [`bus`]: [`RedisBus`] (publish, subscribe, history);
//! - [`control`]: [`RedisController`] (control channel, revocation records);
//! - [`leases`]: [`RedisLeases`] (per-user connection leases, possibly in a Redis of their own);
//! - [`state`]: [`RedisState`] (room snapshots and partner positions).

pub mod bus;
pub mod control;
pub mod leases;
pub mod state;

pub use bus::RedisBus;
pub use control::RedisController;
pub use leases::RedisLeases;
pub use state::RedisState;

use crate::revocations::Revocations;
use crate::{
    Backplane, BrokerError, Bus, Control, Controller, HistoryConfig, Listeners, Publication, Sinks,
};
use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::scripts::Script;
use std::collections::HashMap;
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
        // Re-subscribe every tracked channel after a reconnect. These listener tasks live as
        // long as the clients; dropping their handles detaches them.
        drop(subscriber.manage_subscriptions());
        let controller = RedisController::connect(
            client.clone(),
            subscriber.clone(),
            &prefix,
            records.clone(),
            listeners.clone(),
        )
        .await?;
        // The subscriber's reconnection is a gap: whatever was published while it was away
        // never reached this node's clients. Revocations announced meanwhile are read back.
        let (gap_sinks, reload) = (sinks.clone(), controller.clone());
        drop(subscriber.on_reconnect(move |_| {
            let (sinks, reload) = (gap_sinks.clone(), reload.clone());
            async move {
                sinks.gap();
                reload.catch_up().await;
                Ok(())
            }
        }));
        if config.is_cluster() {
            // A slot moved or a node left: fred re-routes; the shard subscriptions follow (every
            // tracked channel again, each to its slot's owner now), and what was published
            // meanwhile is a gap.
            let (sinks, resubscriber) = (sinks.clone(), subscriber.clone());
            drop(subscriber.on_cluster_change(move |changes| {
                let (sinks, resubscriber) = (sinks.clone(), resubscriber.clone());
                async move {
                    tracing::warn!(?changes, "redis cluster changed: subscribing again");
                    sinks.gap();
                    if let Err(err) = resubscriber.resubscribe_all().await {
                        tracing::warn!(%err, "resubscribing after a cluster change failed");
                    }
                    Ok(())
                }
            }));
        }
        tokio::spawn(dispatch(
            messages,
            prefix.clone(),
            sinks.clone(),
            listeners,
            records,
        ));
        let bus =
            RedisBus::start(client.clone(), subscriber.clone(), &config, sinks.clone()).await?;
        if config.is_cluster() {
            tokio::spawn(follow_slots(
                client.clone(),
                subscriber,
                sinks,
                Arc::downgrade(&bus),
            ));
        }
        let leases = match &config.lease_url {
            Some(url) if *url != config.url => {
                let leases = builder_client(url, config.command_timeout).await?;
                tracing::info!(url = %redact(url), "connection leases in their own redis");
                RedisLeases::start(leases, &prefix).await?
            }
            _ => RedisLeases::start(client.clone(), &prefix).await?,
        };
        let state = RedisState::start(client, &config).await?;
        tracing::info!(url = %redact(&config.url), %prefix, "connected to redis");
        // `switchyard_bus_connected` follows the connections, scraped or not, for as long as
        // the bus lives.
        let (watched, control) = (Arc::downgrade(&bus), Arc::downgrade(&controller));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let (Some(bus), Some(control)) = (watched.upgrade(), control.upgrade()) else {
                    return;
                };
                let up = bus.is_ready() && control.is_ready();
                metrics::gauge!("switchyard_bus_connected").set(if up { 1.0 } else { 0.0 });
            }
        });
        Ok(Redis {
            bus,
            controller,
            leases,
            state,
        })
    }

    pub fn backplane(&self) -> Backplane {
        Backplane {
            bus: self.bus.clone(),
            controller: self.controller.clone(),
            leases: self.leases.clone(),
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

fn unavailable(err: fred::error::Error) -> BrokerError {
    BrokerError::Unavailable(err.to_string())
}

/// `{prefix}{kind}:{{room}}`: a key of the room's, in the room's hash slot (the hash tag is
/// the room name; prefixes cannot contain braces).
fn room_key(prefix: &str, kind: &str, room: &str) -> String {
    format!("{prefix}{kind}:{{{room}}}")
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

/// On a cluster: when a slot moves to another shard, Redis ends the shard subscriptions of its
/// channels (a server-sent `SUNSUBSCRIBE`, which fred does not surface). So every SLOT_CHECK
/// the primaries' slot ranges (`CLUSTER SLOTS`) are compared with the last ones seen; on a
/// change every tracked shard channel is subscribed again, each on its slot's owner now (fred
/// follows the `MOVED`), and the sinks are told `gap` — twice, a check apart (see below).
/// Runs while `alive` does.
async fn follow_slots(
    client: Client,
    subscriber: fred::clients::SubscriberClient,
    sinks: Sinks,
    alive: std::sync::Weak<RedisBus>,
) {
    let mut known: Option<Vec<(i64, i64, String)>> = None;
    let mut resubscribes = 0u8;
    let mut tick = tokio::time::interval(SLOT_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.strong_count() == 0 {
            return;
        }
        let slots: Result<fred::types::Value, _> = client
            .custom(
                fred::types::CustomCommand::new("CLUSTER", fred::types::ClusterHash::Random, false),
                vec!["SLOTS"],
            )
            .await;
        let Ok(fred::types::Value::Array(ranges)) = slots else {
            continue;
        };
        // (first slot, last slot, primary's node id) per range.
        let mut map: Vec<(i64, i64, String)> = ranges
            .iter()
            .filter_map(|range| {
                let fred::types::Value::Array(fields) = range else {
                    return None;
                };
                let primary = match fields.get(2)? {
                    fred::types::Value::Array(node) => node.get(2)?.as_string()?,
                    _ => return None,
                };
                Some((fields.first()?.as_i64()?, fields.get(1)?.as_i64()?, primary))
            })
            .collect();
        map.sort();
        if known.as_ref().is_some_and(|k| *k != map) {
            // Once now and once more a check later: the nodes learn a slot's new owner one by
            // one, so the first resubscribe may still reach the old owner, which then ends it.
            resubscribes = 2;
        }
        known = Some(map);
        if resubscribes > 0 {
            resubscribes -= 1;
            tracing::warn!("redis cluster slots moved: subscribing again");
            sinks.gap();
            if let Err(err) = subscriber.resubscribe_all().await {
                tracing::warn!(%err, "resubscribing after slots moved failed");
                resubscribes = resubscribes.max(1);
            }
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
