//! Authentication happens before the upgrade: every bad token is a 401 with a JSON reason.

mod common;

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
        assert_eq!(body["reason"], reason, "{name}");
    }
    // No token at all.
    let (status, body) = refused(url.as_str().into_client_request().unwrap()).await;
    assert_eq!(
        (status, body["reason"].as_str()),
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
        sub.response
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
    let server = TestServer::start_with(&[
        "--jwt-public-key-file",
        &format!("{dir}/tests/fixtures/es256-public.pem"),
        "--jwt-algorithm",
        "ES256",
        "--jwt-issuer",
        "https://auth.example",
        "--jwt-audience",
        "switchyard",
    ])
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
        refused(with_bearer(&url, &bad_iss)).await.1["reason"],
        "invalid issuer"
    );
    let bad_aud = es(
        json!({"sub":"u1","role":"customer","exp":exp,"iss":"https://auth.example","aud":"other"}),
    );
    assert_eq!(
        refused(with_bearer(&url, &bad_aud)).await.1["reason"],
        "invalid audience"
    );
    // An HS256 token signed with the public key's bytes (the classic confusion attack).
    let confused = sign(
        Header::default(),
        json!({"sub":"u1","role":"admin","exp":exp,"iss":"https://auth.example","aud":"switchyard"}),
        include_bytes!("fixtures/es256-public.pem"),
    );
    assert_eq!(
        refused(with_bearer(&url, &confused)).await.1["reason"],
        "algorithm not accepted"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_and_origins_are_enforced_at_the_handshake() {
    let server = TestServer::start_with(&[
        "--max-connections-per-user",
        "2",
        "--allowed-origins",
        "https://app.example",
    ])
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
    server.stop().await;
}
