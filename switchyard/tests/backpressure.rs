//! Slow consumers against the real binary: the outbound queue is bounded in bytes, ordered
//! events overflow into a 4003 close, latest-value events are conflated, and nobody else
//! waits.

use common::process::ServerProcess;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use switchyard_protocol::{Role, close};
use tokio_tungstenite::tungstenite::Message;

fn embedded(dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["all", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    ServerProcess::start(dir, &args, &[("JWT_SECRET", SECRET)])
}

/// Reads until the server's close frame; returns the events seen before it and the code.
async fn drain_to_close(client: &mut Client) -> (Vec<Value>, Option<u16>) {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), client.socket.ws_mut().next()).await {
            Err(_) => panic!("the server never closed the slow client"),
            Ok(Some(Ok(Message::Text(t)))) => events.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (events, frame.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => {}
            Ok(None) | Ok(Some(Err(_))) => return (events, None),
        }
    }
}

/// Publishes `n` ordered `promo.tick` events of 8 KiB each into `room` in one batch request,
/// numbered from `first`.
async fn publish_padded(server: &ServerProcess, room: &str, first: usize, n: usize) {
    let pad = "x".repeat(8 * 1024);
    let items: Vec<Value> = (first..first + n)
        .map(|i| json!({"room": room, "event": "promo.tick", "data": {"i": i, "pad": pad}}))
        .collect();
    let service = token("promo-engine", Role::Service);
    let (status, body) = server
        .call(
            "POST",
            "/api/publish/batch",
            &service,
            Some(json!({ "items": items })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_4003_while_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // The default 1 MiB outbound queue.
    let server = embedded(dir.path(), &[]);
    let room = "user:promo";
    let mut fast = connect(&server.ws_url(), &admin()).await;
    assert_eq!(fast.subscribe(room).await["type"], "ok");
    let mut slow = connect_small_window(&server.ws_url(), &admin(), 4096).await;
    assert_eq!(slow.subscribe(room).await["type"], "ok");
    let rss_before = server.status_kib("VmRSS");

    // 40 MiB of ordered events, 25 per request (200 KiB): far more than the slow client's
    // queue and socket buffers hold. The fast client reads each request's events before the
    // next request goes out — a batch reaches the bus at once (POST /api/publish/batch is one
    // Bus::publish_batch), so without that lockstep a fast client on a fast machine could
    // itself fall 1 MiB behind a publisher that shares its task.
    const EVENTS: usize = 5_000;
    const PER_REQUEST: usize = 25;
    let mut last_offset = 0;
    for chunk in 0..EVENTS / PER_REQUEST {
        publish_padded(&server, room, chunk * PER_REQUEST, PER_REQUEST).await;
        for i in chunk * PER_REQUEST..(chunk + 1) * PER_REQUEST {
            let e = fast.event(room, "promo.tick").await;
            assert_eq!(e["data"]["i"], i, "fast client lost or reordered events");
            let offset = e["offset"].as_u64().unwrap();
            assert!(offset > last_offset);
            last_offset = offset;
        }
    }
    let peak_growth_kib = server.status_kib("VmHWM").saturating_sub(rss_before);
    eprintln!("peak RSS growth during the flood: {peak_growth_kib} KiB");
    // An unbounded queue would hold all 40 MiB for the slow client.
    assert!(
        peak_growth_kib < 24 * 1024,
        "gateway peak RSS grew by {peak_growth_kib} KiB during the flood"
    );

    // The slow client reads again: what was in flight, then the slow-consumer close.
    let (events, code) = drain_to_close(&mut slow).await;
    assert_eq!(code, Some(close::SLOW_CONSUMER));
    assert!(
        events.len() < EVENTS,
        "the slow client got everything ({})",
        events.len()
    );
    // Whatever it got arrived in order, without holes: ordered events are never skipped.
    let offsets: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "event")
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap before the close"
    );

    // The server still serves everyone else.
    assert_eq!(fast.ping().await["type"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_customer_gets_the_freshest_position_instead_of_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let server = embedded(
        dir.path(),
        &[
            "--location-rate",
            "10000",
            "--location-burst",
            "10000",
            "--op-rate",
            "10000",
            "--op-burst",
            "10000",
            "--socket-send-buffer-bytes",
            "16384",
        ],
    );
    let (status, body) = server
        .call(
            "POST",
            "/api/orders",
            &token("c1", Role::Customer),
            Some(json!({"items":[{"sku":"milk-1l","qty":1}],"address":"12 MG Road"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let order = body["id"].as_str().unwrap().to_owned();
    let (status, body) = server
        .call(
            "POST",
            &format!("/api/orders/{order}/assign"),
            &admin(),
            Some(json!({"partner": "p1"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room = format!("order:{order}");
    let mut customer =
        connect_small_window(&server.ws_url(), &token("c1", Role::Customer), 4096).await;
    assert_eq!(customer.subscribe(&room).await["type"], "ok");
    let mut partner = connect(&server.ws_url(), &token("p1", Role::Partner)).await;

    // The customer stops reading while the partner drives: 2,000 fixes.
    const FIXES: usize = 2_000;
    let lat = |i: usize| 12.0 + i as f64 * 1e-4;
    for i in 0..FIXES {
        let r = partner
            .request(json!({"op":"location","order_id":order,"lat":lat(i),"lng":77.5,"ts":i}))
            .await;
        assert_eq!(r["type"], "ok", "{r}");
    }

    // It reads again: fewer positions than were sent, ending with the latest, offsets rising.
    let mut seen = Vec::new();
    loop {
        let e = customer.recv().await;
        if e["type"] != "event" || e["event"] != "partner.location" {
            continue;
        }
        let done = e["data"]["ts"] == (FIXES - 1) as u64;
        seen.push(e);
        if done {
            break;
        }
    }
    eprintln!("{} of {FIXES} positions delivered", seen.len());
    assert!(
        seen.len() < FIXES,
        "no conflation: all {FIXES} positions were delivered"
    );
    assert_eq!(seen.last().unwrap()["data"]["lat"], lat(FIXES - 1));
    let offsets: Vec<u64> = seen.iter().map(|e| e["offset"].as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[1] > w[0]), "offsets went back");
    // Not closed: the connection still answers.
    assert_eq!(customer.ping().await["type"], "ok");
    let metrics = scrape(&server.url("")).await;
    assert!(
        sample(&metrics, "switchyard_events_conflated_total").is_some_and(|n| n > 0.0),
        "no conflation counted in /metrics"
    );
}

/// Issue #20 §1: a revocation is a kick, not a queued item, so it always wins. Here the
/// user's queue has already overflowed (a slow-consumer close, 4003, is pending while the
/// session waits on the stalled socket) when the user is revoked: the close says 4501, so the
/// client does not reconnect with the withdrawn token.
///
/// The queue is the default 1 MiB and the socket holds a few tens of KiB, so by the time the
/// queue overflows the session is certainly stuck in a write, whatever the machine's load.
/// (With a queue of one event, an overflow could come while a session that was merely not
/// scheduled yet sat waiting for its next item — it then closed with 4003 at once, before
/// the revocation: a flake of loaded machines.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_wins_over_a_full_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = embedded(
        dir.path(),
        &[
            "--socket-send-buffer-bytes",
            "16384",
            "--write-timeout-ms",
            "60000",
        ],
    );
    let mut slow = connect_small_window(&server.ws_url(), &token("c1", Role::Customer), 4096).await;
    // Batches of 200 KiB until the queue overflows behind the blocked write: the 4003 close
    // is pending.
    let mut overflowed = false;
    for batch in 0..50 {
        publish_padded(&server, "user:c1", batch * 25, 25).await;
        let metrics = scrape(&server.url("")).await;
        if sample(&metrics, "switchyard_slow_consumer_closes_total").is_some_and(|n| n > 0.0) {
            overflowed = true;
            break;
        }
    }
    assert!(overflowed, "the queue never filled up");
    let (status, body) = server
        .call("POST", "/api/users/c1/revoke", &admin(), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, code) = drain_to_close(&mut slow).await;
    assert_eq!(code, Some(close::REVOKED));
}
