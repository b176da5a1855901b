//! One WebSocket connection: its loop over inbound frames, the outbound queue, heartbeats,
//! token expiry and shutdown, all in one task.
//!
//! ```text
//! run ─ join user:{sub} ─ welcome ─┬─ inbound frame → decode → op → reply
//!                                  ├─ outbound queue → write a batch, one flush
//!                                  ├─ heartbeat tick → idle check, ping
//!                                  ├─ token expiry → close 4001 (unless refreshed)
//!                                  ├─ kicked (slow consumer, revoked) → close 4003, 4501
//!                                  └─ shutdown → close 4000 at its moment in the spread
//!      leave every room ─ count and log the close ─ release the connection slot
//! ```
//!
//! The session is generic over its transport — any [`Sink`] of messages and [`Stream`] of
//! read results (the axum testing-websockets example) — so the paused-time tests in `tests`
//! drive a whole connection's life through channels, in milliseconds. Every timer is tokio's
//! (`tokio::time::Instant`, never std's), so a paused clock governs all of them.
//!
//! What a connection holds in the gateway — its rooms, its slot (hub registration, lease), its
//! place in the drain — is given back by [`Session`]'s `Drop` when the session did not finish
//! normally (a panic, a dropped task), so no panic can leave a dead member in the hub or a
//! gauge off by one.
//!
//! # Layout
//! - this file: the loop, the writes, the rooms joined, the end;
//! - `ops`: the ops a client sends;
//! - `chat`: the chat ops (`send`, `typing`, `read`) and the read state in order snapshots;
//! - `tests`: the paused-time tests.

mod chat;
mod ops;
#[cfg(test)]
mod tests;

use crate::Shared;
use crate::access::Refusal;
use crate::cursor::{Admit, Cursor, Joined, Recovery};
use crate::outbound::{Event, Mailbox, Outbound, Outgoing};
use crate::rate::TokenBucket;
use crate::slot::{Opened, Slot};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use switchyard_auth::Principal;
use switchyard_broker::{History, Publication};
use switchyard_protocol::client::StreamPosition;
use switchyard_protocol::close::Disconnect;
use switchyard_protocol::presence::{Present, members_present};
use switchyard_protocol::room::RoomKind;
use switchyard_protocol::server::{self, ErrorReply, Gap, Revoked, ServerMessage, Welcome};
use switchyard_protocol::{ErrorCode, OrderId, Role, Room};
use tokio::time::{Duration, Instant};
use tokio_util::task::task_tracker::TaskTrackerToken;

/// How long a closed connection waits for the peer's close reply (see [`linger`]).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Frames written before one flush when the queue holds many.
const MAX_BATCH: usize = 256;

/// Where a session writes: a WebSocket's sending half, or a channel in tests.
pub(crate) trait Transmit: Sink<Message> + Unpin {}
impl<T: Sink<Message> + Unpin> Transmit for T {}

/// What a session reads: a WebSocket's receiving half, or a channel in tests.
pub(crate) trait Receive: Stream<Item = Result<Message, axum::Error>> + Unpin {}
impl<T: Stream<Item = Result<Message, axum::Error>> + Unpin> Receive for T {}

