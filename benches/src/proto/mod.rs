//! The wire protocols the load generator speaks. A protocol turns a token into a handshake
//! request, a room into a join frame, and an incoming text frame into what it means for the
//! load generator ([`Incoming`]). Adding a third system is one more file here and one line in
//! [`by_name`].

use tokio_tungstenite::tungstenite::handshake::client::Request;

pub mod socketio;
pub mod switchyard;

/// What one incoming text frame means.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Nothing the load generator cares about.
    Ignore,
    /// Send this frame back (an authentication step, a keepalive answer).
    Reply(String),
    /// Authenticated: the connection is usable.
    Ready,
    /// The server refused the connection.
    Refused,
    /// The join with this id was accepted.
    Joined(u64),
    /// The join with this id was refused.
    JoinFailed(u64),
    /// An event: its room when the frame names it, its per-room sequence (offset or seq) and
    /// the publish timestamp (µs since the epoch) from its payload.
    Event {
        room: Option<&'a str>,
        seq: u64,
        ts_us: u64,
    },
    /// An event the load generator did not publish (a `presence.*` event of a room with
    /// presence): not a delivery to count, but it takes its place in the room's sequence, so
    /// the next event's `seq` is no gap.
    Untimed { room: Option<&'a str>, seq: u64 },
}

/// One system's client protocol.
pub trait Protocol: Send + Sync + 'static {
    /// Short name used in results (`switchyard`, `socketio`).
    fn name(&self) -> &'static str;
    /// The WebSocket handshake request for a server at `addr` (`host:port`), authenticated
    /// with `token` where the protocol puts it in the handshake.
    fn request(&self, addr: &str, token: &str) -> anyhow::Result<Request>;
    /// Whether the server puts every connection in its own user room (no join needed).
    fn implicit_user_room(&self) -> bool;
    /// The frame that joins `room`, acknowledged as `Joined(id)`.
    fn join(&self, room: &str, id: u64) -> String;
    /// Interprets one text frame; `token` is there for protocols that authenticate after open.
    fn on_text<'a>(&self, text: &'a str, token: &str) -> Incoming<'a>;
}

/// The protocol called `name`.
pub fn by_name(name: &str) -> anyhow::Result<Box<dyn Protocol>> {
    match name {
        "switchyard" => Ok(Box::new(switchyard::Switchyard)),
        "socketio" => Ok(Box::new(socketio::SocketIo)),
        "bare" => Ok(Box::new(switchyard::Bare)),
        other => anyhow::bail!("unknown protocol {other} (switchyard, socketio, bare)"),
    }
}

/// The unsigned integer right after the first `key` (e.g. `"ts":`) in `s`, without parsing
/// the whole frame as JSON (the load generator reads up to a million frames per second).
pub fn number_after(s: &str, key: &str) -> Option<u64> {
    let start = s.find(key)? + key.len();
    let digits = s[start..]
        .bytes()
        .take_while(|b| b.is_ascii_digit())
        .count();
    s[start..start + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::number_after;

    #[test]
    fn numbers_are_found() {
        assert_eq!(number_after(r#"{"a":1,"ts":123}"#, r#""ts":"#), Some(123));
        assert_eq!(number_after(r#"{"a":1}"#, r#""ts":"#), None);
        assert_eq!(number_after(r#"{"ts":"x"}"#, r#""ts":"#), None);
    }
}
