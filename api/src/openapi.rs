//! The REST API as an OpenAPI 3.1 document, generated from the handlers (`#[utoipa::path]`
//! on each, registered with `utoipa_axum::routes!`, so a route and its description are one
//! registration) and from the protocol's types; served at `GET /api/openapi.json`, with a
//! browsable reference at `GET /api/docs` (Redoc, vendored in `web/vendor/redoc/` and
//! embedded in the binary: no CDN).
//!
//! Handlers declare what is theirs: who may call (the security requirement's role names,
//! which OpenAPI 3.1 allows for non-OAuth schemes), the body, the success answer and the
//! refusals only they make (403, 404, 409, 422). The refusals that come from the layers every
//! route shares are added here, in one place, by [`shared_errors`], from the same facts the
//! layers act on — the error policy of `crate::error`:
//!
//! | when | added |
//! |------|-------|
//! | the operation needs a token | 401, and 429 under `/api` (the user's requests in flight) |
//! | it takes a body | 400, 413, 415 |
//! | it has query parameters | 400 |
//! | it changes something (not `GET`) under `/api` | 503 (the event bus is down) |
//! | any operation under `/api` | 500 |
//!
//! `switchyard/tests/openapi.rs` fails when a route of the server is missing from the
//! document or the other way round; Schemathesis (`scripts/test.sh`) fuzzes the document
//! against the real binary.

use crate::web::{Asset, HTML, JS, serve};
use axum::Extension;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use switchyard_protocol::order::OrderLimits;
use switchyard_protocol::{ErrorBody, ErrorCode};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr};
use utoipa::{OpenApi as _, ToSchema};

/// The version of the vendored Redoc bundle (also its `ETag`: the file is pinned).
pub const REDOC_VERSION: &str = "2.5.4";

const REDOC: Asset = Asset::pinned(
    include_bytes!("../../web/vendor/redoc/redoc.standalone.js"),
    JS,
    0x2_05_04,
);
const DOCS_PAGE: Asset = Asset::new(include_bytes!("docs.html"), HTML).with_csp(DOCS_CSP);

/// The docs page needs what the dashboard's policy forbids: Redoc injects its styles inline
/// and may start its search worker from a `blob:`. Still nothing leaves the origin (its logo
/// on a CDN stays blocked).
pub(crate) const DOCS_CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The name of the security scheme (a JWT in `Authorization: Bearer`).
pub const BEARER: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Switchyard REST API",
        description = include_str!("openapi.md"),
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorCode)),
    tags(
        (name = "catalog", description = "Products, prices and stock: read by anyone signed in, written by admins"),
        (name = "orders", description = "Orders: create, read, list, status, assignment"),
        (name = "chat", description = "An order's chat: its customer, partner and support"),
        (name = "payments", description = "Idempotent payments and the revenue totals"),
        (name = "publish", description = "The server publish API for backend services"),
        (name = "users", description = "Withdrawing a user's access"),
        (name = "presence", description = "Who is present in a room"),
        (name = "operations", description = "Health, readiness and metrics of a process"),
        (name = "documentation", description = "This document and its reference page"),
    ),
)]
struct Info;

/// The whole document: `api` (the `/api` routes, as registered) nested under `/api`, plus
/// `operations` (the process's health routes, documented where they are served), with the
/// shared refusals added.
pub fn document(api: OpenApi, operations: OpenApi) -> OpenApi {
    let mut doc = Info::openapi().nest("/api", api).merge_from(operations);
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT (HS256, or RS256/ES256 with a configured public key) with claims \
                     `sub`, `role` (`customer`, `partner`, `admin`, `service`) and `exp`. The \
                     role names an operation lists are the roles it accepts.",
                ))
                .build(),
        ),
    );
    for (name, _, description) in SHARED {
        components
            .responses
            .insert((*name).to_owned(), RefOr::T(error_response(description)));
    }
    shared_errors(&mut doc);
    doc
}

/// The shared refusals, as response components: (name, status, description).
const SHARED: &[(&str, &str, &str)] = &[
    (
        "BadRequest",
        "400",
        "`bad_request`: malformed JSON, a missing or bad header or query parameter",
    ),
    (
        "Unauthorized",
        "401",
        "`unauthorized`: no token, or a malformed, expired or wrongly signed one",
    ),
    (
        "TooManyRequests",
        "429",
        "`limit_exceeded`: this user already has `SWITCHYARD_MAX_REQUESTS_PER_USER` requests in flight (`service` tokens excepted); retry when one is answered",
    ),
    (
        "PayloadTooLarge",
        "413",
        "`payload_too_large`: the body is over `SWITCHYARD_MAX_BODY_BYTES`",
    ),
    (
        "UnsupportedMediaType",
        "415",
        "`unsupported_media_type`: the body is not sent as `application/json`",
    ),
    (
        "Internal",
        "500",
        "`internal`: the server failed (logged; no details are returned); retry",
    ),
    (
        "Unavailable",
        "503",
        "`unavailable`: the event bus is down, nothing was changed; retry",
    ),
];

