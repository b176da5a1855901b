//! One WebSocket connection: its loop over inbound frames, the outbound queue, heartbeats,
//! token expiry and shutdown, all in one task.
//!
//! ```text
//! run ─ join user:{sub} ─ welcome ─┬─ inbound frame → decode → op → reply
//!                                  ├─ outbound queue → write a batch, one flush
//!                                  ├─ heartbeat tick → idle check, ping
//!                                  ├─ token expiry → close 4001 (unless refreshed)
//!                                  ├─ kicked (slow consumer) → close 4003
//!                                  └─ shutdown → close 4000 at its moment in the spread
//!      leave every room ─ release the connection slot
//! ```

use crate::access::{self, Refusal};
use crate::cursor::{Admit, Cursor, Recovery};
use crate::outbound::{Event, Mailbox, Outbound, Outgoing};
use crate::rate::TokenBucket;
use crate::{Shared, SlotGuard};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_auth::Principal;
use switchyard_broker::{History, Publication};
use switchyard_protocol::client::{ClientOp, LocationFix, StreamPosition};
use switchyard_protocol::close::Disconnect;
use switchyard_protocol::events::PartnerLocation;
use switchyard_protocol::room::RoomKind;
use switchyard_protocol::server::{
    self, ErrorReply, Gap, OkReply, Revoked, ServerMessage, Welcome,
};
use switchyard_protocol::{BuiltinEvent, ErrorCode, Location, OrderId, Role, Room};
use tokio_util::task::task_tracker::TaskTrackerToken;

/// How long a partner's verified assignment is trusted by its location ops.
const CARRYING_TTL: Duration = Duration::from_secs(2);

/// How long a closed connection waits for the peer's close reply (see [`linger`]).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Frames written before one flush when the queue holds many.
const MAX_BATCH: usize = 256;

pub(crate) type Sink = SplitSink<WebSocket, Message>;
pub(crate) type Stream = SplitStream<WebSocket>;

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
    Subscribed {
        room: Room,
        position: StreamPosition,
        /// Set when the client asked for recovery.
        recovered: Option<bool>,
        /// When not (completely) recovered.
        snapshot: Option<Box<RawValue>>,
        /// The recovered events, written right after the reply.
        missed: Vec<Publication>,
    },
}

/// A room this connection is in.
struct Joined {
    room: Room,
    cursor: Cursor,
}

pub(crate) struct Session {
    pub conn_id: Arc<str>,
    pub who: Principal,
    pub out: Outbound,
    pub shared: Arc<Shared>,
    /// Rooms this connection is in, each with what its client has of the room's stream.
    /// Bounded by `max_subscriptions`.
    rooms: Vec<Joined>,
    ops: TokenBucket,
    /// Pings and pongs the client sends: answered by the WebSocket layer, so counted here, and
    /// a flood beyond the burst closes the connection (4500).
    pings: TokenBucket,
    locations: TokenBucket,
    /// The order this partner was last found to carry, and when: location ops for it skip
    /// the backend for [`CARRYING_TTL`] (a reassignment is noticed within that).
    carrying: Option<(OrderId, Instant)>,
    /// The handshake's `since` for the user room: recovered in the welcome.
    user_since: Option<StreamPosition>,
    /// Held for the connection's life: its slot in the connection limits, and its place in
    /// the set of sessions a drain waits for.
    _slot: SlotGuard,
    _tracked: TaskTrackerToken,
}

impl Session {
    pub fn new(
        conn_id: Arc<str>,
        who: Principal,
        out: Outbound,
        shared: Arc<Shared>,
        user_since: Option<StreamPosition>,
        slot: SlotGuard,
        tracked: TaskTrackerToken,
    ) -> Session {
        let c = &shared.config;
        Session {
            ops: TokenBucket::new(c.op_rate, c.op_burst),
            locations: TokenBucket::new(c.location_rate, c.location_burst),
            pings: TokenBucket::new(c.ping_rate, c.ping_burst),
            conn_id,
            who,
            out,
            rooms: Vec::new(),
            user_since,
            carrying: None,
            _slot: slot,
            _tracked: tracked,
            shared,
        }
    }

