//! Socket.IO v4 over a raw WebSocket (Engine.IO v4, the peer in `benches/peer/`): the server
//! opens with `0{…}`; the client authenticates with `40{"token":…}` and gets `40{…}` (or `44{…}`:
//! refused); `42<id>["join",room]` is acknowledged by `43<id>[…]`; events arrive as
//! `42["event",{"ts":…,"seq":…}]` (the room is not on the wire); the server's ping `2` is
//! answered with `3`.

use super::{Incoming, Protocol, number_after};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

/// The Socket.IO v4 protocol, websocket transport only.
pub struct SocketIo;

impl Protocol for SocketIo {
    fn name(&self) -> &'static str {
        "socketio"
    }

    fn request(&self, addr: &str, _token: &str) -> anyhow::Result<Request> {
        Ok(format!("ws://{addr}/socket.io/?EIO=4&transport=websocket").into_client_request()?)
    }

    fn implicit_user_room(&self) -> bool {
        false
    }

    fn join(&self, room: &str, id: u64) -> String {
        format!("42{id}{}", serde_json::json!(["join", room]))
    }

    fn on_text<'a>(&self, text: &'a str, token: &str) -> Incoming<'a> {
        if let Some(rest) = text.strip_prefix(r#"42["event","#) {
            return match (
                number_after(rest, r#""seq":"#),
                number_after(rest, r#""ts":"#),
            ) {
                (Some(seq), Some(ts_us)) => Incoming::Event {
                    room: None,
                    seq,
                    ts_us,
                },
                _ => Incoming::Ignore,
            };
        }
        match text.as_bytes() {
            [b'2'] => Incoming::Reply("3".to_owned()),
            [b'0', b'{', ..] => {
                Incoming::Reply(format!("40{}", serde_json::json!({ "token": token })))
            }
            [b'4', b'0', ..] => Incoming::Ready,
            [b'4', b'4', ..] => Incoming::Refused,
            [b'4', b'3', ..] => {
                let id = number_after(text, "43");
                match id {
                    Some(id) if text.contains(r#""ok":true"#) => Incoming::Joined(id),
                    Some(id) => Incoming::JoinFailed(id),
                    None => Incoming::Ignore,
                }
            }
            _ => Incoming::Ignore,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let p = SocketIo;
        assert_eq!(
            p.on_text(r#"42["event",{"ts":1700,"seq":5,"pad":"xx"}]"#, ""),
            Incoming::Event {
                room: None,
                seq: 5,
                ts_us: 1700
            }
        );
        assert_eq!(p.on_text("2", ""), Incoming::Reply("3".into()));
        assert_eq!(
            p.on_text(r#"0{"sid":"a"}"#, "T"),
            Incoming::Reply(r#"40{"token":"T"}"#.into())
        );
        assert_eq!(p.on_text(r#"40{"sid":"b"}"#, ""), Incoming::Ready);
        assert_eq!(
            p.on_text(r#"44{"message":"unauthorized"}"#, ""),
            Incoming::Refused
        );
        assert_eq!(p.on_text(r#"4312[{"ok":true}]"#, ""), Incoming::Joined(12));
        assert_eq!(p.join("order:1", 3), r#"423["join","order:1"]"#);
    }
}