/// How a session ended.
enum Exit {
    /// Close the socket, saying why.
    Close(Disconnect),
    /// The peer is gone (closed, reset, or unwritable); nothing more to send.
    Gone(&'static str),
}

/// What an op answers on success.
enum Reply {
    Plain,
    Room(Room),
    /// A chat message stored.
    Sent {
        room: Room,
        message: switchyard_protocol::chat::ChatMessage,
    },
    Subscribed {
        room: Room,
        position: StreamPosition,
        /// Set when the client asked for recovery.
        recovered: Option<bool>,
        /// When not (completely) recovered.
        snapshot: Option<Box<RawValue>>,
        /// With the snapshot of a room with presence: who is present.
        presence: Option<Vec<Present>>,
        /// The recovered events, written right after the reply.
        missed: Vec<Publication>,
    },
}

pub(crate) struct Session {
    conn_id: Arc<str>,
    who: Principal,
    out: Outbound,
    mailbox: Arc<Mailbox>,
    shared: Arc<Shared>,
    /// Rooms this connection is in, each with what its client has of the room's stream
    /// (looked up for every event this connection is sent). Bounded by `max_subscriptions`.
    rooms: Joined,
    ops: TokenBucket,
    /// Pings and pongs the client sends: answered by the WebSocket layer, so counted here, and
    /// a flood beyond the burst closes the connection (4500).
    pings: TokenBucket,
    /// Locations (partners) and chat messages (`SWITCHYARD_CHAT_RATE`/`_BURST`) this
    /// connection may send: most connections send neither, so each bucket is made on first use
    /// (full, as one made at the start and never used since would be): 8 bytes until then.
    locations: Option<Box<TokenBucket>>,
    chat_sends: Option<Box<TokenBucket>>,
    /// The order this partner was last found to carry, and when: location ops for it skip
    /// the backend for `CARRYING_TTL` (a reassignment is noticed within that).
    carrying: Option<(OrderId, Instant)>,
    /// What the welcome is made of — the user room's position read at the handshake and the
    /// handshake's `since` — until the welcome is sent (boxed: 8 bytes per connection after).
    user_welcome: Option<Box<(History, Option<StreamPosition>)>>,
    started: Instant,
    /// When the client last sent anything (a frame, a pong): the idle timeout counts from it.
    /// Here rather than in the loop's future, which every byte would push into a larger
    /// allocation class of its task (see `tests::sizes`).
    last_seen: Instant,
    /// When the last batch was written, and whether writes come faster than the write delay
    /// (then the mailbox is marked busy: see [`crate::write_delay`]).
    last_write: Instant,
    busy: bool,
    /// A partner's connection counts in `admin:fleet`'s presence from its welcome to its end.
    in_fleet: bool,
    /// Set when [`Session::run`] finished and gave back what the connection held; until then
    /// `Drop` does it.
    ended: bool,
    /// Held for the connection's life: its slot in the connection limits, and its place in
    /// the set of sessions a drain waits for.
    _slot: Slot,
    _tracked: TaskTrackerToken,
}

impl Session {
    pub fn new(shared: Arc<Shared>, who: Principal, opened: Opened) -> Session {
        let c = &shared.config;
        let mut rooms = Joined::default();
        rooms.insert(opened.user_room.keep(), Cursor::default());
        Session {
            ops: TokenBucket::new(c.op_rate, c.op_burst),
            locations: None,
            chat_sends: None,
            pings: TokenBucket::new(c.ping_rate, c.ping_burst),
            conn_id: opened.conn_id,
            who,
            out: opened.out,
            mailbox: opened.mailbox,
            rooms,
            user_welcome: Some(Box::new((opened.history, opened.since))),
            carrying: None,
            started: Instant::now(),
            last_seen: Instant::now(),
            last_write: Instant::now(),
            busy: false,
            in_fleet: false,
            ended: false,
            _slot: opened.slot,
            _tracked: shared.tracker.token(),
            shared,
        }
    }

