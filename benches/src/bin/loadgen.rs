//! `loadgen`: drives a running Switchyard the way its users do, and measures it.
//!
//! Opens real WebSocket connections with real JWTs (at a bounded ramp rate), publishes events
//! from outside through the server publish API (`POST /api/publish/batch`, as another backend
//! would), and records for every delivery the end-to-end latency (timestamp in the payload →
//! receipt) in an HDR histogram. Loss is detected by per-room offsets (a gap) and by counting
//! deliveries against what was published. Server processes given with `--pid` are sampled for
//! RSS and CPU time, as is the load generator itself, so a result says who was the bottleneck.
//!
//! Loopback only, bounded in count (`--clients`) and time (`--secs`, at most 600).
//!
//! ```sh
//! cargo run --release -p switchyard-benches --bin loadgen -- \
//!     --ws ws://127.0.0.1:8080/ws --api http://127.0.0.1:8080 --clients 1000 --rooms own \
//!     --rate 5000 --secs 10 --pid $(pgrep -f 'switchyard')
//! ```

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_auth::Issuer;
use switchyard_benches::procstat;
use switchyard_protocol::Role;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoomMode {
    /// Every client is alone in its own `user:` room: many small rooms.
    Own,
    /// Every client joins one shared room: a broadcast.
    Shared,
}

/// Load generator for Switchyard.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Gateway WebSocket URLs (repeat the flag); clients are spread over them round-robin.
    #[arg(long = "ws", required = true)]
    ws: Vec<String>,
    /// Base URL of an API process (or nginx) for the publishes.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// HS256 secret the servers verify with (mints the clients' and the publisher's tokens).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, value_enum, default_value = "own")]
    rooms: RoomMode,
    /// Events published per second (offered rate).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to publish, seconds (at most 600).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Events per publish request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Publish requests in flight at most.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// New connections per second while ramping up (at most 2,000: the SYN backlog).
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 200)]
    pad: usize,
    /// Server process ids to sample for RSS and CPU (repeat the flag).
    #[arg(long)]
    pid: Vec<u32>,
    /// Where to write the JSON result.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Counters shared by every connection.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    gaps: AtomicU64,
    connected: AtomicU64,
    failed_connects: AtomicU64,
}

/// Latency histograms, sharded so connections rarely contend on one lock.
struct Latencies(Vec<Mutex<Histogram<u64>>>);

impl Latencies {
    fn new(shards: usize) -> Latencies {
        Latencies(
            (0..shards)
                .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")))
                .collect(),
        )
    }
    fn record(&self, shard: usize, us: u64) {
        let mut h = self.0[shard % self.0.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ = h.record(us.clamp(1, 60_000_000));
    }
    fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for h in &self.0 {
            let _ = all.add(&*h.lock().unwrap_or_else(|e| e.into_inner()));
        }
        all
    }
}

fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
        .map(|h| h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h))
        .unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if !ok {
        bail!("{url}: loadgen only targets loopback addresses");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for url in args.ws.iter().chain([&args.api]) {
        check_loopback(url)?;
    }
    if args.secs == 0 || args.secs > 600 {
        bail!("--secs must be 1 to 600");
    }
    if args.ramp <= 0.0 || args.ramp > 2000.0 {
        bail!("--ramp must be in (0, 2000]");
    }
    if args.batch == 0 || args.batch > 1000 {
        bail!("--batch must be 1 to 1000");
    }
    let issuer = Issuer::new(args.secret.as_bytes(), None, None);
    let tally = Arc::new(Tally::default());
    let latencies = Arc::new(Latencies::new(64));
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared_room = "user:lg-broadcast";

    // ── ramp up ─────────────────────────────────────────────────────────────────────────
    let ramp_started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(args.clients.max(1));
    for i in 0..args.clients {
        let due = ramp_started + Duration::from_secs_f64(i as f64 / args.ramp);
        tokio::time::sleep_until(due.into()).await;
        let (sub, role, room) = match args.rooms {
            RoomMode::Own => (format!("lg{i}"), Role::Customer, None),
            RoomMode::Shared => (format!("lg-admin-{i}"), Role::Admin, Some(shared_room)),
        };
        let token = issuer.issue(&sub, role, 3600);
        let url = args.ws[i % args.ws.len()].clone();
        let (tally, latencies, stop, ready) = (
            tally.clone(),
            latencies.clone(),
            stop_rx.clone(),
            ready_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client(i, url, token, room, tally, latencies, stop, ready).await
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    while let Ok(Some(ok)) = tokio::time::timeout(Duration::from_secs(30), ready_rx.recv()).await {
        ready += usize::from(ok);
        if ready == args.clients {
            break;
        }
    }
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    let connected = tally.connected.load(Ordering::Relaxed);
    eprintln!(
        "{connected}/{} clients ready in {ramp_secs:.1}s ({} failed)",
        args.clients,
        tally.failed_connects.load(Ordering::Relaxed)
    );
    if connected == 0 {
        bail!("no client connected");
    }

    // ── publish ─────────────────────────────────────────────────────────────────────────
    let before: Vec<_> = args.pid.iter().map(|p| procstat::sample(*p)).collect();
    let self_before = procstat::sample(std::process::id());
    let http = reqwest::Client::new();
    let service = issuer.issue("loadgen", Role::Service, 3600);
    let url = format!("{}/api/publish/batch", args.api.trim_end_matches('/'));
    let published = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let pad = "x".repeat(args.pad);
    let interval = Duration::from_secs_f64(args.batch as f64 / args.rate.max(0.001));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let mut seq: u64 = 0;
    let mut tick = started;
    while Instant::now() < deadline {
        tokio::time::sleep_until(tick.into()).await;
        tick += interval;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // The server is not keeping up with the offered rate: count, don't queue.
            rejected.fetch_add(args.batch as u64, Ordering::Relaxed);
            continue;
        };
        let ts = now_us();
        let items: Vec<Value> = (0..args.batch)
            .map(|_| {
                seq += 1;
                let room = match args.rooms {
                    RoomMode::Own => format!("user:lg{}", seq as usize % connected as usize),
                    RoomMode::Shared => shared_room.to_owned(),
                };
                json!({"room": room, "event": "bench.tick", "data": {"ts": ts, "seq": seq, "pad": pad}})
            })
            .collect();
        let (http, url, token, published, rejected) = (
            http.clone(),
            url.clone(),
            service.clone(),
            published.clone(),
            rejected.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let sent = items.len() as u64;
            let result = http
                .post(&url)
                .bearer_auth(token)
                .json(&json!({ "items": items }))
                .send()
                .await;
            let ok = match result {
                Ok(r) if r.status().is_success() => r
                    .json::<Value>()
                    .await
                    .map(|b| {
                        b["results"]
                            .as_array()
                            .map(|a| a.iter().filter(|r| r["offset"].is_u64()).count() as u64)
                            .unwrap_or(0)
                    })
                    .unwrap_or(0),
                _ => 0,
            };
            published.fetch_add(ok, Ordering::Relaxed);
            rejected.fetch_add(sent - ok, Ordering::Relaxed);
        });
    }
    // Let in-flight publishes finish, then wait for deliveries to settle (at most 5 s).
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        permits.acquire_many(args.in_flight.max(1) as u32),
    )
    .await;
    let publish_secs = started.elapsed().as_secs_f64();
    let members = match args.rooms {
        RoomMode::Own => 1,
        RoomMode::Shared => connected,
    };
    let expected = published.load(Ordering::Relaxed) * members;
    let settle = Instant::now();
    while tally.delivered.load(Ordering::Relaxed) < expected
        && settle.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let after: Vec<_> = args.pid.iter().map(|p| procstat::sample(*p)).collect();
    let self_after = procstat::sample(std::process::id());
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    // ── report ──────────────────────────────────────────────────────────────────────────
    let h = latencies.merged();
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let processes: Vec<Value> = args
        .pid
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(pid, (b, a))| match (b, a) {
            (Some(b), Some(a)) => json!({"pid": pid, "rss_kib": a.rss_kib, "cpu_percent": 100.0 * (a.cpu_secs - b.cpu_secs) / wall}),
            _ => json!({"pid": pid, "gone": true}),
        })
        .collect();
    let loadgen_cpu = match (self_before, self_after) {
        (Some(b), Some(a)) => 100.0 * (a.cpu_secs - b.cpu_secs) / wall,
        _ => 0.0,
    };
    let result = json!({
        "rooms": format!("{:?}", args.rooms).to_lowercase(),
        "clients": connected,
        "ramp_secs": ramp_secs,
        "offered_rate": args.rate,
        "published": published.load(Ordering::Relaxed),
        "not_published": rejected.load(Ordering::Relaxed),
        "publish_rate": published.load(Ordering::Relaxed) as f64 / publish_secs,
        "expected_deliveries": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "offset_gaps": tally.gaps.load(Ordering::Relaxed),
        "deliveries_per_sec": delivered as f64 / publish_secs,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0},
        "processes": processes,
        "loadgen_cpu_percent": loadgen_cpu,
    });
    println!(
        "clients {connected} | published {} ({:.0}/s offered {:.0}/s) | delivered {delivered} of {expected} ({:.0}/s) | gaps {} | p50 {:.2} ms p99 {:.2} ms max {:.2} ms | loadgen cpu {loadgen_cpu:.0}%",
        result["published"],
        result["publish_rate"].as_f64().unwrap_or(0.0),
        args.rate,
        result["deliveries_per_sec"].as_f64().unwrap_or(0.0),
        result["offset_gaps"],
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    for p in &processes {
        println!("  process {p}");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| path.display().to_string())?;
    }
    Ok(())
}

