//! Switchyard (protocol/README.md): JWT in the `Authorization` header, `welcome` first, the
//! user room implicit, `{"op":"subscribe"}` answered by `ok`/`error` with the same id,
//! events `{"type":"event","room":…,"offset":N,"data":{"ts":…}}`. Keepalives are WebSocket
//! pings, answered by the WebSocket library.

use super::{Incoming, Protocol, number_after};
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

    fn on_text<'a>(&self, text: &'a str, _token: &str) -> Incoming<'a> {
        if text.starts_with(r#"{"type":"event""#) {
            let room = text
                .strip_prefix(r#"{"type":"event","room":""#)
                .and_then(|rest| rest.split('"').next());
            let data = text.find(r#""data":"#).map(|i| &text[i..]).unwrap_or("");
            return match (
                number_after(text, r#""offset":"#),
                number_after(data, r#""ts":"#),
            ) {
                (Some(seq), Some(ts_us)) => Incoming::Event { room, seq, ts_us },
                (Some(seq), None) => Incoming::Untimed { room, seq },
                _ => Incoming::Ignore,
            };
        }
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
