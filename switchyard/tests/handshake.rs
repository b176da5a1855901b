//! Authentication happens before the upgrade: every bad token is a 401 with a JSON reason.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use switchyard_auth::now_secs;
use switchyard_protocol::Role;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn with_bearer(
    url: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    req
}

fn sign(header: Header, claims: serde_json::Value, key: &[u8]) -> String {
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let exp = now_secs() + 600;
    let none_token = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(json!({"sub":"u1","role":"admin","exp":exp}).to_string())
    );
    let rs_key = EncodingKey::from_rsa_pem(include_bytes!("fixtures/rs256-private.pem")).unwrap();
    let rs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub":"u1","role":"admin","exp":exp}),
        &rs_key,
    )
    .unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed", "not-a-jwt".into(), "malformed token"),
        (
            "expired",
            sign(
                Header::default(),
                json!({"sub":"u1","role":"customer","exp":now_secs() - 600}),
                SECRET.as_bytes(),
            ),
            "token expired",
        ),
        (
            "wrongly signed",
            sign(
                Header::default(),
                json!({"sub":"u1","role":"customer","exp":exp}),
                b"some-other-secret-entirely-0000",
            ),
            "invalid signature",
        ),
        ("alg none", none_token, "algorithm not accepted"),
        (
            "HS384",
            sign(
                Header::new(Algorithm::HS384),
                json!({"sub":"u1","role":"customer","exp":exp}),
                SECRET.as_bytes(),
            ),
            "algorithm not accepted",
        ),
        (
            "RS256 against an HS256 server",
            rs256,
            "algorithm not accepted",
        ),
        (
            "role-less",
            sign(
                Header::default(),
                json!({"sub":"u1","exp":exp}),
                SECRET.as_bytes(),
            ),
            "missing claim: role",
        ),
        (
            "unknown role",
            sign(
                Header::default(),
                json!({"sub":"u1","role":"root","exp":exp}),
                SECRET.as_bytes(),
            ),
            "invalid claim: role",
        ),
        (
            "no exp",
            sign(
                Header::default(),
                json!({"sub":"u1","role":"customer"}),
                SECRET.as_bytes(),
            ),
            "missing claim: exp",
        ),
        (
            "sub outside the id grammar",
            sign(
                Header::default(),
                json!({"sub":"u 1*","role":"customer","exp":exp}),
                SECRET.as_bytes(),
            ),
            "invalid claim: sub",
        ),
        (
            "service role",
            token("svc", Role::Service),
            "service tokens cannot open a WebSocket",
        ),
    ];
    for (name, token, reason) in cases {
        let (status, body) = refused(with_bearer(&url, &token)).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"], "unauthorized", "{name}");
        assert_eq!(body["message"], reason, "{name}");
        // The field's old name, kept for one release.
        assert_eq!(body["reason"], reason, "{name}");
    }
    // No token at all.
    let (status, body) = refused(url.as_str().into_client_request().unwrap()).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("missing token"))
    );
    // The same bad token through the other two sources.
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("switchyard.v1, bearer.not-a-jwt"),
    );
    assert_eq!(refused(req).await.0, 401);
    let req = format!("{url}?access_token=not-a-jwt")
        .into_client_request()
        .unwrap();
    assert_eq!(refused(req).await.0, 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_token_sources_work() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let t = token("u1", Role::Customer);

    let header = connect(&url, &t).await;
    assert_eq!(header.welcome["sub"], "u1");
    assert_eq!(header.welcome["role"], "customer");
    assert_eq!(header.welcome["rooms"], json!(["user:u1"]));
    assert!(
        header.welcome["conn"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );

    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("switchyard.v1, bearer.{t}")).unwrap(),
    );
    let sub = connect_request(req).await.unwrap();
    assert_eq!(
        sub.response()
            .headers()
            .get("sec-websocket-protocol")
            .unwrap(),
        "switchyard.v1",
        "the server selects switchyard.v1, never the bearer entry"
    );
    assert_eq!(sub.welcome["sub"], "u1");

    let req = format!("{url}?access_token={t}")
        .into_client_request()
        .unwrap();
    let query = connect_request(req).await.unwrap();
    assert_eq!(query.welcome["sub"], "u1");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_audience_and_es256_keys() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let server = TestApp::embedded()
        .with_config(|c| {
            let jwt = &mut c.serve.jwt;
            jwt.jwt_public_key_file = Some(format!("{dir}/tests/fixtures/es256-public.pem").into());
            jwt.jwt_algorithm = "ES256".into();
            jwt.jwt_issuer = Some("https://auth.example".into());
            jwt.jwt_audience = Some("switchyard".into());
        })
        .start()
        .await;
    let url = server.ws_url();
    let key = EncodingKey::from_ec_pem(include_bytes!("fixtures/es256-private.pk8.pem")).unwrap();
    let es = |claims: serde_json::Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
    };
    let exp = now_secs() + 600;
    let good = es(
        json!({"sub":"u1","role":"customer","exp":exp,"iss":"https://auth.example","aud":"switchyard"}),
    );
    let client = connect(&url, &good).await;
    assert_eq!(client.welcome["sub"], "u1");

    let bad_iss = es(
        json!({"sub":"u1","role":"customer","exp":exp,"iss":"https://evil.example","aud":"switchyard"}),
    );
    assert_eq!(
        refused(with_bearer(&url, &bad_iss)).await.1["message"],
        "invalid issuer"
    );
    let bad_aud = es(
        json!({"sub":"u1","role":"customer","exp":exp,"iss":"https://auth.example","aud":"other"}),
    );
    assert_eq!(
        refused(with_bearer(&url, &bad_aud)).await.1["message"],
        "invalid audience"
    );
    // An HS256 token signed with the public key's bytes (the classic confusion attack).
    let confused = sign(
        Header::default(),
        json!({"sub":"u1","role":"admin","exp":exp,"iss":"https://auth.example","aud":"switchyard"}),
        include_bytes!("fixtures/es256-public.pem"),
    );
    assert_eq!(
        refused(with_bearer(&url, &confused)).await.1["message"],
        "algorithm not accepted"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_and_origins_are_enforced_at_the_handshake() {
    let server = TestApp::embedded()
        .with_config(|c| {
            c.serve.limits.max_connections_per_user = 2;
            c.serve.limits.allowed_origins = vec!["https://app.example".into()];
        })
        .start()
        .await;
    let url = server.ws_url();
    let t = token("u1", Role::Customer);
    let _a = connect(&url, &t).await;
    let _b = connect(&url, &t).await;
    let (status, body) = refused(with_bearer(&url, &t)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("limit_exceeded"))
    );
    // Another user is not affected.
    let _c = connect(&url, &token("u2", Role::Customer)).await;

    let mut req = with_bearer(&url, &token("u3", Role::Customer));
    req.headers_mut()
        .insert("origin", HeaderValue::from_static("https://evil.example"));
    assert_eq!(refused(req).await.0, 403);
    let mut req = with_bearer(&url, &token("u3", Role::Customer));
    req.headers_mut()
        .insert("origin", HeaderValue::from_static("https://app.example"));
    assert!(connect_request(req).await.is_ok());

    // An Origin that is not UTF-8, or a second Origin after the allowed one, is refused
    // too: neither may pass as "no Origin" or as the allowed one.
    for origins in [
        &b"Origin: https://app.example\xff\r\n"[..],
        b"Origin: https://\xc3\x28.example\r\n",
        b"Origin: https://app.example\r\nOrigin: https://evil.example\r\n",
        b"Origin: https://evil.example\r\nOrigin: https://app.example\r\n",
    ] {
        let answer = raw_upgrade_with(server.addr, &token("u4", Role::Customer), origins).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 403"), "{origins:?}: {text}");
        assert!(text.contains("origin not allowed"), "{text}");
    }
    server.stop().await;
}

