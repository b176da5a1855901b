//! `bare`: the bare fan-out limit of this machine (issue #17 §1) — what tokio + tungstenite
//! deliver with nothing of Switchyard around them: no authentication, no Redis, no history,
//! no cursors, no metrics. `benches/run.sh` runs the broadcast, order-room and idle scenarios
//! against it in the same invocation as Switchyard and the peer, so every figure can be read as
//! a fraction of this limit.
//!
//! What it does, and nothing more:
//! - every connection is greeted with `{"type":"welcome"}`;
//! - `{"op":"subscribe","room":R,"id":N}` joins room R (answered `{"type":"ok","op":"subscribe","id":N}`);
//! - a text frame that starts with `{"type":"event"` and names `"room":R` is a publication: the
//!   received frame itself (encoded once, by the publisher) is cloned — a reference count — into
//!   each member's bounded queue with a non-blocking send (a full queue drops the frame and
//!   counts it, printed at exit);
//! - each connection's writer takes everything queued, feeds it, and flushes once (one task per
//!   connection reads and writes: see [`connection`]);
//! - tungstenite's buffers are the gateway's ([`config`]), so idle memory compares too.
//!
//! `bare --listen 127.0.0.1:0 [--workers N]` prints `listening on ADDR` (like `switchyard`).
//! Loopback only. `--workers`: tokio worker threads (default one per core, as the gateway;
//! 0: a single-threaded runtime) — for A/B runs of the runtime's own cost.

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames a connection may have queued.
const QUEUE: usize = 8192;
/// Frames written before one flush at most.
const BATCH: usize = 256;

type Queue = mpsc::Sender<Utf8Bytes>;
/// A room's members: connection id and queue.
type Members = Vec<(u64, Queue)>;

#[derive(Default)]
struct Rooms {
    members: RwLock<HashMap<Box<str>, Members>>,
    dropped: AtomicU64,
}

impl Rooms {
    fn join(&self, room: &str, conn: u64, queue: &Queue) {
        let mut rooms = self.members.write().unwrap_or_else(|e| e.into_inner());
        let members = rooms.entry(room.into()).or_default();
        if !members.iter().any(|(c, _)| *c == conn) {
            members.push((conn, queue.clone()));
        }
    }

    fn leave_all(&self, rooms: &[String], conn: u64) {
        let mut map = self.members.write().unwrap_or_else(|e| e.into_inner());
        for room in rooms {
            if let Some(members) = map.get_mut(room.as_str()) {
                members.retain(|(c, _)| *c != conn);
                if members.is_empty() {
                    map.remove(room.as_str());
                }
            }
        }
    }

    fn publish(&self, room: &str, frame: &Utf8Bytes) {
        let rooms = self.members.read().unwrap_or_else(|e| e.into_inner());
        let Some(members) = rooms.get(room) else {
            return;
        };
        for (_, queue) in members {
            if queue.try_send(frame.clone()).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The string value after `key` (e.g. `"room":"`) up to the next quote.
fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    rest.split('"').next()
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// tungstenite's buffers and limits as the gateway sets them (`gateway/src/handshake.rs`,
/// `SWITCHYARD_READ_BUFFER_BYTES`/`_WRITE_BUFFER_BYTES` defaults): tungstenite's own default
/// read buffer (128 KiB per connection) would make the bare server's memory per idle
/// connection ~30× the gateway's, and the idle figure's "fraction of the bare limit" empty.
fn config() -> WebSocketConfig {
    const WRITE_BUFFER: usize = 16 * 1024;
    const MAX_FRAME: usize = 1 << 20;
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * MAX_FRAME)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
}

/// One connection, in one task: what its queue holds is written (everything queued, up to
/// [`BATCH`] frames, then one flush), and what its client sends is read, whichever is ready —
/// no second task, so no lock between a reading and a writing half and one wake-up per batch.
async fn connection(tcp: TcpStream, conn: u64, rooms: Arc<Rooms>) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config())).await else {
        return;
    };
    let (queue, mut queued) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let _ = queue.try_send(Utf8Bytes::from_static(r#"{"type":"welcome"}"#));
    let mut joined: Vec<String> = Vec::new();
    let mut batch = Vec::new();
    'conn: loop {
        tokio::select! {
            biased;
            // Never 0: this task holds a sender.
            _ = queued.recv_many(&mut batch, BATCH) => {
                for frame in batch.drain(..) {
                    if ws.feed(Message::Text(frame)).await.is_err() {
                        break 'conn;
                    }
                }
                if ws.flush().await.is_err() {
                    break;
                }
                if batch.capacity() > 64 {
                    batch = Vec::new(); // a burst grew it: not kept by an idle connection
                }
            }
            message = ws.next() => {
                let Some(Ok(message)) = message else { break };
                let Message::Text(text) = message else {
                    continue;
                };
                if text.starts_with(r#"{"type":"event""#) {
                    if let Some(room) = string_after(&text, r#""room":""#) {
                        rooms.publish(room, &text);
                    }
                } else if text.starts_with(r#"{"op":"subscribe""#)
                    && let (Some(room), Some(id)) = (
                        string_after(&text, r#""room":""#),
                        number_after(&text, r#""id":"#),
                    )
                {
                    rooms.join(room, conn, &queue);
                    joined.push(room.to_owned());
                    let ok = format!(r#"{{"type":"ok","op":"subscribe","id":{id}}}"#);
                    if queue.try_send(ok.into()).is_err() {
                        rooms.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    rooms.leave_all(&joined, conn);
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    // Worker threads; 0: one thread (tokio's current-thread runtime). Default: tokio's
    // multi-threaded runtime with a worker per core, as the gateway runs.
    let mut workers: Option<usize> = None;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr.parse()?,
            ("--workers", Some(n)) => workers = Some(n.parse()?),
            _ => anyhow::bail!("usage: bare [--listen 127.0.0.1:PORT] [--workers N]"),
        }
    }
    if !listen.ip().is_loopback() {
        anyhow::bail!("{listen}: loopback only");
    }
    let rooms = Arc::new(Rooms::default());
    let runtime = match workers {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await?;
        println!("listening on {}", listener.local_addr()?);
        let mut next = 0u64;
        let terminate = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            std::io::Result::Ok(())
        };
        tokio::pin!(terminate);
        loop {
            tokio::select! {
                _ = &mut terminate => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        next += 1;
                        tokio::spawn(connection(tcp, next, rooms.clone()));
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                },
            }
        }
        eprintln!(
            "bare: {} frames dropped on full queues",
            rooms.dropped.load(Ordering::Relaxed)
        );
        anyhow::Ok(())
    })
}