    /// The connection's whole life. Called with the socket already split and the session
    /// boxed, so the task's future stays small (its size is per-connection memory).
    pub async fn run(mut self: Box<Self>, mut sink: impl Transmit, mut stream: impl Receive) {
        tracing::info!(conn = %self.conn_id, sub = %self.who.sub, role = %self.who.role, "connection opened");
        let exit = match (
            self.serve(&mut sink, &mut stream).await,
            self.mailbox.kicked(),
        ) {
            // A kick that outranks how the loop ended (a revoke over a slow write) wins.
            (Exit::Close(why), Some(kick)) if kick.outranks(why) => Exit::Close(kick),
            (exit, _) => exit,
        };
        self.mailbox.close();
        let (code, reason) = match exit {
            Exit::Close(why) => {
                let _ = tokio::time::timeout(
                    self.shared.config.write_timeout,
                    sink.send(close_message(why)),
                )
                .await;
                (why.code, why.reason)
            }
            Exit::Gone(reason) => (0, reason),
        };
        let joined: Vec<Room> = self.rooms.rooms().cloned().collect();
        for room in joined {
            self.leave(&room).await;
            self.rooms.remove_entry(room.as_str());
        }
        self.leave_fleet();
        self.ended = true;
        metrics::counter!("switchyard_connections_closed_total", "code" => code_label(code))
            .increment(1);
        tracing::info!(
            conn = %self.conn_id,
            sub = %self.who.sub,
            role = %self.who.role,
            duration_ms = self.started.elapsed().as_millis() as u64,
            close_code = code,
            reason,
            "connection closed"
        );
        if code != 0 {
            linger(&mut stream, self.shared.config.write_timeout).await;
        }
    }

    /// Sends the welcome — the user room, joined at the handshake, and its position read
    /// then — and any events recovered from the handshake's `since`.
    async fn welcome(&mut self, sink: &mut impl Transmit) -> Option<Exit> {
        let own_room = Room::of_user(&self.who.sub);
        let (history, since) = *self.user_welcome.take()?;
        let position = history.position.clone();
        let (recovered, missed) = self.recover(own_room.as_str(), history, since.as_ref());
        if self.who.role == Role::Partner {
            // Online in the fleet while connected (presence decides the rest: once per
            // partner across connections and gateways, debounced, expiring if we die).
            let sub = self.who.sub.as_arc();
            let fleet = Room::admin_fleet();
            self.shared
                .presence
                .enter_detached(&fleet, sub, Role::Partner);
            self.in_fleet = true;
        }
        let welcome = ServerMessage::Welcome(Welcome {
            conn: Cow::Borrowed(&self.conn_id),
            sub: Cow::Borrowed(&self.who.sub),
            role: self.who.role,
            rooms: vec![Cow::Borrowed(own_room.as_str())],
            positions: vec![(Cow::Borrowed(own_room.as_str()), position)],
            recovered,
        })
        .encode();
        self.send_with_missed(sink, welcome, missed).await
    }

