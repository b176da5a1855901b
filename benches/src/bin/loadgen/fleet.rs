//! `loadgen fleet` (issue #16): partners streaming fixes with admins watching `admin:fleet`,
//! against the plain order-room location path.
//!
//! Orders are created and assigned (partner `lp{k}` carries order k) through the REST API once;
//! then each *phase* runs against a gateway of its own (`--target`, sampled as `--pid`, in the
//! same order): every partner connects, the phase's admins (`--admins`, one number per phase)
//! join `admin:fleet`, and for `--step-secs` every partner sends `--hz` fixes a second. A phase
//! reports fixes/s sent and accepted, the gateway's CPU per accepted fix, deliveries to admins/s
//! and the admins' latency (the fix's device time `ts` → receipt: it includes the wait for the
//! fleet's once-a-second publish, at most one send interval for the newest fix). Then every
//! connection of the phase is closed before the next one.
//!
//! Bounded: at most 10,000 partners and 100 admins, a step of at most 60 s, every wait with a
//! deadline.

use crate::{Watched, check_loopback, check_loopback_url, create_orders, now_us, open};
use anyhow::bail;
use clap::Args as ClapArgs;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchyard_auth::Issuer;
use switchyard_benches::proto::{Incoming, Protocol};
use switchyard_benches::wire::Opcode;
use switchyard_benches::{hist, net, proto};
use switchyard_protocol::Role;
use switchyard_protocol::client::{ClientOp, LocationFix};
use tokio::sync::watch;

const FLEET: &str = "admin:fleet";

#[derive(Debug, Clone, ClapArgs)]
pub struct FleetArgs {
    #[command(flatten)]
    common: crate::Common,
    /// API base URL (orders are created and assigned there).
    #[arg(long)]
    api: String,
    /// Partners online, each carrying an order of its own.
    #[arg(long, default_value_t = 1000)]
    partners: usize,
    /// Fixes per second per partner.
    #[arg(long, default_value_t = 4.0)]
    hz: f64,
    /// Phase names, one per `--target` (e.g. `plain,fleet`).
    #[arg(long, value_delimiter = ',', default_value = "plain,fleet")]
    phases: Vec<String>,
    /// Admins in `admin:fleet`, one number per phase.
    #[arg(long, value_delimiter = ',', default_value = "0,10")]
    admins: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Connections opened per second.
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What every connection of a phase counts.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    admin_deliveries: AtomicU64,
    connected: AtomicU64,
}

