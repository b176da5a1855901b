//! The live dashboard: plain HTML, CSS and ES modules from `web/` at the repository root,
//! compiled into the binary (`include_bytes!`), so every mode that serves the API serves the
//! page too, with no files to deploy, no CDN and no build step.
//!
//! | path | what |
//! |------|------|
//! | `/` | the admin view: revenue ticker, live orders, partners on a map |
//! | `/track` | a customer's tracking view of one order |
//! | `/assets/{name}` | the pages' CSS and JavaScript modules |
//! | `/client/switchyard.js` | the JavaScript client, `clients/js/switchyard.js` — the very file app developers use |
//!
//! The pages read their JWT from the URL **fragment** (`/#token=…`, `/track#order=42&token=…`),
//! which browsers never send to the server, so tokens stay out of request lines and access logs.
//!
//! Caching: file names carry no content hash, so every response is `no-cache` with a strong
//! `ETag` (a hash of the embedded bytes, computed at compile time): browsers revalidate and
//! get a body-less 304 until the binary changes; an upgrade is picked up on the next load.

use crate::error::ApiError;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
pub(crate) struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: u64,
    /// The `Content-Security-Policy` of an HTML page.
    csp: &'static str,
}

impl Asset {
    pub(crate) const fn new(body: &'static [u8], content_type: &'static str) -> Asset {
        Asset::pinned(body, content_type, fnv1a(body))
    }

    /// A file whose `ETag` is given (a pinned vendored file: its version), so that no hash
    /// of a large file is computed at compile time.
    pub(crate) const fn pinned(
        body: &'static [u8],
        content_type: &'static str,
        etag: u64,
    ) -> Asset {
        Asset {
            body,
            content_type,
            etag,
            csp: CSP,
        }
    }

    /// The same page under another `Content-Security-Policy`.
    pub(crate) const fn with_csp(self, csp: &'static str) -> Asset {
        Asset { csp, ..self }
    }
}

pub(crate) const HTML: &str = "text/html; charset=utf-8";
pub(crate) const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const ADMIN_PAGE: Asset = Asset::new(include_bytes!("../../web/index.html"), HTML);
const TRACK_PAGE: Asset = Asset::new(include_bytes!("../../web/track.html"), HTML);
const CLIENT: Asset = Asset::new(include_bytes!("../../clients/js/switchyard.js"), JS);

/// `/assets/{name}`: a fixed table, so no path ever reaches the file system.
fn asset(name: &str) -> Option<&'static Asset> {
    const STYLE: Asset = Asset::new(include_bytes!("../../web/assets/app.css"), CSS);
    const COMMON: Asset = Asset::new(include_bytes!("../../web/assets/common.js"), JS);
    const ADMIN: Asset = Asset::new(include_bytes!("../../web/assets/admin.js"), JS);
    const TRACK: Asset = Asset::new(include_bytes!("../../web/assets/track.js"), JS);
    Some(match name {
        "app.css" => &STYLE,
        "common.js" => &COMMON,
        "admin.js" => &ADMIN,
        "track.js" => &TRACK,
        _ => return None,
    })
}

/// The pages load only their own scripts, styles and connections (`'self'` covers `ws:`/`wss:`
/// to the same host); no inline scripts, no frames.
const CSP: &str = "default-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The dashboard routes (merged beside `/api`).
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&ADMIN_PAGE, &headers) }),
        )
        .route(
            "/track",
            get(|headers: HeaderMap| async move { serve(&TRACK_PAGE, &headers) }),
        )
        .route(
            "/client/switchyard.js",
            get(|headers: HeaderMap| async move { serve(&CLIENT, &headers) }),
        )
        .route("/assets/{*name}", get(assets))
}

async fn assets(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match asset(&name) {
        Some(file) => serve(file, &headers),
        None => ApiError::not_found("no such asset").into_response(),
    }
}

pub(crate) fn serve(file: &'static Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", file.etag);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(file.content_type),
            )],
            file.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if file.content_type == HTML {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(file.csp),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// FNV-1a, 64 bits: a content hash for the `ETag`, evaluated at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut headers = HeaderMap::new();
        if let Some(tag) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(tag).unwrap());
        }
        match path {
            "/" => serve(&ADMIN_PAGE, &headers),
            "/track" => serve(&TRACK_PAGE, &headers),
            "/client/switchyard.js" => serve(&CLIENT, &headers),
            _ => {
                let name = path.strip_prefix("/assets/").unwrap().to_owned();
                assets(Path(name), headers).await
            }
        }
    }

    async fn body(response: Response) -> Vec<u8> {
        to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    fn content_type(response: &Response) -> &str {
        response.headers()[header::CONTENT_TYPE].to_str().unwrap()
    }

    #[tokio::test]
    async fn pages_and_assets_have_their_content_types() {
        for (path, ty) in [
            ("/", HTML),
            ("/track", HTML),
            ("/assets/app.css", CSS),
            ("/assets/admin.js", JS),
            ("/assets/track.js", JS),
            ("/assets/common.js", JS),
            ("/client/switchyard.js", JS),
        ] {
            let response = get(path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(content_type(&response), ty, "{path}");
            assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
            assert_eq!(
                response.headers()[header::X_CONTENT_TYPE_OPTIONS],
                "nosniff"
            );
        }
        let page = get("/", None).await;
        assert!(page.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        assert_eq!(page.headers()[header::REFERRER_POLICY], "no-referrer");
    }

    #[tokio::test]
    async fn the_client_is_the_clients_js_file() {
        let served = body(get("/client/switchyard.js", None).await).await;
        assert_eq!(
            &served[..],
            include_bytes!("../../clients/js/switchyard.js")
        );
    }

    #[tokio::test]
    async fn a_matching_etag_gets_304_without_a_body() {
        let first = get("/assets/admin.js", None).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = get("/assets/admin.js", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag.as_str());
        assert!(body(again).await.is_empty());
        let listed = get("/assets/admin.js", Some(&format!("\"x\", {etag}"))).await;
        assert_eq!(listed.status(), StatusCode::NOT_MODIFIED);
        let other = get("/assets/admin.js", Some("\"0000000000000000\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
        assert_ne!(
            get("/assets/track.js", None).await.headers()[header::ETAG],
            etag.as_str()
        );
    }

    #[tokio::test]
    async fn unknown_assets_are_404_json() {
        for path in [
            "/assets/nope.js",
            "/assets/../Cargo.toml",
            "/assets/sub/admin.js",
        ] {
            let response = get(path, None).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(content_type(&response), "application/json");
            let json: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
            assert_eq!(json["error"], "not_found");
        }
    }
}
