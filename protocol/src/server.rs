//! Frames the server sends: encoded once by the server (an event's bytes are then shared by
//! every recipient, see `switchyard-gateway`'s hub) and decoded by clients
//! ([`ServerMessage::decode`]), so both sides share one definition.
//!
//! Fields are `Cow`s: the server borrows what it already holds, so encoding allocates only
//! the output string; a client decodes without copying (`data` stays raw JSON until
//! [`EventFrame::data_as`] types it) and keeps a frame with [`ServerMessage::into_owned`].

use crate::chat::ChatMessage;
use crate::client::{OpName, StreamPosition};
use crate::error::ErrorCode;
use crate::events::BuiltinEvent;
use crate::presence::Present;
use crate::role::Role;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Everything the server sends; `type` names the variant on the wire.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage<'a> {
    /// First frame on every connection.
    Welcome(Welcome<'a>),
    /// Success reply to an op.
    Ok(OkReply<'a>),
    /// Failure reply to an op (or to an undecodable frame, then without id).
    Error(ErrorReply<'a>),
    /// The server ended this connection's subscription to `room` (e.g. the order was
    /// reassigned to another partner). No more events of the room follow.
    Revoked(Revoked<'a>),
    /// Events of `room` may have been lost on the way to this connection (the gateway's bus
    /// connection dropped). The subscription stays; resubscribe with `since` to recover.
    Gap(Gap<'a>),
    /// A publication in a room the connection is subscribed to.
    Event(EventFrame<'a>),
}

/// `{"type":"welcome"}`: who the connection is and where its user room's stream stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Welcome<'a> {
    /// The connection's id (`{node}-{number}`), for support and logs.
    pub conn: Cow<'a, str>,
    pub sub: Cow<'a, str>,
    pub role: Role,
    /// The rooms the connection is already in: its own `user:{sub}`.
    pub rooms: Vec<Cow<'a, str>>,
    /// Each joined room's current stream position, keyed by room.
    #[serde(serialize_with = "as_map")]
    pub positions: Vec<(Cow<'a, str>, StreamPosition)>,
    /// Present when the handshake asked to recover the user room (`since`): as in a
    /// subscribe reply; the recovered events follow the welcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// `{"type":"ok"}`: an op succeeded.
#[derive(Debug, Clone, Serialize)]
pub struct OkReply<'a> {
    /// The op's `id`, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub op: OpName,
    /// The room of a subscribe or unsubscribe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<Cow<'a, str>>,
    /// Present on subscribe replies: the room's stream position when it was joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<StreamPosition>,
    /// Present on subscribe replies that asked for recovery (`since`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// On subscribe replies without a complete recovery: the room's current state
    /// (`null` for user rooms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Cow<'a, RawValue>>,
    /// On `send` replies: the message as stored (its `chat.message` event carries the room
    /// offset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatMessage>,
    /// With the snapshot of a room with presence (`order:{id}`): who is present
    /// (see [`crate::presence`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<Vec<Present>>,
}

/// `{"type":"error"}`: an op failed. The error fields are the one error shape
/// ([`crate::error`]); `code` repeats `error` for one release (its old name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply<'a> {
    pub id: Option<i64>,
    pub error: ErrorCode,
    pub message: Cow<'a, str>,
}

impl Serialize for ErrorReply<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ErrorReply", 4)?;
        if let Some(id) = self.id {
            s.serialize_field("id", &id)?;
        } else {
            s.skip_field("id")?;
        }
        s.serialize_field("error", &self.error)?;
        s.serialize_field("message", &self.message)?;
        s.serialize_field("code", &self.error)?;
        s.end()
    }
}

/// `{"type":"revoked"}`: the server ended this connection's subscription to `room`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revoked<'a> {
    pub room: Cow<'a, str>,
    pub reason: Cow<'a, str>,
}

/// `{"type":"gap"}`: events of `room` may have been lost; resubscribe with `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap<'a> {
    pub room: Cow<'a, str>,
}

