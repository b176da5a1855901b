//! [`RedisBus`]: publish (one script call per batch of events), reference-counted subscriptions,
//! history from the room's stream.
//!
//! # A subscription, then the position: one connection, no gap
//! A subscriber (a handshake's user room, a client's subscribe) joins a room's channel, then
//! reads the room's position (and, with `since`, what it missed); every event above that
//! position must then reach it live. That needs the subscription to be active in Redis before
//! the read runs. Redis runs one connection's commands in the order they came, and a channel
//! subscription is active from the moment its `(S)SUBSCRIBE` ran; so every position read
//! ([`POSITION_LUA`], and the handshake's [`ADMIT_LUA`]) goes on the *subscriber* connection
//! (RESP3, which allows commands there), after the subscription command: any event published
//! before the read is counted in the position, any after it comes on the subscription.
//!
//! This is also what makes a handshake one Redis round trip. On one Redis, fred answers a
//! `SUBSCRIBE` once it is written to the connection (its confirmation comes later, out of
//! band), so the subscription costs the handshake no round trip of its own: the manager hands
//! the command to the connection and answers, and the handshake's one script follows it there.
//! (Reading on the command connection instead, as before, could overtake the `SUBSCRIBE` still
//! in the subscriber's write buffer: an event published in between was lost for the client.)
//! On a cluster fred waits for each `SSUBSCRIBE`'s confirmation (to follow a `MOVED`), so a
//! handshake waits for it and then the script: two round trips, on the shard owning both.
//!
//! Every `SSUBSCRIBE` names one channel: Redis confirms each channel of a command with a reply
//! of its own, and fred matches only the first to the command — a second would be taken as
//! the reply to the next command on the connection, a position read's.

use super::{eval, room_channel, room_key, script, unavailable};
use crate::{
    BrokerError, Bus, Claim, Deliver, History, HistoryConfig, Outgoing, Publication, Sinks,
};
use async_trait::async_trait;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::scripts::Script;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use switchyard_protocol::Room;
use switchyard_protocol::client::StreamPosition;
use switchyard_protocol::server::event_frame_parts;
use tokio::sync::{mpsc, oneshot};

/// A room's epoch: the Lua function `room_epoch(off, hist, key, fresh, ttl)` at the start of
/// every script below (with `node`, this node's replication id, read once per script call).
/// An epoch is valid while the room's keys are the ones it was created with: it is stored
/// with the replication id of the node that wrote it (`"<replid> <epoch>"`). When the key is
/// missing (the room's first publish or subscribe; or its keys were flushed, evicted, expired,
/// or lost in a restart) or was written under another replication history (a replica promoted
/// after its primary failed, which may have lost the primary's newest writes — and so offsets
/// it would hand out again; or a shard the room's slot moved to, which cannot vouch for them
/// either), the room starts a new epoch, `fresh`: offsets and history are dropped and count
/// from 1 again. `ttl` (ms) is how long a new epoch lives: a publish gives it the offset
/// counter's TTL (and refreshes it with every event); a read (position or subscribe of a room
/// nobody published to) gives it only the history TTL, so reads of unknown rooms leave no key
/// behind for days — once it lapses with nothing published, a client holding it is told
/// `recovered:false` and resyncs, which loses nothing.
const EPOCH_FN: &str = r#"
local node = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
local function room_epoch(off, hist, key, fresh, ttl)
  local stored = redis.call('GET', key)
  if stored then
    local sep = string.find(stored, ' ', 1, true)
    if sep and string.sub(stored, 1, sep - 1) == node then
      return string.sub(stored, sep + 1)
    end
  end
  redis.call('DEL', off, hist)
  redis.call('SET', key, node .. ' ' .. fresh, 'PX', ttl)
  return fresh
end
"#;

/// The epoch of the one room a read script is about: KEYS = offset key, history key, epoch
/// key (one hash slot: `{room}`); ARGV[1] = a fresh epoch, ARGV[2] = its lifetime (ms).
const EPOCH_LUA: &str = "local epoch = room_epoch(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])\n";