pub async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    for t in &args.common.targets {
        check_loopback(t)?;
    }
    check_loopback_url(&args.api)?;
    let phases = args.phases.len();
    if args.partners == 0
        || args.partners > 10_000
        || args.step_secs == 0
        || args.step_secs > 60
        || phases == 0
        || phases > 4
        || args.common.targets.len() != phases
        || args.admins.len() != phases
        || args.admins.iter().any(|a| *a > 100)
    {
        bail!(
            "--partners 1 to 10,000, --step-secs 1 to 60, 1 to 4 --phases with one --target and one --admins (≤ 100) each"
        );
    }
    if args.ramp <= 0.0 || args.ramp > 2000.0 || args.hz <= 0.0 || args.hz > 20.0 {
        bail!("--ramp in (0, 2000], --hz in (0, 20]");
    }
    let watched = Watched::parse(&args.common.pids)?;
    let issuer = Issuer::new(args.common.secret.as_bytes(), None, None);
    let setup = Instant::now();
    let ids = create_orders(args.api.trim_end_matches('/'), &issuer, args.partners).await?;
    eprintln!(
        "[fleet] {} orders created and assigned in {:.1}s",
        ids.len(),
        setup.elapsed().as_secs_f64()
    );
    let mut results = Vec::new();
    for (p, name) in args.phases.iter().enumerate() {
        let target = &args.common.targets[p];
        let result = phase(
            &args,
            &issuer,
            &ids,
            name,
            target,
            args.admins[p],
            &watched,
            p,
        )
        .await?;
        results.push(result);
    }
    let cpu_per_fix = |r: &Value| r["gateway_cpu_us_per_fix"].as_f64();
    let ratio = match (
        results.first().and_then(cpu_per_fix),
        results.last().and_then(cpu_per_fix),
    ) {
        (Some(base), Some(with)) if base > 0.0 && results.len() > 1 => Some(with / base),
        _ => None,
    };
    let result = json!({
        "label": "fleet", "system": "switchyard", "partners": args.partners, "hz": args.hz,
        "step_secs": args.step_secs, "cpu_per_fix_ratio": ratio,
        // Read by run.sh's smoke check like every scenario's steps.
        "steps": results,
    });
    eprintln!("[fleet] CPU per fix, last phase / first: {ratio:?}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    args: &FleetArgs,
    issuer: &Issuer,
    ids: &[String],
    name: &str,
    target: &str,
    admins: usize,
    watched: &Watched,
    index: usize,
) -> anyhow::Result<Value> {
    const PROTO: proto::switchyard::Switchyard = proto::switchyard::Switchyard;
    let sources = net::loopback_sources(args.common.sources);
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(hist::Latencies::new(64));
    let sending = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let ramp_started = Instant::now();
    let mut conns = Vec::new();
    // Admins first (they see every partner come online), then the partners.
    for a in 0..admins {
        let token = issuer.issue(&format!("lg-fleet-admin{a}"), Role::Admin, 3600);
        let (src, addr) = (sources[a % sources.len()], target.to_owned());
        let (counters, latencies, mut stop) =
            (counters.clone(), latencies.clone(), stop_rx.clone());
        conns.push(tokio::spawn(async move {
            let setup = async {
                let mut conn = open(&PROTO, src, &addr, &token).await?;
                crate::join_all(&PROTO, &mut conn, &[FLEET.to_owned()], &token).await?;
                anyhow::Ok(conn)
            };
            let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(20), setup).await
            else {
                return;
            };
            counters.connected.fetch_add(1, Ordering::Relaxed);
            loop {
                let frame = tokio::select! {
                    _ = stop.changed() => break,
                    frame = conn.next() => frame,
                };
                let frame = match frame {
                    Ok(Some(frame)) if frame.opcode == Opcode::Text => frame,
                    Ok(Some(frame)) if frame.opcode == Opcode::Ping => {
                        if conn.pong(&frame).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Ok(Some(frame)) if frame.opcode != Opcode::Close => continue,
                    _ => break,
                };
                let now = now_us();
                let text = conn.text(&frame).unwrap_or("");
                if !text.contains(r#""event":"partner.location""#) {
                    continue;
                }
                if let Incoming::Event {
                    room: Some(FLEET),
                    ts_us: ts_ms,
                    ..
                } = PROTO.on_text(text, "")
                {
                    counters.admin_deliveries.fetch_add(1, Ordering::Relaxed);
                    latencies.record(a, now.saturating_sub(ts_ms * 1000));
                }
            }
        }));
    }
    for (k, id) in ids.iter().enumerate() {
        let due = ramp_started + Duration::from_secs_f64((admins + k) as f64 / args.ramp);
        tokio::time::sleep_until(due.into()).await;
        let token = issuer.issue(&format!("lp{k}"), Role::Partner, 3600);
        let (src, addr) = (sources[k % sources.len()], target.to_owned());
        let (counters, sending, mut stop) = (counters.clone(), sending.clone(), stop_rx.clone());
        let (id, hz) = (id.clone(), args.hz);
        conns.push(tokio::spawn(async move {
            let setup = open(&PROTO, src, &addr, &token);
            let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(20), setup).await else {
                return;
            };
            counters.connected.fetch_add(1, Ordering::Relaxed);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / hz));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Partners start at different moments of the interval, like real ones.
            tick.reset_after(Duration::from_secs_f64((k as f64 * 0.618_034).fract() / hz));
            let mut n = 0i64;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {
                        if !sending.load(Ordering::Relaxed) {
                            continue;
                        }
                        n += 1;
                        let ts = (now_us() / 1000) as i64;
                        let lat = 12.9 + (k % 100) as f64 / 1000.0 + (n % 50) as f64 / 100_000.0;
                        let fix = LocationFix { lat, lng: 77.6, heading: None, speed: None, ts: Some(ts) };
                        let op = ClientOp::Location { order_id: id.clone(), fix }.with_id(n);
                        if conn.send_text(&op.encode()).await.is_err() {
                            break;
                        }
                        counters.sent.fetch_add(1, Ordering::Relaxed);
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
                        let text = conn.text(&frame).unwrap_or("");
                        if text.starts_with(r#"{"type":"ok""#) {
                            counters.accepted.fetch_add(1, Ordering::Relaxed);
                        } else if text.starts_with(r#"{"type":"error""#) {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    // Every connection up (or given up on), and a few seconds for the partners' presence to
    // reach the admins.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (counters.connected.load(Ordering::Relaxed) as usize) < admins + ids.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected = counters.connected.load(Ordering::Relaxed);
    eprintln!(
        "[fleet] {name}: {connected} of {} connections in {:.1}s",
        admins + ids.len(),
        ramp_started.elapsed().as_secs_f64()
    );

    let take = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (s0, a0, r0, d0) = (
        take(&counters.sent),
        take(&counters.accepted),
        take(&counters.refused),
        take(&counters.admin_deliveries),
    );
    let _ = latencies.take();
    let gateway = index; // the phase's gateway is the index-th --pid
    let before = watched.sample();
    let started = Instant::now();
    sending.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.step_secs)).await;
    let wall = started.elapsed().as_secs_f64();
    let after = watched.sample();
    sending.store(false, Ordering::Relaxed);
    let report = watched.report(&before, wall);
    let (sent, accepted, refused, delivered) = (
        take(&counters.sent) - s0,
        take(&counters.accepted) - a0,
        take(&counters.refused) - r0,
        take(&counters.admin_deliveries) - d0,
    );
    let h = latencies.take();
    let cpu_secs = match (before.get(gateway), after.get(gateway)) {
        (Some(Some(b)), Some(Some(a))) => Some(a.cpu_secs - b.cpu_secs),
        _ => None,
    };
    let per_fix = cpu_secs
        .filter(|_| accepted > 0)
        .map(|c| c * 1e6 / accepted as f64);
    let step = json!({
        "phase": name,
        "admins": admins,
        "partners": ids.len(),
        "connected": connected,
        "offered_fixes_per_sec": ids.len() as f64 * args.hz,
        "fixes_sent_per_sec": sent as f64 / wall,
        "fixes_accepted_per_sec": accepted as f64 / wall,
        "refused": refused,
        "admin_deliveries_per_sec": delivered as f64 / wall,
        "admin_latency_ms": hist::summary(&h),
        "gateway_cpu_secs": cpu_secs,
        "gateway_cpu_us_per_fix": per_fix,
        // The smoke check's "measured something".
        "delivered": accepted + delivered,
        "processes": report,
    });
    eprintln!(
        "[fleet] {name}: {:.0} fixes/s sent, {:.0} accepted, gateway {:?} µs/fix, {:.0} admin deliveries/s, admin latency {}",
        step["fixes_sent_per_sec"].as_f64().unwrap_or(0.0),
        step["fixes_accepted_per_sec"].as_f64().unwrap_or(0.0),
        per_fix,
        step["admin_deliveries_per_sec"].as_f64().unwrap_or(0.0),
        step["admin_latency_ms"]
    );
    let _ = stop_tx.send(true);
    for c in conns {
        let _ = tokio::time::timeout(Duration::from_secs(2), c).await;
    }
    Ok(step)
}
