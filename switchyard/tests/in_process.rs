//! The app a process builds (`server::build`), its router driven in-process with
//! `tower::ServiceExt::oneshot`: handler and layer logic in milliseconds, no socket. What
//! needs a socket (deadlines, connection bounds, WebSockets) is tested over one elsewhere.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{TestApp, admin, token};
use serde_json::{Value, json};
use switchyard_protocol::Role;
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
