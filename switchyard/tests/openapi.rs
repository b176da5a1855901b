//! The OpenAPI document against the router that serves it.
//!
//! **Drift check.** The routes are read from the router itself — the very `axum::Router` a
//! process serves, built by `server::build` — not from a list kept by hand: their paths from
//! the router's `Debug` form (axum prints its path table), their methods by asking the router
//! (a method it does not route answers 405). Every route must be in the document, and every
//! operation of the document must be routed. Routes that are not REST API are listed in
//! [`NOT_REST`], each with the reason; anything else new fails this test until it is
//! documented (register it with `utoipa_axum::routes!` and a `#[utoipa::path]`).
//!
//! Also: the document's shape (OpenAPI 3.1, every refusal in the one error shape, every
//! API operation secured with the roles it accepts) and the reference page `/api/docs`.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{BuiltApp, TestApp};
use serde_json::Value;
use std::collections::BTreeSet;
use switchyard_api::ApiConfig;
use tower::ServiceExt;

/// Routes served that are not part of the REST API, and why they are not in its document.
const NOT_REST: &[(&str, &str)] = &[
    (
        "/ws",
        "the WebSocket endpoint: protocol/asyncapi.yaml describes it",
    ),
    (
        "/conformance/echo",
        "test-only RFC 6455 echo (--conformance-echo), never in production",
    ),
    (
        "/internal/",
        "service-to-service reads for gateways, deliberately not public (api/src/internal.rs)",
    ),
    ("/", "the dashboard page (web/)"),
    ("/track", "the tracking page (web/)"),
    (
        "/client/switchyard.js",
        "the JavaScript client file for the pages",
    ),
    ("/assets/", "the pages' scripts and styles"),
];

fn not_rest(path: &str) -> bool {
    NOT_REST.iter().any(|(p, _)| {
        if p.ends_with('/') && p.len() > 1 {
            path.starts_with(p)
        } else {
            path == *p
        }
    })
}

/// The methods a route may have; HEAD follows GET in axum and is not probed.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// The `all` process's router, built as a process builds it (the test-only echo route on,
/// so that it is seen too), and the app it belongs to.
async fn app() -> (Router, BuiltApp) {
    let built = TestApp::embedded()
        .with_config(|c| c.serve.conformance_echo = true)
        .build()
        .await;
    (built.app.router.clone(), built)
}

/// The router's path table, from its `Debug` form (`paths: {RouteId(3): "/api/orders", …}`).
/// axum's private catch-alls (a nested router's fallback) are not routes of ours.
fn router_paths(app: &Router) -> BTreeSet<String> {
    let debug = format!("{app:?}");
    let mut paths = BTreeSet::new();
    let mut rest = debug.as_str();
    while let Some(at) = rest.find("RouteId(") {
        rest = &rest[at..];
        let Some(open) = rest.find(": \"") else { break };
        let after = &rest[open + 3..];
        let Some(close) = after.find('"') else { break };
        let path = &after[..close];
        if !path.contains("__private__") {
            paths.insert(path.to_owned());
        }
        rest = &after[close..];
    }
    assert!(
        paths.len() > 10,
        "could not read the router's path table (axum's Debug form changed?): {paths:?}"
    );
    paths
}

/// A concrete request path for a route template (`{id}` → `1`, `{*name}` → `x`).
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with("{*") {
                "x"
            } else if segment.starts_with('{') {
                "1"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn call(
    app: &Router,
    method: Method,
    path: &str,
) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 8 << 20).await.unwrap().to_vec();
    (parts.status, bytes, parts.headers)
}

/// Whether the router routes `method` on the route `template`: anything but a 405 (the
/// method is not routed there) or the "no such route" fallback.
async fn routes(app: &Router, method: Method, template: &str) -> bool {
    let (status, body, _) = call(app, method, &concrete(template)).await;
    let fallback =
        status == StatusCode::NOT_FOUND && String::from_utf8_lossy(&body).contains("no such route");
    status != StatusCode::METHOD_NOT_ALLOWED && !fallback
}

async fn document(app: &Router) -> Value {
    let (status, body, _) = call(app, Method::GET, "/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((path.clone(), method.to_uppercase()));
        }
    }
    ops
}

/// (path, method) pairs.
type Op = (String, String);
type Ops = BTreeSet<Op>;

/// Every (path, method) the router serves.
async fn served(app: &Router) -> Ops {
    let mut routed = BTreeSet::new();
    for path in router_paths(app) {
        for method in METHODS {
            if routes(app, method.clone(), &path).await {
                routed.insert((path.clone(), method.to_string()));
            }
        }
    }
    routed
}