fn error_response(description: &str) -> ApiResponse {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                ))))
                .build(),
        )
        .build()
}

/// Adds the refusals of the shared layers to every operation (see the module's table).
pub fn shared_errors(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let under_api = path.starts_with("/api/");
        for (changes, operation) in operations(item) {
            let mut add = |name: &str| {
                let (_, status, _) = SHARED
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .expect("a shared response");
                operation
                    .responses
                    .responses
                    .entry((*status).to_owned())
                    .or_insert_with(|| {
                        RefOr::Ref(utoipa::openapi::Ref::new(format!(
                            "#/components/responses/{name}"
                        )))
                    });
            };
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                add("Unauthorized");
                if under_api {
                    add("TooManyRequests");
                }
            }
            if operation.request_body.is_some() {
                add("BadRequest");
                add("PayloadTooLarge");
                add("UnsupportedMediaType");
            }
            let has_query = operation
                .parameters
                .iter()
                .flatten()
                .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query);
            if has_query {
                add("BadRequest");
            }
            if under_api && changes {
                add("Unavailable");
            }
            if under_api {
                add("Internal");
            }
        }
    }
}

/// Each operation of a path, and whether it may change something (any method but GET/HEAD).
fn operations(item: &mut PathItem) -> impl Iterator<Item = (bool, &mut Operation)> {
    [
        (false, item.get.as_mut()),
        (false, item.head.as_mut()),
        (true, item.post.as_mut()),
        (true, item.put.as_mut()),
        (true, item.patch.as_mut()),
        (true, item.delete.as_mut()),
        (true, item.options.as_mut()),
        (true, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(changes, op)| op.map(|op| (changes, op)))
}

/// The document, serialized once when the router is built.
#[derive(Clone)]
pub struct Served(pub Arc<str>);

impl Served {
    /// `doc` as served by an API with these order `limits`: the configured caps are part of
    /// the contract a client sees (a line over them is a 422, so a schema-valid line must fit).
    pub fn new(doc: &OpenApi, limits: &OrderLimits) -> Served {
        // An `OpenApi` is plain data: it always serializes.
        let mut json = serde_json::to_value(doc).unwrap_or_default();
        let item = &mut json["components"]["schemas"]["Item"]["properties"];
        item["qty"]["maximum"] = limits.max_qty.into();
        item["unit_price_paise"]["maximum"] = limits.max_unit_price_paise.into();
        let schemas = &mut json["components"]["schemas"];
        schemas["NewOrder"]["description"] = format!(
            "Body of `POST /api/orders`. The total (Σ qty × the catalog's price) may be at most \
             {} paise (`SWITCHYARD_MAX_ORDER_TOTAL_PAISE`; beyond: 422).",
            limits.max_total_paise
        )
        .into();
        for body in ["ProductPut", "ProductPatch"] {
            schemas[body]["properties"]["price_paise"]["maximum"] =
                limits.max_unit_price_paise.into();
        }
        Served(
            serde_json::to_string_pretty(&json)
                .unwrap_or_default()
                .into(),
        )
    }
}

/// The OpenAPI document of this API
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "documentation",
    operation_id = "getOpenApi",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object),
    ),
)]
pub async fn json(Extension(Served(doc)): Extension<Served>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        doc.to_string(),
    )
        .into_response()
}

/// A browsable reference of this document (Redoc, embedded)
#[utoipa::path(
    get,
    path = "/docs",
    tag = "documentation",
    operation_id = "getDocs",
    responses(
        (status = 200, description = "The reference page", content_type = "text/html", body = String),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ),
)]
pub async fn docs(headers: HeaderMap) -> Response {
    serve(&DOCS_PAGE, &headers)
}

/// The reference page's script: Redoc's standalone bundle, pinned (see
/// `web/vendor/redoc/README.md`).
#[utoipa::path(
    get,
    path = "/docs/redoc.standalone.js",
    tag = "documentation",
    operation_id = "getDocsScript",
    responses(
        (status = 200, description = "Redoc's standalone bundle", content_type = "text/javascript", body = String),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ),
)]
pub async fn redoc(headers: HeaderMap) -> Response {
    serve(&REDOC, &headers)
}