    async fn serve(&mut self, sink: &mut impl Transmit, stream: &mut impl Receive) -> Exit {
        if let Some(exit) = Box::pin(self.welcome(sink)).await {
            return exit;
        }
        let shared = self.shared.clone();
        let mailbox = self.mailbox.clone();
        let config = &shared.config;
        // One timer for everything a connection has a date for: its next heartbeat, its
        // token's `exp`, and once the gateway drains, its own moment within the drain spread —
        // whichever is first (`ends`: the earlier of the last two). Not a timer each: every
        // byte here is per connection (issue #17, idle memory; a heartbeat `Interval` was a
        // boxed timer of its own). The drain reaches sessions as a kick through the mailbox, so
        // an idle connection waits on no shutdown future of its own either.
        let mut next_beat = Instant::now() + config.heartbeat_interval;
        let mut exp = self.who.exp;
        let mut close_at: Option<Instant> = None;
        if self.shared.shutdown.is_cancelled() {
            // Joined after the drain's sweep: take this connection's moment now.
            close_at = Some(self.drain_moment());
        }
        let mut ends = earliest(exp, close_at);
        let timer = tokio::time::sleep_until(next_beat.min(ends));
        tokio::pin!(timer);
        self.last_seen = Instant::now();

        loop {
            tokio::select! {
                biased;
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= ends {
                        return match close_at {
                            Some(at) if now >= at => Exit::Close(Disconnect::SHUTDOWN),
                            _ => Exit::Close(Disconnect::TOKEN_EXPIRED),
                        };
                    }
                    if now >= next_beat {
                        if self.last_seen.elapsed() > config.idle_timeout {
                            return Exit::Close(Disconnect::IDLE);
                        }
                        if let Some(exit) = Box::pin(self.write(sink, Message::Ping(Default::default()))).await {
                            return exit;
                        }
                        // The next beat a period after this one, or after now when this one
                        // came that late: missed beats are not made up in a burst.
                        next_beat += config.heartbeat_interval;
                        if next_beat <= now {
                            next_beat = now + config.heartbeat_interval;
                        }
                    }
                    timer.as_mut().reset(next_beat.min(ends));
                }
                _ = mailbox.ready() => {
                    match mailbox.kicked() {
                        // The drain: close at this connection's moment of the spread.
                        Some(Disconnect::SHUTDOWN) if close_at.is_none() => {
                            close_at = Some(self.drain_moment());
                            ends = earliest(exp, close_at);
                            timer.as_mut().reset(next_beat.min(ends));
                        }
                        Some(Disconnect::SHUTDOWN) | None => {}
                        Some(why) => return Exit::Close(why),
                    }
                    if let Some(exit) = Box::pin(self.write_batch(sink, &mailbox)).await {
                        return exit;
                    }
                }
                inbound = stream.next() => {
                    self.last_seen = Instant::now();
                    let message = match inbound {
                        None => return Exit::Gone("peer disconnected"),
                        Some(Ok(message)) => message,
                        Some(Err(err)) => return classify(err),
                    };
                    let reply = match message {
                        Message::Text(text) => {
                            let (reply, missed) = Box::pin(self.handle(&text)).await;
                            if missed.is_empty() {
                                reply
                            } else {
                                if let Some(exit) = Box::pin(self.send_with_missed(sink, reply, missed)).await {
                                    return exit;
                                }
                                continue;
                            }
                        }
                        Message::Binary(_) => error_frame(None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames"),
                        Message::Ping(_) | Message::Pong(_) => {
                            if !self.pings.try_take() {
                                return Exit::Close(Disconnect::PING_FLOOD);
                            }
                            continue;
                        }
                        Message::Close(_) => {
                            // tungstenite queued the close reply; send it.
                            // Boxed: inline, this rare wait would grow every session's future (issue #17).
                            let _ = Box::pin(tokio::time::timeout(config.write_timeout, sink.flush())).await;
                            return Exit::Gone("peer closed");
                        }
                    };
                    if let Some(exit) = Box::pin(self.send(sink, reply)).await {
                        return exit;
                    }
                    if self.who.exp != exp {
                        exp = self.who.exp;
                        ends = earliest(exp, close_at);
                        timer.as_mut().reset(next_beat.min(ends));
                    }
                }
            }
        }
    }

    /// Writes what is queued, up to [`MAX_BATCH`] frames, then flushes once.
    async fn write_batch(&mut self, sink: &mut impl Transmit, mailbox: &Mailbox) -> Option<Exit> {
        let mut batch = Vec::new();
        mailbox.take(&mut batch, MAX_BATCH);
        if batch.is_empty() {
            return None;
        }
        let taken = batch.len();
        // Fan-out latency is sampled once per batch: its oldest event's wait, from the bus to
        // the flush.
        let mut oldest = None;
        let write_timeout = self.shared.config.write_timeout;
        let write = async {
            for item in batch {
                let frame = match item {
                    Outgoing::Event(event) => {
                        oldest.get_or_insert(event.received);
                        self.admit(&event)
                    }
                    Outgoing::Revoke { room, reason } => self.revoked(room.as_str(), &reason).await,
                    Outgoing::Gap { room } => self.rooms.get_mut(room.as_str()).map(|cursor| {
                        cursor.gap();
                        let gap = ServerMessage::Gap(Gap {
                            room: Cow::Borrowed(room.as_str()),
                        });
                        Message::Text(gap.encode().into())
                    }),
                };
                if let Some(frame) = frame {
                    sink.feed(frame).await?;
                }
            }
            sink.flush().await
        };
        let result = bounded(write_timeout, write).await;
        if let (Ok(Ok(())), Some(oldest)) = (&result, oldest) {
            self.shared
                .hub
                .metrics
                .fanout_latency
                .record(oldest.elapsed().as_secs_f64());
        }
        if let Ok(Ok(())) = result {
            self.pace(mailbox, taken);
        }
        match result {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Exit::Gone("write failed")),
            Err(_) => Some(Exit::Close(Disconnect::SLOW)),
        }
    }

