//! `loadgen soak` (issue #17 §2): hours-scale stability in half an hour. Connections stay up
//! under mixed traffic while some of them come and go, and once a minute the gateways' RSS and
//! open files and Redis' memory are sampled; the result is each one's slope (% of its mean per
//! hour, least squares after the warm-up) and the loss counted by per-room offsets.
//!
//! The traffic, all through Redis with the broker crate (Switchyard's distributed path):
//! - ordered events (`bench.tick`) into two-member `order:s{k}` rooms — every client is in one
//!   and counts offset gaps (loss) for as long as its connection lives;
//! - latest-value events (`partner.location`, conflated under backlog) into `order:loc{j}`
//!   rooms that clients subscribe to and unsubscribe from all the time (churn);
//! - 1 % of the clients per minute close their connection and open a new one (new handshake,
//!   lease, rooms).

use super::{Common, Rng, Watched, check_loopback, check_loopback_url, join_all, now_us, open};
use anyhow::bail;
use clap::Args as ClapArgs;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchyard_auth::Issuer;
use switchyard_benches::proto::{Incoming, Protocol};
use switchyard_benches::wire::Opcode;
use switchyard_benches::{net, procstat, proto};
use switchyard_protocol::{ClientOp, Role, Room};
use tokio::sync::{Notify, watch};

#[derive(Debug, Clone, ClapArgs)]
pub struct SoakArgs {
    #[command(flatten)]
    common: Common,
    /// Redis URL of the Switchyard servers (the publisher writes there).
    #[arg(long)]
    redis: String,
    /// Key prefix of the Switchyard servers.
    #[arg(long, default_value = "sy:")]
    redis_prefix: String,
    /// Connections (at most 19,000: one process).
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Duration, minutes (at most 240).
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Ordered events per second, over all order rooms.
    #[arg(long, default_value_t = 2000.0)]
    order_rate: f64,
    /// Latest-value events per second, over the churn rooms.
    #[arg(long, default_value_t = 500.0)]
    location_rate: f64,
    /// Percent of the clients that reconnect per minute.
    #[arg(long, default_value_t = 1.0)]
    reconnect_percent: f64,
    /// Subscribe or unsubscribe ops per second, over all clients.
    #[arg(long, default_value_t = 50.0)]
    churn_rate: f64,
    /// Minutes not counted in the slopes (caches and pools filling up).
    #[arg(long, default_value_t = 5)]
    warmup_minutes: u64,
    /// Seconds between samples (60 for the real run; shorter for a smoke run).
    #[arg(long, default_value_t = 60)]
    sample_secs: u64,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Rooms that carry latest-value events and are joined and left all the time.
const CHURN_ROOMS: usize = 100;

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    lost: AtomicU64,
    reconnects: AtomicU64,
    failed_connects: AtomicU64,
    churn_ops: AtomicU64,
    connected: AtomicU64,
}

/// What each client is told by the controller.
struct Orders {
    reconnect: Notify,
    churn: Notify,
}

pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    for t in &args.common.targets {
        check_loopback(t)?;
    }
    check_loopback_url(&args.redis)?;
    if args.clients == 0 || args.clients > 19_000 || args.minutes == 0 || args.minutes > 240 {
        bail!("--clients 1 to 19,000, --minutes 1 to 240");
    }
    if args.sample_secs == 0 || args.sample_secs > 600 {
        bail!("--sample-secs 1 to 600");
    }
    let watched = Watched::parse(&args.common.pids)?;
    let issuer = Issuer::new(args.common.secret.as_bytes(), None, None);
    let proto: Arc<dyn Protocol> = Arc::from(proto::by_name("switchyard")?);
    let sources = net::loopback_sources(args.common.sources);
    let counts = Arc::new(Counts::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let orders: Arc<Vec<Orders>> = Arc::new(
        (0..args.clients)
            .map(|_| Orders {
                reconnect: Notify::new(),
                churn: Notify::new(),
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    let ramp = Instant::now();
    for i in 0..args.clients {
        tokio::time::sleep_until((ramp + Duration::from_secs_f64(i as f64 / 1000.0)).into()).await;
        let token = issuer.issue(&format!("soak{i}"), Role::Admin, 24 * 3600);
        let addr = args.common.targets[i % args.common.targets.len()].clone();
        let (proto, counts, orders, stop) = (
            proto.clone(),
            counts.clone(),
            orders.clone(),
            stop_rx.clone(),
        );
        let src = sources[i % sources.len()];
        tasks.push(tokio::spawn(async move {
            client(
                i,
                proto.as_ref(),
                src,
                &addr,
                &token,
                &counts,
                &orders[i],
                stop,
            )
            .await
        }));
    }
    eprintln!(
        "[soak] {} clients opened in {:.1}s",
        args.clients,
        ramp.elapsed().as_secs_f64()
    );

    let publisher = {
        let (args, stop) = (args.clone(), stop_rx.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(publish(&args, stop)))
        })
    };

    // The controller: reconnects and churn at their rates, a sample every `sample_secs`.
    let started = Instant::now();
    let until = started + Duration::from_secs(60 * args.minutes);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ now_us());
    let tick = Duration::from_millis(100);
    let (mut reconnect_due, mut churn_due) = (0.0f64, 0.0f64);
    let reconnects_per_tick =
        args.clients as f64 * args.reconnect_percent / 100.0 / 60.0 * tick.as_secs_f64();
    let churn_per_tick = args.churn_rate * tick.as_secs_f64();
    let mut samples = Vec::new();
    let mut next_sample = started;
    while Instant::now() < until {
        if Instant::now() >= next_sample {
            samples.push(sample(&watched, &args, started, &counts));
            eprintln!("[soak] {}", samples.last().unwrap_or(&Value::Null));
            next_sample += Duration::from_secs(args.sample_secs);
        }
        reconnect_due += reconnects_per_tick;
        churn_due += churn_per_tick;
        while reconnect_due >= 1.0 {
            reconnect_due -= 1.0;
            orders[rng.below(args.clients as u64) as usize]
                .reconnect
                .notify_one();
        }
        while churn_due >= 1.0 {
            churn_due -= 1.0;
            orders[rng.below(args.clients as u64) as usize]
                .churn
                .notify_one();
        }
        tokio::time::sleep(tick).await;
    }
    samples.push(sample(&watched, &args, started, &counts));
    let _ = stop_tx.send(true);
    let published = tokio::task::spawn_blocking(move || publisher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let warm: Vec<&Value> = samples
        .iter()
        .filter(|s| s["minute"].as_f64().unwrap_or(0.0) >= args.warmup_minutes as f64)
        .collect();
    let slopes = json!({
        "gateway_rss": slope_percent_per_hour(&warm, "gateway_rss_kib"),
        "gateway_open_files": slope_percent_per_hour(&warm, "gateway_open_files"),
        "redis_used_memory": slope_percent_per_hour(&warm, "redis_used_memory"),
    });
    let result = json!({
        "label": "soak",
        "system": "switchyard",
        "minutes": args.minutes,
        "connections": args.clients,
        "order_rate": args.order_rate,
        "location_rate": args.location_rate,
        "churn_rate": args.churn_rate,
        "reconnect_percent_per_minute": args.reconnect_percent,
        "warmup_minutes": args.warmup_minutes,
        "published": published,
        "delivered": counts.delivered.load(Ordering::Relaxed),
        "lost": counts.lost.load(Ordering::Relaxed),
        "reconnects": counts.reconnects.load(Ordering::Relaxed),
        "failed_connects": counts.failed_connects.load(Ordering::Relaxed),
        "churn_ops": counts.churn_ops.load(Ordering::Relaxed),
        "slopes_percent_per_hour": slopes,
        "samples": samples,
    });
    eprintln!(
        "[soak] done: lost {}, slopes (%/h) {}",
        result["lost"], result["slopes_percent_per_hour"]
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(())
}

/// One client for the whole soak: connects, joins its order room, counts what arrives, and
/// does what the controller tells it (reconnect; join or leave a churn room).
#[allow(clippy::too_many_arguments)]
async fn client(
    i: usize,
    proto: &dyn Protocol,
    src: std::net::IpAddr,
    addr: &str,
    token: &str,
    counts: &Counts,
    orders: &Orders,
    mut stop: watch::Receiver<bool>,
) {
    let room = format!("order:s{}", i / 2);
    let mut first = true;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ i as u64);
    while !*stop.borrow() {
        if !first {
            counts.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let setup = async {
            let mut conn = open(proto, src, addr, token).await?;
            join_all(proto, &mut conn, std::slice::from_ref(&room), token).await?;
            anyhow::Ok(conn)
        };
        let mut conn = match tokio::time::timeout(Duration::from_secs(20), setup).await {
            Ok(Ok(conn)) => conn,
            _ => {
                counts.failed_connects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        counts.connected.fetch_add(1, Ordering::Relaxed);
        // Offsets are counted per connection: a new connection starts where it joins.
        let mut last: Option<u64> = None;
        let mut churn_room: Option<Room> = None;
        let mut op_id = 100u64;
        let ended = loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break true,
                _ = orders.reconnect.notified() => break false,
                _ = orders.churn.notified() => {
                    op_id += 1;
                    let op = match churn_room.take() {
                        Some(room) => ClientOp::Unsubscribe { room },
                        None => {
                            let room = Room::parse(&format!("order:loc{}", rng.below(CHURN_ROOMS as u64)))
                                .expect("valid room");
                            churn_room = Some(room.clone());
                            ClientOp::Subscribe { room, since: None }
                        }
                    };
                    if conn.send_text(&op.with_id(op_id as i64).encode()).await.is_err() {
                        break false;
                    }
                    counts.churn_ops.fetch_add(1, Ordering::Relaxed);
                }
                frame = conn.next() => {
                    let frame = match frame {
                        Ok(Some(frame)) => frame,
                        _ => break false,
                    };
                    match frame.opcode {
                        Opcode::Ping if conn.pong(&frame).await.is_err() => break false,
                        Opcode::Close => break false,
                        Opcode::Text => {
                            // The room's presence events (the other member leaving and coming
                            // back) take offsets between the bench's own: tracked, not counted.
                            let (seq, timed) = match proto.on_text(conn.text(&frame).unwrap_or(""), token) {
                                Incoming::Event { room: Some(r), seq, .. } if r == room => (seq, true),
                                Incoming::Untimed { room: Some(r), seq } if r == room => (seq, false),
                                _ => continue,
                            };
                            if let Some(prev) = last && seq > prev + 1 {
                                counts.lost.fetch_add(seq - prev - 1, Ordering::Relaxed);
                            }
                            last = Some(last.map_or(seq, |p| p.max(seq)));
                            if timed {
                                counts.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {}
                    }
                }
            }
        };
        counts.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
        if ended {
            return;
        }
    }
}

/// Publishes both kinds of events at their rates until stopped; returns how many.
async fn publish(args: &SoakArgs, mut stop: watch::Receiver<bool>) -> anyhow::Result<u64> {
    use switchyard_broker::Bus;
    let broker = super::redis_bus(&args.redis, &args.redis_prefix).await?;
    let order_rooms: Vec<Room> = (0..args.clients.div_ceil(2))
        .map(|k| Room::parse(&format!("order:s{k}")))
        .collect::<Result<_, _>>()?;
    let churn_rooms: Vec<Room> = (0..CHURN_ROOMS)
        .map(|k| Room::parse(&format!("order:loc{k}")))
        .collect::<Result<_, _>>()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(4096));
    let mut rng = Rng(0xDEAD_BEEF ^ now_us());
    let started = Instant::now();
    let (mut orders, mut locations) = (0u64, 0u64);
    let published = Arc::new(AtomicU64::new(0));
    while !*stop.borrow() {
        let t = started.elapsed().as_secs_f64();
        let (due_orders, due_locations) = (
            (t * args.order_rate) as u64,
            (t * args.location_rate) as u64,
        );
        let mut batch = Vec::new();
        while orders < due_orders {
            orders += 1;
            let k = rng.below(order_rooms.len() as u64) as usize;
            batch.push((order_rooms[k].clone(), "bench.tick"));
        }
        while locations < due_locations {
            locations += 1;
            let k = rng.below(CHURN_ROOMS as u64) as usize;
            batch.push((churn_rooms[k].clone(), "partner.location"));
        }
        for (room, event) in batch {
            // Waits rather than skips: every event is published, so loss is the servers'.
            let permit = permits.clone().acquire_owned().await?;
            let (broker, published) = (broker.clone(), published.clone());
            let data = format!(r#"{{"ts":{},"lat":12.97,"lng":77.59}}"#, now_us());
            tokio::spawn(async move {
                let _permit = permit;
                let raw = serde_json::value::RawValue::from_string(data).expect("valid json");
                if broker.publish(&room, event, raw).await.is_ok() {
                    published.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), permits.acquire_many(4096)).await;
    Ok(published.load(Ordering::Relaxed))
}

/// One sample: minute, the gateways' RSS and open files, Redis' used memory, counters.
fn sample(watched: &Watched, args: &SoakArgs, started: Instant, counts: &Counts) -> Value {
    let (mut rss, mut files) = (0u64, 0u64);
    for (name, pid) in &watched.0 {
        if name.starts_with("gateway") {
            rss += procstat::sample(*pid).map_or(0, |s| s.rss_kib);
            files += std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        }
    }
    json!({
        "minute": started.elapsed().as_secs_f64() / 60.0,
        "gateway_rss_kib": rss,
        "gateway_open_files": files,
        "redis_used_memory": redis_used_memory(&args.redis),
        "connected": counts.connected.load(Ordering::Relaxed),
        "delivered": counts.delivered.load(Ordering::Relaxed),
        "lost": counts.lost.load(Ordering::Relaxed),
        "reconnects": counts.reconnects.load(Ordering::Relaxed),
    })
}

/// `used_memory` from `redis-cli INFO memory` (bytes), if redis-cli answers.
fn redis_used_memory(url: &str) -> Option<u64> {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", url, "info", "memory"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Least-squares slope of `key` over the samples' minutes, as percent of its mean per hour.
fn slope_percent_per_hour(samples: &[&Value], key: &str) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| Some((s["minute"].as_f64()?, s[key].as_f64()?)))
        .collect();
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 || my == 0.0 {
        return None;
    }
    Some(100.0 * (sxy / sxx) * 60.0 / my)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_are_percent_of_the_mean_per_hour() {
        let samples: Vec<Value> = (0..=10)
            .map(|m| json!({"minute": m as f64, "x": 1000.0 + m as f64}))
            .collect();
        let refs: Vec<&Value> = samples.iter().collect();
        // +1 per minute around a mean of 1005: 60/1005 per hour.
        let s = slope_percent_per_hour(&refs, "x").unwrap();
        assert!((s - 100.0 * 60.0 / 1005.0).abs() < 1e-9);
        assert_eq!(slope_percent_per_hour(&refs[..1], "x"), None);
    }
}
