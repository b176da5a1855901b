//! `loadgen`: drives a running Switchyard (or the Socket.IO peer in `benches/peer/`) the way
//! its users do, and measures it.
//!
//! - `run`: opens real WebSocket connections with real JWTs (bounded ramp, client sockets
//!   spread over several loopback source addresses), joins rooms, then publishes at stepped
//!   offered rates — through Redis with the broker crate (Switchyard's distributed path: one
//!   Lua script per event, pipelined), through the publish API (`--publisher api`), or with
//!   the peer's `publisher.js` (`--publisher peer`) — and records, per step, the end-to-end
//!   latency of every delivery (payload `ts` → receipt) in an HDR histogram, loss (deliveries
//!   against what was published, and per-room sequence gaps), and the RSS and CPU time of the
//!   server processes given with `--pid` and of itself.
//! - `handshake`: connections per second (connect + auth + welcome/connect ack, then close).
//! - `idle`: RSS per idle connection at several connection counts, using several `run`
//!   processes (one process may hold at most ~20,000 sockets).
//! - `merge`: combines the JSON results of several `run` processes (histograms exactly).
//! - `fleet` (`fleet.rs`): partners streaming fixes with admins watching `admin:fleet`, against
//!   the plain order-room location path; the gateway's CPU per fix in both.
//! - `soak` (`soak.rs`): half an hour of mixed traffic and reconnects; the slopes of the
//!   gateways' RSS and open files and of Redis' memory, and the loss.
//!
//! Loopback only; bounded in count (`--clients`, `--count`) and time (`--step-secs`, `--secs`,
//! `--hold-secs`).

mod fleet;
mod soak;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_auth::Issuer;
use switchyard_benches::proto::{Incoming, Protocol};
use switchyard_benches::wire::{Conn, Frame, Opcode};
use switchyard_benches::{hist, net, procstat, proto, wire};
use switchyard_client::Rest;
use switchyard_protocol::Role;
use switchyard_protocol::catalog::ProductPut;
use switchyard_protocol::client::{ClientOp, LocationFix};
use switchyard_protocol::order::{Item, NewOrder};
use tokio::sync::{Semaphore, mpsc, watch};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for Switchyard and its Socket.IO peer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Connect clients, publish at stepped rates, measure.
    Run(Box<RunArgs>),
    /// Handshakes per second against one server.
    Handshake(HandshakeArgs),
    /// RSS per idle connection at several connection counts (spawns `run` processes).
    Idle(IdleArgs),
    /// Scenario 5 (Switchyard only): partners stream `location` ops into their orders' rooms,
    /// customers receive them; orders are created and assigned through the REST API first.
    Locations(Box<LocationArgs>),
    /// Partners streaming fixes with admins in `admin:fleet` vs the plain order-room path.
    Fleet(Box<fleet::FleetArgs>),
    /// Mixed traffic and reconnects for many minutes: resource slopes and loss (Switchyard).
    Soak(Box<soak::SoakArgs>),
    /// Merge the JSON results of several `run` processes.
    Merge {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, ClapArgs)]
struct Common {
    /// Client protocol: switchyard or socketio.
    #[arg(long, default_value = "switchyard")]
    proto: String,
    /// Server address host:port (repeat the flag); clients are spread round-robin.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// HS256 secret the servers verify with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// Client sockets are bound round-robin to 127.0.0.2 ..= 127.0.0.{1+N}.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Server processes to sample for RSS and CPU: NAME=PID (repeat the flag).
    #[arg(long = "pid")]
    pids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoomMode {
    /// Every client joins one shared room (a broadcast).
    Shared,
    /// Client i joins `order:{i/2}`: two-member rooms.
    Pairs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Publisher {
    None,
    /// Switchyard's broker crate straight into Redis (distributed mode).
    Redis,
    /// `POST /api/publish/batch` (any mode; needs `--api`).
    Api,
    /// The peer's `publisher.js` (Socket.IO redis-emitter).
    Peer,
    /// Event frames written straight to every `bare` server (`src/bin/bare.rs`), each once.
    Bare,
}

#[derive(Debug, Clone, ClapArgs)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Scenario label written into the result.
    #[arg(long, default_value = "run")]
    label: String,
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// First client index (several processes: disjoint users and rooms).
    #[arg(long, default_value_t = 0)]
    client_offset: usize,
    #[arg(long, value_enum, default_value = "pairs")]
    rooms: RoomMode,
    /// The shared room's name.
    #[arg(long, default_value = "user:bench-broadcast")]
    room: String,
    /// New connections per second while ramping up (at most 2,000: the SYN backlog).
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    #[arg(long, value_enum, default_value = "none")]
    publisher: Publisher,
    /// Redis URL (publisher redis / peer).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Key prefix of the Switchyard servers.
    #[arg(long, default_value = "sy:")]
    redis_prefix: String,
    /// API base URL (publisher api).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The peer's publisher.js (publisher peer).
    #[arg(long, default_value = "benches/peer/publisher.js")]
    peer_publisher: PathBuf,
    /// Offered publish rates, events/s, one step each.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    rates: Vec<f64>,
    /// Seconds per step (at most 120).
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// Stop stepping after a step whose p99 exceeds this (ms) or which lost anything.
    #[arg(long, default_value_t = 250.0)]
    max_p99_ms: f64,
    /// Bytes of padding in each event.
    #[arg(long, default_value_t = 200)]
    pad: usize,
    /// Publishes in flight at most (redis/api); beyond, the offered event is counted as not
    /// published instead of queued.
    #[arg(long, default_value_t = 8192)]
    in_flight: usize,
    /// Events per API request (publisher api).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Events per publish script call at most (publisher redis): the events due in one
    /// millisecond go out in batches of this many (`Bus::publish_batch`); 1: one `EVALSHA`
    /// per event.
    #[arg(long, default_value_t = 64)]
    redis_batch: usize,
    /// Percent of clients that stop reading once joined (slow consumers).
    #[arg(long, default_value_t = 0.0)]
    stall_percent: f64,
    /// Without a publisher: hold the connections this long (or until --stop-file exists).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Written (with the connected count) once every client is ready.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Ends the hold when it appears.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Where to write the JSON result.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, ClapArgs)]
struct HandshakeArgs {
    #[command(flatten)]
    common: Common,
    /// Handshakes to perform at most.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Handshakes in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Time bound, seconds (at most 120).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, ClapArgs)]
struct LocationArgs {
    #[command(flatten)]
    common: Common,
    /// API base URL (orders are created and assigned there).
    #[arg(long)]
    api: String,
    /// Orders, each with one customer and one partner connection (2 connections per order).
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// Location ops per second per partner.
    #[arg(long, default_value_t = 4.0)]
    hz: f64,
    /// Fractions of the partners sending, one step each.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,1")]
    fractions: Vec<f64>,
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, ClapArgs)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections per target at each level (cumulative).
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,18000")]
    levels: Vec<usize>,
    /// Ramp per child process, connections/s (two children ramp at once).
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Directory for the children's files.
    #[arg(long, default_value = "/tmp")]
    work_dir: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn check_loopback(addr: &str) -> anyhow::Result<SocketAddr> {
    let sa: SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr}: expected IP:PORT"))?;
    if !sa.ip().is_loopback() {
        bail!("{addr}: loadgen only targets loopback addresses");
    }
    Ok(sa)
}

fn check_loopback_url(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
        .map(|h| h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h))
        .and_then(|h| h.rsplit('@').next())
        .unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !ok {
        bail!("{url}: loadgen only targets loopback addresses");
    }
    Ok(())
}

/// Named processes sampled from /proc.
struct Watched(Vec<(String, u32)>);

impl Watched {
    fn parse(specs: &[String]) -> anyhow::Result<Watched> {
        let mut v = Vec::new();
        for s in specs {
            let (name, pid) = s.split_once('=').unwrap_or((s.as_str(), s.as_str()));
            v.push((name.to_owned(), pid.parse().with_context(|| s.clone())?));
        }
        v.push(("loadgen".to_owned(), std::process::id()));
        Ok(Watched(v))
    }
    fn sample(&self) -> Vec<Option<procstat::Sample>> {
        self.0.iter().map(|(_, p)| procstat::sample(*p)).collect()
    }
    /// RSS after and CPU % over `secs` for each process.
    fn report(&self, before: &[Option<procstat::Sample>], secs: f64) -> Vec<Value> {
        let after = self.sample();
        self.0
            .iter()
            .zip(before.iter().zip(&after))
            .map(|((name, pid), (b, a))| match (b, a) {
                (Some(b), Some(a)) => json!({"name": name, "pid": pid, "rss_kib": a.rss_kib,
                    "cpu_percent": 100.0 * (a.cpu_secs - b.cpu_secs) / secs.max(1e-3)}),
                _ => json!({"name": name, "pid": pid, "gone": true}),
            })
            .collect()
    }
}

/// Counters shared by every connection.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    gaps: AtomicU64,
    connected: AtomicU64,
    failed_connects: AtomicU64,
    /// Why connections failed: the error (a refusal's status line and body, a timeout), and
    /// how often.
    failures: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    disconnected: AtomicU64,
}