/// `{"type":"event"}`: a publication in a room.
#[derive(Debug, Clone, Serialize)]
pub struct EventFrame<'a> {
    /// Present on the first event of a room in an epoch the connection had not heard of for
    /// it (its offsets started again); otherwise the room's epoch is the last one the
    /// connection was told (protocol/README.md, "A new epoch on a live connection").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Cow<'a, str>>,
    pub room: Cow<'a, str>,
    pub event: Cow<'a, str>,
    /// +1 per event published to the room, within its epoch (see protocol/README.md,
    /// "Positions and recovery").
    pub offset: u64,
    pub data: Cow<'a, RawValue>,
}

impl EventFrame<'_> {
    /// The data as the built-in event `E`: `None` when the frame is another event, `Some(Err)`
    /// when it is `E` but its data does not match `E`'s type.
    pub fn data_as<E: BuiltinEvent>(&self) -> Option<Result<E, serde_json::Error>> {
        (self.event == E::NAME).then(|| serde_json::from_str(self.data.get()))
    }
}

fn as_map<S: Serializer>(
    pairs: &[(Cow<'_, str>, StreamPosition)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(room, position)| (room, position)))
}

/// A frame that is not a server message of this protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a server frame: {0}")]
pub struct FrameError(pub String);

impl<'a> ServerMessage<'a> {
    /// Serializes the frame. Serialization of these types cannot fail (no maps with
    /// non-string keys, raw values are already valid JSON).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","error":"internal","message":"encoding failed","code":"internal"}"#
                .to_owned()
        })
    }

    /// Decodes one text frame, borrowing from it where it can. Unknown fields are ignored
    /// (a newer server may add some); an unknown `type` is an error.
    pub fn decode(text: &'a str) -> Result<ServerMessage<'a>, FrameError> {
        serde_json::from_str(text).map_err(|e| FrameError(e.to_string()))
    }

    /// The same frame, owning its data (to keep it beyond the text it was decoded from).
    pub fn into_owned(self) -> ServerMessage<'static> {
        match self {
            ServerMessage::Welcome(w) => ServerMessage::Welcome(w.into_owned()),
            ServerMessage::Ok(ok) => ServerMessage::Ok(ok.into_owned()),
            ServerMessage::Error(e) => ServerMessage::Error(e.into_owned()),
            ServerMessage::Revoked(r) => ServerMessage::Revoked(Revoked {
                room: own(r.room),
                reason: own(r.reason),
            }),
            ServerMessage::Gap(g) => ServerMessage::Gap(Gap { room: own(g.room) }),
            ServerMessage::Event(e) => ServerMessage::Event(e.into_owned()),
        }
    }
}

fn own(s: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(s.into_owned())
}

impl Welcome<'_> {
    pub fn into_owned(self) -> Welcome<'static> {
        Welcome {
            conn: own(self.conn),
            sub: own(self.sub),
            role: self.role,
            rooms: self.rooms.into_iter().map(own).collect(),
            positions: self
                .positions
                .into_iter()
                .map(|(r, p)| (own(r), p))
                .collect(),
            recovered: self.recovered,
        }
    }
}

impl OkReply<'_> {
    pub fn into_owned(self) -> OkReply<'static> {
        OkReply {
            id: self.id,
            op: self.op,
            room: self.room.map(own),
            position: self.position,
            recovered: self.recovered,
            snapshot: self.snapshot.map(|r| Cow::Owned(r.into_owned())),
            message: self.message,
            presence: self.presence,
        }
    }
}

impl ErrorReply<'_> {
    pub fn into_owned(self) -> ErrorReply<'static> {
        ErrorReply {
            id: self.id,
            error: self.error,
            message: own(self.message),
        }
    }
}

impl EventFrame<'_> {
    pub fn into_owned(self) -> EventFrame<'static> {
        EventFrame {
            epoch: self.epoch.map(own),
            room: own(self.room),
            event: own(self.event),
            offset: self.offset,
            data: Cow::Owned(self.data.into_owned()),
        }
    }
}

