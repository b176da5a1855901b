//! Token lifetimes as a hostile client would bend them: an `exp` decades away (or at the end
//! of u64), an `nbf` or `iat` in the future, and a token that should have died with its
//! user's revocation — at the handshake, on `refresh` and on REST, in both modes.

use common::cluster::Cluster;
use common::process::ServerProcess;
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_auth::now_secs;
use switchyard_protocol::{Role, close};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A token signed with the test secret, with exactly these claims.
fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The handshake's refusal (status, reason) for `token`, or `None` when it is accepted.
async fn handshake(url: &str, token: &str) -> Option<(u16, String)> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    match connect_request(req.clone()).await {
        Ok(_) => None,
        Err(_) => {
            let (status, body) = refused(req).await;
            Some((
                status,
                body["message"].as_str().unwrap_or_default().to_owned(),
            ))
        }
    }
}

/// Sleeps into the next whole second: `iat` counts seconds, so a token issued then is
/// strictly younger than a revocation made now.
async fn next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    tokio::time::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 10_000_000,
    ))
    .await;
}

/// A refresh whose `exp` is 2^64−1 used to be accepted and then overflow the session's timer:
/// the task panicked, skipped its cleanup and left a dead member in the hub. Now such a token
/// is refused everywhere (lifetime cap), and a session that ends leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_exp_is_refused_everywhere_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let proc = ServerProcess::start(
        dir.path(),
        &[
            "all",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--database-url",
            "sqlite://test.db",
            "--jwt-max-lifetime-secs",
            "3600",
        ],
        &[],
    );
    let base = proc.url("");
    let gauges = async || {
        let metrics = scrape(&base).await;
        (
            sample(&metrics, "switchyard_subscriptions"),
            sample(&metrics, "switchyard_rooms"),
        )
    };
    let now = now_secs();
    let absurd = signed(json!({"sub":"c1","role":"customer","exp":u64::MAX,"iat":now}));
    let too_long = signed(json!({"sub":"c1","role":"customer","exp":now + 3600 + 600}));
    let at_cap = signed(json!({"sub":"c1","role":"customer","exp":now + 3600}));
    for token in [&absurd, &too_long] {
        assert_eq!(
            handshake(&proc.ws_url(), token).await,
            Some((401, "token lifetime too long".into()))
        );
        let (status, body) = proc.call("GET", "/api/orders", token, None).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (401, Some("token lifetime too long"))
        );
    }

    let order = {
        let (status, body) = proc
            .call(
                "POST",
                "/api/orders",
                &at_cap,
                Some(json!({"items":[{"sku":"milk-1l","qty":1}],"address":"x"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    };
    let mut c1 = connect(&proc.ws_url(), &at_cap).await;
    assert_eq!(c1.subscribe(&format!("order:{order}")).await["type"], "ok");
    assert_eq!(gauges().await, (Some(2.0), Some(2.0)));
    for token in [&absurd, &too_long] {
        let reply = c1.request(json!({"op":"refresh","token":token})).await;
        assert_eq!(reply["code"], "forbidden", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("lifetime"),
            "{reply}"
        );
    }
    // The connection is still served, and a refresh at the cap is fine.
    let reply = c1.request(json!({"op":"refresh","token":at_cap})).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    c1.close().await;
    eventually("every room membership is released", async || {
        gauges().await == (Some(0.0), Some(0.0))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_not_valid_before_its_nbf_nor_issued_in_the_future() {
    // The default leeway, 5 s, applies to both.
    let server = TestServer::start().await;
    let now = now_secs();
    let claims = |extra: Value| {
        let mut claims = json!({"sub":"c1","role":"customer","exp":now + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signed(claims)
    };
    let not_yet = claims(json!({"nbf": now + 3600}));
    let from_the_future = claims(json!({"iat": now + 3600}));
    let refused = [
        (&not_yet, "token not yet valid"),
        (&from_the_future, "token issued in the future"),
    ];
    for (token, reason) in refused {
        assert_eq!(
            handshake(&server.ws_url(), token).await,
            Some((401, reason.to_owned()))
        );
        let (status, body) = server.call("GET", "/api/orders", token, None).await;
        assert_eq!((status, body["message"].as_str()), (401, Some(reason)));
    }
    // Within the leeway: accepted.
    for token in [
        claims(json!({"nbf": now + 2})),
        claims(json!({"iat": now + 2})),
    ] {
        assert_eq!(handshake(&server.ws_url(), &token).await, None);
        assert_eq!(server.call("GET", "/api/orders", &token, None).await.0, 200);
    }
    // And on refresh.
    let mut c1 = connect(&server.ws_url(), &token("c1", Role::Customer)).await;
    for (token, reason) in refused {
        let reply = c1.request(json!({"op":"refresh","token":token})).await;
        assert_eq!(reply["code"], "forbidden", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(reason),
            "{reply}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_users_old_tokens_are_refused_at_the_handshake_on_refresh_and_on_rest() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let old = token("c1", Role::Customer);
    let bystander = token("c2", Role::Customer);
    let mut live = connect(&url, &old).await;
    assert_eq!(server.call("GET", "/api/orders", &old, None).await.0, 200);
    let (status, body) = server
        .call("POST", "/api/users/c1/revoke", &admin(), None)
        .await;
    assert_eq!((status, &body["revoked"]), (200, &json!(true)), "{body}");
    let frame = live.closed().await.expect("close frame");
    assert_eq!(u16::from(frame.code), close::REVOKED);

    // The same token reconnects no more, and REST refuses it too.
    assert_eq!(
        handshake(&url, &old).await,
        Some((401, "token revoked".into()))
    );
    let (status, body) = server.call("GET", "/api/orders", &old, None).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("token revoked"))
    );
    // Other users are untouched.
    assert_eq!(
        server.call("GET", "/api/orders", &bystander, None).await.0,
        200
    );

    // A token issued after the revocation works, and cannot be refreshed with the old one.
    next_second().await;
    let fresh = token("c1", Role::Customer);
    assert_eq!(server.call("GET", "/api/orders", &fresh, None).await.0, 200);
    let mut again = connect(&url, &fresh).await;
    let reply = again.request(json!({"op":"refresh","token":old})).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("token revoked"),
        "{reply}"
    );
    assert_eq!(again.request(json!({"op":"ping"})).await["type"], "ok");
    server.stop().await;
}

/// Distributed: the API process records the revocation in Redis and announces it; the
/// gateway refuses the old token at once, and a gateway started afterwards reads the record
/// back from Redis. The record lives as long as the longest token lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_holds_across_processes_through_redis() {
    let cluster = Cluster::up_with(1, 1, &[("JWT_MAX_LIFETIME_SECS", "7200")]);
    let (gateway, api) = (&cluster.gateways[0], &cluster.apis[0]);
    let old = token("c1", Role::Customer);
    let mut live = connect(&cluster.ws(gateway), &old).await;
    let (status, body) = cluster
        .call(api, "POST", "/api/users/c1/revoke", &admin(), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let at = body["revoked_at"].as_u64().unwrap();
    let frame = live.closed().await.expect("close frame");
    assert_eq!(u16::from(frame.code), close::REVOKED);
    assert_eq!(
        handshake(&cluster.ws(gateway), &old).await,
        Some((401, "token revoked".into()))
    );
    let (status, _) = cluster.call(api, "GET", "/api/orders", &old, None).await;
    assert_eq!(status, 401);

    // The record in Redis: the user and the moment, kept until every token it refuses has
    // expired (the longest lifetime plus the leeway), and no longer.
    let records = cluster.redis_cli(&["zrange", "sy:revoked", "0", "-1", "withscores"]);
    let mut lines = records.lines();
    assert_eq!(lines.next(), Some(format!("c1 {at}").as_str()), "{records}");
    let until: u64 = lines.next().unwrap().parse().unwrap();
    assert_eq!(until, at + 7200 + 5);
    let ttl: u64 = cluster
        .redis_cli(&["ttl", "sy:revoked"])
        .trim()
        .parse()
        .unwrap();
    assert!((7000..=7205).contains(&ttl), "{ttl}");

    // A gateway that was not running when the revocation was announced refuses the token too.
    let dir = tempfile::tempdir().unwrap();
    let redis_url = format!("redis://127.0.0.1:{}", cluster.redis_port);
    let api_url = format!("http://{api}");
    let late = ServerProcess::start(
        dir.path(),
        &["gateway", "--listen", "127.0.0.1:0"],
        &[
            ("REDIS_URL", &redis_url),
            ("JWT_SECRET", SECRET),
            ("JWT_MAX_LIFETIME_SECS", "7200"),
            ("SWITCHYARD_API_URL", &api_url),
        ],
    );
    assert_eq!(
        handshake(&late.ws_url(), &old).await,
        Some((401, "token revoked".into()))
    );
    // A token issued after it works everywhere.
    next_second().await;
    let fresh = token("c1", Role::Customer);
    for url in [cluster.ws(gateway), late.ws_url()] {
        assert_eq!(handshake(&url, &fresh).await, None);
    }
    assert_eq!(
        cluster
            .call(api, "GET", "/api/orders", &fresh, None)
            .await
            .0,
        200
    );
}