    /// After a write of `taken` items: the connection is busy when frames queue up behind each
    /// other or writes come less than the write delay apart — and then only until one write
    /// delay after this write, so the first event after a quiet spell is never held for the
    /// tick; it stops being busy as soon as a write carries one frame after a longer pause.
    fn pace(&mut self, mailbox: &Mailbox, taken: usize) {
        let now = Instant::now();
        let delay = self.shared.config.write_delay;
        let busy = taken >= 2 || now.duration_since(self.last_write) < delay;
        self.last_write = now;
        if busy || self.busy {
            self.busy = busy;
            mailbox.set_busy_until(busy.then(|| now + delay));
        }
    }

    /// The frame a queued event goes out as, if it still does: the room is still joined and
    /// the event is above what the client already has ([`Cursor::admit`]). The shared frame,
    /// or — first event of a new epoch — a copy that names the epoch.
    fn admit(&mut self, event: &Event) -> Option<Message> {
        let cursor = self.rooms.get_mut(event.room.as_str())?;
        match cursor.admit(&event.epoch, event.offset) {
            Admit::Send => Some(Message::Text(event.frame.clone())),
            Admit::SendWithEpoch => {
                let frame = server::event_with_epoch(&event.frame, &event.epoch)?;
                Some(Message::Text(frame.into()))
            }
            Admit::Drop => None,
        }
    }

    /// Stops tracking `room`; returns it if the connection was in it.
    fn forget(&mut self, room: &str) -> Option<Room> {
        self.rooms.remove_entry(room).map(|(room, _)| room)
    }

    /// The client is given the position `history` read for joined `room`: decides, with what
    /// this connection already wrote, whether the request's `since` is recovered (and which
    /// of the missed events still go out) or the client resyncs from a snapshot. Returns
    /// `recovered` for the reply (`None` without `since`) and the events to write after it.
    fn recover(
        &mut self,
        room: &str,
        history: History,
        since: Option<&StreamPosition>,
    ) -> (Option<bool>, Vec<Publication>) {
        let Some(cursor) = self.rooms.get_mut(room) else {
            return (since.map(|_| false), Vec::new());
        };
        let available = history.missed.is_some();
        let recovery = cursor.reposition(&history.position, since, available);
        let (recovered, missed) = match recovery {
            None => (None, Vec::new()),
            Some(Recovery::Resync) => (Some(false), Vec::new()),
            Some(Recovery::From(above)) => {
                let mut missed = history.missed.unwrap_or_default();
                missed.retain(|p| p.offset > above);
                if let Some(last) = missed.last() {
                    cursor.wrote(last.offset);
                }
                (Some(true), missed)
            }
        };
        if let Some(recovered) = recovered {
            count_recovery(recovered);
        }
        (recovered, missed)
    }