/// Every field any server frame has, read in one pass. (serde's tagged enums buffer their
/// content, which raw JSON values cannot go through; a flat envelope can, and borrows.)
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    conn: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sub: Option<Cow<'a, str>>,
    role: Option<Role>,
    #[serde(borrow)]
    rooms: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    positions: Option<BTreeMap<Cow<'a, str>, StreamPosition>>,
    recovered: Option<bool>,
    id: Option<i64>,
    op: Option<OpName>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    position: Option<StreamPosition>,
    /// `null` is a value here (a user room's snapshot), not an absent field.
    #[serde(borrow, default, deserialize_with = "present")]
    snapshot: Option<&'a RawValue>,
    presence: Option<Vec<Present>>,
    error: Option<ErrorCode>,
    /// The old name of `error` (older servers send only this).
    code: Option<ErrorCode>,
    /// An error's text, or a `send` reply's message (an object): read by `type`.
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    offset: Option<u64>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

impl<'de: 'a, 'a> Deserialize<'de> for ServerMessage<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let env = Envelope::deserialize(d)?;
        let need = |field: &'static str| D::Error::missing_field(field);
        Ok(match &*env.kind {
            "welcome" => ServerMessage::Welcome(Welcome {
                conn: env.conn.ok_or_else(|| need("conn"))?,
                sub: env.sub.ok_or_else(|| need("sub"))?,
                role: env.role.ok_or_else(|| need("role"))?,
                rooms: env.rooms.ok_or_else(|| need("rooms"))?,
                positions: env
                    .positions
                    .ok_or_else(|| need("positions"))?
                    .into_iter()
                    .collect(),
                recovered: env.recovered,
            }),
            "ok" => ServerMessage::Ok(OkReply {
                id: env.id,
                op: env.op.ok_or_else(|| need("op"))?,
                room: env.room,
                position: env.position,
                recovered: env.recovered,
                snapshot: env.snapshot.map(Cow::Borrowed),
                message: env
                    .message
                    .map(|m| serde_json::from_str(m.get()))
                    .transpose()
                    .map_err(D::Error::custom)?,
                presence: env.presence,
            }),
            "error" => ServerMessage::Error(ErrorReply {
                id: env.id,
                error: env.error.or(env.code).ok_or_else(|| need("error"))?,
                message: env
                    .message
                    .map(|m| serde_json::from_str::<Cow<'a, str>>(m.get()))
                    .transpose()
                    .map_err(D::Error::custom)?
                    .ok_or_else(|| need("message"))?,
            }),
            "revoked" => ServerMessage::Revoked(Revoked {
                room: env.room.ok_or_else(|| need("room"))?,
                reason: env.reason.ok_or_else(|| need("reason"))?,
            }),
            "gap" => ServerMessage::Gap(Gap {
                room: env.room.ok_or_else(|| need("room"))?,
            }),
            "event" => ServerMessage::Event(EventFrame {
                epoch: env.epoch,
                room: env.room.ok_or_else(|| need("room"))?,
                event: env.event.ok_or_else(|| need("event"))?,
                offset: env.offset.ok_or_else(|| need("offset"))?,
                data: Cow::Borrowed(env.data.ok_or_else(|| need("data"))?),
            }),
            other => {
                return Err(D::Error::unknown_variant(
                    other,
                    &["welcome", "ok", "error", "revoked", "gap", "event"],
                ));
            }
        })
    }
}

/// Encodes an event frame once; the result is shared by every recipient.
pub fn encode_event(room: &str, event: &str, offset: u64, data: &RawValue) -> String {
    let (head, tail) = event_frame_parts(room, event, data);
    event_frame_at(&head, offset, &tail)
}

/// The frame of [`event_frame_parts`]' `head` and `tail` at `offset`: one allocation and
/// copies, no JSON encoding — what a broker does while it holds the room's offset (the
/// encoding happened before, outside any lock).
pub fn event_frame_at(head: &str, offset: u64, tail: &str) -> String {
    use std::fmt::Write;
    let mut frame = String::with_capacity(head.len() + 20 + tail.len());
    frame.push_str(head);
    let _ = write!(frame, "{offset}");
    frame.push_str(tail);
    frame
}

