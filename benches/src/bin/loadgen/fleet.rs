//! `loadgen fleet` (issue #16): partners streaming fixes with admins watching `admin:fleet`,
//! against the plain order-room location path.
//!
//! Orders are created and assigned (partner `lp{k}` carries order k) through the REST API once;
//! then each *phase* runs against a gateway of its own (`--target`, sampled as `--pid`, in the
//! same order): the phase's admins (`--admins`, one number per phase) join `admin:fleet`, every
//! partner connects (all `--partners` online, present in `admin:fleet`), and then a ladder of
//! steps: in each, the first `--active` partners (one count per step) send `--hz` fixes a second
//! for `--step-secs`. A step reports fixes/s offered, sent and accepted (answered `ok`), the
//! gateway's CPU per accepted fix, deliveries to admins/s and the admins' latency (the fix's
//! device time `ts` → receipt: it includes the wait for the fleet's once-a-second publish, at
//! most one send interval for the newest fix). A step is *sustained* when at least 95 % of the
//! offered fixes were accepted; the ladder stops after the first step that is not (the
//! gateway's ceiling, or the machine's), and before the next step the backlog of the last one
//! drains. Then every connection of the phase is closed before the next phase.
//!
//! The CPU-per-fix ratio (last phase / first) is taken at the largest step both phases
//! sustained: per fix, not at a rate one gateway could not take.
//!
//! Bounded: at most 10,000 partners, 100 admins and 10 steps, a step of at most 60 s, every
//! wait with a deadline.

