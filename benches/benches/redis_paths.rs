//! Criterion benches of the paths issue #17 §2 changed, against a real `redis-server` this
//! bench starts on a free loopback port (and stops): a handshake's bus work after the user
//! room's subscription, and publishing.
//!
//! - `handshake/claim_and_read_one_script`: the lease claim and the user room's position in
//!   one script (what a gateway does now) — against `handshake/claim_then_read_two_calls`,
//!   the two script calls at once (what it did, and still does when the leases live in a
//!   Redis of their own).
//! - `handshake/subscribe_claim_read_unsubscribe`: a connection's whole bus work on one Redis
//!   — its user room subscribed (through the bus's subscription manager), the script on the
//!   subscriber connection after the `SUBSCRIBE` (one round trip), and the room left again
//!   (the `UNSUBSCRIBE`, off the caller's path).
//! - `publish/batch_64`: 64 events to random rooms in one `Bus::publish_batch` (one script
//!   call) — against `publish/one_call_per_event_64`, 64 `Bus::publish` at once (pipelined).
//!
//! - `presence/holds_256_32_in_flight`: a burst of presence holds pipelined, as the gateway's
//!   presence keeper sends them now — against `presence/holds_256_one_at_a_time`, one round
//!   trip after the other, as it did.
//!
//! The publish script itself (its Redis-side cost per event) is measured with callgrind on
//! redis-server, not here: criterion times the round trip on a shared machine.
//!
//! Run: `cargo bench -p switchyard-benches --bench redis_paths`. Without `redis-server` on the
//! PATH it says so and measures nothing.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::value::RawValue;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use switchyard_broker::redis::{Redis, RedisConfig};
use switchyard_broker::{Bus, Claim, ConnectionLeases, Outgoing, claim_then_read};
use switchyard_protocol::Room;

/// A redis-server of this bench's own, stopped on drop.
struct Server(Child, u16);

impl Server {
    fn start() -> Option<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Server(child, port);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_paths(c: &mut Criterion) {
    let Some(server) = Server::start() else {
        eprintln!("redis_paths: no redis-server on the PATH; nothing measured");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis = rt
        .block_on(Redis::connect(RedisConfig::new(format!(
            "redis://127.0.0.1:{}",
            server.1
        ))))
        .expect("connect to the bench's redis-server");
    let (bus, leases): (Arc<dyn Bus>, Arc<dyn ConnectionLeases>) =
        (redis.bus.clone(), redis.leases.clone());
    let rooms: Vec<Room> = (0..1000)
        .map(|i| Room::parse(&format!("user:bench{i}")).unwrap())
        .collect();
    let claim = |i: usize| Claim {
        sub: &rooms[i].as_str()[5..],
        conn: "bench-conn",
        limit: 16,
        lease: Duration::from_secs(60),
    };

    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("claim_and_read_one_script", |b| {
        b.iter(|| {
            i = (i + 1) % rooms.len();
            rt.block_on(leases.claim_and_read(bus.as_ref(), claim(i), &rooms[i], None))
                .unwrap()
        })
    });
    g.bench_function("subscribe_claim_read_unsubscribe", |b| {
        b.iter(|| {
            i = (i + 1) % rooms.len();
            rt.block_on(async {
                bus.subscribe(&rooms[i]).await.unwrap();
                let read = leases
                    .claim_and_read(bus.as_ref(), claim(i), &rooms[i], None)
                    .await
                    .unwrap();
                bus.unsubscribe(&rooms[i]).await;
                read
            })
        })
    });
    g.bench_function("claim_then_read_two_calls", |b| {
        b.iter(|| {
            i = (i + 1) % rooms.len();
            rt.block_on(claim_then_read(
                leases.as_ref(),
                bus.as_ref(),
                claim(i),
                &rooms[i],
                None,
            ))
            .unwrap()
        })
    });
    g.finish();

    const BATCH: usize = 64;
    let data = || RawValue::from_string(r#"{"ts":1,"seq":1,"pad":"xxxxxxxxxxxxxxxx"}"#.into());
    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut k = 0;
    let mut next = move || {
        k = (k + 7919) % rooms.len();
        k
    };
    let order_rooms: Vec<Room> = (0..5000)
        .map(|i| Room::parse(&format!("order:{i}")).unwrap())
        .collect();
    g.bench_function("batch_64", |b| {
        b.iter(|| {
            let batch: Vec<Outgoing> = (0..BATCH)
                .map(|_| Outgoing {
                    room: order_rooms[next() % order_rooms.len()].clone(),
                    event: "bench.tick".into(),
                    data: data().unwrap(),
                })
                .collect();
            let offsets = rt.block_on(bus.publish_batch(batch));
            assert!(offsets.iter().all(Result::is_ok));
        })
    });
    g.bench_function("one_call_per_event_64", |b| {
        b.iter(|| {
            let publishes = (0..BATCH).map(|_| {
                let room = order_rooms[next() % order_rooms.len()].clone();
                let bus = bus.clone();
                async move { bus.publish(&room, "bench.tick", data().unwrap()).await }
            });
            let offsets = rt.block_on(futures_util::future::join_all(publishes));
            assert!(offsets.iter().all(Result::is_ok));
        })
    });
    g.finish();

    // The gateway's presence keeper (gateway/src/presence.rs): a burst of 256 rooms' holds
    // (each a short script call; the users already announced, so no publish), one round trip
    // after the other as it was, against 32 in flight as it is now.
    use switchyard_broker::presence::{Holder, Presence};
    const HOLDS: usize = 256;
    let presence: Arc<dyn Presence> = redis.presence.clone();
    let holders = [Holder {
        sub: "bench-user".into(),
        role: switchyard_protocol::Role::Customer,
    }];
    let ttl = Duration::from_secs(45);
    let presence_rooms: Vec<Room> = (0..HOLDS)
        .map(|i| Room::parse(&format!("order:p{i}")).unwrap())
        .collect();
    let mut g = c.benchmark_group("presence");
    g.throughput(Throughput::Elements(HOLDS as u64));
    g.bench_function("holds_256_one_at_a_time", |b| {
        b.iter(|| {
            rt.block_on(async {
                for room in &presence_rooms {
                    presence
                        .hold(room, "bench-node", &holders, ttl)
                        .await
                        .unwrap();
                }
            })
        })
    });
    g.bench_function("holds_256_32_in_flight", |b| {
        use futures_util::StreamExt;
        b.iter(|| {
            rt.block_on(
                futures_util::stream::iter(&presence_rooms).for_each_concurrent(32, |room| {
                    let (presence, holders) = (&presence, &holders);
                    async move {
                        presence
                            .hold(room, "bench-node", holders, ttl)
                            .await
                            .unwrap();
                    }
                }),
            )
        })
    });
    g.finish();
    drop(redis);
    drop(server);
}

criterion_group!(benches, redis_paths);
criterion_main!(benches);
