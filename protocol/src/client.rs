//! Frames a client sends: decoded by the server in one pass, encoded by Rust clients
//! ([`ClientMessage::encode`]) from the same types.
//!
//! Decoding first reads a flat envelope (every field optional), then checks the
//! fields the `op` needs. That way a frame with a bad field still yields its `id`,
//! so the `bad_request` reply can be matched to the request that caused it.

use crate::chat::is_valid_client_msg_id;
use crate::order::parse_order_id;
use crate::room::{Room, RoomError, RoomKind, is_valid_id};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// A decoded, validated client frame; encoded as `{"op": …, …fields, "id": …}`.
#[derive(Debug, Clone, Serialize)]
pub struct ClientMessage {
    #[serde(flatten)]
    pub op: ClientOp,
    /// Echoed in the reply so the client can match it to the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
}

/// What the client asks for.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ClientOp {
    /// Join a room. `since` is the position the client last saw (recovery; see protocol/README.md).
    Subscribe {
        room: Room,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
    },
    Unsubscribe {
        room: Room,
    },
    /// A partner's GPS fix for an order it carries.
    Location {
        order_id: String,
        #[serde(flatten)]
        fix: LocationFix,
    },
    Ping,
    /// A fresh token for the same user, extending the connection past the old `exp`.
    Refresh {
        token: String,
    },
    /// A chat message to an order room (its members only); answered once stored.
    Send {
        room: Room,
        text: String,
        client_msg_id: String,
    },
    /// The sender is typing in an order room's chat (never stored).
    Typing {
        room: Room,
    },
    /// The sender has read an order room's chat up to `message_id`.
    Read {
        room: Room,
        message_id: String,
    },
}

/// The ops' wire names, echoed in `ok` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OpName {
    Subscribe,
    Unsubscribe,
    Location,
    Ping,
    Refresh,
    Send,
    Typing,
    Read,
}

impl OpName {
    pub fn as_str(self) -> &'static str {
        match self {
            OpName::Subscribe => "subscribe",
            OpName::Unsubscribe => "unsubscribe",
            OpName::Location => "location",
            OpName::Ping => "ping",
            OpName::Refresh => "refresh",
            OpName::Send => "send",
            OpName::Typing => "typing",
            OpName::Read => "read",
        }
    }
}

/// A position in a room's stream: the offset of the last event seen, within an epoch
/// that changes whenever the room's history is lost.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamPosition {
    pub epoch: String,
    pub offset: u64,
}

impl StreamPosition {
    /// Reads the compact `<epoch>:<offset>` form used in the handshake's `since` query
    /// parameter (epochs are `[A-Za-z0-9_-]{1,64}`).
    pub fn parse_compact(text: &str) -> Option<StreamPosition> {
        let (epoch, offset) = text.rsplit_once(':')?;
        if !is_valid_id(epoch) || offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(StreamPosition {
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    }
}

/// A GPS fix as sent by a partner. `lat`/`lng` are validated; the rest is optional.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LocationFix {
    pub lat: f64,
    pub lng: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Client timestamp, milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
}

impl ClientOp {
    /// The op's wire name, echoed in `ok` replies.
    pub fn name(&self) -> OpName {
        match self {
            ClientOp::Subscribe { .. } => OpName::Subscribe,
            ClientOp::Unsubscribe { .. } => OpName::Unsubscribe,
            ClientOp::Location { .. } => OpName::Location,
            ClientOp::Ping => OpName::Ping,
            ClientOp::Refresh { .. } => OpName::Refresh,
            ClientOp::Send { .. } => OpName::Send,
            ClientOp::Typing { .. } => OpName::Typing,
            ClientOp::Read { .. } => OpName::Read,
        }
    }

    /// This op as a frame with `id`, ready to send.
    pub fn with_id(self, id: i64) -> ClientMessage {
        ClientMessage {
            op: self,
            id: Some(id),
        }
    }
}

/// A frame that could not be decoded; `id` is set when the frame was JSON with a usable id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub id: Option<i64>,
    pub message: String,
}