/// An event frame split around its offset: `head + offset + tail` is the frame. Lets a
/// broker whose offsets are assigned elsewhere (a Redis script) build the frame there
/// without decoding anything.
pub fn event_frame_parts(room: &str, event: &str, data: &RawValue) -> (String, String) {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    (
        format!(
            r#"{{"type":"event","room":{},"event":{},"offset":"#,
            quote(room),
            quote(event)
        ),
        format!(r#","data":{}}}"#, data.get()),
    )
}

/// The head every event frame starts with ([`encode_event`], [`event_frame_parts`]).
const EVENT_HEAD: &str = r#"{"type":"event","#;

/// An event frame (made by [`encode_event`] / [`event_frame_parts`]) with an `"epoch"` field
/// added: the epoch its offset counts in. A connection gets it on the first event of a room
/// whose epoch is not the one it last heard of for that room (protocol/README.md, "Positions
/// and recovery"); every other event frame is shared unchanged. `None` for any other frame.
pub fn event_with_epoch(frame: &str, epoch: &str) -> Option<String> {
    let rest = frame.strip_prefix(EVENT_HEAD)?;
    let epoch = serde_json::to_string(epoch).ok()?;
    Some(format!(r#"{EVENT_HEAD}"epoch":{epoch},{rest}"#))
}

/// The event name in a frame made by [`encode_event`] / [`event_frame_parts`], read from
/// its fixed head without parsing the JSON (room names and event names never need
/// escaping). `None` for anything else.
pub fn frame_event_name(frame: &str) -> Option<&str> {
    let rest = frame.strip_prefix(r#"{"type":"event","room":""#)?;
    let (_, rest) = rest.split_once(r#"","event":""#)?;
    let (name, _) = rest.split_once('"')?;
    Some(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_name_is_read_from_the_head() {
        let data = RawValue::from_string(r#"{"event":"x"}"#.into()).unwrap();
        let frame = encode_event("order:9", "partner.location", 3, &data);
        assert_eq!(frame_event_name(&frame), Some("partner.location"));
        assert_eq!(frame_event_name(r#"{"type":"ok"}"#), None);
    }

    use super::*;

    #[test]
    fn an_epoch_is_added_to_the_shared_frame() {
        let data = RawValue::from_string(r#"{"status":"confirmed"}"#.into()).unwrap();
        let frame = encode_event("order:42", "order.status", 1, &data);
        assert_eq!(
            event_with_epoch(&frame, "e2").as_deref(),
            Some(
                r#"{"type":"event","epoch":"e2","room":"order:42","event":"order.status","offset":1,"data":{"status":"confirmed"}}"#
            )
        );
        assert_eq!(event_with_epoch(r#"{"type":"gap"}"#, "e2"), None);
        let with_epoch = event_with_epoch(&frame, "e2").unwrap();
        match serde_json::from_str::<ServerMessage>(&with_epoch).unwrap() {
            ServerMessage::Event(e) => {
                assert_eq!((e.epoch.as_deref(), e.offset), (Some("e2"), 1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn event_shape() {
        let data = RawValue::from_string(r#"{"status":"confirmed"}"#.into()).unwrap();
        assert_eq!(
            encode_event("order:42", "order.status", 7, &data),
            r#"{"type":"event","room":"order:42","event":"order.status","offset":7,"data":{"status":"confirmed"}}"#
        );
    }

    #[test]
    fn parts_make_the_same_frame() {
        let data = RawValue::from_string(r#"{"a":"\"offset\":1"}"#.into()).unwrap();
        let (head, tail) = event_frame_parts("user:u1", "x.y", &data);
        let frame = format!("{head}12{tail}");
        assert_eq!(frame, encode_event("user:u1", "x.y", 12, &data));
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["offset"], 12);
        assert_eq!(v["data"]["a"], "\"offset\":1");
    }

    #[test]
    fn replies_shape() {
        let err = ServerMessage::Error(ErrorReply {
            id: Some(1),
            error: ErrorCode::Forbidden,
            message: "no".into(),
        });
        assert_eq!(
            err.encode(),
            r#"{"type":"error","id":1,"error":"forbidden","message":"no","code":"forbidden"}"#
        );
        let ok = ServerMessage::Ok(OkReply {
            id: None,
            op: OpName::Subscribe,
            room: Some("user:u1".into()),
            position: None,
            recovered: None,
            snapshot: Some(Cow::Borrowed(RawValue::NULL)),
            message: None,
            presence: None,
        });
        assert_eq!(
            ok.encode(),
            r#"{"type":"ok","op":"subscribe","room":"user:u1","snapshot":null}"#
        );
        let welcome = ServerMessage::Welcome(Welcome {
            conn: "c1".into(),
            sub: "u1".into(),
            role: Role::Customer,
            rooms: vec!["user:u1".into()],
            positions: vec![(
                "user:u1".into(),
                StreamPosition {
                    epoch: "e1".into(),
                    offset: 3,
                },
            )],
            recovered: None,
        });
        assert_eq!(
            welcome.encode(),
            r#"{"type":"welcome","conn":"c1","sub":"u1","role":"customer","rooms":["user:u1"],"positions":{"user:u1":{"epoch":"e1","offset":3}}}"#
        );
    }

    /// Every frame the server encodes decodes back to itself (a client and the server share
    /// the types).
    #[test]
    fn frames_round_trip() {
        let frames = [
            r#"{"type":"welcome","conn":"n-1","sub":"u1","role":"customer","rooms":["user:u1"],"positions":{"user:u1":{"epoch":"e1","offset":3}},"recovered":true}"#,
            r#"{"type":"ok","id":2,"op":"subscribe","room":"order:4","position":{"epoch":"e","offset":0},"snapshot":null}"#,
            r#"{"type":"ok","id":2,"op":"subscribe","room":"order:4","position":{"epoch":"e","offset":9},"recovered":true}"#,
            r#"{"type":"ok","op":"ping"}"#,
            r#"{"type":"error","error":"bad_request","message":"unknown op \"fly\"","code":"bad_request"}"#,
            r#"{"type":"revoked","room":"order:4","reason":"reassigned"}"#,
            r#"{"type":"gap","room":"order:4"}"#,
            r#"{"type":"event","room":"order:4","event":"x.y","offset":7,"data":{"a":[1,"\u00e9"]}}"#,
        ];
        for text in frames {
            let decoded = ServerMessage::decode(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(decoded.encode(), text);
            assert_eq!(decoded.into_owned().encode(), text);
        }
        // A null snapshot is not an absent one.
        let ServerMessage::Ok(ok) = ServerMessage::decode(frames[1]).unwrap() else {
            panic!()
        };
        assert_eq!(ok.snapshot.unwrap().get(), "null");
        // Older servers sent only `code`.
        let old =
            ServerMessage::decode(r#"{"type":"error","id":1,"code":"forbidden","message":"no"}"#);
        assert!(matches!(
            old,
            Ok(ServerMessage::Error(ErrorReply {
                error: ErrorCode::Forbidden,
                ..
            }))
        ));
        for bad in [
            r#"{"type":"hello"}"#,
            r#"{"type":"event","room":"r"}"#,
            "[]",
            "{",
        ] {
            assert!(ServerMessage::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn built_in_event_data_is_typed() {
        use crate::events::{OrderAssigned, OrderStatusChanged};
        let frame = encode_event(
            "order:4",
            OrderAssigned::NAME,
            1,
            &RawValue::from_string(
                r#"{"event_id":3,"order_id":"4","partner":"p1","previous_partner":null,"updated_at":5}"#.into(),
            )
            .unwrap(),
        );
        let ServerMessage::Event(event) = ServerMessage::decode(&frame).unwrap() else {
            panic!()
        };
        assert!(event.data_as::<OrderStatusChanged>().is_none());
        let assigned = event.data_as::<OrderAssigned>().unwrap().unwrap();
        assert_eq!(
            (assigned.partner.as_str(), assigned.event_id),
            ("p1", Some(3))
        );
    }
}
