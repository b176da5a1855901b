//! The HTTP listener under a hostile client: request bodies that never arrive are cut at
//! their deadline, connections are bounded per process and per address, and requests per user,
//! with a clear answer,
//! running out of descriptors is survived, and the operational endpoints can move to an
//! admin listener of their own.

use common::process::ServerProcess;
use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_auth::Issuer;
use switchyard_protocol::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection from the loopback address `from` (127.0.0.x: every one of them is this host).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a 127.0.0.x source address");
    socket.connect(to).await.unwrap()
}

/// Sends the head of a `POST /api/orders` announcing a 60,000-byte body, and `sent` of it.
async fn stalled_post(tcp: &mut TcpStream, addr: SocketAddr, sent: &[u8]) {
    let head = format!(
        "POST /api/orders HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n",
        token("mallory", Role::Customer)
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(sent).await.unwrap();
}

/// A whole `GET path` on a fresh connection from `from`; the answer's head and body.
async fn get_from(from: [u8; 4], addr: SocketAddr, path: &str) -> String {
    let mut tcp = connect_from(from, addr).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("no answer")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickled_bodies_are_cut_while_everyone_else_is_served() {
    const BODY_TIMEOUT_MS: u64 = 1_000;
    let server = TestApp::embedded()
        .with_config(|c| {
            c.serve.limits.body_timeout_ms = BODY_TIMEOUT_MS;
            // Above the handshake's bus timeout (5 s by default), which it must exceed.
            c.serve.limits.request_timeout_ms = 10_000;
        })
        .start()
        .await;
    // Generous: the point is "cut", not "cut to the millisecond".
    let limit = WAIT;
    let mut stalled = Vec::new();
    for _ in 0..30 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        stalled_post(&mut tcp, server.addr, br#"{"items":"#).await;
        stalled.push(tcp);
    }
    // One byte every 100 ms: each arrives well within any per-read timeout, the body never
    // within its deadline.
    let addr = server.addr;
    let trickle = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        stalled_post(&mut tcp, addr, b"").await;
        let (mut rd, mut wr) = tcp.into_split();
        let writer = async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if wr.write_all(b" ").await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let mut answer = Vec::new();
        tokio::select! {
            _ = rd.read_to_end(&mut answer) => answer,
            () = writer => unreachable!(),
        }
    });

    // Everyone else is served meanwhile: REST writes and reads, health, a WebSocket.
    let order = server.create_order("c2", 1, 500).await;
    let c2 = token("c2", Role::Customer);
    let (status, _) = server
        .call("GET", &format!("/api/orders/{order}"), &c2, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(server.call("GET", "/healthz", &c2, None).await.0, 200);
    let mut ws = connect(&server.ws_url(), &c2).await;
    assert_eq!(ws.request(json!({"op":"ping"})).await["type"], "ok");

    for tcp in &mut stalled {
        let (_, answer) = server_closes_within(tcp, limit).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains(r#""error":"request_timeout""#), "{text}");
    }
    let answer = tokio::time::timeout(limit, trickle)
        .await
        .expect("the trickled body was not cut")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 408"), "{answer:?}");
    let metrics = scrape(&server.url("")).await;
    let cut = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"switchyard_http_rejections_total{reason="body_timeout"} "#))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(cut >= Some(31.0), "{cut:?}");
    server.stop().await;
}

/// Issue #19 §2, per user: a user is known once its token is verified, so the bound on one
/// user's requests is the API's (`SWITCHYARD_MAX_REQUESTS_PER_USER`), counted from the head
/// to the answer: a user holding the bound with stalled bodies gets 429 at once for the next
/// request, whatever its token, while other users are served; as its requests end, it is
/// served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_stalled_bodies_are_bounded_while_other_users_are_served() {
    const MAX: usize = 3;
    let server = TestApp::embedded()
        .with_config(|c| {
            c.serve.limits.max_requests_per_user = MAX;
            // The stalled bodies stay in flight for the whole test.
            c.serve.limits.body_timeout_ms = 60_000;
            c.serve.limits.request_timeout_ms = 60_000;
        })
        .start()
        .await;
    // One request more than the bound, each sending its head and then nothing: the one
    // that came last is answered 429 at once, before its body; the others wait for theirs.
    let mut stalled = Vec::new();
    for _ in 0..=MAX {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        stalled_post(&mut tcp, server.addr, b"{").await;
        stalled.push(tcp);
    }
    let (refused, mut answer) = eventually("one of mallory's requests answered", async || {
        stalled.iter().enumerate().find_map(|(i, tcp)| {
            let mut head = [0u8; 64];
            let n = tcp.try_read(&mut head).ok().filter(|n| *n > 0)?;
            Some((i, head[..n].to_vec()))
        })
    })
    .await;
    let mut tcp = stalled.swap_remove(refused);
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains(r#""error":"limit_exceeded""#), "{answer}");
    for tcp in &stalled {
        let mut head = [0u8; 64];
        let read = tcp.try_read(&mut head);
        assert!(
            read.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "a request within the bound was answered: {read:?}"
        );
    }
    // Any other request of the user — whatever its token — too, while the others wait.
    let mallory = Issuer::new(SECRET.as_bytes(), None, None).issue("mallory", Role::Customer, 600);
    let (status, refusal) = server.call("GET", "/api/orders", &mallory, None).await;
    assert_eq!(status, 429, "{refusal}");
    assert_eq!(refusal["error"], "limit_exceeded", "{refusal}");
    assert!(refusal["message"].is_string(), "{refusal}");
    // Everyone else is served.
    let order = server.create_order("c2", 1, 500).await;
    let (status, _) = server
        .call(
            "GET",
            &format!("/api/orders/{order}"),
            &token("c2", Role::Customer),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // Mallory's requests end: mallory is served again.
    drop(stalled);
    eventually("mallory served again", async || {
        server.call("GET", "/api/orders", &mallory, None).await.0 == 200
    })
    .await;
    server.stop().await;
}

/// A `switchyard all` process with `extra` flags, a fresh database and an admin listener.
fn start(dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "all",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--database-url",
        "sqlite://test.db",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(dir, &args, &[])
}

/// The admin listener's address, printed before `listening on`.
fn admin_addr(proc: &ServerProcess) -> SocketAddr {
    proc.stdout
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("admin listening on ")?.parse().ok())
        .expect("the admin listener's address is printed before `listening on`")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bounds_get_an_answer_at_once_and_probes_still_pass() {
    let dir = tempfile::tempdir().unwrap();
    let proc = start(
        dir.path(),
        &[
            "--max-http-connections",
            "8",
            "--max-http-connections-per-ip",
            "4",
            // The held bodies must outlive the checks below on a loaded machine too.
            "--body-timeout-ms",
            "5000",
        ],
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tcp = connect_from([127, 0, 0, 1], proc.addr).await;
        stalled_post(&mut tcp, proc.addr, b"{").await;
        held.push(tcp);
    }
    // A fifth from the same address: 429 at once, before its request is even read.
    let answer = get_from([127, 0, 0, 1], proc.addr, "/api/orders").await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains(r#""error":"limit_exceeded""#), "{answer}");
    // Another address still gets in, up to the process's bound.
    for _ in 0..4 {
        let mut tcp = connect_from([127, 0, 0, 3], proc.addr).await;
        stalled_post(&mut tcp, proc.addr, b"{").await;
        held.push(tcp);
    }
    let answer = get_from([127, 0, 0, 4], proc.addr, "/api/orders").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""error":"unavailable""#), "{answer}");
    // The admin listener counts its own connections: probes still pass.
    let answer = get_from([127, 0, 0, 4], admin_addr(&proc), "/readyz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Once the held bodies are cut, the public listener serves again.
    for tcp in &mut held {
        server_closes_within(tcp, WAIT).await;
    }
    let answer = get_from([127, 0, 0, 4], proc.addr, "/api/orders").await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// Out of descriptors: `accept` fails, the loop backs off instead of spinning, and the
/// process serves again as soon as the descriptors come back (stalled bodies being cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let proc = ServerProcess::start_with_open_files(
        dir.path(),
        &[
            "all",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--database-url",
            "sqlite://test.db",
            "--body-timeout-ms",
            "1000",
            // Every stalled body is one user's: about descriptors here, not that bound.
            "--max-requests-per-user",
            "0",
        ],
        &[],
        &log,
        64,
    );
    let mut stalled = Vec::new();
    for _ in 0..80 {
        let mut tcp = TcpStream::connect(proc.addr).await.unwrap();
        stalled_post(&mut tcp, proc.addr, b"{").await;
        stalled.push(tcp);
    }
    // Some of those could not even be accepted: the process ran out of descriptors.
    eventually("the process ran out of descriptors", async || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("accept failed")
    })
    .await;
    // Every stalled body is cut in turn (the ones waiting in the backlog once accepted), and
    // a client arriving behind them is served.
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        get_from([127, 0, 0, 1], proc.addr, "/healthz"),
    )
    .await
    .expect("never served again");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(stalled);
    let metrics = scrape(&proc.url("")).await;
    assert!(
        sample(&metrics, "switchyard_accept_errors_total") >= Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_takes_the_operational_endpoints_off_the_public_one() {
    let dir = tempfile::tempdir().unwrap();
    let proc = start(dir.path(), &[]);
    let admin_addr = admin_addr(&proc);
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    for path in ["/metrics", "/readyz", "/healthz"] {
        let (status, body) = get(proc.url(path)).await;
        assert_eq!(status, 404, "public {path}: {body}");
        let (status, body) = get(format!("http://{admin_addr}{path}")).await;
        assert_eq!(status, 200, "admin {path}: {body}");
    }
    let (_, metrics) = get(format!("http://{admin_addr}/metrics")).await;
    assert!(metrics.contains("switchyard_payments_total"), "{metrics}");
    // The admin listener serves nothing else.
    for path in ["/api/revenue", "/ws", "/"] {
        let (status, _) = get(format!("http://{admin_addr}{path}")).await;
        assert_eq!(status, 404, "{path}");
    }
    // The public one still serves the API and the WebSocket.
    let (status, _) = proc.call("GET", "/api/orders", &admin(), None).await;
    assert_eq!(status, 200);
    let mut ws = connect(&proc.ws_url(), &token("u1", Role::Customer)).await;
    assert_eq!(ws.request(json!({"op":"ping"})).await["type"], "ok");
}