impl DecodeError {
    fn new(id: Option<i64>, message: impl Into<String>) -> Self {
        DecodeError {
            id,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    id: Option<i64>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    since: Option<StreamPosition>,
    #[serde(borrow)]
    order_id: Option<Cow<'a, str>>,
    lat: Option<f64>,
    lng: Option<f64>,
    heading: Option<f64>,
    speed: Option<f64>,
    ts: Option<i64>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message_id: Option<Cow<'a, str>>,
}

/// Just the id, for frames whose other fields failed to decode.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<i64>,
}

impl ClientMessage {
    /// Encodes the frame (what a client sends). The types hold only strings, numbers and
    /// validated rooms, so this cannot fail.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes one text frame.
    pub fn decode(text: &str) -> Result<ClientMessage, DecodeError> {
        // Only objects: serde would also map a JSON array onto the envelope by field order.
        if !text.trim_start().starts_with('{') {
            return Err(DecodeError::new(None, "a frame must be a JSON object"));
        }
        let env: Envelope<'_> = match serde_json::from_str(text) {
            Ok(env) => env,
            Err(err) => {
                let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id);
                return Err(DecodeError::new(id, format!("invalid frame: {err}")));
            }
        };
        let id = env.id;
        let op = env
            .op
            .as_deref()
            .ok_or_else(|| DecodeError::new(id, "missing \"op\""))?;
        let room = |field: Option<&Cow<'_, str>>| -> Result<Room, DecodeError> {
            let name = field.ok_or_else(|| DecodeError::new(id, "missing \"room\""))?;
            Room::parse(name).map_err(|e: RoomError| DecodeError::new(id, format!("bad room: {e}")))
        };
        let op = match op {
            "subscribe" => ClientOp::Subscribe {
                room: room(env.room.as_ref())?,
                since: env.since,
            },
            "unsubscribe" => ClientOp::Unsubscribe {
                room: room(env.room.as_ref())?,
            },
            "ping" => ClientOp::Ping,
            "refresh" => ClientOp::Refresh {
                token: env
                    .token
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| DecodeError::new(id, "missing \"token\""))?
                    .into_owned(),
            },
            "send" => ClientOp::Send {
                room: chat_room(room(env.room.as_ref())?, id)?,
                text: env
                    .text
                    .ok_or_else(|| DecodeError::new(id, "missing \"text\""))?
                    .into_owned(),
                client_msg_id: env
                    .client_msg_id
                    .filter(|c| is_valid_client_msg_id(c))
                    .ok_or_else(|| {
                        DecodeError::new(
                            id,
                            "\"client_msg_id\" must be 1 to 64 printable ASCII characters",
                        )
                    })?
                    .into_owned(),
            },
            "typing" => ClientOp::Typing {
                room: chat_room(room(env.room.as_ref())?, id)?,
            },
            "read" => ClientOp::Read {
                room: chat_room(room(env.room.as_ref())?, id)?,
                message_id: env
                    .message_id
                    .filter(|m| parse_order_id(m).is_some())
                    .ok_or_else(|| DecodeError::new(id, "\"message_id\" must be a message id"))?
                    .into_owned(),
            },
            "location" => {
                let order_id = env
                    .order_id
                    .ok_or_else(|| DecodeError::new(id, "missing \"order_id\""))?;
                if !is_valid_id(&order_id) {
                    return Err(DecodeError::new(
                        id,
                        "bad order_id: 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
                    ));
                }
                let (Some(lat), Some(lng)) = (env.lat, env.lng) else {
                    return Err(DecodeError::new(id, "missing \"lat\" or \"lng\""));
                };
                let fix = LocationFix {
                    lat,
                    lng,
                    heading: env.heading,
                    speed: env.speed,
                    ts: env.ts,
                };
                fix.validate().map_err(|m| DecodeError::new(id, m))?;
                ClientOp::Location {
                    order_id: order_id.into_owned(),
                    fix,
                }
            }
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(DecodeError::new(id, format!("unknown op {shown:?}")));
            }
        };
        Ok(ClientMessage { id, op })
    }
}

