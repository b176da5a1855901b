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
    /// [`Protocol::on_text`] on a text frame's payload as it lies in the read buffer. A protocol
    /// whose events can be read without validating the whole payload as UTF-8 first (the
    /// receive loop's hot path) overrides this; the default validates, then interprets.
    fn on_payload<'a>(&self, payload: &'a [u8], token: &str) -> Incoming<'a> {
        std::str::from_utf8(payload).map_or(Incoming::Ignore, |text| self.on_text(text, token))
    }
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
    let at = find(s.as_bytes(), 0, key.as_bytes())?;
    number_at(s.as_bytes(), at + key.len()).map(|(n, _)| n)
}

/// Where `key` first occurs in `s` at or after `from`: the candidates are the positions of
/// its first byte (`memchr`), each compared — no searcher is built per call, and a search that
/// starts near its key never scans the rest of the frame (an event's padding).
pub fn find(s: &[u8], from: usize, key: &[u8]) -> Option<usize> {
    let (&first, _) = key.split_first()?;
    let mut at = from;
    while let Some(i) = memchr::memchr(first, s.get(at..)?) {
        if s[at + i..].starts_with(key) {
            return Some(at + i);
        }
        at += i + 1;
    }
    None
}

/// The decimal digits at `s[at..]` (at most 19: no overflow) as a number, and where they end;
/// `None` when there is no digit there.
pub fn number_at(s: &[u8], at: usize) -> Option<(u64, usize)> {
    let digits = s
        .get(at..)?
        .iter()
        .take(19)
        .take_while(|b| b.is_ascii_digit());
    let (mut n, mut end) = (0u64, at);
    for b in digits {
        n = n * 10 + u64::from(b - b'0');
        end += 1;
    }
    (end > at).then_some((n, end))
}

#[cfg(test)]
mod tests {
    use super::{find, number_after, number_at};

    #[test]
    fn numbers_are_found() {
        assert_eq!(number_after(r#"{"a":1,"ts":123}"#, r#""ts":"#), Some(123));
        assert_eq!(number_after(r#"{"a":1}"#, r#""ts":"#), None);
        assert_eq!(number_after(r#"{"ts":"x"}"#, r#""ts":"#), None);
        assert_eq!(number_after(r#"{"t":"s","ts":7}"#, r#""ts":"#), Some(7));
        assert_eq!(
            number_at(b"x18446744073709551615", 1),
            Some((1844674407370955161, 20))
        );
        assert_eq!(number_at(b"12", 2), None);
        assert_eq!(find(b"abcabd", 1, b"ab"), Some(3));
        assert_eq!(find(b"abcabd", 4, b"ab"), None);
        assert_eq!(find(b"ab", 9, b"ab"), None);
    }
}
