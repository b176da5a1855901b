//! Criterion benches of the per-event and per-connection hot paths.
//!
//! Run: `cargo bench -p switchyard-benches --bench hot_paths`

use axum::extract::ws::Utf8Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::value::RawValue;
use std::hint::black_box;
use switchyard_auth::{Issuer, JwtConfig, Verifier, VerifyKey};
use switchyard_gateway::cursor::{Admit, Cursor, Joined};
use switchyard_gateway::hub::{Hub, Limits};
use switchyard_gateway::outbound::{Event, Outgoing};
use switchyard_protocol::client::StreamPosition;
use switchyard_protocol::server::encode_event;
use switchyard_protocol::{ClientMessage, Role, Room, UserId};

const STATUS: &str = r#"{"order_id":"42","status":"out_for_delivery","previous":"packed","by":"admin","updated_at":1795334318585}"#;

fn encode(c: &mut Criterion) {
    let data = RawValue::from_string(STATUS.to_owned()).unwrap();
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_event", |b| {
        b.iter(|| encode_event(black_box("order:42"), "order.status", black_box(7), &data))
    });
    let frames = [
        r#"{"op":"subscribe","room":"order:42","id":1}"#,
        r#"{"op":"location","order_id":"42","lat":12.9716,"lng":77.5946,"heading":90,"speed":8.5,"ts":1732000000000,"id":3}"#,
    ];
    g.bench_function("decode_subscribe", |b| {
        b.iter(|| ClientMessage::decode(black_box(frames[0])))
    });
    g.bench_function("decode_location", |b| {
        b.iter(|| ClientMessage::decode(black_box(frames[1])))
    });
    g.bench_function("parse_room", |b| {
        b.iter(|| Room::parse(black_box("order:1234567890")))
    });
    g.finish();
}

/// The load generator's per-delivery parse (issue #17 §1): an event frame as the gateways send
/// it, read in place from the read buffer — the room, the offset and the payload's `ts`.
fn loadgen(c: &mut Criterion) {
    use switchyard_benches::proto::{Incoming, Protocol, switchyard::Switchyard};
    let frame = format!(
        r#"{{"type":"event","room":"user:bench-broadcast","event":"bench.tick","offset":123456,"data":{{"ts":1764770000123456,"seq":123456,"pad":"{}"}}}}"#,
        "x".repeat(200)
    );
    let mut g = c.benchmark_group("loadgen");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_event", |b| {
        b.iter(|| {
            let parsed = Switchyard.on_payload(black_box(frame.as_bytes()), "");
            assert!(matches!(parsed, Incoming::Event { seq: 123456, .. }));
        })
    });
    g.finish();
}

fn jwt(c: &mut Criterion) {
    let secret = b"bench-secret-0123456789abcdef0123";
    let verifier = Verifier::new(&JwtConfig {
        key: VerifyKey::Secret(secret.to_vec()),
        issuer: None,
        audience: None,
        leeway_secs: 0,
        max_lifetime_secs: switchyard_auth::DEFAULT_MAX_LIFETIME_SECS,
    })
    .unwrap();
    let token = Issuer::new(secret, None, None).issue("u123", Role::Customer, 3600);
    c.bench_function("jwt/verify_hs256", |b| {
        b.iter(|| verifier.verify(black_box(&token)).unwrap())
    });
}

