//! The real binary: one-command start, restarts, signals, heartbeats, expiry, slow clients.

use common::process::{self, ServerProcess as Proc};
use common::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use switchyard_protocol::{Role, close};

fn token_cmd(dir: &Path, sub: &str, role: &str) -> String {
    let out = process::switchyard()
        .args(["token", "--sub", sub, "--role", role])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_needs_nothing_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // No JWT_SECRET: the embedded mode creates its secret and prints usable tokens.
    let mut first = Proc::start(dir.path(), &["--listen", "127.0.0.1:0"], &[]);
    assert!(dir.path().join("switchyard.secret").exists());
    assert!(dir.path().join("switchyard.db").exists());
    let _ = &first.stdout;
    let customer = token_cmd(dir.path(), "c1", "customer");
    let admin = token_cmd(dir.path(), "admin", "admin");
    let resp = http
        .post(first.url("/api/orders"))
        .bearer_auth(&customer)
        .json(&json!({"items":[{"sku":"milk-1l","qty":2,"unit_price_paise":6500}],"address":"12 MG Road"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let order: serde_json::Value = resp.json().await.unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    let resp = http
        .post(first.url(&format!("/api/orders/{id}/payment")))
        .bearer_auth(&customer)
        .header("idempotency-key", "restart-1")
        .json(&json!({"amount_paise":13000}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    first.signal("-TERM");
    assert!(first.wait(Duration::from_secs(10)).success());

    let second = Proc::start(dir.path(), &["--listen", "127.0.0.1:0"], &[]);
    // Tokens made before the restart still verify: the secret persisted.
    let resp = http
        .get(second.url(&format!("/api/orders/{id}")))
        .bearer_auth(&customer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let again: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(again["paid"], true);
    assert_eq!(again["total_paise"], 13000);
    let revenue: serde_json::Value = http
        .get(second.url("/api/revenue"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revenue["total_paise"], 13000);
    assert_eq!(revenue["paid_orders"], 1);
    // The idempotency key survived too: a retry after the restart counts nothing.
    let resp = http
        .post(second.url(&format!("/api/orders/{id}/payment")))
        .bearer_auth(&customer)
        .header("idempotency-key", "restart-1")
        .json(&json!({"amount_paise":13000}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers().get("idempotent-replayed").unwrap(), "true");
    let mut ws = connect(&format!("ws://{}/ws", second.addr), &customer).await;
    let snap = ws.subscribe(&format!("order:{id}")).await;
    assert_eq!(snap["snapshot"]["paid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_socket_with_4000_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Proc::start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("JWT_SECRET", SECRET)],
    );
    let url = format!("ws://{}/ws", proc.addr);
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(connect(&url, &token(&format!("u{i}"), Role::Customer)).await);
    }
    proc.signal("-TERM");
    for c in &mut clients {
        let frame = c.closed().await.expect("a close frame");
        assert_eq!(u16::from(frame.code), close::SHUTDOWN);
    }
    assert!(proc.wait(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_roles_refuse_to_start_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    for role in ["gateway", "api"] {
        let out = process::switchyard()
            .args([role, "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("JWT_SECRET"), "{err}");
    }
    assert!(!dir.path().join("switchyard.secret").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_for_idleness() {
    let server = TestApp::embedded()
        .with_config(|c| {
            // An idle timeout well above a loaded machine's hiccups: the client below that
            // stays must never look idle because this test process was not scheduled.
            c.serve.limits.heartbeat_interval_ms = 100;
            c.serve.limits.idle_timeout_ms = 1_500;
        })
        .start()
        .await;
    // A raw TCP client that completes the upgrade and then never sends another byte.
    let mut tcp = raw_upgrade(server.addr, &token("u1", Role::Customer)).await;
    let received = read_until_closed(&mut tcp).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // Pings (0x89) came first, then a close frame (0x88) with code 4002 (0x0FA2).
    let close = close_frame_at(&received, 4002);
    let ping = received.iter().position(|b| *b == 0x89);
    assert!(close.is_some(), "no 4002 close frame in {received:?}");
    assert!(
        ping.is_some_and(|p| p < close.unwrap()),
        "no ping before the close"
    );
    // A client that answers pings stays, for longer than the idle timeout.
    let mut alive = connect(&server.ws_url(), &token("u2", Role::Customer)).await;
    for _ in 0..25 {
        let r = alive.ping().await;
        assert_eq!(r["type"], "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_the_connection_with_4001() {
    let server = TestApp::embedded()
        .with_config(|c| c.serve.jwt.jwt_leeway_secs = 0)
        .start()
        .await;
    // Four seconds: time enough to connect on a loaded machine before it expires.
    let t =
        switchyard_auth::Issuer::new(SECRET.as_bytes(), None, None).issue("u1", Role::Customer, 4);
    let mut c = connect(&server.ws_url(), &t).await;
    let frame = c.closed().await.expect("close frame");
    assert_eq!(u16::from(frame.code), 4001);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_extends_a_connection_past_its_first_token() {
    let server = TestApp::embedded()
        .with_config(|c| c.serve.jwt.jwt_leeway_secs = 0)
        .start()
        .await;
    let issuer = switchyard_auth::Issuer::new(SECRET.as_bytes(), None, None);
    // Four seconds: time enough to connect and refresh on a loaded machine before it expires.
    let mut c = connect(&server.ws_url(), &issuer.issue("u1", Role::Customer, 4)).await;
    // A bad token is refused in-band; the connection stays.
    let r = c
        .request(json!({"op":"refresh","token":"not.a.token"}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["error"].as_str()),
        (Some("error"), Some("forbidden")),
        "{r}"
    );
    let r = c
        .request(json!({"op":"refresh","token": issuer.issue("u1", Role::Customer, 3600)}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    // Past the first token's exp, still open.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(c.ping().await["type"], "ok");

    // A refresh naming someone else ends the connection: do not reconnect (4500).
    let r = c
        .request(json!({"op":"refresh","token": issuer.issue("u2", Role::Customer, 3600)}))
        .await;
    assert_eq!(r["error"], "forbidden", "{r}");
    let frame = c.closed().await.expect("close frame");
    assert_eq!(u16::from(frame.code), close::POLICY_VIOLATION);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_user_closes_each_of_its_connections_with_4501() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut a = connect(&url, &token("c1", Role::Customer)).await;
    let mut b = connect(&url, &token("c1", Role::Customer)).await;
    let mut other = connect(&url, &token("c2", Role::Customer)).await;
    let (status, body) = server
        .call(
            "POST",
            "/api/users/c1/revoke",
            &token("c2", Role::Customer),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = server
        .call("POST", "/api/users/c1/revoke", &admin(), None)
        .await;
    assert_eq!((status, &body["revoked"]), (200, &json!(true)), "{body}");
    for client in [&mut a, &mut b] {
        let frame = client.closed().await.expect("close frame");
        assert_eq!(u16::from(frame.code), close::REVOKED);
        assert!(!close::should_reconnect(close::REVOKED));
    }
    assert_eq!(other.ping().await["type"], "ok");
    let (status, _) = server
        .call("POST", "/api/users/c*1/revoke", &admin(), None)
        .await;
    assert_eq!(status, 422);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_before_a_crash_are_published_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let customer = token("c1", Role::Customer);
    // The fail point makes the process die "between commit and publish": nothing is relayed.
    let crashed = Proc::start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[
            ("JWT_SECRET", SECRET),
            ("SWITCHYARD_FAILPOINT", "relay-off"),
        ],
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        let resp = http
            .post(crashed.url("/api/orders"))
            .bearer_auth(&customer)
            .json(&json!({"items":[{"sku":"milk-1l","qty":1}],"address":"x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let order: serde_json::Value = resp.json().await.unwrap();
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    drop(crashed); // SIGKILL

    let restarted = Proc::start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("JWT_SECRET", SECRET)],
    );
    let mut c = connect(&format!("ws://{}/ws", restarted.addr), &customer).await;
    // The relay publishes the three committed order.created events on start; read them back
    // from the room's history from the beginning of this epoch.
    let position = c.subscribe_until("user:c1", 3).await["position"].clone();
    assert_eq!(position["offset"].as_u64(), Some(3), "{position}");
    // A new connection recovering its user room from offset 0 (this one may already have
    // carried those events, and a connection never carries an offset twice).
    let from_start = format!("{}:0", position["epoch"].as_str().unwrap());
    let url = format!("ws://{}/ws?since={from_start}", restarted.addr);
    let mut again = connect(&url, &customer).await;
    assert_eq!(again.welcome["recovered"], true, "{}", again.welcome);
    for id in &ids {
        let e = again.recv().await;
        assert_eq!(e["event"], "order.created");
        assert_eq!(e["data"]["id"], id.as_str());
    }
}

/// On SIGTERM the process answers `/readyz` with 503 before it closes any socket, closes its
/// sockets with 4000 at moments spread over the window, and exits. Checked without timing
/// assumptions, so a loaded machine neither fails nor passes it by luck: readiness by
/// causality (no probe sent after the first close arrived was answered 200), the spread by
/// a window long enough (4 s) that the closes cannot arrive bunched up unless the machine
/// stalls for seconds. The exact moments are checked in paused time
/// (`gateway::session::tests::the_drain_closes_each_connection_at_its_own_moment_within_the_spread`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_turns_unready_first_then_closes_spread_out_then_exits() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Proc::start(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--drain-spread-ms",
            "4000",
            "--drain-timeout-ms",
            "15000",
        ],
        &[("JWT_SECRET", SECRET)],
    );
    let url = format!("ws://{}/ws", proc.addr);
    let mut clients = Vec::new();
    for i in 0..12 {
        clients.push(connect(&url, &token(&format!("u{i}"), Role::Customer)).await);
    }
    // Probes /readyz until it says 503: when each probe was sent and what it answered.
    let readyz = proc.url("/readyz");
    let poller = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut probes = Vec::new();
        loop {
            let sent = Instant::now();
            if let Ok(r) = http.get(&readyz).send().await {
                probes.push((sent, r.status().as_u16()));
                if r.status() == 503 {
                    return probes;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    proc.signal("-TERM");
    let closes = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
        let frame = c.closed().await.expect("a close frame");
        (frame.code, Instant::now())
    }))
    .await;
    let probes = tokio::time::timeout(WAIT, poller)
        .await
        .expect("/readyz never answered 503")
        .unwrap();
    for (code, _) in &closes {
        assert_eq!(u16::from(*code), close::SHUTDOWN);
    }
    let first = closes.iter().map(|(_, t)| *t).min().unwrap();
    let last = closes.iter().map(|(_, t)| *t).max().unwrap();
    let ready_after_a_close = probes
        .iter()
        .filter(|(sent, status)| *sent > first && *status == 200)
        .count();
    assert_eq!(
        ready_after_a_close, 0,
        "/readyz still answered 200 after a socket was closed"
    );
    assert!(
        last - first >= Duration::from_secs(1),
        "closes not spread out: {:?} from the first to the last",
        last - first
    );
    assert!(proc.wait(WAIT).success(), "exits (cleanly) after the drain");
}

/// On SIGTERM, an idle keep-alive connection is closed at once, and connections stuck in a
/// request (half a head, half a body) are dropped at the drain deadline: none of them holds
/// the process open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_http_connections_do_not_hold_the_process_past_the_drain_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Proc::start(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            // Long enough that only the drain can end these connections.
            "--handshake-timeout-ms",
            "60000",
            "--drain-timeout-ms",
            "1500",
            "--drain-spread-ms",
            "100",
        ],
        &[("JWT_SECRET", SECRET)],
    );
    let mut idle = TcpStream::connect(proc.addr).await.unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", proc.addr).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut half_head = TcpStream::connect(proc.addr).await.unwrap();
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut half_body = TcpStream::connect(proc.addr).await.unwrap();
    half_body
        .write_all(
            format!(
                "POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"items\"",
                token("c1", Role::Customer)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Let the server read the head of the stuck request before the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = std::time::Instant::now();
    proc.signal("-TERM");
    // The idle one is closed as soon as the listener stops (there are no WebSockets to
    // drain first), well before the deadline.
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .expect("idle keep-alive connection left open")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without another response");
    assert!(proc.wait(WAIT).success());
    for stuck in [&mut half_head, &mut half_body] {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, stuck.read_to_end(&mut rest))
            .await
            .expect("closed when the process exited");
    }
    // Generous bound: two drain deadlines (sockets, then HTTP) plus start-up noise.
    assert!(signalled.elapsed() < WAIT, "{:?}", signalled.elapsed());
}

/// Tokens, from any source, accepted or refused, never appear in stdout or stderr — even at
/// RUST_LOG=trace, in either log format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_never_logged_even_at_trace_level() {
    use jsonwebtoken::{EncodingKey, Header};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let sign = |claims: serde_json::Value, key: &[u8]| {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(key)).unwrap()
    };
    let now = switchyard_auth::now_secs();
    for format in ["human", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let mut proc = Proc::start_logging_to(
            dir.path(),
            &["--listen", "127.0.0.1:0", "--log-format", format],
            &[("JWT_SECRET", SECRET), ("RUST_LOG", "trace")],
            &log,
        );
        let url = format!("ws://{}/ws", proc.addr);
        let in_header = token("h1", Role::Customer);
        let in_protocol = token("s1", Role::Customer);
        let in_query = token("q1", Role::Customer);
        let in_rest = token("r1", Role::Customer);
        let wrongly_signed = sign(
            json!({"sub":"q2","role":"customer","exp":now + 600}),
            b"some-other-secret-entirely-0000",
        );
        let expired = sign(
            json!({"sub":"q3","role":"customer","exp":now - 600}),
            SECRET.as_bytes(),
        );
        let secrets = [
            &in_header,
            &in_protocol,
            &in_query,
            &in_rest,
            &wrongly_signed,
            &expired,
        ];

        let mut clients = vec![connect(&url, &in_header).await];
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&format!("switchyard.v1, bearer.{in_protocol}")).unwrap(),
        );
        clients.push(connect_request(req).await.unwrap());
        let req = format!("{url}?access_token={in_query}")
            .into_client_request()
            .unwrap();
        clients.push(connect_request(req).await.unwrap());
        for c in &mut clients {
            assert_eq!(c.ping().await["type"], "ok");
            assert_eq!(c.subscribe("admin:revenue").await["type"], "error");
        }
        for bad in [&wrongly_signed, &expired] {
            let req = format!("{url}?access_token={bad}")
                .into_client_request()
                .unwrap();
            assert_eq!(refused(req).await.0, 401);
            let mut req = url.as_str().into_client_request().unwrap();
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {bad}")).unwrap(),
            );
            assert_eq!(refused(req).await.0, 401);
            let mut req = url.as_str().into_client_request().unwrap();
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&format!("switchyard.v1, bearer.{bad}")).unwrap(),
            );
            assert_eq!(refused(req).await.0, 401);
        }
        // Plain HTTP with a token in the query: not an upgrade, and an unknown path.
        let http = reqwest::Client::new();
        for path in [
            format!("/ws?access_token={in_query}"),
            format!("/nowhere?access_token={wrongly_signed}"),
        ] {
            let status = http.get(proc.url(&path)).send().await.unwrap().status();
            assert!(status.is_client_error(), "{path}: {status}");
        }
        // REST with the Authorization header, accepted and refused.
        let resp = http
            .post(proc.url("/api/orders"))
            .bearer_auth(&in_rest)
            .json(&json!({"items":[{"sku":"milk-1l","qty":1}],"address":"x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let resp = http
            .get(proc.url("/api/revenue"))
            .bearer_auth(&expired)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        for mut c in clients {
            let _ = c.socket.close().await;
        }
        proc.signal("-TERM");
        assert!(proc.wait(WAIT).success());

        let mut output = std::fs::read_to_string(&log).unwrap();
        output.push_str(&proc.stdout.lock().unwrap().join("\n"));
        // Not vacuous: trace-level logs were written, in the format asked for.
        let marker = if format == "json" {
            r#""level":"TRACE""#
        } else {
            "TRACE"
        };
        assert!(output.contains(marker), "no trace logs in {format} format");
        // One info line per connection open and close, the close with its duration and code.
        let (duration, code) = if format == "json" {
            (r#""duration_ms":"#, r#""close_code":"#)
        } else {
            ("duration_ms=", "close_code=")
        };
        let closes: Vec<&str> = output
            .lines()
            .filter(|l| l.contains("connection closed"))
            .collect();
        assert_eq!(closes.len(), 3, "{format}: {closes:?}");
        assert!(
            closes
                .iter()
                .all(|l| l.contains(duration) && l.contains(code)),
            "{format}: {closes:?}"
        );
        assert_eq!(
            output
                .lines()
                .filter(|l| l.contains("connection opened"))
                .count(),
            3,
            "{format}"
        );
        for t in secrets {
            let mut parts = t.split('.');
            let (_header, payload, signature) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            for secret in [t.as_str(), payload, signature] {
                if let Some(at) = output.find(secret) {
                    let from = output[..at].rfind('\n').map_or(0, |i| i + 1);
                    let line = output[from..].lines().next().unwrap_or_default();
                    panic!("a token part was logged ({format}): {line}");
                }
            }
        }
        assert!(!output.contains("access_token="), "query string logged");
        assert!(!output.contains(SECRET), "the JWT secret was logged");
    }
}