/// Publishes a batch of events atomically (issue #17 §2: several rooms' events in one script
/// call instead of one `EVALSHA` each), in order: for event i, KEYS[3i-2..3i] are its room's
/// offset, history and epoch keys (on a cluster every room of one call is in one hash slot:
/// the caller groups them), ARGV[3i+4..3i+6] its room's channel, frame head and frame tail.
/// Shared: ARGV[1] = a fresh epoch, ARGV[2] = the offset keys' lifetime (ms: the offset TTL
/// plus the refresh slack), ARGV[3] = history size, ARGV[4] = the history's lifetime (ms: the
/// history TTL plus the slack), ARGV[5] = `PUBLISH`, or `SPUBLISH` on a cluster (the channel
/// is in the room's slot), ARGV[6] = the refresh slack (ms, [`refresh_slack_ms`]). Per event:
/// the room's epoch ([`EPOCH_FN`]), its offset incremented, the frame appended to its history
/// stream (entry id `<offset>-1`, at most ARGV[3] entries) and `"<offset> <epoch> <frame>"`
/// published on its channel. The epoch travels with every message: a gateway learns a room's
/// new epoch from its first event. Returns the offsets.
///
/// Expiry: the offset counter and the epoch live at least the offset TTL, and the history at
/// least the history TTL, after the room's last event — as when every event refreshed all
/// three (three `PEXPIRE`s of seven commands per event), but they are refreshed only
/// when the epoch's remaining lifetime has fallen below the offset TTL, i.e. at most once per
/// slack: each refresh sets the lifetimes with the slack on top, so an event within the slack
/// of the last refresh is still covered by it. A counter that starts (offset 1: new epoch,
/// or evicted) is always refreshed. Between refreshes an event costs one `PTTL` instead of
/// three `PEXPIRE`s (callgrind, 64 events per call, scripts/publish-cost note in the commit:
/// ~80.7k -> ~62k Redis instructions per event; see the commit).
const PUBLISH_LUA: &str = r#"
local offsets = {}
local size = tonumber(ARGV[3])
local floor = tonumber(ARGV[2]) - tonumber(ARGV[6])
for i = 1, #KEYS / 3 do
  local off, hist, key = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local a = 3 * i + 4
  local epoch = room_epoch(off, hist, key, ARGV[1], ARGV[2])
  local n = redis.call('INCR', off)
  local refresh = n == 1 or redis.call('PTTL', key) < floor
  if refresh then
    redis.call('PEXPIRE', off, ARGV[2])
    redis.call('PEXPIRE', key, ARGV[2])
  end
  -- One number-to-string conversion per event (Lua formats a number with sprintf each time
  -- it is concatenated).
  local offset = tostring(n)
  local frame = ARGV[a + 1] .. offset .. ARGV[a + 2]
  if size > 0 then
    -- pcall: a history that cannot take the entry (ids out of order after an eviction) must
    -- not stop the publish; recovery then finds the gap and answers "resync".
    redis.pcall('XADD', hist, 'MAXLEN', ARGV[3], offset .. '-1', 'f', frame)
    if refresh then
      redis.call('PEXPIRE', hist, ARGV[4])
    end
  end
  redis.call(ARGV[5], ARGV[a], offset .. ' ' .. epoch .. ' ' .. frame)
  offsets[i] = n
end
return offsets
"#;

/// How long after its last refresh a room's keys may go without one ([`PUBLISH_LUA`]): a
/// sixteenth of the shorter of the offset and history TTLs (ms; 18.75 s with the defaults), so
/// a room with an event at least that often has its keys' expiry refreshed once per slack, not
/// per event, and every key still lives at least its TTL after the room's last event.
pub(crate) fn refresh_slack_ms(offset_ttl_ms: i64, history_ttl_ms: i64) -> i64 {
    offset_ttl_ms.min(history_ttl_ms).max(0) / 16
}

/// Events one publish script call takes at most (a longer batch is split): bounds the time
/// Redis spends in one call, during which it serves nobody else.
pub const MAX_PUBLISH_BATCH: usize = 256;

/// The room's position — its epoch ([`EPOCH_LUA`]) and last offset — and, when ARGV[3] is
/// a number, the history entries after that offset, all read atomically (into `result`,
/// returned by [`POSITION_LUA`], extended by [`ADMIT_LUA`]).
const POSITION_READ_LUA: &str = r#"
local offset = redis.call('GET', KEYS[1]) or '0'
local result = {epoch, offset}
if ARGV[3] ~= '' then
  local entries = redis.call('XRANGE', KEYS[2], (tonumber(ARGV[3]) + 1) .. '-1', '+')
  for _, entry in ipairs(entries) do
    table.insert(result, entry[1])
    table.insert(result, entry[2][2])
  end