/// A current-thread runtime for the benches that need one entered (the hub's mailboxes).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn fan_out(c: &mut Criterion) {
    const MEMBERS: usize = 10_000;
    let rt = runtime();
    let _guard = rt.enter();
    // The gateway's real metrics handles (a Prometheus recorder, as `switchyard gateway`
    // installs), not the no-op ones: the fan-out's per-member cost includes them.
    let _ = metrics::set_global_recorder(
        metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
    );
    let hub = std::sync::Arc::new(Hub::new());
    let (room1, room2) = (
        Room::parse("order:1").unwrap(),
        Room::parse("order:2").unwrap(),
    );
    let limits = Limits {
        per_gateway: MEMBERS,
        per_user: 1,
    };
    let mut connections = Vec::with_capacity(MEMBERS);
    for conn in 0..MEMBERS as u64 {
        let user = UserId::parse(&format!("u{conn}")).unwrap();
        let connected = hub.connect(conn, &user, 1 << 20, limits).unwrap();
        hub.join(&room1, &connected.out);
        connections.push(connected);
    }
    let data = RawValue::from_string(STATUS.to_owned()).unwrap();
    let frame = Utf8Bytes::from(encode_event("order:1", "order.status", 1, &data));
    let epoch: std::sync::Arc<str> = "e1".into();
    let mut g = c.benchmark_group("hub");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("fan_out_10k_members", |b| {
        b.iter_batched(
            || {
                // Empty every mailbox so each iteration measures delivery, not overflow.
                let mut batch = Vec::new();
                for connected in &connections {
                    connected.mailbox.take(&mut batch, usize::MAX);
                    batch.clear();
                }
                frame.clone()
            },
            |frame| hub.fan_out(Event::new(room1.clone(), epoch.clone(), 1, frame, false)),
            BatchSize::PerIteration,
        )
    });
    // The same fan-out while another thread drains every mailbox, as the sessions do on the
    // other core (issue #17 §2): what a shared atomic touched per member (the queue-bytes
    // gauge, once per push until then) costs when its cache line moves between cores.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drainer = {
        let stop = stop.clone();
        let mailboxes: Vec<_> = connections.iter().map(|c| c.mailbox.clone()).collect();
        std::thread::spawn(move || {
            let mut batch = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for mailbox in &mailboxes {
                    mailbox.take(&mut batch, usize::MAX);
                    batch.clear();
                }
            }
        })
    };
    g.bench_function("fan_out_10k_members_while_drained", |b| {
        b.iter(|| {
            hub.fan_out(Event::new(
                room1.clone(),
                epoch.clone(),
                1,
                frame.clone(),
                false,
            ))
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drainer.join().unwrap();
    // Membership changes in a room of 10,000 (issue #20 §3): one join, one leave, and the
    // whole room filled and emptied (every member's join, then every member's leave).
    let newcomer = hub
        .connect(
            MEMBERS as u64,
            &UserId::parse("newcomer").unwrap(),
            1 << 20,
            Limits {
                per_gateway: MEMBERS + 1,
                per_user: 1,
            },
        )
        .unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("join_10k_members", |b| {
        b.iter_batched(
            || hub.leave("order:1", newcomer.out.conn),
            |_| hub.join(&room1, &newcomer.out),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("leave_10k_members", |b| {
        b.iter_batched(
            || hub.join(&room1, &newcomer.out),
            |_| hub.leave("order:1", newcomer.out.conn),
            BatchSize::PerIteration,
        )
    });
    // A handshake's and a close's share of the hub (issue #17): a connection registered
    // (the limits, its mailbox), its user room joined and left, the registration dropped —
    // the gauges moved through handles, with no registry lookup.
    let user = UserId::parse("u-handshake").unwrap();
    let user_room = Room::of_user(&user);
    let mut conn = MEMBERS as u64 + 1;
    let open = Limits {
        per_gateway: 2 * MEMBERS,
        per_user: 4,
    };
    g.bench_function("connect_join_leave_disconnect", |b| {
        b.iter(|| {
            conn += 1;
            let connected = hub.connect(conn, &user, 1 << 16, open).unwrap();
            hub.join_shared(&user_room, &connected.out);
            hub.leave(user_room.as_str(), conn);
            drop(connected);
        })
    });
    g.sample_size(10);
    g.throughput(Throughput::Elements(2 * MEMBERS as u64));
    g.bench_function("fill_and_empty_10k_members", |b| {
        b.iter(|| {
            for connected in &connections {
                hub.join(&room2, &connected.out);
            }
            for connected in &connections {
                hub.leave("order:2", connected.out.conn);
            }
        })
    });
    g.finish();
}

/// The sessions' share of one broadcast to 10,000 (issue #17 §2), per session: its mailbox's
/// wake-up (the fan-out wakes a session waiting on it), its `take`, the event's room found
/// among its own and its cursor's `admit` — what each session does per event besides the
/// write itself. `shared` keeps the room's name and epoch as the hub and the bus share them
/// (what sessions keep since this change); `own` gives each session names of its own (a name
/// read per session, as before).
fn session_share(c: &mut Criterion) {
    const SESSIONS: usize = 10_000;
    let rt = runtime();
    let _guard = rt.enter();
    let room = Room::parse("user:bench-broadcast").unwrap();
    let epoch: std::sync::Arc<str> = "0123456789abcdef0123".into();
    let position = StreamPosition {
        epoch: epoch.to_string(),
        offset: 0,
    };
    let frame = Utf8Bytes::from(encode_event(
        room.as_str(),
        "order.status",
        1,
        &RawValue::from_string(STATUS.to_owned()).unwrap(),
    ));
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(SESSIONS as u64));
    g.sample_size(20);
    for shared in [true, false] {
        let hub = std::sync::Arc::new(Hub::new());
        let limits = Limits {
            per_gateway: SESSIONS,
            per_user: 1,
        };
        let mut sessions: Vec<_> = (0..SESSIONS as u64)
            .map(|conn| {
                let user = UserId::parse(&format!("u{conn}")).unwrap();
                let connected = hub.connect(conn, &user, 1 << 20, limits).unwrap();
                let own = Room::parse(room.as_str()).unwrap();
                let (kept, _) = hub.join_shared(&own, &connected.out);
                let mut joined = Joined::default();
                joined.insert(Room::of_user(&user), Cursor::default());
                let mut cursor = Cursor::default();
                cursor.reposition(&position, None, false);
                joined.insert(if shared { kept } else { own }, cursor);
                (connected, joined)
            })
            .collect();
        let mut offset = 0;
        // A waker per session that counts nothing: what matters is that one is registered.
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let name = if shared { "shared" } else { "own" };
        g.bench_function(format!("wake_take_admit_10k_{name}_names"), |b| {
            b.iter(|| {
                offset += 1;
                // Each session waits on its mailbox, as a session between events does.
                for (connected, _) in &sessions {
                    let ready = std::pin::pin!(connected.mailbox.ready());
                    let _ = std::future::Future::poll(ready, &mut cx);
                }
                let bus_epoch = if shared {
                    epoch.clone()
                } else {
                    // Not the bus's interned one: each event a new allocation.
                    std::sync::Arc::from(&*epoch)
                };
                hub.fan_out(Event::new(
                    room.clone(),
                    bus_epoch,
                    offset,
                    frame.clone(),
                    false,
                ));
                let mut sent = 0;
                let mut batch = Vec::new();
                for (connected, joined) in &mut sessions {
                    let ready = std::pin::pin!(connected.mailbox.ready());
                    let _ = std::future::Future::poll(ready, &mut cx);
                    connected.mailbox.take(&mut batch, 256);
                    for item in batch.drain(..) {
                        if let Outgoing::Event(event) = item
                            && let Some(cursor) = joined.get_mut(event.room.as_str())
                            && cursor.admit(&event.epoch, event.offset) != Admit::Drop
                        {
                            sent += 1;
                        }
                    }
                }
                black_box(sent)
            })
        });
        drop(sessions.drain(..));
    }
    g.finish();
}

criterion_group!(benches, encode, loadgen, jwt, fan_out, session_share);
criterion_main!(benches);