impl Tally {
    fn failed(&self, why: String) {
        self.failed_connects.fetch_add(1, Ordering::Relaxed);
        let mut why = why;
        why.truncate(160);
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(why)
            .or_insert(0) += 1;
    }
}

struct Ctx {
    proto: Box<dyn Protocol>,
    tally: Tally,
    latencies: hist::Latencies,
    /// Bumped at each step: sequence tracking restarts (the peer's seq restarts per publisher).
    step: AtomicU64,
    stop: watch::Receiver<bool>,
}

/// Connects and authenticates; the connection is ready for joins.
async fn open(proto: &dyn Protocol, src: IpAddr, addr: &str, token: &str) -> anyhow::Result<Conn> {
    let dst: SocketAddr = addr.parse()?;
    let request = proto.request(addr, token)?;
    let mut conn = Conn::connect(src, dst, &request).await?;
    loop {
        let Some(frame) = conn.next().await? else {
            bail!("closed before ready")
        };
        match frame.opcode {
            Opcode::Text => match proto.on_text(conn.text(&frame).unwrap_or(""), token) {
                Incoming::Ready => return Ok(conn),
                Incoming::Refused => bail!("refused"),
                Incoming::Reply(r) => conn.send_text(&r).await?,
                _ => {}
            },
            Opcode::Ping => conn.pong(&frame).await?,
            Opcode::Close => bail!("closed before ready"),
            _ => {}
        }
    }
}

/// A close frame's code and reason, as text.
fn close_reason(conn: &Conn, frame: &wire::Frame) -> String {
    let payload = conn.payload(frame);
    match payload {
        [a, b, reason @ ..] => format!(
            "{} {}",
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason)
        ),
        _ => "no code".to_owned(),
    }
}

/// Joins `rooms` (ids 1..); returns once every join is acknowledged.
async fn join_all(
    proto: &dyn Protocol,
    conn: &mut Conn,
    rooms: &[String],
    token: &str,
) -> anyhow::Result<()> {
    for (k, room) in rooms.iter().enumerate() {
        conn.send_text(&proto.join(room, k as u64 + 1)).await?;
    }
    let mut pending = rooms.len();
    while pending > 0 {
        let Some(frame) = conn.next().await? else {
            bail!("closed while joining")
        };
        match frame.opcode {
            Opcode::Text => {
                let text = conn.text(&frame).unwrap_or("");
                match proto.on_text(text, token) {
                    Incoming::Joined(_) => pending -= 1,
                    Incoming::JoinFailed(id) => bail!("join {id} refused: {text}"),
                    Incoming::Reply(r) => conn.send_text(&r).await?,
                    _ => {}
                }
            }
            Opcode::Ping => conn.pong(&frame).await?,
            Opcode::Close => bail!("closed while joining: {}", close_reason(conn, &frame)),
            _ => {}
        }
    }
    Ok(())
}

