//! The load generator's WebSocket client, written to cost less per received frame than the
//! servers it measures (issue #17 §1): one buffer per connection, filled by one `read(2)`,
//! frames parsed in place — no allocation, no copy, no per-frame wake-up of another task.
//! Frames it sends are masked with the all-zero key (RFC 6455 allows any key; the loopback
//! needs no protection from cache poisoning), so sending costs no XOR pass either.
//!
//! Only what a load generator meets is supported: unfragmented text frames, ping (answered),
//! pong and close; anything else is an error that ends the connection.

use anyhow::{Context, bail};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::Request;

/// Buffer a connection starts with; grown (up to [`MAX_FRAME`]) only for a larger frame.
const INITIAL_BUFFER: usize = 16 * 1024;
/// Largest frame accepted: an `admin:fleet` subscribe reply lists every partner online, with
/// presence and position (10,000 partners: about 2 MB; a 1 MiB limit once failed the fleet
/// bench's admins silently).
pub const MAX_FRAME: usize = 16 << 20;

/// One frame found in the buffer: its opcode and where its payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: Opcode,
    pub payload: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

/// One client connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Conn {
    /// Connects from `src` and performs the opening handshake of `request` (its headers as
    /// tungstenite's `IntoClientRequest` builds them: Host, Upgrade, Sec-WebSocket-Key, ...).
    pub async fn connect(src: IpAddr, dst: SocketAddr, request: &Request) -> anyhow::Result<Conn> {
        let stream = crate::net::connect_from(src, dst).await?;
        let mut conn = Conn {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
        };
        conn.stream.write_all(&handshake_bytes(request)).await?;
        loop {
            if let Some(at) = find(&conn.buf[..conn.end], b"\r\n\r\n") {
                let head = std::str::from_utf8(&conn.buf[..at]).unwrap_or("");
                let status = head.lines().next().unwrap_or("");
                if !status.starts_with("HTTP/1.1 101") {
                    // The body's start (a JSON error naming the reason), when it came along.
                    let body = &conn.buf[at + 4..conn.end];
                    let body = String::from_utf8_lossy(&body[..body.len().min(120)]);
                    bail!("handshake refused: {status} {body}");
                }
                conn.start = at + 4;
                return Ok(conn);
            }
            if conn.end == conn.buf.len() {
                bail!("handshake response too large");
            }
            if conn.fill().await? == 0 {
                bail!("closed during the handshake");
            }
        }
    }

    /// One `read(2)` into the buffer (after moving a partial frame to its front, or growing it
    /// for a frame larger than it). Returns the bytes read; 0 is end of stream.
    pub async fn fill(&mut self) -> anyhow::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else if self.buf.len() < MAX_FRAME + 14 {
                self.buf.resize((self.buf.len() * 2).min(MAX_FRAME + 14), 0);
            } else {
                bail!("frame larger than {MAX_FRAME} bytes");
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next complete frame in the buffer, if there is one (then call [`Conn::fill`]).
    pub fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        let b = &mut self.buf[self.start..self.end];
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, opcode, masked) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[1] & 0x80 != 0);
        let (len, mut header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into()?), 10),
            126 | 127 => return Ok(None),
            n => (n as u64, 2),
        };
        if len > MAX_FRAME as u64 {
            bail!("frame of {len} bytes (limit {MAX_FRAME})");
        }
        let mask = if masked {
            header += 4;
            b.get(header - 4..header).map(|m| [m[0], m[1], m[2], m[3]])
        } else {
            None
        };
        let len = len as usize;
        if b.len() < header + len {
            return Ok(None);
        }
        if let Some(mask) = mask {
            for (i, byte) in b[header..header + len].iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
        }
        if !fin {
            bail!("fragmented frames are not supported");
        }
        let opcode = match opcode {
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            other => bail!("opcode {other} not supported"),
        };
        let payload = self.start + header..self.start + header + len;
        self.start = payload.end;
        Ok(Some(Frame { opcode, payload }))
    }

    /// The next frame, reading as needed; `None` at the end of the stream. Cancel-safe (a
    /// `select!` branch): nothing is lost if the read is dropped.
    pub async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The payload of a frame [`Conn::next_frame`] returned (valid until the next `fill`).
    pub fn payload(&self, frame: &Frame) -> &[u8] {
        &self.buf[frame.payload.clone()]
    }

    /// A text frame's payload as `&str` (None if it is not UTF-8).
    pub fn text(&self, frame: &Frame) -> Option<&str> {
        std::str::from_utf8(self.payload(frame)).ok()
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send(0x1, text.as_bytes()).await
    }

    /// Answers a ping with its payload.
    pub async fn pong(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let payload = self.payload(frame).to_vec();
        self.send(0xA, &payload).await
    }

    /// Sends a close frame (code 1000) and shuts the socket's sending side.
    pub async fn close(&mut self) -> anyhow::Result<()> {
        self.send(0x8, &1000u16.to_be_bytes()).await?;
        self.stream.shutdown().await.context("shutdown")
    }

    /// Writes frames encoded with [`encode_text`] in one write.
    pub async fn write_raw(&mut self, frames: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(frames).await.context("write")
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        encode(&mut frame, opcode, payload);
        self.stream.write_all(&frame).await.context("write")
    }
}

/// Appends a masked text frame of `text` to `out`.
pub fn encode_text(out: &mut Vec<u8>, text: &str) {
    encode(out, 0x1, text.as_bytes());
}

fn encode(frame: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    {
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0; 4]); // the all-zero masking key: payload unchanged
        frame.extend_from_slice(payload);
    }
}

/// The request line and headers of `request`.
fn handshake_bytes(request: &Request) -> Vec<u8> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut out = format!("GET {path} HTTP/1.1\r\n").into_bytes();
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    /// Against tungstenite's server side: handshake, frames of every length class, a ping
    /// answered, masking accepted by the server, close.
    #[tokio::test]
    async fn speaks_rfc6455_with_tungstenite() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            for n in [5, 200, 70_000] {
                ws.feed(Message::text("y".repeat(n))).await.unwrap();
            }
            ws.feed(Message::Ping(vec![1, 2, 3].into())).await.unwrap();
            ws.flush().await.unwrap();
            let mut got = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Close(_) => break,
                    m => got.push(m),
                }
            }
            got
        });
        let request = format!("ws://{addr}/ws").into_client_request().unwrap();
        let mut conn = Conn::connect("127.0.0.1".parse().unwrap(), addr, &request)
            .await
            .unwrap();
        let mut lengths = Vec::new();
        while lengths.len() < 4 {
            match conn.next_frame().unwrap() {
                Some(f) if f.opcode == Opcode::Text => lengths.push(conn.text(&f).unwrap().len()),
                Some(f) if f.opcode == Opcode::Ping => {
                    conn.pong(&f).await.unwrap();
                    lengths.push(0);
                }
                Some(f) => panic!("unexpected {f:?}"),
                None => assert!(conn.fill().await.unwrap() > 0),
            }
        }
        assert_eq!(lengths, [5, 200, 70_000, 0]);
        conn.send_text("hello").await.unwrap();
        conn.close().await.unwrap();
        let got = server.await.unwrap();
        assert_eq!(
            got,
            [Message::Pong(vec![1, 2, 3].into()), Message::text("hello")]
        );
    }
}
