//! This gateway's share of presence (see `switchyard_broker::presence`): which users it holds
//! connections of in each room with presence, kept by one task that
//!
//! - holds an entry for a (room, user) when its first local connection joins the room, and
//!   releases it when the last one leaves — computed per batch of changes, so a connection
//!   that leaves and one that joins at once cost nothing;
//! - renews every entry it holds once per presence heartbeat (an entry lives three);
//! - sweeps the rooms it serves — where it has members or entries — once per sweep interval,
//!   and a room the debounce after one of its users left here, so leaves are announced, a
//!   dead gateway's included, by whichever gateways still serve the room.
//!
//! Sessions tell it what happens through a channel (a leave is sent from a `Drop`, so it
//! cannot wait); a join waits for its entry (bounded), so the subscribe reply that follows
//! already lists the user.

use crate::config::PresenceTiming;
use crate::hub::Hub;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use switchyard_broker::presence::{Holder, Presence};
use switchyard_protocol::presence::has_presence;
use switchyard_protocol::{Role, Room};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};

/// Entries renewed per call (one script call each on Redis).
const RENEW_CHUNK: usize = 1_000;

/// Presence calls (holds, releases, renewals, sweeps — each one short script call) this
/// gateway keeps in flight at once: pipelined on the connection instead of one round trip
/// after the other. One at a time, a ramp of a thousand joins a second (each a hold, then the
/// join's publish and the unlock: three round trips) left the keeper seconds behind on a
/// loaded machine — joins waited out [`ENTER_WAIT`] and the presence work spilled into
/// whatever came next (issue #17: the order-room bench's first step). Each call stays as
/// short as before; Redis serves other clients between them.
const IN_FLIGHT: usize = 32;

/// Changes applied together, at most.
const BATCH: usize = 4_096;

/// How long a join waits for its entry before the subscribe goes on without it.
const ENTER_WAIT: Duration = Duration::from_secs(3);

/// After a release, the room is swept this much later than the debounce (clock skew, the
/// release's own round trip).
const SWEEP_MARGIN: Duration = Duration::from_millis(100);

enum Change {
    Enter {
        room: Room,
        sub: Arc<str>,
        role: Role,
        done: Option<oneshot::Sender<()>>,
    },
    Leave {
        room: Room,
        sub: Arc<str>,
    },
}

/// The handle sessions use.
pub(crate) struct LocalPresence {
    changes: mpsc::UnboundedSender<Change>,
}

impl LocalPresence {
    /// Starts the task that keeps this gateway's presence.
    pub fn start(
        presence: Arc<dyn Presence>,
        hub: Arc<Hub>,
        node: String,
        timing: PresenceTiming,
    ) -> LocalPresence {
        let (changes, rx) = mpsc::unbounded_channel();
        let keeper = Keeper {
            presence,
            hub,
            node,
            timing,
            held: HashMap::new(),
            due: BTreeMap::new(),
        };
        tokio::spawn(keeper.run(rx));
        LocalPresence { changes }
    }

    /// A connection of `sub` joined `room` (a room with presence); returns once the user's
    /// entry is recorded (or after [`ENTER_WAIT`]).
    pub async fn enter(&self, room: &Room, sub: &Arc<str>, role: Role) {
        let (done, recorded) = oneshot::channel();
        let change = Change::Enter {
            room: room.clone(),
            sub: sub.clone(),
            role,
            done: Some(done),
        };
        if self.changes.send(change).is_ok() {
            let _ = tokio::time::timeout(ENTER_WAIT, recorded).await;
        }
    }

    /// Like [`LocalPresence::enter`], without waiting for the entry (a partner's presence in
    /// `admin:fleet`, which its own connection never reads).
    pub fn enter_detached(&self, room: &Room, sub: &Arc<str>, role: Role) {
        let _ = self.changes.send(Change::Enter {
            room: room.clone(),
            sub: sub.clone(),
            role,
            done: None,
        });
    }

    /// A connection of `sub` left `room`.
    pub fn leave(&self, room: &Room, sub: &Arc<str>) {
        let _ = self.changes.send(Change::Leave {
            room: room.clone(),
            sub: sub.clone(),
        });
    }
}

struct Keeper {
    presence: Arc<dyn Presence>,
    hub: Arc<Hub>,
    node: String,
    timing: PresenceTiming,
    /// Room → user → (role, local connections in the room).
    held: HashMap<Room, HashMap<Arc<str>, (Role, usize)>>,
    /// Rooms to sweep at a moment (a user left here: its leave is due then).
    due: BTreeMap<Instant, Vec<Room>>,
}

impl Keeper {
    async fn run(mut self, mut changes: mpsc::UnboundedReceiver<Change>) {
        let start = Instant::now();
        let mut renew =
            tokio::time::interval_at(start + self.timing.heartbeat, self.timing.heartbeat);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval_at(start + self.timing.sweep, self.timing.sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_due = self.due.keys().next().copied();
            // Biased: after a stall, this gateway's renewal goes before any sweep, so its own
            // live entries are never the ones found expired.
            tokio::select! {
                biased;
                _ = renew.tick() => self.renew().await,
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    let mut batch = vec![change];
                    while batch.len() < BATCH {
                        match changes.try_recv() {
                            Ok(change) => batch.push(change),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch).await;
                }
                _ = sweep.tick() => self.sweep_served().await,
                _ = tokio::time::sleep_until(next_due.unwrap_or(start)), if next_due.is_some() => {
                    self.sweep_due().await;
                }
            }
        }
    }

