//! The app a process builds (`server::build`), its router driven in-process with
//! `tower::ServiceExt::oneshot`: handler and layer logic in milliseconds, no socket. What
//! needs a socket (deadlines, connection bounds, WebSockets) is tested over one elsewhere.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use common::{SECRET, TestApp, admin, token};
use serde_json::{Value, json};
use switchyard_auth::Issuer;
use switchyard_protocol::Role;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// One request through the router; the status and the JSON body (`null` when not JSON).
async fn call(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn get(path: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

fn post(path: &str, token: &str, body: Body) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

/// Sends `request` with a body whose bytes never come, and returns once its handler is
/// reading that body (past every check in front of it): the request stays in flight until
/// its task is aborted. Fails if the request is answered instead.
async fn in_flight(router: &Router, request: impl FnOnce(Body) -> Request<Body>) -> JoinHandle<()> {
    let (reading, read) = tokio::sync::oneshot::channel();
    let body = futures_util::stream::once(async move {
        let _ = reading.send(());
        std::future::pending::<Result<Bytes, std::io::Error>>().await
    });
    let request = request(Body::from_stream(body));
    let router = router.clone();
    let task = tokio::spawn(async move {
        let (status, body) = call(&router, request).await;
        panic!("answered {status} {body} instead of waiting for its body");
    });
    read.await
        .expect("the request was answered before its body was read");
    task
}

#[tokio::test]
async fn a_users_requests_in_flight_are_bounded_per_user_not_per_process() {
    let built = TestApp::embedded()
        .with_config(|c| c.serve.limits.max_requests_per_user = 2)
        .build()
        .await;
    let router = built.app.router.clone();
    let c1 = token("c1", Role::Customer);
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(in_flight(&router, |body| post("/api/orders", &c1, body)).await);
    }
    let (status, refusal) = call(&router, get("/api/orders", &c1)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refusal}");
    assert_eq!(refusal["error"], "limit_exceeded", "{refusal}");
    assert!(refusal["message"].is_string(), "{refusal}");
    // Whatever token c1 presents: the bound is the user's.
    let other_token = Issuer::new(SECRET.as_bytes(), None, None).issue("c1", Role::Customer, 600);
    assert_ne!(other_token, c1);
    let (status, _) = call(&router, get("/api/orders", &other_token)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Other users, and callers without a valid token (their answer is 401), are not held up.
    let (status, _) = call(&router, get("/api/orders", &token("c2", Role::Customer))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&router, get("/api/orders", "not-a-token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    // Service tokens are not users: never bound here (a service may not list orders: 403).
    let service = token("svc", Role::Service);
    for _ in 0..3 {
        in_flight(&router, |body| post("/api/publish", &service, body)).await;
    }
    let (status, _) = call(&router, get("/api/orders", &service)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // c1's requests end: c1 is served again.
    for request in stalled {
        request.abort();
    }
    common::eventually("c1 served again", async || {
        call(&router, get("/api/orders", &c1)).await.0 == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_page_of_orders_is_asked_for_with_valid_bounds() {
    let built = TestApp::embedded().build().await;
    let router = &built.app.router;
    for (path, status, code) in [
        ("/api/orders?limit=0", 422, "invalid"),
        ("/api/orders?limit=201", 422, "invalid"),
        ("/api/orders?after=nope", 422, "invalid"),
        ("/api/orders?limit=two", 400, "bad_request"),
    ] {
        let (got, body) = call(router, get(path, &admin())).await;
        assert_eq!(
            (got.as_u16(), body["error"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let (status, page) = call(router, get("/api/orders?limit=200", &admin())).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page, json!({"orders": [], "next_after": null}));
    let (status, _) = call(router, get("/api/orders", &token("svc", Role::Service))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// With an admin listener, the public router no longer serves the operational endpoints;
/// without one, it does. Nothing is bound: the routes are decided when the app is built.
#[tokio::test]
async fn the_operational_endpoints_are_routed_where_the_settings_say() {
    let public_only = TestApp::embedded().build().await;
    let with_admin = TestApp::embedded()
        .with_config(|c| c.serve.admin_listen = Some("127.0.0.1:0".parse().unwrap()))
        .build()
        .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let request = || Request::get(path).body(Body::empty()).unwrap();
        let served = public_only
            .app
            .router
            .clone()
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(served.status(), StatusCode::OK, "{path}");
        let moved = with_admin
            .app
            .router
            .clone()
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(moved.status(), StatusCode::NOT_FOUND, "{path}");
    }
}