    /// The connection's whole life. Called with the socket already split and the session
    /// boxed, so the task's future stays small (its size is per-connection memory).
    pub async fn run(
        mut self: Box<Self>,
        mut sink: Sink,
        mut stream: Stream,
        mailbox: Arc<Mailbox>,
    ) {
        let started = Instant::now();
        let exit = match (
            self.serve(&mut sink, &mut stream, &mailbox).await,
            mailbox.kicked(),
        ) {
            // A kick that outranks how the loop ended (a revoke over a slow write) wins.
            (Exit::Close(why), Some(kick)) if kick.outranks(why) => Exit::Close(kick),
            (exit, _) => exit,
        };
        mailbox.close();
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
        for joined in std::mem::take(&mut self.rooms) {
            self.leave(&joined.room).await;
        }
        metrics::counter!("switchyard_connections_closed_total", "code" => code.to_string())
            .increment(1);
        tracing::info!(
            conn = %self.conn_id,
            sub = %self.who.sub,
            role = %self.who.role,
            duration_ms = started.elapsed().as_millis() as u64,
            close_code = code,
            reason,
            "connection closed"
        );
        if code != 0 {
            linger(&mut stream, self.shared.config.write_timeout).await;
        }
    }

    /// Joins the user room, reads its position (recovering from the handshake's `since`),
    /// and sends the welcome and any recovered events.
    async fn welcome(&mut self, sink: &mut Sink) -> Option<Exit> {
        let own_room = Room::of_user(&self.who.sub);
        if let Err(refusal) = self.join(own_room.clone()).await {
            tracing::warn!(conn = %self.conn_id, message = %refusal.message, "could not join own room");
            return Some(Exit::Close(Disconnect::BUS_UNAVAILABLE));
        }
        // Joined first, then the position (and with `since` the missed events): events after
        // it are queued, earlier ones covered — so a recovery in the welcome has no duplicate.
        let since = self.user_since.take();
        let history = match self.shared.broker.history(&own_room, since.as_ref()).await {
            Ok(history) => history,
            Err(err) => {
                tracing::warn!(conn = %self.conn_id, %err, "could not read the user room's position");
                return Some(Exit::Close(Disconnect::BUS_UNAVAILABLE));
            }
        };
        let position = history.position.clone();
        let (recovered, missed) = self.recover(own_room.as_str(), history, since.as_ref());
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

    async fn serve(&mut self, sink: &mut Sink, stream: &mut Stream, mailbox: &Mailbox) -> Exit {
        if let Some(exit) = Box::pin(self.welcome(sink)).await {
            return exit;
        }
        let shared = self.shared.clone();
        let config = &shared.config;
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + config.heartbeat_interval,
            config.heartbeat_interval,
        );
        // One timer for both ends a connection has a date for: its token's `exp`, and once
        // the gateway drains, its own moment within the drain spread — whichever is first.
        // (The drain reaches sessions as a kick through the mailbox, so an idle connection
        // waits on no shutdown future of its own: every byte here is per connection.)
        let mut exp = self.who.exp;
        let mut close_at: Option<tokio::time::Instant> = None;
        let deadline = tokio::time::sleep(until_exp(exp));
        tokio::pin!(deadline);
        let mut last_seen = Instant::now();
        if self.shared.shutdown.is_cancelled() {
            // Joined after the drain's sweep: take this connection's moment now.
            close_at = Some(self.drain_moment());
            deadline.as_mut().reset(earliest(exp, close_at));
        }

        loop {
            tokio::select! {
                biased;
                _ = &mut deadline => {
                    return match close_at {
                        Some(at) if tokio::time::Instant::now() >= at => {
                            Exit::Close(Disconnect::SHUTDOWN)
                        }
                        _ => Exit::Close(Disconnect::TOKEN_EXPIRED),
                    };
                }
                _ = mailbox.ready() => {
                    match mailbox.kicked() {
                        // The drain: close at this connection's moment of the spread.
                        Some(Disconnect::SHUTDOWN) if close_at.is_none() => {
                            close_at = Some(self.drain_moment());
                            deadline.as_mut().reset(earliest(exp, close_at));
                        }
                        Some(Disconnect::SHUTDOWN) | None => {}
                        Some(why) => return Exit::Close(why),
                    }
                    if let Some(exit) = Box::pin(self.write_batch(sink, mailbox)).await {
                        return exit;
                    }
                }
                inbound = stream.next() => {
                    last_seen = Instant::now();
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
                            let _ = tokio::time::timeout(config.write_timeout, sink.flush()).await;
                            return Exit::Gone("peer closed");
                        }
                    };
                    if let Some(exit) = Box::pin(self.send(sink, reply)).await {
                        return exit;
                    }
                    if self.who.exp != exp {
                        exp = self.who.exp;
                        deadline.as_mut().reset(earliest(exp, close_at));
                    }
                }
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > config.idle_timeout {
                        return Exit::Close(Disconnect::IDLE);
                    }
                    self.renew_claim();
                    if let Some(exit) = Box::pin(self.write(sink, Message::Ping(Default::default()))).await {
                        return exit;
                    }
                }
            }
        }
    }

    /// Writes what is queued, up to [`MAX_BATCH`] frames, then flushes once.
    async fn write_batch(&mut self, sink: &mut Sink, mailbox: &Mailbox) -> Option<Exit> {
        let mut batch = Vec::new();
        mailbox.take(&mut batch, MAX_BATCH);
        if batch.is_empty() {
            return None;
        }
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
                    Outgoing::Revoke { room, reason } => self.revoked(&room, &reason).await,
                    Outgoing::Gap { room } => self.joined_mut(&room).map(|joined| {
                        joined.cursor.gap();
                        let gap = ServerMessage::Gap(Gap {
                            room: Cow::Borrowed(&room),
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
        let result = tokio::time::timeout(write_timeout, write).await;
        if let (Ok(Ok(())), Some(oldest)) = (&result, oldest) {
            self.shared
                .hub
                .metrics
                .fanout_latency
                .record(oldest.elapsed().as_secs_f64());
        }
        match result {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Exit::Gone("write failed")),
            Err(_) => Some(Exit::Close(Disconnect::SLOW)),
        }
    }

    /// The frame a queued event goes out as, if it still does: the room is still joined and
    /// the event is above what the client already has ([`Cursor::admit`]). The shared frame,
    /// or — first event of a new epoch — a copy that names the epoch.
    fn admit(&mut self, event: &Event) -> Option<Message> {
        let joined = self.joined_mut(&event.room)?;
        match joined.cursor.admit(&event.epoch, event.offset) {
            Admit::Send => Some(Message::Text(event.frame.clone())),
            Admit::SendWithEpoch => {
                let frame = server::event_with_epoch(&event.frame, &event.epoch)?;
                Some(Message::Text(frame.into()))
            }
            Admit::Drop => None,
        }
    }

    fn joined_mut(&mut self, room: &str) -> Option<&mut Joined> {
        self.rooms.iter_mut().find(|j| j.room.as_str() == room)
    }

    /// Stops tracking `room`; returns it if the connection was in it.
    fn forget(&mut self, room: &str) -> Option<Room> {
        let i = self.rooms.iter().position(|j| j.room.as_str() == room)?;
        Some(self.rooms.swap_remove(i).room)
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
        let Some(joined) = self.joined_mut(room) else {
            return (since.map(|_| false), Vec::new());
        };
        let available = history.missed.is_some();
        let recovery = joined
            .cursor
            .reposition(&history.position, since, available);
        let (recovered, missed) = match recovery {
            None => (None, Vec::new()),
            Some(Recovery::Resync) => (Some(false), Vec::new()),
            Some(Recovery::From(above)) => {
                let mut missed = history.missed.unwrap_or_default();
                missed.retain(|p| p.offset > above);
                if let Some(last) = missed.last() {
                    joined.cursor.wrote(last.offset);
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
        sink: &mut Sink,
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
        match tokio::time::timeout(self.shared.config.write_timeout, write).await {
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

    async fn send(&self, sink: &mut Sink, text: String) -> Option<Exit> {
        self.write(sink, Message::Text(text.into())).await
    }

    async fn write(&self, sink: &mut Sink, message: Message) -> Option<Exit> {
        match tokio::time::timeout(self.shared.config.write_timeout, sink.send(message)).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Exit::Gone("write failed")),
            Err(_) => Some(Exit::Close(Disconnect::SLOW)),
        }
    }

    /// Decodes and executes one text frame; returns the reply frame and any recovered events.
    async fn handle(&mut self, text: &str) -> (String, Vec<Publication>) {
        match self.handle_op(text).await {
            Ok((reply, missed)) => (reply, missed),
            Err(reply) => (reply, Vec::new()),
        }
    }

    async fn handle_op(&mut self, text: &str) -> Result<(String, Vec<Publication>), String> {
        // Every frame costs a token, undecodable ones included, so junk cannot flood either.
        let allowed = self.ops.try_take();
        let message = match switchyard_protocol::ClientMessage::decode(text) {
            Ok(message) => message,
            Err(err) if allowed => {
                return Err(error_frame(err.id, ErrorCode::BadRequest, &err.message));
            }
            Err(err) => {
                return Err(error_frame(
                    err.id,
                    ErrorCode::RateLimited,
                    "too many ops; slow down",
                ));
            }
        };
        let id = message.id;
        if !allowed {
            return Err(error_frame(
                id,
                ErrorCode::RateLimited,
                "too many ops; slow down",
            ));
        }
        let op = message.op.name();
        let plain = |room: Option<&str>| {
            ServerMessage::Ok(OkReply {
                id,
                op,
                room: room.map(Cow::Borrowed),
                position: None,
                recovered: None,
                snapshot: None,
            })
            .encode()
        };
        match self.execute(message.op).await {
            Ok(Reply::Plain) => Ok((plain(None), Vec::new())),
            Ok(Reply::Room(room)) => Ok((plain(Some(room.as_str())), Vec::new())),
            Ok(Reply::Subscribed {
                room,
                position,
                recovered,
                snapshot,
                missed,
            }) => {
                let reply = ServerMessage::Ok(OkReply {
                    id,
                    op,
                    room: Some(Cow::Borrowed(room.as_str())),
                    position: Some(position),
                    recovered,
                    snapshot: snapshot.as_deref().map(Cow::Borrowed),
                })
                .encode();
                Ok((reply, missed))
            }
            Err(refusal) => Err(error_frame(id, refusal.code, &refusal.message)),
        }
    }

    async fn execute(&mut self, op: ClientOp) -> Result<Reply, Refusal> {
        match op {
            ClientOp::Ping => Ok(Reply::Plain),
            ClientOp::Refresh { token } => self.refresh(&token),
            ClientOp::Subscribe { room, since } => self.subscribe(room, since).await,
            ClientOp::Unsubscribe { room } => {
                if let Some(room) = self.forget(room.as_str()) {
                    self.leave(&room).await;
                }
                Ok(Reply::Room(room))
            }
            ClientOp::Location { order_id, fix } => self.location(&order_id, fix).await,
        }
    }

    async fn subscribe(
        &mut self,
        room: Room,
        since: Option<StreamPosition>,
    ) -> Result<Reply, Refusal> {
        let shared = self.shared.clone();
        let backend = shared.backend.as_ref();
        if !self.rooms.iter().any(|j| j.room == room) {
            if self.rooms.len() >= shared.config.max_subscriptions {
                return Err(Refusal::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "at most {} subscriptions per connection",
                        shared.config.max_subscriptions
                    ),
                ));
            }
            access::may_join(backend, &self.who, &room).await?;
            self.join(room.clone()).await?;
            if self.who.role == Role::Partner && room.kind() == RoomKind::Order {
                // A reassignment committed between the check and the join sent its revoke
                // before we were a member: look again now that we are.
                if let Err(refusal) = access::may_join(backend, &self.who, &room).await {
                    if let Some(room) = self.forget(room.as_str()) {
                        self.leave(&room).await;
                    }
                    return Err(refusal);
                }
            }
        }
        // Joined first, then the position, then the snapshot: nothing published in between is
        // lost, and queued events the snapshot or the recovery already covers are dropped.
        let history = shared
            .broker
            .history(&room, since.as_ref())
            .await
            .map_err(|err| {
                tracing::warn!(%err, "history read failed");
                Refusal::new(ErrorCode::Internal, "bus unavailable, retry")
            })?;
        let position = history.position.clone();
        let (recovered, missed) = self.recover(room.as_str(), history, since.as_ref());
        let snapshot = match recovered {
            Some(true) => None,
            _ => Some(access::snapshot(backend, &shared.locations, &room).await?),
        };
        Ok(Reply::Subscribed {
            room,
            position,
            recovered,
            snapshot,
            missed,
        })
    }

    async fn join(&mut self, room: Room) -> Result<(), Refusal> {
        if let Err(err) = self.shared.broker.subscribe(&room).await {
            tracing::warn!(%err, "broker subscribe failed");
            return Err(Refusal::new(ErrorCode::Internal, "bus unavailable, retry"));
        }
        self.shared.hub.join(room.as_str(), &self.out);
        metrics::gauge!("switchyard_subscriptions").increment(1.0);
        self.rooms.push(Joined {
            room,
            cursor: Cursor::default(),
        });
        Ok(())
    }

    async fn leave(&self, room: &Room) {
        if self.shared.hub.leave(room.as_str(), self.out.conn) {
            metrics::gauge!("switchyard_subscriptions").decrement(1.0);
        }
        self.shared.broker.unsubscribe(room).await;
    }

    /// Whether this partner was found to carry `order_id` within [`CARRYING_TTL`].
    fn carries(&self, order: OrderId) -> bool {
        matches!(self.carrying, Some((id, at)) if id == order && at.elapsed() < CARRYING_TTL)
    }

    /// This connection's moment to close, once the gateway drains: spread over the window.
    fn drain_moment(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + spread_delay(self.out.conn, self.shared.config.drain_spread)
    }

    /// Keeps this connection counted in the cluster-wide per-user limit (off the loop).
    fn renew_claim(&self) {
        let broker = self.shared.broker.clone();
        let (sub, conn) = (self.who.sub.clone(), self.conn_id.clone());
        let lease = self.shared.config.connection_lease();
        tokio::spawn(async move { broker.renew_connection(&sub, &conn, lease).await });
    }

    /// Accepts a fresh token for the same user and role: the connection now ends at its
    /// `exp` instead. A token for anyone else ends the connection (4500): the refusal is
    /// answered, then the connection's own mailbox is kicked.
    fn refresh(&mut self, token: &str) -> Result<Reply, Refusal> {
        let fresh = self
            .shared
            .verifier
            .verify_unrevoked(token, |sub| self.shared.broker.revoked_at(sub))
            .map_err(|err| Refusal::new(ErrorCode::Forbidden, format!("token rejected: {err}")))?;
        if fresh.sub != self.who.sub || fresh.role != self.who.role {
            self.out.kick(Disconnect::REFRESH_MISMATCH);
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "a refresh token must name the same user and role",
            ));
        }
        self.who.exp = fresh.exp;
        metrics::counter!("switchyard_token_refreshes_total").increment(1);
        Ok(Reply::Plain)
    }

    async fn location(&mut self, order_id: &str, fix: LocationFix) -> Result<Reply, Refusal> {
        if self.who.role != Role::Partner {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only partners send locations",
            ));
        }
        if !self.locations.try_take() {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} locations per second",
                    self.shared.config.location_rate
                ),
            ));
        }
        let not_yours = || Refusal::new(ErrorCode::Forbidden, "this order is not assigned to you");
        // Parsed once: a non-canonical id names no order.
        let id = OrderId::parse(order_id).ok_or_else(not_yours)?;
        if !self.carries(id) {
            // Not known to be ours in the last few seconds: ask the backend.
            if !access::carries(self.shared.backend.as_ref(), &self.who, id).await? {
                return Err(not_yours());
            }
            self.carrying = Some((id, Instant::now()));
        }
        let location = Location {
            lat: fix.lat,
            lng: fix.lng,
            heading: fix.heading,
            speed: fix.speed,
            ts: fix.ts,
            received_at: now_ms(),
        };
        self.shared.locations.record(id.get(), location);
        let event = PartnerLocation {
            order_id: id.to_string(),
            partner: self.who.sub.to_string(),
            location,
        };
        let room = Room::of_order(id);
        let data = serde_json::value::to_raw_value(&event)
            .map_err(|_| Refusal::new(ErrorCode::Internal, "encoding failed"))?;
        self.shared
            .broker
            .publish(&room, PartnerLocation::NAME, data)
            .await
            .map_err(|err| {
                tracing::warn!(%err, "location publish failed");
                Refusal::new(ErrorCode::Internal, "bus unavailable, retry")
            })?;
        metrics::counter!("switchyard_events_published_total", "source" => "partner").increment(1);
        Ok(Reply::Plain)
    }
}

/// Milliseconds since the Unix epoch (when a fix was accepted).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// After our close frame, reads (and drops) what the peer still sends until its close reply,
/// for at most [`CLOSE_LINGER`] (or the write timeout if shorter). A socket closed with unread
/// input is reset, and a reset can destroy the close frame before the peer reads it — a client
/// flooding the connection would never learn why it was closed.
async fn linger(stream: &mut Stream, write_timeout: Duration) {
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
fn earliest(exp: u64, close_at: Option<tokio::time::Instant>) -> tokio::time::Instant {
    const END_OF_TIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = tokio::time::Instant::now();
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