    /// Applies a batch of changes: per (room, user), only whether it went from no local
    /// connection to some (hold) or the other way (release) matters.
    async fn apply(&mut self, batch: Vec<Change>) {
        let mut before: HashMap<(Room, Arc<str>), (Role, bool)> = HashMap::new();
        let mut waiting = Vec::new();
        for change in batch {
            match change {
                Change::Enter {
                    room,
                    sub,
                    role,
                    done,
                } => {
                    let users = self.held.entry(room.clone()).or_default();
                    let was = users.get(&sub).is_some_and(|(_, n)| *n > 0);
                    before.entry((room, sub.clone())).or_insert((role, was));
                    users.entry(sub).or_insert((role, 0)).1 += 1;
                    waiting.extend(done);
                }
                Change::Leave { room, sub } => {
                    let Some(users) = self.held.get_mut(&room) else {
                        continue;
                    };
                    let Some((role, count)) = users.get_mut(&sub) else {
                        continue;
                    };
                    before
                        .entry((room.clone(), sub.clone()))
                        .or_insert((*role, true));
                    *count -= 1;
                    if *count == 0 {
                        users.remove(&sub);
                        if users.is_empty() {
                            self.held.remove(&room);
                        }
                    }
                }
            }
        }
        let mut holds: HashMap<Room, Vec<Holder>> = HashMap::new();
        let mut released = Vec::new();
        for ((room, sub), (role, was)) in before {
            let now = self
                .held
                .get(&room)
                .is_some_and(|users| users.contains_key(&sub));
            match (was, now) {
                (false, true) => holds.entry(room).or_default().push(Holder {
                    sub: sub.to_string(),
                    role,
                }),
                (true, false) => released.push((room, sub)),
                _ => {}
            }
        }
        let ttl = self.timing.ttl();
        let (presence, node) = (&self.presence, self.node.as_str());
        futures_util::stream::iter(&released)
            .for_each_concurrent(IN_FLIGHT, |(room, sub)| async move {
                if let Err(err) = presence.release(room, node, sub).await {
                    tracing::warn!(%err, %room, "presence release failed (the entry expires)");
                }
            })
            .await;
        let at = Instant::now() + self.timing.debounce + SWEEP_MARGIN;
        for (room, _) in released {
            self.due.entry(at).or_default().push(room);
        }
        futures_util::stream::iter(&holds)
            .for_each_concurrent(IN_FLIGHT, |(room, holders)| async move {
                if let Err(err) = presence.hold(room, node, holders, ttl).await {
                    tracing::warn!(%err, %room, "presence hold failed (retried at the next renewal)");
                }
            })
            .await;
        for done in waiting {
            let _ = done.send(());
        }
    }

    /// Renews every entry this gateway holds (and writes back any Redis lost).
    async fn renew(&self) {
        let ttl = self.timing.ttl();
        let (presence, node) = (&self.presence, self.node.as_str());
        let calls = self.held.iter().flat_map(|(room, users)| {
            let holders: Vec<Holder> = users
                .iter()
                .map(|(sub, (role, _))| Holder {
                    sub: sub.to_string(),
                    role: *role,
                })
                .collect();
            let chunks: Vec<Vec<Holder>> = holders
                .chunks(RENEW_CHUNK)
                .map(<[Holder]>::to_vec)
                .collect();
            chunks.into_iter().map(move |chunk| (room, chunk))
        });
        futures_util::stream::iter(calls)
            .for_each_concurrent(IN_FLIGHT, |(room, chunk)| async move {
                if let Err(err) = presence.hold(room, node, &chunk, ttl).await {
                    tracing::warn!(%err, %room, "presence renewal failed");
                }
            })
            .await;
    }

    /// Sweeps every room with presence this gateway serves: members here, or entries.
    async fn sweep_served(&self) {
        let mut rooms: Vec<Room> = self.hub.rooms_where(has_presence);
        rooms.extend(
            self.held
                .keys()
                .filter(|r| !self.hub.serves(r.as_str()))
                .cloned(),
        );
        self.sweep_all(rooms).await;
    }

    async fn sweep_due(&mut self) {
        let now = Instant::now();
        let later = self.due.split_off(&(now + Duration::from_nanos(1)));
        let due = std::mem::replace(&mut self.due, later);
        let mut rooms: Vec<Room> = due.into_values().flatten().collect();
        rooms.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        rooms.dedup();
        self.sweep_all(rooms).await;
    }

    /// One sweep call per room, [`IN_FLIGHT`] at a time.
    async fn sweep_all(&self, rooms: Vec<Room>) {
        let (presence, debounce) = (&self.presence, self.timing.debounce);
        futures_util::stream::iter(rooms)
            .for_each_concurrent(IN_FLIGHT, |room| async move {
                if let Err(err) = presence.sweep(&room, debounce).await {
                    tracing::debug!(%err, %room, "presence sweep failed");
                }
            })
            .await;
    }
}
