//! Switchyard (protocol/README.md): JWT in the `Authorization` header, `welcome` first, the
//! user room implicit, `{"op":"subscribe"}` answered by `ok`/`error` with the same id,
//! events `{"type":"event","room":…,"offset":N,"data":{"ts":…}}`. Keepalives are WebSocket
//! pings, answered by the WebSocket library.

use super::{Incoming, Protocol, find, number_after, number_at};
use switchyard_protocol::{ClientOp, Room};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The Switchyard protocol.
pub struct Switchyard;

impl Protocol for Switchyard {
    fn name(&self) -> &'static str {
        "switchyard"
    }

    fn request(&self, addr: &str, token: &str) -> anyhow::Result<Request> {
        let mut request = format!("ws://{addr}/ws").into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        Ok(request)
    }

    fn implicit_user_room(&self) -> bool {
        true
    }

    fn join(&self, room: &str, id: u64) -> String {
        match Room::parse(room) {
            Ok(room) => ClientOp::Subscribe { room, since: None }
                .with_id(id as i64)
                .encode(),
            // The server answers a bad name with an error, which the run counts as a failed join.
            Err(_) => serde_json::json!({"op": "subscribe", "room": room, "id": id}).to_string(),
        }
    }

    fn on_text<'a>(&self, text: &'a str, token: &str) -> Incoming<'a> {
        if text.starts_with(EVENT) {
            return event(text.as_bytes());
        }
        self.on_other(text, token)
    }

    fn on_payload<'a>(&self, payload: &'a [u8], token: &str) -> Incoming<'a> {
        if payload.starts_with(EVENT.as_bytes()) {
            return event(payload);
        }
        std::str::from_utf8(payload).map_or(Incoming::Ignore, |text| self.on_other(text, token))
    }
}

/// How every event frame starts.
const EVENT: &str = r#"{"type":"event""#;

/// An event frame, read in place: the room (validated as UTF-8 alone), then `"offset":` and
/// the payload's `"ts":` each searched from where the previous field ended, so the frame's
/// padding is never scanned and nothing is allocated or parsed as JSON.
fn event(frame: &[u8]) -> Incoming<'_> {
    const ROOM: &[u8] = br#"{"type":"event","room":""#;
    let mut at = 0;
    let room = frame.strip_prefix(ROOM).and_then(|rest| {
        let len = memchr::memchr(b'"', rest)?;
        at = ROOM.len() + len;
        std::str::from_utf8(&rest[..len]).ok()
    });
    const OFFSET: &[u8] = br#""offset":"#;
    let Some((seq, end)) = find(frame, at, OFFSET).and_then(|i| number_at(frame, i + OFFSET.len()))
    else {
        return Incoming::Ignore;
    };
    const TS: &[u8] = br#""ts":"#;
    let ts = find(frame, end, br#""data":"#)
        .and_then(|data| find(frame, data, TS))
        .and_then(|i| number_at(frame, i + TS.len()));
    match ts {
        Some((ts_us, _)) => Incoming::Event { room, seq, ts_us },
        None => Incoming::Untimed { room, seq },
    }
}

impl Switchyard {
    /// Every frame but an event.
    fn on_other<'a>(&self, text: &'a str, _token: &str) -> Incoming<'a> {
        if text.starts_with(r#"{"type":"welcome""#) {
            return Incoming::Ready;
        }
        if text.starts_with(r#"{"type":"ok""#) && text.contains(r#""op":"subscribe""#) {
            return number_after(text, r#""id":"#).map_or(Incoming::Ignore, Incoming::Joined);
        }
        if text.starts_with(r#"{"type":"error""#) {
            return number_after(text, r#""id":"#).map_or(Incoming::Ignore, Incoming::JoinFailed);
        }
        Incoming::Ignore
    }
}

/// The bare fan-out server (`src/bin/bare.rs`): Switchyard's frames without its
/// authentication, reported under its own name.
pub struct Bare;

impl Protocol for Bare {
    fn name(&self) -> &'static str {
        "bare"
    }
    fn request(&self, addr: &str, token: &str) -> anyhow::Result<Request> {
        Switchyard.request(addr, token)
    }
    fn implicit_user_room(&self) -> bool {
        true
    }
    fn join(&self, room: &str, id: u64) -> String {
        Switchyard.join(room, id)
    }
    fn on_text<'a>(&self, text: &'a str, token: &str) -> Incoming<'a> {
        Switchyard.on_text(text, token)
    }
    fn on_payload<'a>(&self, payload: &'a [u8], token: &str) -> Incoming<'a> {
        Switchyard.on_payload(payload, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let p = Switchyard;
        assert_eq!(
            p.on_text(r#"{"type":"event","room":"order:4","event":"bench.tick","offset":7,"data":{"ts":99,"seq":3}}"#, ""),
            Incoming::Event { room: Some("order:4"), seq: 7, ts_us: 99 }
        );
        assert_eq!(
            p.on_text(r#"{"type":"welcome","conn":"x"}"#, ""),
            Incoming::Ready
        );
        // In place, from the read buffer: the same answers, and no UTF-8 pass over the rest.
        let event = br#"{"type":"event","room":"user:bench-broadcast","event":"bench.tick","offset":12,"epoch":"e1","data":{"ts":1700000000123456,"seq":12,"pad":"xxxx"}}"#;
        assert_eq!(
            p.on_payload(event, ""),
            Incoming::Event {
                room: Some("user:bench-broadcast"),
                seq: 12,
                ts_us: 1_700_000_000_123_456
            }
        );
        let mut invalid = event.to_vec();
        *invalid.last_mut().unwrap() = 0xff;
        assert!(matches!(
            p.on_payload(&invalid, ""),
            Incoming::Event { seq: 12, .. }
        ));
        assert_eq!(p.on_payload(b"\xff\xfe", ""), Incoming::Ignore);
        assert_eq!(
            p.on_payload(br#"{"type":"event","room":"order:1","event":"presence.join","offset":3,"data":{"sub":"u"}}"#, ""),
            Incoming::Untimed { room: Some("order:1"), seq: 3 }
        );
        assert_eq!(
            p.on_payload(br#"{"type":"event","room":"order:1"}"#, ""),
            Incoming::Ignore
        );
        assert_eq!(p.on_payload(br#"{"type":"welcome"}"#, ""), Incoming::Ready);
        assert_eq!(
            p.on_text(
                r#"{"type":"ok","id":3,"op":"subscribe","room":"order:1"}"#,
                ""
            ),
            Incoming::Joined(3)
        );
        assert_eq!(
            p.on_text(r#"{"type":"error","id":2,"code":"forbidden"}"#, ""),
            Incoming::JoinFailed(2)
        );
    }
}