/// Chat ops name an order room.
fn chat_room(room: Room, id: Option<i64>) -> Result<Room, DecodeError> {
    if room.kind() == RoomKind::Order {
        Ok(room)
    } else {
        Err(DecodeError::new(
            id,
            "chat happens in order rooms (order:{id})",
        ))
    }
}

impl LocationFix {
    /// Coordinates must be finite, `lat` in [-90, 90], `lng` in [-180, 180];
    /// `heading` in [0, 360] and `speed` ≥ 0 when present (as protocol/README.md says).
    pub fn validate(&self) -> Result<(), &'static str> {
        if !self.lat.is_finite() || !(-90.0..=90.0).contains(&self.lat) {
            return Err("lat must be a finite number in [-90, 90]");
        }
        if !self.lng.is_finite() || !(-180.0..=180.0).contains(&self.lng) {
            return Err("lng must be a finite number in [-180, 180]");
        }
        if let Some(h) = self.heading
            && (!h.is_finite() || !(0.0..=360.0).contains(&h))
        {
            return Err("heading must be a finite number in [0, 360]");
        }
        if let Some(s) = self.speed
            && (!s.is_finite() || s < 0.0)
        {
            return Err("speed must be a finite number >= 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_op() {
        let m = ClientMessage::decode(r#"{"op":"subscribe","room":"order:42","id":1}"#).unwrap();
        assert_eq!(m.id, Some(1));
        assert!(
            matches!(m.op, ClientOp::Subscribe { ref room, since: None } if room.as_str() == "order:42")
        );
        let m = ClientMessage::decode(r#"{"op":"unsubscribe","room":"order:42","id":2}"#).unwrap();
        assert!(matches!(m.op, ClientOp::Unsubscribe { .. }));
        let m = ClientMessage::decode(
            r#"{"op":"location","order_id":"42","lat":12.9716,"lng":77.5946,"heading":90,"speed":8.5,"ts":1732000000000,"id":3}"#,
        )
        .unwrap();
        match m.op {
            ClientOp::Location { order_id, fix } => {
                assert_eq!(order_id, "42");
                assert_eq!(fix.lat, 12.9716);
                assert_eq!(fix.heading, Some(90.0));
                assert_eq!(fix.ts, Some(1_732_000_000_000));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            ClientMessage::decode(r#"{"op":"ping","id":4}"#).unwrap().op,
            ClientOp::Ping
        ));
        let m = ClientMessage::decode(r#"{"op":"refresh","token":"a.b.c","id":5}"#).unwrap();
        assert!(matches!(m.op, ClientOp::Refresh { ref token } if token == "a.b.c"));
        let e = ClientMessage::decode(r#"{"op":"refresh","token":"","id":6}"#).unwrap_err();
        assert_eq!(e.id, Some(6));
    }

    /// What a Rust client encodes is what the server decodes, field for field.
    #[test]
    fn encoded_ops_decode_to_themselves() {
        let ops = [
            ClientOp::Subscribe {
                room: Room::parse("order:42").unwrap(),
                since: Some(StreamPosition {
                    epoch: "e1".into(),
                    offset: 7,
                }),
            },
            ClientOp::Unsubscribe {
                room: Room::admin_revenue(),
            },
            ClientOp::Location {
                order_id: "42".into(),
                fix: LocationFix {
                    lat: 12.9716,
                    lng: 77.5946,
                    heading: Some(90.0),
                    speed: None,
                    ts: Some(1_732_000_000_000),
                },
            },
            ClientOp::Ping,
            ClientOp::Refresh {
                token: "a.b.c".into(),
            },
            ClientOp::Send {
                room: Room::parse("order:42").unwrap(),
                text: "at the gate \u{1f6aa}\n\"ring\"".into(),
                client_msg_id: "9b2f0c1e-7d4a".into(),
            },
            ClientOp::Typing {
                room: Room::parse("order:42").unwrap(),
            },
            ClientOp::Read {
                room: Room::parse("order:42").unwrap(),
                message_id: "17".into(),
            },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let text = op.clone().with_id(i as i64).encode();
            let back = ClientMessage::decode(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(back.id, Some(i as i64));
            assert_eq!(back.encode(), text);
            assert_eq!(format!("{:?}", back.op), format!("{op:?}"));
        }
        assert_eq!(
            ClientOp::Subscribe {
                room: Room::parse("order:42").unwrap(),
                since: None
            }
            .with_id(1)
            .encode(),
            r#"{"op":"subscribe","room":"order:42","id":1}"#
        );
        assert_eq!(
            ClientMessage {
                op: ClientOp::Ping,
                id: None
            }
            .encode(),
            r#"{"op":"ping"}"#
        );
    }

    #[test]
    fn errors_keep_the_id() {
        let e = ClientMessage::decode(r#"{"op":"subscribe","room":"order:*","id":9}"#).unwrap_err();
        assert_eq!(e.id, Some(9));
        let e = ClientMessage::decode(r#"{"op":"fly","id":10}"#).unwrap_err();
        assert_eq!(e.id, Some(10));
        let e = ClientMessage::decode(r#"{"op":"location","order_id":"1","lat":"x","id":11}"#)
            .unwrap_err();
        assert_eq!(e.id, Some(11));
        let e = ClientMessage::decode("not json").unwrap_err();
        assert_eq!(e.id, None);
        let e = ClientMessage::decode(r#"["subscribe",5,"order:42"]"#).unwrap_err();
        assert_eq!(e.message, "a frame must be a JSON object");
    }

    #[test]
    fn chat_ops_need_an_order_room_and_valid_ids() {
        for bad in [
            r#"{"op":"send","room":"user:c1","text":"hi","client_msg_id":"a","id":1}"#,
            r#"{"op":"send","room":"order:1","client_msg_id":"a","id":1}"#,
            r#"{"op":"send","room":"order:1","text":"hi","id":1}"#,
            r#"{"op":"send","room":"order:1","text":"hi","client_msg_id":"a b","id":1}"#,
            r#"{"op":"send","room":"order:1","text":"\ud800","client_msg_id":"a","id":1}"#,
            r#"{"op":"typing","room":"admin:revenue","id":1}"#,
            r#"{"op":"read","room":"order:1","message_id":"07","id":1}"#,
            r#"{"op":"read","room":"order:1","id":1}"#,
        ] {
            let e = ClientMessage::decode(bad).unwrap_err();
            assert_eq!(e.id, Some(1), "{bad}");
        }
        let m = ClientMessage::decode(
            r#"{"op":"send","room":"order:1","text":"caf\u00e9","client_msg_id":"a"}"#,
        )
        .unwrap();
        assert!(matches!(m.op, ClientOp::Send { ref text, .. } if text == "café"));
    }

    #[test]
    fn refuses_bad_coordinates() {
        for (lat, lng) in [
            ("91", "0"),
            ("-90.5", "0"),
            ("0", "180.1"),
            ("0", "-181"),
            ("1e400", "0"),
        ] {
            let frame = format!(r#"{{"op":"location","order_id":"1","lat":{lat},"lng":{lng}}}"#);
            assert!(ClientMessage::decode(&frame).is_err(), "{frame}");
        }
        assert!(
            ClientMessage::decode(r#"{"op":"location","order_id":"1","lat":1,"lng":2,"speed":-1}"#)
                .is_err()
        );
        assert!(
            ClientMessage::decode(r#"{"op":"location","order_id":"a b","lat":1,"lng":2}"#).is_err()
        );
    }

    #[test]
    fn compact_positions() {
        let p = StreamPosition::parse_compact("19a2f0c3:42").unwrap();
        assert_eq!((p.epoch.as_str(), p.offset), ("19a2f0c3", 42));
        for bad in [
            "",
            ":1",
            "e:",
            "e:-1",
            "e:1x",
            "e*:1",
            "e:99999999999999999999999",
        ] {
            assert_eq!(StreamPosition::parse_compact(bad), None, "{bad}");
        }
    }

    #[test]
    fn refuses_deep_nesting_without_panicking() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let frame = format!(r#"{{"op":"subscribe","room":"user:u1","since":{deep}}}"#);
        assert!(ClientMessage::decode(&frame).is_err());
    }
}