/// The drift between a router and a document: (served but undocumented REST routes,
/// documented but not served operations).
fn drift(routed: &Ops, documented: &Ops) -> (Vec<Op>, Vec<Op>) {
    let undocumented = routed
        .iter()
        .filter(|(path, _)| !not_rest(path))
        .filter(|op| !documented.contains(*op))
        .cloned()
        .collect();
    let unserved = documented.difference(routed).cloned().collect();
    (undocumented, unserved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_operation_is_served() {
    let (app, built) = app().await;
    let doc = document(&app).await;
    let documented = documented(&doc);
    let routed = served(&app).await;
    assert!(
        routed.iter().any(|(p, _)| p == "/ws"),
        "the enumeration missed /ws: {routed:?}"
    );

    let (undocumented, unserved) = drift(&routed, &documented);
    assert!(
        undocumented.is_empty(),
        "routes served but not in /api/openapi.json (document them with #[utoipa::path] and \
         utoipa_axum::routes!, or list them in NOT_REST with the reason): {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "operations in /api/openapi.json that the router does not serve: {unserved:?}"
    );
    // The list of exceptions stays honest: each still names a served route.
    for (prefix, why) in NOT_REST {
        assert!(
            routed
                .iter()
                .any(|(p, _)| not_rest(p) && p.starts_with(prefix)),
            "NOT_REST lists {prefix} ({why}), which is no longer served"
        );
    }
    eprintln!(
        "openapi: {} operations documented, {} routes served ({} not REST)",
        documented.len(),
        routed.len(),
        routed.iter().filter(|(p, _)| not_rest(p)).count()
    );
    built.app.shutdown.cancel();
}

/// The check itself: a route added beside the documented ones, or a method added to a
/// documented path, is found; so is a documented operation the router lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_check_finds_an_undocumented_route() {
    let (app, built) = app().await;
    let documented = documented(&document(&app).await);
    let handler = || async { "chat" };
    let grown = app
        .clone()
        .route("/api/chat/{room}", axum::routing::post(handler))
        .route("/healthz/deep", axum::routing::get(handler));
    let (undocumented, unserved) = drift(&served(&grown).await, &documented);
    assert_eq!(
        undocumented,
        [
            ("/api/chat/{room}".to_owned(), "POST".to_owned()),
            ("/healthz/deep".to_owned(), "GET".to_owned()),
        ]
    );
    assert!(unserved.is_empty());
    let mut more = documented.clone();
    more.insert(("/api/fleet".to_owned(), "GET".to_owned()));
    let (_, unserved) = drift(&served(&app).await, &more);
    assert_eq!(unserved, [("/api/fleet".to_owned(), "GET".to_owned())]);
    built.app.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_security_and_one_error_shape() {
    let (app, built) = app().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let public = ["documentation", "operations"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let tag = op["tags"][0].as_str().unwrap_or_default();
            let roles = &op["security"][0]["bearer"];
            if public.contains(&tag) {
                assert!(op.get("security").is_none(), "{method} {path} is public");
            } else {
                assert!(
                    roles.as_array().is_some_and(|r| !r.is_empty()),
                    "{method} {path} lists no roles"
                );
                assert!(op["responses"].get("401").is_some(), "{method} {path}: 401");
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                // (`/readyz` answers 503 with its own body, the readiness: by design.)
                let refusal = status.starts_with('4') || status.starts_with('5');
                if !path.starts_with("/api/") || !refusal {
                    continue;
                }
                // Inline, or a shared response component: either way the error body.
                let response = match response["$ref"].as_str() {
                    Some(r) => {
                        &doc["components"]["responses"]
                            [r.trim_start_matches("#/components/responses/")]
                    }
                    None => response,
                };
                // The error body, or the catalog's refusal of an order (the error body plus
                // the lines at fault).
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert!(
                    schema == "#/components/schemas/ErrorBody"
                        || schema == "#/components/schemas/CatalogRefusal",
                    "{method} {path} {status}: {schema}"
                );
            }
        }
    }
    // The configured caps are in the served schemas.
    let limits = ApiConfig::default().order_limits;
    let item = &doc["components"]["schemas"]["Item"]["properties"];
    assert_eq!(item["qty"]["maximum"], limits.max_qty);
    assert_eq!(
        item["unit_price_paise"]["maximum"],
        limits.max_unit_price_paise
    );
    // The room grammar the document states is the parser's.
    assert_eq!(
        doc["components"]["schemas"]["PublishRequest"]["properties"]["room"]["pattern"],
        switchyard_protocol::room::PATTERN
    );
    let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let all: Vec<&str> = switchyard_protocol::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes.len(), all.len());
    assert!(all.iter().all(|c| codes.contains(c)), "{codes:?}");
    built.app.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_page_is_embedded() {
    let (app, built) = app().await;
    let (status, page, headers) = call(&app, Method::GET, "/api/docs").await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains(r#"<redoc spec-url="openapi.json""#), "{page}");
    assert!(
        page.contains(r#"<script src="docs/redoc.standalone.js">"#),
        "{page}"
    );
    assert!(
        !page.contains("http"),
        "the page loads nothing from elsewhere: {page}"
    );
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    let (status, script, headers) = call(&app, Method::GET, "/api/docs/redoc.standalone.js").await;
    assert_eq!(status, StatusCode::OK);
    let vendored = include_bytes!("../../web/vendor/redoc/redoc.standalone.js");
    assert_eq!(script.len(), vendored.len());
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    built.app.shutdown.cancel();
}