/// One client: connects, joins, then records every event of `tracked` until stopped.
///
/// The receive loop is the load generator's hot path (issue #17 §1): one `read(2)`, one clock
/// reading for everything it returned, every complete frame parsed in place, the counters
/// bumped once per read.
#[allow(clippy::too_many_arguments)]
async fn client(
    ctx: Arc<Ctx>,
    i: usize,
    src: IpAddr,
    addr: String,
    token: String,
    rooms: Vec<String>,
    stall: bool,
    ready: mpsc::Sender<(usize, bool)>,
) {
    let proto = ctx.proto.as_ref();
    let setup = async {
        let mut conn = open(proto, src, &addr, &token).await?;
        join_all(proto, &mut conn, &rooms, &token).await?;
        anyhow::Ok(conn)
    };
    let mut conn = match tokio::time::timeout(Duration::from_secs(20), setup).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            if ctx.tally.failed_connects.load(Ordering::Relaxed) < 3 {
                eprintln!("client {i}: {e:#}");
            }
            ctx.tally.failed(format!("{e:#}"));
            let _ = ready.send((i, false)).await;
            return;
        }
        Err(_) => {
            ctx.tally.failed("not ready within 20 s".to_owned());
            let _ = ready.send((i, false)).await;
            return;
        }
    };
    ctx.tally.connected.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send((i, true)).await;
    drop(ready);
    let mut stop = ctx.stop.clone();
    if stall {
        // A slow consumer: never reads again (the kernel buffers fill, then the server's).
        let _ = stop.wait_for(|s| *s).await;
        return;
    }
    let tracked = rooms.last().cloned().unwrap_or_default();
    let mut last: Option<u64> = None;
    let mut step = 0;
    let mut replies: Vec<String> = Vec::new();
    let mut pings: Vec<Frame> = Vec::new();
    // One stop future for the connection's life: registered with the channel once, not once
    // per read.
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    'conn: loop {
        let read = tokio::select! {
            biased;
            read = conn.fill() => read,
            _ = &mut stopped => break,
        };
        if !matches!(read, Ok(n) if n > 0) {
            ctx.tally.disconnected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = now_us();
        let current = ctx.step.load(Ordering::Relaxed);
        if current != step {
            step = current;
            last = None;
        }
        let (mut delivered, mut gaps) = (0, 0);
        loop {
            let frame = match conn.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => break 'conn,
            };
            match frame.opcode {
                Opcode::Text => {}
                Opcode::Ping => {
                    pings.push(frame);
                    continue;
                }
                Opcode::Close => break 'conn,
                _ => continue,
            }
            match proto.on_payload(conn.payload(&frame), &token) {
                Incoming::Event { room, seq, ts_us } => {
                    if room.is_some_and(|r| r != tracked) {
                        continue;
                    }
                    if let Some(prev) = last
                        && seq > prev + 1
                    {
                        gaps += seq - prev - 1;
                    }
                    last = Some(last.map_or(seq, |p| p.max(seq)));
                    delivered += 1;
                    ctx.latencies.record(i, now.saturating_sub(ts_us));
                }
                Incoming::Untimed { room, seq } if room.is_none_or(|r| r == tracked) => {
                    last = Some(last.map_or(seq, |p| p.max(seq)));
                }
                Incoming::Reply(r) => replies.push(r),
                _ => {}
            }
        }
        ctx.tally.delivered.fetch_add(delivered, Ordering::Relaxed);
        if gaps > 0 {
            ctx.tally.gaps.fetch_add(gaps, Ordering::Relaxed);
        }
        for ping in pings.drain(..) {
            if conn.pong(&ping).await.is_err() {
                break 'conn;
            }
        }
        for r in replies.drain(..) {
            if conn.send_text(&r).await.is_err() {
                break 'conn;
            }
        }
    }
    if !*ctx.stop.borrow() {
        ctx.tally.disconnected.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
}

/// xorshift64*: the publisher's room choice (uniform, like the peer's Math.random()).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) % n.max(1)
    }
}

struct StepOutcome {
    published: u64,
    not_published: u64,
    /// Published events per room index (empty when the publisher does not say).
    per_room: Vec<u64>,
    publish_secs: f64,
    publisher_cpu_s: Option<f64>,
    note: Option<String>,
}

fn room_names(args: &RunArgs, n_rooms: usize) -> impl Fn(usize) -> String + '_ {
    let _ = n_rooms;
    move |k| match args.rooms {
        RoomMode::Shared => args.room.clone(),
        RoomMode::Pairs => format!("order:{k}"),
    }
}

/// Switchyard's Redis bus at `url` with key prefix `prefix`: the publishers' way in.
async fn redis_bus(
    url: &str,
    prefix: &str,
) -> anyhow::Result<Arc<switchyard_broker::redis::RedisBus>> {
    use switchyard_broker::redis::{Redis, RedisConfig};
    let redis = Redis::connect(RedisConfig {
        prefix: prefix.to_owned(),
        ..RedisConfig::new(url.to_owned())
    })
    .await
    .map_err(|e| anyhow::anyhow!("redis: {e}"))?;
    Ok(redis.bus)
}