    /// The reply, then the recovered events, then one flush.
    async fn send_with_missed(
        &self,
        sink: &mut impl Transmit,
        reply: String,
        missed: Vec<Publication>,
    ) -> Option<Exit> {
        let write = async {
            sink.feed(Message::Text(reply.into())).await?;
            for publication in missed {
                match Utf8Bytes::try_from(publication.frame) {
                    Ok(frame) => sink.feed(Message::Text(frame)).await?,
                    Err(_) => continue,
                }
            }
            sink.flush().await
        };
        match bounded(self.shared.config.write_timeout, write).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Exit::Gone("write failed")),
            Err(_) => Some(Exit::Close(Disconnect::SLOW)),
        }
    }

    /// Leaves a room the server revoked; returns the frame telling the client, if it was in it.
    async fn revoked(&mut self, room: &str, reason: &str) -> Option<Message> {
        let room = self.forget(room)?;
        self.leave(&room).await;
        if matches!(self.carrying, Some((id, _)) if room.kind() == RoomKind::Order && OrderId::parse(room.id()) == Some(id))
        {
            // Reassigned away: location ops for it go back to the backend's check.
            self.carrying = None;
        }
        let frame = ServerMessage::Revoked(Revoked {
            room: Cow::Borrowed(room.as_str()),
            reason: Cow::Borrowed(reason),
        })
        .encode();
        Some(Message::Text(frame.into()))
    }

    async fn send(&self, sink: &mut impl Transmit, text: String) -> Option<Exit> {
        self.write(sink, Message::Text(text.into())).await
    }

    async fn write(&self, sink: &mut impl Transmit, message: Message) -> Option<Exit> {
        match bounded(self.shared.config.write_timeout, sink.send(message)).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Exit::Gone("write failed")),
            Err(_) => Some(Exit::Close(Disconnect::SLOW)),
        }
    }

    /// Joins `room` on the bus and in the hub.
    async fn join(&mut self, room: Room) -> Result<(), Refusal> {
        if let Err(err) = self.shared.backplane.bus.subscribe(&room).await {
            tracing::warn!(%err, "bus subscribe failed");
            return Err(Refusal::new(ErrorCode::Internal, "bus unavailable, retry"));
        }
        // Kept as the hub holds it: the events' name (see `Joined::get_mut`).
        let room = self.shared.hub.join_shared(&room, &self.out).0;
        self.shared.hub.counts.subscriptions.increment(1.0);
        if members_present(&room) {
            let sub = self.who.sub.as_arc();
            self.shared.presence.enter(&room, sub, self.who.role).await;
        }
        self.rooms.insert(room, Cursor::default());
        Ok(())
    }

    /// Leaves `room` in the hub and on the bus (already forgotten, or about to be).
    async fn leave(&self, room: &Room) {
        self.leave_hub(room);
        self.shared.backplane.bus.unsubscribe(room).await;
    }

    fn leave_hub(&self, room: &Room) {
        if self.shared.hub.leave(room.as_str(), self.out.conn) {
            self.shared.hub.counts.subscriptions.decrement(1.0);
            if members_present(room) {
                self.shared.presence.leave(room, self.who.sub.as_arc());
            }
        }
    }

    /// A partner's connection no longer counts in `admin:fleet`'s presence.
    fn leave_fleet(&mut self) {
        if std::mem::take(&mut self.in_fleet) {
            let fleet = Room::admin_fleet();
            self.shared.presence.leave(&fleet, self.who.sub.as_arc());
        }
    }

    /// This connection's moment to close, once the gateway drains: spread over the window.
    fn drain_moment(&self) -> Instant {
        Instant::now() + spread_delay(self.out.conn, self.shared.config.drain_spread)
    }
}

/// The safety net: a session that did not finish [`Session::run`] — it panicked, or its task
/// was dropped — still leaves its rooms (no dead member stays in the hub, the gauges come
/// back), is counted and logged as closed, and releases its slot and lease (its fields' own
/// drops). The bus is told in a task of its own: a drop cannot wait.
impl Drop for Session {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.mailbox.close();
        let joined: Vec<Room> = self.rooms.take_rooms();
        for room in &joined {
            self.leave_hub(room);
        }
        self.leave_fleet();
        if !joined.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let bus = self.shared.backplane.bus.clone();
            runtime.spawn(async move {
                for room in &joined {
                    bus.unsubscribe(room).await;
                }
            });
        }
        let reason = if std::thread::panicking() {
            "session panicked"
        } else {
            "session dropped"
        };
        metrics::counter!("switchyard_connections_closed_total", "code" => "0").increment(1);
        tracing::error!(
            conn = %self.conn_id,
            sub = %self.who.sub,
            role = %self.who.role,
            duration_ms = self.started.elapsed().as_millis() as u64,
            close_code = 0,
            reason,
            "connection closed"
        );
    }
}