end
"#;

/// [`POSITION_READ_LUA`]'s reply.
const POSITION_LUA: &str = "return result\n";

/// A handshake's one script (issue #17 §2): the connection's lease claim
/// ([`super::leases::CLAIM_FN`] on KEYS[4], the user's lease set — in the user room's hash
/// slot — with ARGV[4..6] = conn id, lease ms, limit) and the user room's position, atomically;
/// the reply is the position's with the claim's outcome (`"1"` or `"0"`) in front.
const ADMIT_LUA: &str = r#"
local claimed = claim(KEYS[4], ARGV[4], ARGV[5], ARGV[6])
table.insert(result, 1, tostring(claimed))
return result
"#;

/// Rooms travel as [`Room`]s (a shared name): the manager's maps hold the same name the hub
/// holds, not a copy per map (issue #17, idle memory).
enum Interest {
    Join(Room, oneshot::Sender<Result<(), String>>),
    Leave(Room),
    /// Subscribe again to the rooms held in these hash slots (every room: `None`), then tell
    /// exactly those rooms' members `gap`.
    Resubscribe(Option<HashSet<u16>>),
}

/// A handle to ask the subscription manager to subscribe again (after a reconnect, a slot
/// move or a failover). Every (re)subscription goes through the manager, which alone knows
/// which rooms have members: nothing revives a room it has just left.
#[derive(Clone)]
pub(super) struct Resubscriber(mpsc::Sender<Interest>);

impl Resubscriber {
    /// The rooms in `slots` (every room: `None`).
    pub(super) async fn resubscribe(&self, slots: Option<HashSet<u16>>) {
        let _ = self.0.send(Interest::Resubscribe(slots)).await;
    }
}

/// A join sent to the manager whose caller may stop waiting for the answer: dropped before
/// the answer came (`room` still set), it waits for it off the caller's path and, if the join
/// went through, sends the matching leave — so a given-up join leaves no member counted.
struct PendingJoin {
    room: Option<Room>,
    reply: oneshot::Receiver<Result<(), String>>,
    interest: mpsc::Sender<Interest>,
}

impl Drop for PendingJoin {
    fn drop(&mut self) {
        let Some(room) = self.room.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (reply, interest) = (
            std::mem::replace(&mut self.reply, oneshot::channel().1),
            self.interest.clone(),
        );
        runtime.spawn(async move {
            if let Ok(Ok(())) = reply.await {
                let _ = interest.send(Interest::Leave(room)).await;
            }
        });
    }
}

/// Redis [`Bus`].
pub struct RedisBus {
    client: Client,
    subscriber: SubscriberClient,
    /// The subscriber connection as a command client: where position reads go, after the
    /// subscriptions (see the module's doc).
    reads: Client,
    publish_script: Script,
    position_script: Script,
    admit_script: Script,
    prefix: String,
    offset_ttl_ms: i64,
    history: HistoryConfig,
    /// `PUBLISH`, or `SPUBLISH` on a cluster (sharded pub/sub).
    publish_command: &'static str,
    /// On a cluster: a script's keys must share one hash slot.
    sharded: bool,
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
        let sharded = config.is_cluster();
        let channels = Channels {
            subscriber: subscriber.to_client(),
            prefix: config.prefix.clone(),
            sharded,
            batch_timeout: config.subscribe_timeout,
        };
        tokio::spawn(manage(channels, requests, sinks.clone()));
        Ok(Arc::new(RedisBus {
            publish_script: script(&client, &format!("{EPOCH_FN}{PUBLISH_LUA}")).await?,
            position_script: script(
                &client,
                &format!("{EPOCH_FN}{EPOCH_LUA}{POSITION_READ_LUA}{POSITION_LUA}"),
            )
            .await?,
            admit_script: script(
                &client,
                &format!(
                    "{}{EPOCH_FN}{EPOCH_LUA}{POSITION_READ_LUA}{ADMIT_LUA}",
                    super::leases::CLAIM_FN
                ),
            )
            .await?,
            client,
            reads: subscriber.to_client(),
            subscriber,
            prefix: config.prefix.clone(),
            offset_ttl_ms: config.offset_ttl.as_millis() as i64,
            history: config.history,
            publish_command: if sharded { "SPUBLISH" } else { "PUBLISH" },
            sharded,
            interest,
            sinks,
        }))
    }
}