use crate::{Watched, check_loopback, check_loopback_url, create_orders, now_us, open};
use anyhow::bail;
use clap::Args as ClapArgs;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Partners sending, one count per step, ascending (each at most `--partners`; the rest
    /// stay online, quiet). Default: all of them, one step.
    #[arg(long, value_delimiter = ',')]
    active: Vec<usize>,
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
    let active = if args.active.is_empty() {
        vec![args.partners]
    } else {
        args.active.clone()
    };
    if active.len() > 10
        || active.iter().any(|a| *a == 0 || *a > args.partners)
        || active.windows(2).any(|w| w[0] >= w[1])
    {
        bail!("--active: 1 to 10 ascending counts, each 1 to --partners");
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
    let mut results: Vec<Value> = Vec::new();
    let mut ceilings = serde_json::Map::new();
    for (p, name) in args.phases.iter().enumerate() {
        let target = &args.common.targets[p];
        let steps = phase(
            &args,
            &issuer,
            &ids,
            &active,
            name,
            target,
            args.admins[p],
            &watched,
            p,
        )
        .await?;
        let ceiling = steps
            .iter()
            .filter(|s| s["sustained"] == true)
            .filter_map(|s| s["fixes_accepted_per_sec"].as_f64())
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        ceilings.insert(name.clone(), json!(ceiling));
        results.extend(steps);
    }
    // The ratio at the largest active count every phase sustained.
    let (first, last) = (args.phases.first(), args.phases.last());
    let sustained = |phase: Option<&String>, n: usize| {
        results.iter().find(|s| {
            phase.is_some_and(|p| s["phase"] == p.as_str())
                && s["partners"] == n
                && s["sustained"] == true
        })
    };
    let compared = active
        .iter()
        .rev()
        .find(|n| sustained(first, **n).is_some() && sustained(last, **n).is_some())
        .copied();
    let cpu_per_fix = |s: &Value| s["gateway_cpu_us_per_fix"].as_f64();
    let ratio = compared.and_then(|n| {
        match (
            sustained(first, n).and_then(cpu_per_fix),
            sustained(last, n).and_then(cpu_per_fix),
        ) {
            (Some(base), Some(with)) if base > 0.0 && phases > 1 => Some(with / base),
            _ => None,
        }
    });
    let result = json!({
        "label": "fleet", "system": "switchyard", "partners": args.partners, "hz": args.hz,
        "step_secs": args.step_secs, "active": active,
        "cpu_per_fix_ratio": ratio, "ratio_at_active": compared,
        // Per phase: the most fixes/s accepted in a sustained step.
        "ceiling_fixes_per_sec": ceilings,
        // Read by run.sh's smoke check like every scenario's steps.
        "steps": results,
    });
    eprintln!(
        "[fleet] CPU per fix, last phase / first, at {compared:?} partners sending: {ratio:?}"
    );
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
    active: &[usize],
    name: &str,
    target: &str,
    admins: usize,
    watched: &Watched,
    index: usize,
) -> anyhow::Result<Vec<Value>> {
    const PROTO: proto::switchyard::Switchyard = proto::switchyard::Switchyard;
    let sources = net::loopback_sources(args.common.sources);
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(hist::Latencies::new(64));
    // Partners with an index below this send (0: none yet).
    let sending = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Failures::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let ramp_started = Instant::now();
    let mut conns = Vec::new();
    // Admins first (they see every partner come online), then the partners.
    for a in 0..admins {
        let token = issuer.issue(&format!("lg-fleet-admin{a}"), Role::Admin, 3600);
        let (src, addr) = (sources[a % sources.len()], target.to_owned());
        let (counters, latencies, failures, mut stop) = (
            counters.clone(),
            latencies.clone(),
            failures.clone(),
            stop_rx.clone(),
        );
        conns.push(tokio::spawn(async move {
            let setup = async {
                let mut conn = open(&PROTO, src, &addr, &token).await?;
                crate::join_all(&PROTO, &mut conn, &[FLEET.to_owned()], &token).await?;
                anyhow::Ok(conn)
            };
            let mut conn = match tokio::time::timeout(Duration::from_secs(30), setup).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => return failures.note("admin", &format!("{err:#}")),
                Err(_) => return failures.note("admin", "setup timed out (30 s)"),
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
                    Ok(_) => return failures.note("admin", "closed by the gateway"),
                    Err(err) => return failures.note("admin", &format!("{err:#}")),
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
        let (counters, sending, failures, mut stop) = (
            counters.clone(),
            sending.clone(),
            failures.clone(),
            stop_rx.clone(),
        );
        let (id, hz) = (id.clone(), args.hz);
        conns.push(tokio::spawn(async move {
            let setup = open(&PROTO, src, &addr, &token);
            let mut conn = match tokio::time::timeout(Duration::from_secs(30), setup).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => return failures.note("partner", &format!("{err:#}")),
                Err(_) => return failures.note("partner", "connect timed out (30 s)"),
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
                        if k >= sending.load(Ordering::Relaxed) {
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
                            Ok(_) => return failures.note("partner", "closed by the gateway"),
                            Err(err) => return failures.note("partner", &format!("{err:#}")),
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while (counters.connected.load(Ordering::Relaxed) + failures.count())
        < (admins + ids.len()) as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected = counters.connected.load(Ordering::Relaxed);
    eprintln!(
        "[fleet] {name}: {connected} of {} connections in {:.1}s{}",
        admins + ids.len(),
        ramp_started.elapsed().as_secs_f64(),
        failures.summary()
    );

    let take = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let answered = || take(&counters.accepted) + take(&counters.refused);
    let mut steps = Vec::new();
    for &partners in active {
        // The last step's backlog answered first (bounded: a gateway that cannot catch up
        // within the deadline leaves it in the next step, which then is not sustained either).
        let drained = Instant::now() + Duration::from_secs(20);
        while take(&counters.sent) > answered() && Instant::now() < drained {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sending.store(partners, Ordering::Relaxed);
        // One second to reach the step's rate (each partner's first tick, the fleet's first
        // publish of them).
        tokio::time::sleep(Duration::from_secs(1)).await;
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
        tokio::time::sleep(Duration::from_secs(args.step_secs)).await;
        let wall = started.elapsed().as_secs_f64();
        let after = watched.sample();
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
        let offered = partners as f64 * args.hz;
        let accepted_per_sec = accepted as f64 / wall;
        let sustained = accepted_per_sec >= 0.95 * offered;
        let step = json!({
            "phase": name,
            "admins": admins,
            // Partners sending in this step (all `online` are connected).
            "partners": partners,
            "online": ids.len(),
            "connected": connected,
            "offered_fixes_per_sec": offered,
            "fixes_sent_per_sec": sent as f64 / wall,
            "fixes_accepted_per_sec": accepted_per_sec,
            "sustained": sustained,
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
            "[fleet] {name}, {partners} sending: {offered:.0} fixes/s offered, {:.0} sent, {accepted_per_sec:.0} accepted{}, gateway {per_fix:?} µs/fix, {:.0} admin deliveries/s, admin latency {}",
            step["fixes_sent_per_sec"].as_f64().unwrap_or(0.0),
            if sustained { "" } else { " (not sustained)" },
            step["admin_deliveries_per_sec"].as_f64().unwrap_or(0.0),
            step["admin_latency_ms"]
        );
        steps.push(step);
        if !sustained {
            break;
        }
    }
    sending.store(0, Ordering::Relaxed);
    let lost = failures.summary();
    if !lost.is_empty() {
        eprintln!("[fleet] {name}: connections lost or refused{lost}");
    }
    let _ = stop_tx.send(true);
    for c in conns {
        let _ = tokio::time::timeout(Duration::from_secs(2), c).await;
    }
    Ok(steps)
}

/// Connections that could not be set up or ended early: how many, and the first reason of each
/// kind (printed: a silent failure once made a run's admins look like they received nothing).
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    first: std::sync::Mutex<Vec<String>>,
}

impl Failures {
    fn note(&self, who: &str, reason: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.len() < 4 && !first.iter().any(|f| f.starts_with(who)) {
            first.push(format!("{who}: {reason}"));
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// `""`, or `"; N failed (first: …)"`.
    fn summary(&self) -> String {
        let n = self.count();
        if n == 0 {
            return String::new();
        }
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        format!("; {n} failed or ended (first: {})", first.join("; "))
    }
}
