//! Frames the server sends. Each is serialized once into a `String`; an event's
//! bytes are then shared by every recipient (see `switchyard-gateway`'s hub).

use crate::client::StreamPosition;
use crate::role::Role;
use serde::Serialize;
use serde_json::value::RawValue;

/// Error codes carried by `{"type":"error"}` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON, named an unknown op, or had a bad field. The connection stays usable.
    BadRequest,
    /// The caller may not do this (another user's room, someone else's order, an unknown order).
    Forbidden,
    /// Too many ops per second; retry later. The connection stays open.
    RateLimited,
    /// A configured limit was hit (e.g. subscriptions per connection).
    LimitExceeded,
    /// The server failed; retrying may help.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Everything the server sends, borrowed so that encoding allocates only the output string.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage<'a> {
    /// First frame on every connection.
    Welcome {
        conn: &'a str,
        sub: &'a str,
        role: Role,
        rooms: &'a [&'a str],
        /// Each joined room's current stream position, keyed by room.
        #[serde(serialize_with = "as_map")]
        positions: &'a [(&'a str, &'a StreamPosition)],
        /// Present when the handshake asked to recover the user room (`since`): as in a
        /// subscribe reply; the recovered events follow the welcome.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// Success reply to an op.
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        op: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        /// Present on subscribe replies: the room's stream position when it was joined.
        #[serde(skip_serializing_if = "Option::is_none")]
        position: Option<&'a StreamPosition>,
        /// Present on subscribe replies that asked for recovery (`since`).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// On subscribe replies without a complete recovery: the room's current state
        /// (`null` for user rooms).
        #[serde(skip_serializing_if = "Option::is_none")]
        snapshot: Option<&'a RawValue>,
    },
    /// Failure reply to an op (or to an undecodable frame, then without id).
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        code: ErrorCode,
        message: &'a str,
    },
    /// The server ended this connection's subscription to `room` (e.g. the order was
    /// reassigned to another partner). No more events of the room follow.
    Revoked { room: &'a str, reason: &'a str },
    /// Events of `room` may have been lost on the way to this connection (the gateway's bus
    /// connection dropped). The subscription stays; resubscribe with `since` to recover.
    Gap { room: &'a str },
    /// A publication in a room the connection is subscribed to.
    Event {
        room: &'a str,
        event: &'a str,
        offset: u64,
        data: &'a RawValue,
    },
}

fn as_map<S: serde::Serializer>(
    pairs: &[(&str, &StreamPosition)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().copied())
}

impl ServerMessage<'_> {
    /// Serializes the frame. Serialization of these types cannot fail (no maps with
    /// non-string keys, raw values are already valid JSON).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.to_owned()
        })
    }
}

/// Encodes an event frame once; the result is shared by every recipient.
pub fn encode_event(room: &str, event: &str, offset: u64, data: &RawValue) -> String {
    let (head, tail) = event_frame_parts(room, event, data);
    let mut frame = String::with_capacity(head.len() + 20 + tail.len());
    frame.push_str(&head);
    frame.push_str(&offset.to_string());
    frame.push_str(&tail);
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
        let err = ServerMessage::Error {
            id: Some(1),
            code: ErrorCode::Forbidden,
            message: "no",
        };
        assert_eq!(
            err.encode(),
            r#"{"type":"error","id":1,"code":"forbidden","message":"no"}"#
        );
        let null = RawValue::NULL;
        let ok = ServerMessage::Ok {
            id: None,
            op: "subscribe",
            room: Some("user:u1"),
            position: None,
            recovered: None,
            snapshot: Some(null),
        };
        assert_eq!(
            ok.encode(),
            r#"{"type":"ok","op":"subscribe","room":"user:u1","snapshot":null}"#
        );
        let welcome = ServerMessage::Welcome {
            conn: "c1",
            sub: "u1",
            role: Role::Customer,
            rooms: &["user:u1"],
            positions: &[(
                "user:u1",
                &StreamPosition {
                    epoch: "e1".into(),
                    offset: 3,
                },
            )],
            recovered: None,
        };
        assert_eq!(
            welcome.encode(),
            r#"{"type":"welcome","conn":"c1","sub":"u1","role":"customer","rooms":["user:u1"],"positions":{"user:u1":{"epoch":"e1","offset":3}}}"#
        );
    }
}