async fn publish_redis(args: &RunArgs, rate: f64, n_rooms: usize) -> anyhow::Result<StepOutcome> {
    use switchyard_broker::Bus;
    let broker = redis_bus(&args.redis, &args.redis_prefix).await?;
    let rooms: Vec<switchyard_protocol::Room> = (0..n_rooms)
        .map(|k| room_names(args, n_rooms)(k).parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("room: {e:?}"))?;
    let rooms = Arc::new(rooms);
    let per_room: Arc<Vec<AtomicU64>> = Arc::new((0..n_rooms).map(|_| AtomicU64::new(0)).collect());
    let failed = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(args.in_flight));
    let pad = "x".repeat(args.pad);
    let total = (rate * args.step_secs as f64).round() as u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ now_us());
    let mut seqs = vec![0u64; n_rooms];
    let (mut sent, mut skipped) = (0u64, 0u64);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.step_secs);
    let per_call = args.redis_batch.clamp(1, 1000);
    while sent + skipped < total && Instant::now() < deadline {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        // What is due now goes out in script calls of at most `per_call` events each.
        while sent + skipped < due {
            let n = ((due - sent - skipped) as usize).min(per_call);
            let Ok(permit) = permits.clone().try_acquire_many_owned(n as u32) else {
                skipped += n as u64; // the bus is not keeping up with the offered rate
                continue;
            };
            let mut ks = Vec::with_capacity(n);
            let mut batch = Vec::with_capacity(n);
            for _ in 0..n {
                let k = rng.below(n_rooms as u64) as usize;
                seqs[k] += 1;
                let data = format!(r#"{{"ts":{},"seq":{},"pad":"{pad}"}}"#, now_us(), seqs[k]);
                batch.push(switchyard_broker::Outgoing {
                    room: rooms[k].clone(),
                    event: "bench.tick".into(),
                    data: serde_json::value::RawValue::from_string(data).expect("valid json"),
                });
                ks.push(k);
            }
            let (broker, per_room, failed) = (broker.clone(), per_room.clone(), failed.clone());
            tokio::spawn(async move {
                let _permit = permit;
                for (k, result) in ks.into_iter().zip(broker.publish_batch(batch).await) {
                    match result {
                        Ok(_) => per_room[k].fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
            sent += n as u64;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        permits.acquire_many(args.in_flight as u32),
    )
    .await;
    let publish_secs = started.elapsed().as_secs_f64();
    let per_room: Vec<u64> = per_room.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let published: u64 = per_room.iter().sum();
    Ok(StepOutcome {
        published,
        not_published: skipped + failed.load(Ordering::Relaxed),
        per_room,
        publish_secs,
        publisher_cpu_s: None,
        note: None,
    })
}

/// Writes each event frame (as Switchyard's gateways send them, offsets counted per room) to
/// every bare server once, batched per millisecond into one write per server.
async fn publish_bare(args: &RunArgs, rate: f64, n_rooms: usize) -> anyhow::Result<StepOutcome> {
    let mut servers = Vec::new();
    for (k, target) in args.common.targets.iter().enumerate() {
        let src = net::loopback_sources(1)[0];
        servers.push(
            open(&proto::switchyard::Bare, src, target, "")
                .await
                .with_context(|| format!("publisher to {target} ({k})"))?,
        );
    }
    let names = room_names(args, n_rooms);
    let pad = "x".repeat(args.pad);
    let total = (rate * args.step_secs as f64).round() as u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ now_us());
    let mut per_room = vec![0u64; n_rooms];
    let mut sent = 0u64;
    let mut batch = Vec::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.step_secs);
    while sent < total && Instant::now() < deadline {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        batch.clear();
        while sent < due {
            let k = rng.below(n_rooms as u64) as usize;
            per_room[k] += 1;
            let frame = format!(
                r#"{{"type":"event","room":"{}","event":"bench.tick","offset":{},"data":{{"ts":{},"seq":{},"pad":"{pad}"}}}}"#,
                names(k),
                per_room[k],
                now_us(),
                per_room[k]
            );
            wire::encode_text(&mut batch, &frame);
            sent += 1;
        }
        for server in &mut servers {
            server.write_raw(&batch).await?;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    Ok(StepOutcome {
        published: sent,
        not_published: 0,
        per_room,
        publish_secs,
        publisher_cpu_s: None,
        note: None,
    })
}

async fn publish_api(
    args: &RunArgs,
    rate: f64,
    n_rooms: usize,
    issuer: &Issuer,
) -> anyhow::Result<StepOutcome> {
    let http = reqwest::Client::new();
    let token = issuer.issue("loadgen", Role::Service, 3600);
    let url = format!("{}/api/publish/batch", args.api.trim_end_matches('/'));
    let per_room: Arc<Vec<AtomicU64>> = Arc::new((0..n_rooms).map(|_| AtomicU64::new(0)).collect());
    let rejected = Arc::new(AtomicU64::new(0));
    let in_flight = (args.in_flight / args.batch).clamp(1, 64);
    let permits = Arc::new(Semaphore::new(in_flight));
    let pad = "x".repeat(args.pad);
    let names = room_names(args, n_rooms);
    let interval = Duration::from_secs_f64(args.batch as f64 / rate.max(0.001));
    let mut rng = Rng(0x2545_F491 ^ now_us());
    let mut seq = 0u64;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.step_secs);
    let mut tick = started;
    while Instant::now() < deadline {
        tokio::time::sleep_until(tick.into()).await;
        tick += interval;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            rejected.fetch_add(args.batch as u64, Ordering::Relaxed);
            continue;
        };
        let ts = now_us();
        let ks: Vec<usize> = (0..args.batch)
            .map(|_| rng.below(n_rooms as u64) as usize)
            .collect();
        let items: Vec<Value> = ks
            .iter()
            .map(|&k| {
                seq += 1;
                json!({"room": names(k), "event": "bench.tick", "data": {"ts": ts, "seq": seq, "pad": pad}})
            })
            .collect();
        let (http, url, token, per_room, rejected) = (
            http.clone(),
            url.clone(),
            token.clone(),
            per_room.clone(),
            rejected.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let result = http
                .post(&url)
                .bearer_auth(token)
                .json(&json!({ "items": items }))
                .send()
                .await;
            let body = match result {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            };
            let oks = body
                .as_ref()
                .and_then(|b| b["results"].as_array())
                .map(|a| a.iter().map(|r| r["offset"].is_u64()).collect::<Vec<_>>())
                .unwrap_or_default();
            for (n, &k) in ks.iter().enumerate() {
                if oks.get(n).copied().unwrap_or(false) {
                    per_room[k].fetch_add(1, Ordering::Relaxed);
                } else {
                    rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        permits.acquire_many(in_flight as u32),
    )
    .await;
    let per_room: Vec<u64> = per_room.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    Ok(StepOutcome {
        published: per_room.iter().sum(),
        not_published: rejected.load(Ordering::Relaxed),
        per_room,
        publish_secs: started.elapsed().as_secs_f64(),
        publisher_cpu_s: None,
        note: None,
    })
}

async fn publish_peer(
    args: &RunArgs,
    rate: f64,
    n_rooms: usize,
    step: usize,
) -> anyhow::Result<StepOutcome> {
    let done =
        std::env::temp_dir().join(format!("loadgen-peer-{}-{step}.json", std::process::id()));
    let _ = std::fs::remove_file(&done);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(&args.peer_publisher);
    match args.rooms {
        RoomMode::Shared => cmd.args(["--room", &args.room]),
        RoomMode::Pairs => cmd.args(["--room-prefix", "order:", "--rooms", &n_rooms.to_string()]),
    };
    cmd.args([
        "--rate",
        &rate.to_string(),
        "--secs",
        &args.step_secs.to_string(),
    ])
    .args(["--pad", &args.pad.to_string(), "--redis", &args.redis])
    .arg("--done-file")
    .arg(&done)
    .stdout(std::process::Stdio::null())
    .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().context("node publisher.js")?;
    let status = tokio::time::timeout(Duration::from_secs(args.step_secs + 30), child.wait()).await;
    let publish_secs = started.elapsed().as_secs_f64();
    let out: Value = std::fs::read(&done)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_file(&done);
    let published = out["published"].as_u64().unwrap_or(0);
    let offered = (rate * args.step_secs as f64).round() as u64;
    Ok(StepOutcome {
        published,
        not_published: offered.saturating_sub(published),
        per_room: Vec::new(),
        publish_secs: out["send_secs"].as_f64().unwrap_or(publish_secs),
        publisher_cpu_s: out["cpu_s"].as_f64(),
        note: match status {
            Ok(Ok(s)) if s.success() => None,
            other => Some(format!("publisher.js: {other:?}")),
        },
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let targets: Vec<String> = args.common.targets.clone();
    for t in &targets {
        check_loopback(t)?;
    }
    if args.publisher == Publisher::Redis || args.publisher == Publisher::Peer {
        check_loopback_url(&args.redis)?;
    }
    if args.publisher == Publisher::Api {
        check_loopback_url(&args.api)?;
    }
    if args.step_secs == 0 || args.step_secs > 120 || args.hold_secs > 600 {
        bail!("--step-secs must be 1 to 120, --hold-secs at most 600");
    }
    if args.ramp <= 0.0 || args.ramp > 2000.0 {
        bail!("--ramp must be in (0, 2000]");
    }
    if args.clients > 19_000 || args.rates.len() > 20 || args.batch == 0 || args.batch > 1000 {
        bail!(
            "--clients at most 19,000 per process (fd limit), at most 20 --rates, --batch 1 to 1000"
        );
    }
    let proto = proto::by_name(&args.common.proto)?;
    let watched = Watched::parse(&args.common.pids)?;
    let issuer = Issuer::new(args.common.secret.as_bytes(), None, None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        proto,
        tally: Tally::default(),
        // One shard: every client is read on this one thread (64 shards of ~240 KiB each
        // kept the histograms out of the cache, a miss per delivery).
        latencies: hist::Latencies::new(1),
        step: AtomicU64::new(0),
        stop: stop_rx,
    });
    let sources = net::loopback_sources(args.common.sources);
    let n_rooms = match args.rooms {
        RoomMode::Shared => 1,
        RoomMode::Pairs => (args.clients + args.client_offset).div_ceil(2),
    };
    let stall_every = if args.stall_percent > 0.0 {
        (100.0 / args.stall_percent).round() as usize
    } else {
        0
    };
    let names = room_names(&args, n_rooms);

    // ── ramp up ─────────────────────────────────────────────────────────────────────────
    let ramp_started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    let (ready_tx, mut ready_rx) = mpsc::channel::<(usize, bool)>(args.clients.max(1));
    // The room each reading client tracks (none for a stalled one), by client number: a room's
    // expected deliveries count only its members that connected, so a refused client is
    // reported as a failed connect, not as lost events.
    let mut member_of: Vec<Option<usize>> = Vec::with_capacity(args.clients);
    let mut active_members = vec![0u64; n_rooms];
    let mut stalled = 0usize;
    for n in 0..args.clients {
        let i = args.client_offset + n;
        let due = ramp_started + Duration::from_secs_f64(n as f64 / args.ramp);
        tokio::time::sleep_until(due.into()).await;
        let sub = format!("lg{i}");
        let room_index = match args.rooms {
            RoomMode::Shared => 0,
            RoomMode::Pairs => i / 2,
        };
        let mut rooms = Vec::new();
        if !ctx.proto.implicit_user_room() {
            rooms.push(format!("user:{sub}"));
        }
        rooms.push(names(room_index));
        let stall = stall_every > 0 && i % stall_every == stall_every - 1;
        if stall {
            stalled += 1;
        }
        member_of.push((!stall).then_some(room_index));
        let token = issuer.issue(&sub, Role::Admin, 3600);
        let addr = targets[n % targets.len()].clone();
        let src = sources[n % sources.len()];
        tasks.push(tokio::spawn(client(
            ctx.clone(),
            i,
            src,
            addr,
            token,
            rooms,
            stall,
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    let mut answered = 0;
    while let Ok(Some((i, ready))) =
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv()).await
    {
        if ready && let Some(room) = member_of[i - args.client_offset] {
            active_members[room] += 1;
        }
        answered += 1;
        if answered == args.clients {
            break;
        }
    }
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    let connected = ctx.tally.connected.load(Ordering::Relaxed);
    let failed = ctx.tally.failed_connects.load(Ordering::Relaxed);
    eprintln!(
        "[{} {}] {connected}/{} clients ready in {ramp_secs:.1}s ({failed} failed)",
        ctx.proto.name(),
        args.label,
        args.clients
    );
    if let Some(f) = &args.ready_file {
        // Written beside the file and renamed into place: the parent polls for the file to
        // exist, and a plain write lets it read the file between creation and content.
        let partial = f.with_extension("partial");
        std::fs::write(
            &partial,
            json!({"connected": connected, "failed": failed}).to_string(),
        )?;
        std::fs::rename(&partial, f)?;
    }

    // ── hold (idle) ─────────────────────────────────────────────────────────────────────
    let mut steps = Vec::new();
    let mut stopped_because = Value::Null;
    if args.publisher == Publisher::None {
        let until = Instant::now() + Duration::from_secs(args.hold_secs);
        while Instant::now() < until && !args.stop_file.as_ref().is_some_and(|f| f.exists()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // ── stepped publishing ──────────────────────────────────────────────────────────────
    let members_total: u64 = active_members.iter().sum();
    for (step_index, &rate) in args.rates.iter().enumerate() {
        if args.publisher == Publisher::None || connected == 0 {
            break;
        }
        ctx.step.fetch_add(1, Ordering::Relaxed);
        let _ = ctx.latencies.take();
        let delivered0 = ctx.tally.delivered.load(Ordering::Relaxed);
        let gaps0 = ctx.tally.gaps.load(Ordering::Relaxed);
        let before = watched.sample();
        let reader_cpu0 = procstat::main_thread_cpu_secs();
        let started = Instant::now();
        let outcome = match args.publisher {
            Publisher::Redis | Publisher::Bare => {
                // Its own thread and runtime, like the peer's publisher in its own process: the
                // publisher must not queue behind 10,000 client tasks, and the readers' thread
                // must not pay for it.
                let a = args.clone();
                let thread = std::thread::spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(anyhow::Error::from)
                        .and_then(|rt| {
                            rt.block_on(async {
                                if a.publisher == Publisher::Bare {
                                    publish_bare(&a, rate, n_rooms).await
                                } else {
                                    publish_redis(&a, rate, n_rooms).await
                                }
                            })
                        })
                });
                tokio::task::spawn_blocking(move || thread.join())
                    .await?
                    .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??
            }
            Publisher::Api => publish_api(&args, rate, n_rooms, &issuer).await?,
            Publisher::Peer => publish_peer(&args, rate, n_rooms, step_index).await?,
            Publisher::None => unreachable!(),
        };
        // Expected deliveries: exact per room when the publisher reports per-room counts,
        // otherwise (the peer's publisher picks rooms at random) the mean members per room.
        let (expected, exact) = if outcome.per_room.is_empty() {
            // Exact when every room has the same number of active members.
            let mean = members_total as f64 / n_rooms as f64;
            let uniform = active_members.iter().all(|m| *m == active_members[0]);
            ((outcome.published as f64 * mean).round() as u64, uniform)
        } else {
            let e = outcome
                .per_room
                .iter()
                .zip(&active_members)
                .map(|(p, m)| p * m)
                .sum();
            (e, true)
        };
        let settle = Instant::now();
        while ctx.tally.delivered.load(Ordering::Relaxed) - delivered0 < expected
            && settle.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A few ms more: late stragglers count in this step, not the next.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let wall = started.elapsed().as_secs_f64();
        let processes = watched.report(&before, wall);
        let h = ctx.latencies.take();
        let delivered = ctx.tally.delivered.load(Ordering::Relaxed) - delivered0;
        // The readers' thread alone (publishers have threads or processes of their own).
        let reader_cpu_s = procstat::main_thread_cpu_secs()
            .zip(reader_cpu0)
            .map(|(after, before)| after - before);
        let gaps = ctx.tally.gaps.load(Ordering::Relaxed) - gaps0;
        // With an inexact expectation (the peer's random rooms, some members not reading) only
        // sequence gaps are counted as loss; the shortfall against the estimate is reported.
        let shortfall = expected.saturating_sub(delivered);
        let lost = if exact { shortfall } else { gaps };
        let summary = hist::summary(&h);
        let p99 = summary["p99"].as_f64().unwrap_or(0.0);
        let step = json!({
            "offered_rate": rate,
            "published": outcome.published,
            "not_published": outcome.not_published,
            "publish_secs": outcome.publish_secs,
            // What the processes' CPU percentages are over (publishing, settling, stragglers).
            "wall_secs": wall,
            "publish_rate": outcome.published as f64 / outcome.publish_secs.max(1e-3),
            "expected_deliveries": expected,
            "expected_exact": exact,
            "delivered": delivered,
            "lost": lost,
            "shortfall_vs_expected": shortfall,
            "seq_gaps": gaps,
            "deliveries_per_sec": delivered as f64 / outcome.publish_secs.max(1e-3),
            "latency_ms": summary,
            "histogram": hist::encode(&h),
            "processes": processes,
            "publisher_cpu_s": outcome.publisher_cpu_s,
            "loadgen_reader_cpu_s": reader_cpu_s,
            "loadgen_cpu_us_per_delivery": reader_cpu_s.map(|c| 1e6 * c / delivered.max(1) as f64),
            "disconnected_so_far": ctx.tally.disconnected.load(Ordering::Relaxed),
            "note": outcome.note,
        });
        eprintln!(
            "[{} {}] {rate:>8.0}/s offered: published {} ({:.0}/s, {} not) delivered {delivered}/{expected} ({:.0}/s) lost {lost} gaps {gaps} | p50 {:.2} p99 {:.2} max {:.2} ms | reader {:.2} µs/delivery | {}",
            ctx.proto.name(),
            args.label,
            outcome.published,
            step["publish_rate"].as_f64().unwrap_or(0.0),
            outcome.not_published,
            step["deliveries_per_sec"].as_f64().unwrap_or(0.0),
            summary["p50"].as_f64().unwrap_or(0.0),
            p99,
            summary["max"].as_f64().unwrap_or(0.0),
            step["loadgen_cpu_us_per_delivery"].as_f64().unwrap_or(0.0),
            step["processes"]
                .as_array()
                .map(|ps| ps
                    .iter()
                    .map(|p| format!(
                        "{} {:.0}% {:.0}MiB",
                        p["name"].as_str().unwrap_or("?"),
                        p["cpu_percent"].as_f64().unwrap_or(0.0),
                        p["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
                    ))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        steps.push(step);
        // Beyond the offered rate the bus refused or could not take (>1% not published), a
        // step measures the publisher, not the servers: stop too.
        let saturated = outcome.not_published as f64 > 0.01 * rate * args.step_secs as f64;
        if p99 > args.max_p99_ms || lost > 0 || gaps > 0 || saturated {
            stopped_because = json!(format!(
                "p99 {p99:.1} ms (limit {}), lost {lost}, gaps {gaps}, not published {}",
                args.max_p99_ms, outcome.not_published
            ));
            break;
        }
    }
    let snapshot = watched.report(&watched.sample(), 1.0);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let result = json!({
        "label": args.label,
        "system": ctx.proto.name(),
        "publisher": format!("{:?}", args.publisher).to_lowercase(),
        "rooms": format!("{:?}", args.rooms).to_lowercase(),
        "room_count": n_rooms,
        "clients": args.clients,
        "connected": connected,
        "failed_connects": failed,
        "connect_failures": *ctx.tally.failures.lock().unwrap_or_else(|e| e.into_inner()),
        "stalled_clients": stalled,
        "ramp_secs": ramp_secs,
        "step_secs": args.step_secs,
        "steps": steps,
        "stopped_because": stopped_because,
        "processes_at_end": snapshot,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| path.display().to_string())?;
    }
    Ok(())
}

async fn handshake(args: HandshakeArgs) -> anyhow::Result<()> {
    let target = args.common.targets[0].clone();
    check_loopback(&target)?;
    if args.secs == 0 || args.secs > 120 || args.concurrency == 0 || args.concurrency > 1000 {
        bail!("--secs 1 to 120, --concurrency 1 to 1000");
    }
    let proto: Arc<dyn Protocol> = Arc::from(proto::by_name(&args.common.proto)?);
    let watched = Watched::parse(&args.common.pids)?;
    let issuer = Arc::new(Issuer::new(args.common.secret.as_bytes(), None, None));
    let sources = net::loopback_sources(args.common.sources);
    let next = Arc::new(AtomicU64::new(0));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let latencies = Arc::new(hist::Latencies::new(16));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let over = Arc::new(AtomicBool::new(false));
    let before = watched.sample();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (proto, issuer, sources, next, ok, failed, latencies, target, first_error, over) = (
            proto.clone(),
            issuer.clone(),
            sources.clone(),
            next.clone(),
            ok.clone(),
            failed.clone(),
            latencies.clone(),
            target.clone(),
            first_error.clone(),
            over.clone(),
        );
        let count = args.count;
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || Instant::now() >= deadline || over.load(Ordering::Relaxed) {
                    break;
                }
                let token = issuer.issue(&format!("hs{n}"), Role::Customer, 3600);
                let t0 = Instant::now();
                let src = sources[n as usize % sources.len()];
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    open(proto.as_ref(), src, &target, &token),
                )
                .await;
                match r {
                    Ok(Ok(mut conn)) => {
                        latencies.record(w, t0.elapsed().as_micros() as u64);
                        ok.fetch_add(1, Ordering::Relaxed);
                        let _ =
                            tokio::time::timeout(Duration::from_millis(200), conn.close()).await;
                    }
                    Ok(Err(e)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(format!("{e:#}"));
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let h = latencies.take();
    let done = ok.load(Ordering::Relaxed);
    let result = json!({
        "label": "handshake",
        "system": proto.name(),
        "handshakes": done,
        "failed": failed.load(Ordering::Relaxed),
        "first_error": *first_error.lock().unwrap_or_else(|e| e.into_inner()),
        "secs": secs,
        "concurrency": args.concurrency,
        "handshakes_per_sec": done as f64 / secs,
        "latency_ms": hist::summary(&h),
        "histogram": hist::encode(&h),
        "processes": watched.report(&before, secs),
    });
    eprintln!(
        "[{} handshake] {done} in {secs:.1}s = {:.0}/s, failed {}, latency {}",
        proto.name(),
        done as f64 / secs,
        result["failed"],
        result["latency_ms"]
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(())
}

/// The product the benchmark's orders buy.
const BENCH_SKU: &str = "bench-milk-1l";

/// Creates `n` orders (customer `lc{k}`) and assigns each to partner `lp{k}`; returns the ids.
async fn create_orders(api: &str, issuer: &Issuer, n: usize) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let admin = issuer.issue("lg-admin", Role::Admin, 3600);
    // What the orders buy: a product of its own, with a unit for each order.
    let product = ProductPut {
        name: "Bench milk, 1 l".into(),
        price_paise: 6500,
        stock: n as i64,
    };
    Rest::with_http(http.clone(), api, &admin)
        .put_product(BENCH_SKU, &product)
        .await?;
    let permits = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for k in 0..n {
        let (http, api, admin) = (http.clone(), api.to_owned(), admin.clone());
        let customer = issuer.issue(&format!("lc{k}"), Role::Customer, 3600);
        let permit = permits.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let rest = Rest::with_http(http, api, customer);
            let new = NewOrder {
                items: vec![Item {
                    sku: BENCH_SKU.into(),
                    qty: 1,
                    unit_price_paise: Some(6500),
                }],
                address: "1 Bench Road".into(),
            };
            let order = rest.create_order(&new).await?;
            rest.as_caller(admin)
                .assign(&order.id, &format!("lp{k}"))
                .await?;
            anyhow::Ok(order.id)
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.push(t.await??);
    }
    Ok(ids)
}

async fn locations(args: LocationArgs) -> anyhow::Result<()> {
    for t in &args.common.targets {
        check_loopback(t)?;
    }
    check_loopback_url(&args.api)?;
    if args.orders == 0
        || args.orders > 9000
        || args.step_secs == 0
        || args.step_secs > 60
        || args.fractions.len() > 10
    {
        bail!("--orders 1 to 9,000, --step-secs 1 to 60, at most 10 --fractions");
    }
    if args.ramp <= 0.0 || args.ramp > 2000.0 || args.hz <= 0.0 || args.hz > 20.0 {
        bail!("--ramp in (0, 2000], --hz in (0, 20]");
    }
    const PROTO: proto::switchyard::Switchyard = proto::switchyard::Switchyard;
    let watched = Watched::parse(&args.common.pids)?;
    let issuer = Issuer::new(args.common.secret.as_bytes(), None, None);
    let setup = Instant::now();
    let ids = create_orders(args.api.trim_end_matches('/'), &issuer, args.orders).await?;
    let setup_secs = setup.elapsed().as_secs_f64();
    eprintln!(
        "[locations] {} orders created and assigned in {setup_secs:.1}s",
        ids.len()
    );
    let sources = net::loopback_sources(args.common.sources);
    let targets = &args.common.targets;
    let latencies = Arc::new(hist::Latencies::new(64));
    let (delivered, gaps, sent, refused) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    // Which partners send: partner k sends while k < active.
    let active = Arc::new(AtomicU64::new(0));
    let ramp_started = Instant::now();
    let mut conns = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        // Customer and partner of an order on different gateways: the location crosses Redis.
        for (n, (sub, role)) in [
            (format!("lc{k}"), Role::Customer),
            (format!("lp{k}"), Role::Partner),
        ]
        .into_iter()
        .enumerate()
        {
            let idx = 2 * k + n;
            let due = ramp_started + Duration::from_secs_f64(idx as f64 / args.ramp);
            tokio::time::sleep_until(due.into()).await;
            let token = issuer.issue(&sub, role, 3600);
            let addr = targets[idx % targets.len()].clone();
            let src = sources[idx % sources.len()];
            let room = format!("order:{id}");
            let (latencies, delivered, gaps, sent, refused, active, mut stop) = (
                latencies.clone(),
                delivered.clone(),
                gaps.clone(),
                sent.clone(),
                refused.clone(),
                active.clone(),
                stop_rx.clone(),
            );
            let (id, hz) = (id.clone(), args.hz);
            conns.push(tokio::spawn(async move {
                let setup = async {
                    let mut conn = open(&PROTO, src, &addr, &token).await?;
                    if role == Role::Customer {
                        join_all(&PROTO, &mut conn, std::slice::from_ref(&room), &token).await?;
                    }
                    anyhow::Ok(conn)
                };
                let mut conn = match tokio::time::timeout(Duration::from_secs(20), setup).await {
                    Ok(Ok(conn)) => conn,
                    _ => return false,
                };
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / hz));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last: Option<u64> = None;
                let mut n = 0u64;
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tick.tick(), if role == Role::Partner => {
                            if (k as u64) < active.load(Ordering::Relaxed) {
                                n += 1;
                                let ts_ms = now_us() / 1000;
                                let fix = LocationFix { lat: 12.97, lng: 77.59, heading: None, speed: None, ts: Some(ts_ms as i64) };
                                let op = ClientOp::Location { order_id: id.clone(), fix }.with_id(n as i64);
                                if conn.send_text(&op.encode()).await.is_err() { break; }
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        frame = conn.next() => {
                            let frame = match frame {
                                Ok(Some(frame)) if frame.opcode == Opcode::Text => frame,
                                Ok(Some(frame)) if frame.opcode == Opcode::Ping => {
                                    if conn.pong(&frame).await.is_err() { break; }
                                    continue;
                                }
                                Ok(Some(frame)) if frame.opcode != Opcode::Close => continue,
                                _ => break,
                            };
                            let now = now_us();
                            let text = conn.text(&frame).unwrap_or("");
                            match PROTO.on_text(text, &token) {
                                Incoming::Event { room: Some(r), seq, ts_us: ts_ms } if r == room => {
                                    if let Some(prev) = last && seq > prev + 1 {
                                        gaps.fetch_add(seq - prev - 1, Ordering::Relaxed);
                                    }
                                    last = Some(last.map_or(seq, |p| p.max(seq)));
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                    // ts is the device time in ms (the protocol's unit): latency
                                    // is over-stated by less than 1 ms.
                                    latencies.record(k, now.saturating_sub(ts_ms * 1000));
                                }
                                Incoming::JoinFailed(_) => { refused.fetch_add(1, Ordering::Relaxed); }
                                _ if text.contains(r#""code":"rate_limited""#) || text.contains(r#""code":"forbidden""#) => {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {}
                            }
                        }
                    }
                }
                true
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    eprintln!(
        "[locations] {} connections opened in {ramp_secs:.1}s",
        conns.len()
    );
    let mut steps = Vec::new();
    for &fraction in &args.fractions {
        let partners = ((args.orders as f64 * fraction).round() as u64).min(args.orders as u64);
        let (d0, s0, g0, r0) = (
            delivered.load(Ordering::Relaxed),
            sent.load(Ordering::Relaxed),
            gaps.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        );
        let _ = latencies.take();
        let before = watched.sample();
        let started = Instant::now();
        active.store(partners, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(args.step_secs)).await;
        active.store(0, Ordering::Relaxed);
        let sent_n = sent.load(Ordering::Relaxed) - s0;
        let settle = Instant::now();
        while delivered.load(Ordering::Relaxed) - d0 < sent_n
            && settle.elapsed() < Duration::from_secs(3)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = started.elapsed().as_secs_f64();
        let h = latencies.take();
        let got = delivered.load(Ordering::Relaxed) - d0;
        let step = json!({
            "partners": partners,
            "offered_rate": partners as f64 * args.hz,
            "sent": sent_n,
            "send_rate": sent_n as f64 / args.step_secs as f64,
            "delivered": got,
            "deliveries_per_sec": got as f64 / args.step_secs as f64,
            "lost": sent_n.saturating_sub(got),
            "seq_gaps": gaps.load(Ordering::Relaxed) - g0,
            "refused": refused.load(Ordering::Relaxed) - r0,
            "latency_ms": hist::summary(&h),
            "histogram": hist::encode(&h),
            "processes": watched.report(&before, wall),
        });
        eprintln!(
            "[locations] {partners} partners x {} Hz: sent {sent_n} delivered {got} gaps {} refused {} | latency {}",
            args.hz, step["seq_gaps"], step["refused"], step["latency_ms"]
        );
        steps.push(step);
    }
    let _ = stop_tx.send(true);
    let mut connected = 0;
    for c in conns {
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(2), c).await {
            connected += 1;
        }
    }
    let result = json!({
        "label": "locations", "system": "switchyard", "orders": args.orders, "hz": args.hz,
        "setup_secs": setup_secs, "connections": 2 * args.orders, "connected": connected,
        "step_secs": args.step_secs, "steps": steps,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(())
}

/// Waits (bounded) for a file to exist.
fn wait_file(path: &Path, secs: u64) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let watched = Watched::parse(&args.common.pids)?;
    let tag = format!("{}-{}", args.common.proto, std::process::id());
    let stop_file = args.work_dir.join(format!("idle-{tag}.stop"));
    let _ = std::fs::remove_file(&stop_file);
    let mut children = Vec::new();
    let mut levels = Vec::new();
    let baseline = watched.report(&watched.sample(), 1.0);
    levels.push(json!({"per_target": 0, "connected": 0, "processes": baseline}));
    let (mut have, mut offset, mut connected) = (0usize, 0usize, 0u64);
    let mut outcome = Ok(());
    'levels: for &level in &args.levels {
        let add = level.saturating_sub(have);
        if add == 0 || add > 19_000 {
            outcome = Err(anyhow::anyhow!("levels must increase by 1 to 19,000"));
            break;
        }
        let mut ready_files = Vec::new();
        for target in &args.common.targets {
            let ready = args.work_dir.join(format!("idle-{tag}-{offset}.ready"));
            let _ = std::fs::remove_file(&ready);
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("run")
                .args(["--proto", &args.common.proto, "--target", target])
                .args(["--sources", &args.common.sources.to_string()])
                .args(["--label", "idle", "--rooms", "pairs", "--publisher", "none"])
                .args([
                    "--clients",
                    &add.to_string(),
                    "--client-offset",
                    &offset.to_string(),
                ])
                .args(["--ramp", &args.ramp.to_string(), "--hold-secs", "300"])
                .arg("--ready-file")
                .arg(&ready)
                .arg("--stop-file")
                .arg(&stop_file)
                .env("JWT_SECRET", &args.common.secret)
                .stdin(std::process::Stdio::null());
            children.push(cmd.spawn()?);
            ready_files.push(ready);
            offset += add;
        }
        for f in &ready_files {
            if !wait_file(f, 60) {
                outcome = Err(anyhow::anyhow!("{} never became ready", f.display()));
                break 'levels;
            }
            let v: Value = serde_json::from_slice(&std::fs::read(f)?)?;
            connected += v["connected"].as_u64().unwrap_or(0);
            let _ = std::fs::remove_file(f);
        }
        have = level;
        std::thread::sleep(Duration::from_secs(2));
        let processes = watched.report(&watched.sample(), 1.0);
        eprintln!(
            "[{} idle] {level}/target, {connected} connected: {}",
            args.common.proto,
            json!(processes)
        );
        levels.push(json!({"per_target": level, "connected": connected, "processes": processes}));
    }
    std::fs::write(&stop_file, b"stop")?;
    for mut c in children {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && c.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if c.try_wait()?.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let _ = std::fs::remove_file(&stop_file);
    let result = json!({"label": "idle", "system": args.common.proto, "targets": args.common.targets.len(), "levels": levels, "error": outcome.as_ref().err().map(|e| e.to_string())});
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    outcome
}

/// Sums the steps of several `run` results (same step list) and merges their histograms.
fn merge(out: &Path, files: &[PathBuf]) -> anyhow::Result<()> {
    let runs: Vec<Value> = files
        .iter()
        .map(|f| Ok(serde_json::from_slice(&std::fs::read(f)?)?))
        .collect::<anyhow::Result<_>>()?;
    let Some(first) = runs.first() else {
        bail!("nothing to merge")
    };
    let mut merged = first.clone();
    for key in ["clients", "connected", "failed_connects", "stalled_clients"] {
        merged[key] = json!(runs.iter().filter_map(|r| r[key].as_u64()).sum::<u64>());
    }
    let n_steps = runs
        .iter()
        .filter_map(|r| r["steps"].as_array().map(Vec::len))
        .min()
        .unwrap_or(0);
    let mut steps = Vec::new();
    for s in 0..n_steps {
        let mut step = runs[0]["steps"][s].clone();
        let mut h: Histogram<u64> = hist::new_histogram();
        for key in ["expected_deliveries", "delivered", "lost", "seq_gaps"] {
            step[key] = json!(
                runs.iter()
                    .filter_map(|r| r["steps"][s][key].as_u64())
                    .sum::<u64>()
            );
        }
        step["deliveries_per_sec"] = json!(
            runs.iter()
                .filter_map(|r| r["steps"][s]["deliveries_per_sec"].as_f64())
                .sum::<f64>()
        );
        for r in &runs {
            if let Some(b) = r["steps"][s]["histogram"].as_str() {
                h.add(hist::decode(b)?)?;
            }
        }
        step["latency_ms"] = hist::summary(&h);
        step["histogram"] = json!(hist::encode(&h));
        steps.push(step);
    }
    merged["steps"] = json!(steps);
    merged["merged_from"] = json!(files.len());
    std::fs::write(out, serde_json::to_vec_pretty(&merged)?)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Idle(a) => idle(a),
        Cmd::Merge { out, files } => merge(&out, &files),
        // One thread reads every connection (issue #17 §1: the load generator must cost no more
        // per received frame than the bare reader); publishers run on threads of their own.
        Cmd::Run(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(*a)),
        Cmd::Soak(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(soak::soak(*a)),
        cmd => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                match cmd {
                    Cmd::Handshake(a) => handshake(a).await,
                    Cmd::Locations(a) => locations(*a).await,
                    Cmd::Fleet(a) => fleet::fleet(*a).await,
                    _ => unreachable!(),
                }
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_loopback, check_loopback_url};

    #[test]
    fn only_loopback_targets() {
        assert!(check_loopback("127.0.0.1:8080").is_ok());
        assert!(check_loopback("127.9.0.3:1").is_ok());
        assert!(check_loopback("10.0.0.1:8080").is_err());
        assert!(check_loopback_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_loopback_url("http://localhost:8080").is_ok());
        assert!(check_loopback_url("http://example.com").is_err());
    }
}