/// Runs `write` to completion, bounded by `limit` — arming the timer only when the write cannot
/// complete at once (the socket's buffer is full). Nearly every write completes in its first
/// poll, so the hot path arms no timer per write (issue #17 §2).
async fn bounded<F: std::future::Future>(
    limit: Duration,
    write: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(done) = first {
        return Ok(done);
    }
    tokio::time::timeout(limit, write).await
}

/// `switchyard_connections_closed_total`'s `code` label: the codes of routine closes without an
/// allocation (one per connection, issue #17), any other as its number.
fn code_label(code: u16) -> Cow<'static, str> {
    match code {
        0 => Cow::Borrowed("0"),
        1000 => Cow::Borrowed("1000"),
        1001 => Cow::Borrowed("1001"),
        4000 => Cow::Borrowed("4000"),
        4001 => Cow::Borrowed("4001"),
        code => Cow::Owned(code.to_string()),
    }
}

/// After our close frame, reads (and drops) what the peer still sends until its close reply,
/// for at most [`CLOSE_LINGER`] (or the write timeout if shorter). A socket closed with unread
/// input is reset, and a reset can destroy the close frame before the peer reads it — a client
/// flooding the connection would never learn why it was closed.
async fn linger(stream: &mut impl Receive, write_timeout: Duration) {
    let drain = async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER.min(write_timeout), drain).await;
}

/// Time left until `exp` (seconds since the Unix epoch).
fn until_exp(exp: u64) -> Duration {
    Duration::from_secs(exp.saturating_sub(switchyard_auth::now_secs()))
}

/// This connection's moment in `[spread / 20, spread)`, spread evenly by a hash of its id.
fn spread_delay(conn: u64, spread: Duration) -> Duration {
    let spread_ms = spread.as_millis() as u64;
    if spread_ms == 0 {
        return Duration::ZERO;
    }
    let floor = spread_ms / 20;
    let mixed = conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    Duration::from_millis(floor + mixed % (spread_ms - floor).max(1))
}

/// Counts a subscribe (or handshake) with `since`: complete or resync.
fn count_recovery(recovered: bool) {
    let label = if recovered { "true" } else { "false" };
    metrics::counter!("switchyard_recoveries_total", "recovered" => label).increment(1);
}

/// The earlier of the token's expiry and the drain moment.
/// Saturating: an `exp` whose instant the clock cannot represent ends the connection at the
/// end of time, never with an overflow panic (tokens are capped, but not here).
fn earliest(exp: u64, close_at: Option<Instant>) -> Instant {
    const END_OF_TIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    let expires = now
        .checked_add(until_exp(exp))
        .unwrap_or_else(|| now + END_OF_TIME);
    close_at.map_or(expires, |at| at.min(expires))
}

fn error_frame(id: Option<i64>, error: ErrorCode, message: &str) -> String {
    ServerMessage::Error(ErrorReply {
        id,
        error,
        message: Cow::Borrowed(message),
    })
    .encode()
}

/// Maps a read error to how the session ends.
fn classify(err: axum::Error) -> Exit {
    match close_for(err) {
        Some(why) => Exit::Close(why),
        None => Exit::Gone("read failed"),
    }
}

/// The close frame that says `why`.
pub(crate) fn close_message(why: Disconnect) -> Message {
    Message::Close(Some(CloseFrame {
        code: why.code,
        reason: Utf8Bytes::from_static(why.reason),
    }))
}

/// The close a read error calls for (shared with the conformance echo); `None` when the
/// peer is simply gone.
pub(crate) fn close_for(err: axum::Error) -> Option<Disconnect> {
    use tungstenite::error::{CapacityError, Error as WsError};
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>()? {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some(Disconnect::MESSAGE_TOO_BIG)
        }
        WsError::Capacity(_) => Some(Disconnect::FRAME_TOO_BIG),
        WsError::Utf8(_) => Some(Disconnect::INVALID_UTF8),
        WsError::Protocol(_) => Some(Disconnect::PROTOCOL_ERROR),
        _ => None,
    }
}
