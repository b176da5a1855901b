//! The error policy end to end through the real router (`oneshot`), a real SQLite file and
//! the in-process bus: corrupt data is a 500 (never the caller's 422), logged exactly once,
//! by the edge; every error body is the one shape.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::io::Write;
use std::sync::{Arc, Mutex};
use switchyard_api::catalog::{CacheConfig, Catalog};
use switchyard_api::{ApiConfig, ApiState};
use switchyard_auth::{Issuer, JwtConfig, Verifier, VerifyKey};
use switchyard_broker::{Backplane, HistoryConfig};
use switchyard_protocol::Role;
use switchyard_protocol::catalog::ProductPut;
use switchyard_store::Store;
use tower::ServiceExt;

const SECRET: &[u8] = b"errors-test-secret-0123456789";

/// Log lines, as the tracing subscriber writes them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    role: Role,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let token = Issuer::new(SECRET, None, None).issue("u1", role, 600);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

// Current-thread runtime: the log capture below is this thread's default subscriber.
#[tokio::test(flavor = "current_thread")]
async fn corrupt_data_is_a_500_logged_once_by_the_edge() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/api.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    let verifier = Verifier::new(&JwtConfig {
        key: VerifyKey::Secret(SECRET.to_vec()),
        issuer: None,
        audience: None,
        leeway_secs: 5,
        max_lifetime_secs: switchyard_auth::DEFAULT_MAX_LIFETIME_SECS,
    })
    .unwrap();
    let put = ProductPut {
        name: "Milk".into(),
        price_paise: 100,
        stock: 10,
    };
    store.put_product("milk", &put).await.unwrap();
    let app = switchyard_api::router(
        ApiState {
            catalog: Catalog::new(store.clone(), None, &CacheConfig::default()),
            store,
            verifier: Arc::new(verifier),
            backplane: Backplane::memory(HistoryConfig::default()),
            config: ApiConfig::default(),
        },
        Default::default(),
    );

    let (status, order) = call(
        &app,
        "POST",
        "/api/orders",
        Role::Customer,
        r#"{"items":[{"sku":"milk","qty":1,"unit_price_paise":100}],"address":"here"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();

    // Invalid input is the caller's fault: 422 `invalid`, nothing logged as an error.
    let (status, body) = call(
        &app,
        "POST",
        "/api/orders",
        Role::Customer,
        r#"{"items":[],"address":"x"}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid"))
    );
    assert_eq!(body.as_object().unwrap().len(), 2, "one shape: {body}");

    // Damage the row behind the server's back.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE orders SET items = '{broken' WHERE id = $1")
        .bind(id.parse::<i64>().unwrap())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let (status, body) = call(&app, "GET", &format!("/api/orders/{id}"), Role::Admin, "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"], "internal");
    let message = body["message"].as_str().unwrap();
    assert!(
        !message.contains("items") && !message.contains("corrupt"),
        "details leak: {message}"
    );

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let failures: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    assert_eq!(failures.len(), 1, "logged once:\n{logs}");
    let line = failures[0];
    assert!(
        line.contains("ERROR")
            && line.contains("/api/orders/{id}")
            && line.contains("corrupt data"),
        "{line}"
    );
}