/// Sends a WebSocket upgrade with `extra` header lines (raw bytes: no client library sends
/// a non-UTF-8 header) and returns the server's answer, up to the end of its head.
async fn raw_upgrade_with(addr: std::net::SocketAddr, token: &str, extra: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n"
    )
    .into_bytes();
    request.extend_from_slice(extra);
    request.extend_from_slice(b"\r\n");
    tcp.write_all(&request).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    answer.truncate(n);
    answer
}

/// Slowloris: connections that never complete a request are closed at the handshake timeout,
/// and the server keeps serving everyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_the_handshake_are_closed() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    // Long enough that a client of this test sending its whole head at once is never cut by
    // a loaded machine's scheduling; short enough for the test to wait it out a few times.
    const TIMEOUT_MS: u64 = 1_000;
    let server = TestApp::embedded()
        .with_config(|c| c.serve.limits.handshake_timeout_ms = TIMEOUT_MS)
        .start()
        .await;
    // Generous: the point is "closed", not "closed on time to the millisecond".
    let limit = WAIT;

    // Connects and sends nothing at all.
    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Sends half a request line, then half a header block, one byte at a time, forever: the
    // deadline is for the whole head, not reset by each byte.
    let addr = server.addr;
    let trickle = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        wr.write_all(b"GET /ws HT").await.unwrap();
        let writer = async move {
            for byte in b"TP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Slow: "
                .iter()
                .cycle()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Once the server has closed, writes fail; the read below notices first.
                let _ = wr.write_all(&[*byte]).await;
            }
        };
        let mut buf = [0u8; 256];
        tokio::select! {
            _ = rd.read(&mut buf) => {}
            () = writer => unreachable!("the byte cycle never ends"),
        }
    });

    // Everyone else is served meanwhile: REST, a new WebSocket, ops on it.
    let (status, _) = server.call("GET", "/healthz", &admin(), None).await;
    assert_eq!(status, 200);
    let mut ws = connect(&server.ws_url(), &token("u1", Role::Customer)).await;
    assert_eq!(ws.ping().await["type"], "ok");

    for tcp in &mut silent {
        let (_, received) = server_closes_within(tcp, limit).await;
        // Closed without a response, or with at most a 408: never a 101 or a 200.
        let text = String::from_utf8_lossy(&received);
        assert!(
            received.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    tokio::time::timeout(limit, trickle)
        .await
        .expect("the trickling client was not closed")
        .unwrap();

    // An upgraded WebSocket is past its handshake: it outlives the timeout many times over.
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS * 3)).await;
    assert_eq!(ws.ping().await["type"], "ok");
    // And a complete handshake sent right away is served as before.
    let mut tcp = raw_upgrade(server.addr, &token("u2", Role::Customer)).await;
    let mut head = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut head)
        .await
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    server.stop().await;
}

/// A kept-alive HTTP connection waiting for its next request is bounded the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_at_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Long enough that a client of this test sending its whole head at once is never cut by
    // a loaded machine's scheduling; short enough for the test to wait it out a few times.
    const TIMEOUT_MS: u64 = 1_000;
    let server = TestApp::embedded()
        .with_config(|c| c.serve.limits.handshake_timeout_ms = TIMEOUT_MS)
        .start()
        .await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    for _ in 0..2 {
        // Two requests on one connection, each answered: keep-alive works.
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let (_, rest) = server_closes_within(&mut tcp, WAIT).await;
    assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"));
    server.stop().await;
}