impl RedisBus {
    pub(super) fn resubscriber(&self) -> Resubscriber {
        Resubscriber(self.interest.clone())
    }

    /// One [`PUBLISH_LUA`] call for `events` (rooms with their frame split around the offset;
    /// on a cluster all in one hash slot): their offsets, in order.
    async fn publish_script_call<R: std::borrow::Borrow<Room>>(
        &self,
        events: &[(R, String, String)],
    ) -> Result<Vec<u64>, BrokerError> {
        let offsets: Vec<i64> = eval(&self.client, &self.publish_script, || {
            let mut keys = Vec::with_capacity(3 * events.len());
            let mut args = Vec::with_capacity(6 + 3 * events.len());
            let history_ttl_ms = self.history.ttl.as_millis().max(1) as i64;
            let slack = refresh_slack_ms(self.offset_ttl_ms, history_ttl_ms);
            args.extend([
                crate::new_epoch(),
                (self.offset_ttl_ms + slack).to_string(),
                self.history.size.to_string(),
                (history_ttl_ms + slack).to_string(),
                self.publish_command.to_owned(),
                slack.to_string(),
            ]);
            for (room, head, tail) in events {
                let room = room.borrow();
                keys.extend(self.room_keys(room));
                args.extend([
                    room_channel(&self.prefix, room.as_str()),
                    head.clone(),
                    tail.clone(),
                ]);
            }
            (keys, args)
        })
        .await
        .map_err(unavailable)?;
        Ok(offsets.into_iter().map(|o| o as u64).collect())
    }

    /// [`POSITION_READ_LUA`]'s arguments: a fresh epoch, its lifetime, `since`'s offset.
    fn position_args(&self, since: Option<&StreamPosition>) -> Vec<String> {
        vec![
            crate::new_epoch(),
            // An epoch this read creates lives as long as history would (EPOCH_LUA).
            self.history.ttl.as_millis().max(1).to_string(),
            since.map(|s| s.offset.to_string()).unwrap_or_default(),
        ]
    }

    /// A handshake's lease claim (in `lease_key`, the user's lease set in the user room's hash
    /// slot) and its user room's position, in one script ([`ADMIT_LUA`]) on the subscriber
    /// connection, after the room's subscription: one round trip.
    pub(super) async fn claim_and_read(
        &self,
        lease_key: String,
        claim: &Claim<'_>,
        room: &Room,
        since: Option<&StreamPosition>,
    ) -> Result<(bool, History), BrokerError> {
        let mut reply: Vec<String> = eval(&self.reads, &self.admit_script, || {
            let mut keys = self.room_keys(room);
            keys.push(lease_key.clone());
            let mut args = self.position_args(since);
            args.extend(super::leases::claim_args(claim));
            (keys, args)
        })
        .await
        .map_err(unavailable)?;
        let claimed = !reply.is_empty() && reply.remove(0) == "1";
        Ok((claimed, history_of(room, since, reply)))
    }

    /// The room's offset counter, history stream and epoch: one hash slot (`{room}`).
    fn room_keys(&self, room: &Room) -> Vec<String> {
        ["off", "hist", "epoch"]
            .iter()
            .map(|kind| room_key(&self.prefix, kind, room.as_str()))
            .collect()
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
        let parts = [(room, head, tail)];
        let offsets = self.publish_script_call(&parts).await?;
        offsets
            .first()
            .copied()
            .ok_or_else(|| BrokerError::Unavailable("the publish script returned nothing".into()))
    }

