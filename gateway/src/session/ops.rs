//! The ops a client sends (protocol/README.md): decoded, rate limited, executed, answered.

use super::{Reply, Session, chat, error_frame};
use crate::access::{self, Refusal};
use crate::fleet;
use crate::rate::TokenBucket;
use std::borrow::Cow;
use switchyard_broker::Publication;
use switchyard_protocol::chat::NewMessage;
use switchyard_protocol::client::{ClientOp, LocationFix, StreamPosition};
use switchyard_protocol::close::Disconnect;
use switchyard_protocol::events::PartnerLocation;
use switchyard_protocol::presence::has_presence;
use switchyard_protocol::room::RoomKind;
use switchyard_protocol::server::{OkReply, ServerMessage};
use switchyard_protocol::{BuiltinEvent, ErrorCode, Location, OrderId, Role, Room};
use tokio::time::{Duration, Instant};

/// How long a partner's verified assignment is trusted by its location ops.
const CARRYING_TTL: Duration = Duration::from_secs(2);

impl Session {
    /// Decodes and executes one text frame; returns the reply frame and any recovered events.
    pub(super) async fn handle(&mut self, text: &str) -> (String, Vec<Publication>) {
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
                message: None,
                presence: None,
            })
            .encode()
        };
        match self.execute(message.op).await {
            Ok(Reply::Plain) => Ok((plain(None), Vec::new())),
            Ok(Reply::Room(room)) => Ok((plain(Some(room.as_str())), Vec::new())),
            Ok(Reply::Sent { room, message }) => {
                let reply = ServerMessage::Ok(OkReply {
                    id,
                    op,
                    room: Some(Cow::Borrowed(room.as_str())),
                    position: None,
                    recovered: None,
                    snapshot: None,
                    message: Some(message),
                    presence: None,
                })
                .encode();
                Ok((reply, Vec::new()))
            }
            Ok(Reply::Subscribed {
                room,
                position,
                recovered,
                snapshot,
                presence,
                missed,
            }) => {
                let reply = ServerMessage::Ok(OkReply {
                    id,
                    op,
                    room: Some(Cow::Borrowed(room.as_str())),
                    position: Some(position),
                    recovered,
                    snapshot: snapshot.as_deref().map(Cow::Borrowed),
                    message: None,
                    presence,
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
            ClientOp::Send {
                room,
                text,
                client_msg_id,
            } => {
                let message = NewMessage {
                    text,
                    client_msg_id,
                };
                self.send_message(room, &message).await
            }
            ClientOp::Typing { room } => self.typing(room).await,
            ClientOp::Read { room, message_id } => self.read(room, &message_id).await,
        }
    }

    async fn subscribe(
        &mut self,
        room: Room,
        since: Option<StreamPosition>,
    ) -> Result<Reply, Refusal> {
        let shared = self.shared.clone();
        let backend = shared.backend.as_ref();
        if !self.rooms.contains_key(room.as_str()) {
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
            .backplane
            .bus
            .history(&room, since.as_ref())
            .await
            .map_err(|err| {
                tracing::warn!(%err, "history read failed");
                Refusal::new(ErrorCode::Internal, "bus unavailable, retry")
            })?;
        let position = history.position.clone();
        let (recovered, missed) = self.recover(room.as_str(), history, since.as_ref());
        let mut snapshot = match recovered {
            Some(true) => None,
            _ => {
                let snapshot = access::snapshot(backend, &shared.locations, &room).await?;
                Some(chat::with_read_state(backend, &self.who.sub, &room, snapshot).await)
            }
        };
        // Read after the position, like the snapshot: it reflects at least every presence
        // event up to it (presence events are set changes: applying one twice is harmless).
        let presence = match &snapshot {
            Some(_) if has_presence(&room) => Some(
                shared
                    .backplane
                    .presence
                    .present(&room)
                    .await
                    .map_err(|err| {
                        tracing::warn!(%err, "presence read failed");
                        Refusal::new(ErrorCode::Internal, "presence unavailable, retry")
                    })?,
            ),
            _ => None,
        };
        if let (Some(snapshot), Some(present)) = (snapshot.as_mut(), &presence)
            && room.kind() == RoomKind::AdminFleet
        {
            // The partners online, each with its last known position (positions are
            // latest-value: one older than an event that follows is replaced by it).
            let positions = shared.backplane.fleet.as_ref();
            *snapshot = fleet::snapshot(present, positions, &shared.fleet)
                .await
                .map_err(|err| {
                    tracing::warn!(%err, "fleet positions read failed");
                    Refusal::new(ErrorCode::Internal, "fleet positions unavailable, retry")
                })?;
        }
        Ok(Reply::Subscribed {
            room,
            position,
            recovered,
            snapshot,
            presence,
            missed,
        })
    }

    /// Whether this partner was found to carry `order_id` within [`CARRYING_TTL`].
    fn carries(&self, order: OrderId) -> bool {
        matches!(self.carrying, Some((id, at)) if id == order && at.elapsed() < CARRYING_TTL)
    }

    /// Accepts a fresh token for the same user and role: the connection now ends at its
    /// `exp` instead. A token for anyone else ends the connection (4500): the refusal is
    /// answered, then the connection's own mailbox is kicked.
    fn refresh(&mut self, token: &str) -> Result<Reply, Refusal> {
        let fresh = self
            .shared
            .verifier
            .verify_unrevoked(token, |sub| {
                self.shared.backplane.controller.revoked_at(sub)
            })
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
        let c = &self.shared.config;
        let bucket = self
            .locations
            .get_or_insert_with(|| Box::new(TokenBucket::new(c.location_rate, c.location_burst)));
        if !bucket.try_take() {
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
            .backplane
            .bus
            .publish(&room, PartnerLocation::NAME, data)
            .await
            .map_err(|err| {
                tracing::warn!(%err, "location publish failed");
                Refusal::new(ErrorCode::Internal, "bus unavailable, retry")
            })?;
        // admin:fleet gets the newest of this interval's fixes (see `crate::fleet`).
        if self.shared.config.fleet_positions {
            self.shared.fleet.offer(self.who.sub.as_arc(), event);
        }
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