/// One WebSocket client: connects, joins its room, then records every event until stopped.
#[allow(clippy::too_many_arguments)]
async fn client(
    i: usize,
    url: String,
    token: String,
    room: Option<&'static str>,
    tally: Arc<Tally>,
    latencies: Arc<Latencies>,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<bool>,
) {
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(_) => return,
    };
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        request.headers_mut().insert("authorization", v);
    }
    let ws = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await;
    let Ok(Ok((mut ws, _))) = ws else {
        tally.failed_connects.fetch_add(1, Ordering::Relaxed);
        let _ = ready.send(false).await;
        return;
    };
    if let Some(room) = room {
        let _ = ws
            .send(Message::Text(
                json!({"op":"subscribe","room":room,"id":1})
                    .to_string()
                    .into(),
            ))
            .await;
    }
    let mut joined = room.is_none();
    let mut last_offset = 0u64;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = ws.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => break,
        };
        let now = now_us();
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match v["type"].as_str() {
            Some("welcome") if joined => {
                tally.connected.fetch_add(1, Ordering::Relaxed);
                let _ = ready.send(true).await;
            }
            Some("ok") if !joined => {
                joined = true;
                tally.connected.fetch_add(1, Ordering::Relaxed);
                let _ = ready.send(true).await;
            }
            Some("event") => {
                let offset = v["offset"].as_u64().unwrap_or(0);
                if last_offset > 0 && offset > last_offset + 1 {
                    tally
                        .gaps
                        .fetch_add(offset - last_offset - 1, Ordering::Relaxed);
                }
                last_offset = last_offset.max(offset);
                if let Some(ts) = v["data"]["ts"].as_u64() {
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    latencies.record(i, now.saturating_sub(ts));
                }
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
}

#[cfg(test)]
mod tests {
    use super::check_loopback;

    #[test]
    fn only_loopback_targets() {
        assert!(check_loopback("ws://127.0.0.1:8080/ws").is_ok());
        assert!(check_loopback("http://localhost:8080").is_ok());
        assert!(check_loopback("ws://[::1]:8080/ws").is_ok());
        assert!(check_loopback("ws://127.9.0.3:1/ws").is_ok());
        assert!(check_loopback("ws://10.0.0.1:8080/ws").is_err());
        assert!(check_loopback("http://example.com").is_err());
    }
}