    /// One script call per [`MAX_PUBLISH_BATCH`] events on one Redis; on a cluster one per
    /// hash slot (a script's keys must share one), in the events' order within each — so
    /// per room, since a room's keys are all in its slot. The calls go out at once (fred
    /// pipelines them, per node on a cluster). A call that fails fails its events only.
    async fn publish_batch(&self, events: Vec<Outgoing>) -> Vec<Result<u64, BrokerError>> {
        let parts: Vec<(Room, String, String)> = events
            .into_iter()
            .map(|e| {
                let (head, tail) = event_frame_parts(e.room.as_str(), &e.event, &e.data);
                (e.room, head, tail)
            })
            .collect();
        // Indices of the events of each call, in order.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        if self.sharded {
            let mut by_slot: BTreeMap<u16, usize> = BTreeMap::new();
            for (i, (room, _, _)) in parts.iter().enumerate() {
                let key = room_key(&self.prefix, "off", room.as_str());
                let slot = fred::util::redis_keyslot(key.as_bytes());
                let group = *by_slot.entry(slot).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[group].push(i);
            }
        } else {
            groups.push((0..parts.len()).collect());
        }
        let calls = groups
            .iter()
            .flat_map(|group| group.chunks(MAX_PUBLISH_BATCH))
            .map(|indices| {
                let batch: Vec<(&Room, String, String)> = indices
                    .iter()
                    .map(|&i| (&parts[i].0, parts[i].1.clone(), parts[i].2.clone()))
                    .collect();
                async move { (indices, self.publish_script_call(&batch).await) }
            });
        let mut results: Vec<Result<u64, BrokerError>> = (0..parts.len())
            .map(|_| Err(BrokerError::Unavailable("not published".into())))
            .collect();
        for (indices, outcome) in futures_util::future::join_all(calls).await {
            match outcome {
                Ok(offsets) if offsets.len() == indices.len() => {
                    for (&i, offset) in indices.iter().zip(offsets) {
                        results[i] = Ok(offset);
                    }
                }
                Ok(_) => {
                    for &i in indices {
                        results[i] = Err(BrokerError::Unavailable(
                            "the publish script returned the wrong number of offsets".into(),
                        ));
                    }
                }
                Err(err) => {
                    for &i in indices {
                        results[i] = Err(BrokerError::Unavailable(err.to_string()));
                    }
                }
            }
        }
        results
    }

    /// Cancellation-safe: a caller that stops waiting (a handshake past its deadline) is not
    /// left counted as a member — once the manager answers, a join that went through is
    /// undone with a leave.
    async fn subscribe(&self, room: &Room) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.interest
            .send(Interest::Join(room.clone(), tx))
            .await
            .map_err(|_| BrokerError::Closed)?;
        let mut pending = PendingJoin {
            room: Some(room.clone()),
            reply: rx,
            interest: self.interest.clone(),
        };
        let reply = (&mut pending.reply).await;
        pending.room = None;
        reply
            .map_err(|_| BrokerError::Closed)?
            .map_err(BrokerError::Unavailable)
    }

    async fn unsubscribe(&self, room: &Room) {
        let _ = self.interest.send(Interest::Leave(room.clone())).await;
    }

    /// Position and history come from Redis in one atomic script call (which starts a new
    /// epoch when the room has none, as a publish would), on the subscriber connection after
    /// the room's subscription (the module's doc: no gap). A recovery is
    /// complete only when the epoch matches and the stream still holds the entry right after
    /// `since` (and every one after it, which the stream's consecutive ids guarantee).
    async fn history(
        &self,
        room: &Room,
        since: Option<&StreamPosition>,
    ) -> Result<History, BrokerError> {
        let reply: Vec<String> = eval(&self.reads, &self.position_script, || {
            (self.room_keys(room), self.position_args(since))
        })
        .await
        .map_err(unavailable)?;
        Ok(history_of(room, since, reply))
    }

    fn attach(&self, sink: Arc<dyn Deliver>) {
        self.sinks.attach(sink);
    }

    fn is_ready(&self) -> bool {
        self.client.is_connected() && self.subscriber.is_connected()
    }
}

/// A room's position script reply (`[epoch, offset, id, frame, id, frame, …]`) as its
/// [`History`]: complete only when the epoch matches and the stream still holds the entry
/// right after `since` (and every one after it, which the stream's consecutive ids
/// guarantee).
fn history_of(room: &Room, since: Option<&StreamPosition>, reply: Vec<String>) -> History {
    let mut fields = reply.into_iter();
    let epoch = fields.next().unwrap_or_default();
    let offset: u64 = fields.next().and_then(|o| o.parse().ok()).unwrap_or(0);
    let shared_epoch: Arc<str> = epoch.as_str().into();
    let mut entries = Vec::new();
    while let (Some(id), Some(frame)) = (fields.next(), fields.next()) {
        let entry_offset = id.split('-').next().and_then(|o| o.parse::<u64>().ok());
        if let Some(entry_offset) = entry_offset {
            entries.push(Publication {
                room: room.clone(),
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
    History { position, missed }
}

/// Rooms' channels on the subscriber connection: classic pub/sub on one Redis, sharded pub/sub
/// on a cluster — where a gateway's `SSUBSCRIBE` goes to the shard owning the room's slot, one
/// command per room (the module's doc), its `SUNSUBSCRIBE` one per slot (Redis refuses channels
/// of several slots in one), and a message reaches only that shard's subscribers instead of
/// being broadcast to every node.
struct Channels {
    /// The subscriber connection, through a plain client handle: a [`SubscriberClient`] also
    /// keeps its own copy of every channel name subscribed (for its `resubscribe_all`, which
    /// nothing here calls — [`manage`] resubscribes itself), ≈ 100 bytes per room.
    subscriber: Client,
    prefix: String,
    sharded: bool,
    /// How long one batch of subscriptions may take on a cluster (one command per room,
    /// [`SLOTS_IN_FLIGHT`] pipelined): no command starts after it, and the rooms not reached
    /// fail.
    batch_timeout: std::time::Duration,
}

impl Channels {
    /// The hash slot of the room's channel (and keys).
    fn slot(&self, room: &str) -> u16 {
        fred::util::redis_keyslot(room_channel(&self.prefix, room).as_bytes())
    }

    /// Subscribes to (or unsubscribes from) the rooms' channels; the outcome per group of
    /// rooms sent together.
    async fn change(
        &self,
        rooms: &[Room],
        subscribe: bool,
    ) -> Vec<(Vec<Room>, Result<(), fred::error::Error>)> {
        let deadline = tokio::time::Instant::now() + self.batch_timeout;
        if rooms.is_empty() {
            return Vec::new();
        }
        let channel = |room: &Room| room_channel(&self.prefix, room.as_str());
        if !self.sharded {
            let channels: Vec<String> = rooms.iter().map(channel).collect();
            let result = if subscribe {
                self.subscriber.subscribe(channels).await
            } else {
                self.subscriber.unsubscribe(channels).await
            };
            return vec![(rooms.to_vec(), result)];
        }
        // A subscription names one channel (the module's doc: a second channel's confirmation
        // would answer the next command on the connection); an unsubscription every channel
        // of one slot (fred drops their confirmations).
        let groups: Vec<Vec<Room>> = if subscribe {
            rooms.iter().map(|room| vec![room.clone()]).collect()
        } else {
            let mut by_slot: BTreeMap<u16, Vec<Room>> = BTreeMap::new();
            for room in rooms {
                by_slot
                    .entry(self.slot(room.as_str()))
                    .or_default()
                    .push(room.clone());
            }
            by_slot.into_values().collect()
        };
        // Up to SLOTS_IN_FLIGHT commands pipelined (fred routes each to the slot's owner).
        // Not one at a time: a gateway taking thousands of new rooms a second (a ramp of
        // connections, each with its own user room in a slot of its own) would wait a round
        // trip per room, one after the other — the queue that made the cluster benchmark's
        // handshakes time out (issue #13). A command that fails (a MOVED
        // during a resharding: fred does not follow it for pipelined commands) fails only its
        // rooms: their joiners get an error, a resubscription retries them. A subscribe batch
        // has a deadline (each command has the command timeout besides): its joiners wait for
        // it, and no command starts after it.
        let batch = groups.into_iter().map(|rooms| async move {
            if subscribe && tokio::time::Instant::now() >= deadline {
                let late = fred::error::Error::new(
                    fred::error::ErrorKind::Timeout,
                    "the subscription batch ran out of time (SWITCHYARD_REDIS_SUBSCRIBE_TIMEOUT_MS)",
                );
                return (rooms, Err(late));
            }
            let channels: Vec<String> = rooms.iter().map(channel).collect();
            let result = if subscribe {
                self.subscriber.ssubscribe(channels).await
            } else {
                self.subscriber.sunsubscribe(channels).await
            };
            (rooms, result)
        });
        futures_util::stream::iter(batch)
            .buffer_unordered(SLOTS_IN_FLIGHT)
            .collect()
            .await
    }
}

/// Shard (un)subscribe commands a cluster batch keeps in flight at once.
const SLOTS_IN_FLIGHT: usize = 64;

/// How long the manager waits before subscribing again to rooms whose resubscription failed.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts local members per room and turns changes into batched SUBSCRIBE/UNSUBSCRIBE; subscribes
/// again on request (reconnects, slot moves) and then tells exactly the rooms resubscribed
/// `gap` — after their subscription is live again, so a member recovering from history misses
/// nothing published after its recovery.
async fn manage(channels: Channels, mut requests: mpsc::Receiver<Interest>, sinks: Sinks) {
    let mut members: HashMap<Room, usize> = HashMap::new();
    // What Redis has been told: rooms with a live subscription.
    let mut subscribed: HashSet<Room> = HashSet::new();
    // Rooms whose resubscription failed: tried again every RETRY.
    let mut retry: HashSet<Room> = HashSet::new();
    const MAX_BATCH: usize = 10_000;
    loop {
        let first = if retry.is_empty() {
            requests.recv().await
        } else {
            match tokio::time::timeout(RETRY, requests.recv()).await {
                Ok(request) => request,
                Err(_) => Some(Interest::Resubscribe(Some(HashSet::new()))),
            }
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut touched: HashSet<Room> = HashSet::new();
        let mut waiters: Vec<(Room, oneshot::Sender<Result<(), String>>)> = Vec::new();
        // Slots to subscribe again (`None`: all).
        let mut again: Option<Option<HashSet<u16>>> = None;
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
                Interest::Resubscribe(slots) => {
                    again = Some(match (again, slots) {
                        (Some(None), _) | (_, None) => None,
                        (Some(Some(mut known)), Some(slots)) => {
                            known.extend(slots);
                            Some(known)
                        }
                        (None, Some(slots)) => Some(slots),
                    });
                }
            }
        }
        let join: Vec<Room> = touched
            .iter()
            .filter(|r| members.contains_key(*r) && !subscribed.contains(*r))
            .cloned()
            .collect();
        let leave: Vec<Room> = touched
            .iter()
            .filter(|r| !members.contains_key(*r) && subscribed.contains(*r))
            .cloned()
            .collect();
        let mut failed: HashSet<Room> = HashSet::new();
        let mut failure = String::new();
        for (rooms, result) in channels.change(&join, true).await {
            match result {
                Ok(()) => subscribed.extend(rooms),
                Err(err) => {
                    tracing::warn!(%err, rooms = rooms.len(), "redis (S)SUBSCRIBE failed");
                    failure = err.to_string();
                    failed.extend(rooms);
                }
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
        // Forgotten either way: a failed UNSUBSCRIBE only costs unwanted traffic (dropped by
        // the hub: no members) until the connection is renewed.
        for (rooms, result) in channels.change(&leave, false).await {
            if let Err(err) = result {
                tracing::warn!(%err, rooms = rooms.len(), "redis (S)UNSUBSCRIBE failed");
            }
        }
        for room in &leave {
            subscribed.remove(room);
            retry.remove(room);
        }
        if again.is_some() || !retry.is_empty() {
            let rooms: Vec<Room> = subscribed
                .iter()
                .filter(|room| {
                    retry.contains(*room)
                        || match &again {
                            Some(None) => true,
                            Some(Some(slots)) => slots.contains(&channels.slot(room.as_str())),
                            None => false,
                        }
                })
                .cloned()
                .collect();
            retry.clear();
            let mut renewed = Vec::with_capacity(rooms.len());
            for (rooms, result) in channels.change(&rooms, true).await {
                match result {
                    Ok(()) => renewed.extend(rooms),
                    Err(err) => {
                        tracing::warn!(%err, rooms = rooms.len(), "redis resubscribe failed; retrying");
                        retry.extend(rooms);
                    }
                }
            }
            if !renewed.is_empty() {
                tracing::info!(
                    rooms = renewed.len(),
                    "redis subscriptions renewed: rooms told gap"
                );
                sinks.gap_rooms(&renewed);
            }
        }
        metrics::gauge!("switchyard_bus_subscribed_rooms").set(subscribed.len() as f64);
    }
}
