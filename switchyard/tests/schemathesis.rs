//! The OpenAPI document fuzzed against the real binary with Schemathesis (PyPI, pinned in
//! `scripts/test.sh`, which installs it into `target/schemathesis-<version>/`).
//!
//! One run per role (customer, partner, admin, service), each with a valid token for it,
//! against a server seeded with orders in every state, so that generated requests reach the
//! handlers' logic and not only the 401/404 doors. Every response must:
//! - not be a 5xx (`not_a_server_error`);
//! - have a status code, content type, headers and body the document lists for that operation
//!   (`status_code_conformance`, `content_type_conformance`, `response_headers_conformance`,
//!   `response_schema_conformance`);
//! - refuse schema-violating input with a 4xx (`negative_data_rejection`), answer undocumented
//!   methods with 405 and `Allow` (`unsupported_method`, `allow_header_conformance`), and
//!   refuse requests without the token (`ignored_auth`); plus the resource checks.
//!
//! Checks of `--checks all` are left out where they assume what this API's documented
//! rules deny: `positive_data_acceptance` (a schema-valid body must succeed — but a payment's
//! amount must equal its order's total, and an order's total is capped, which no JSON Schema
//! states) and `missing_required_header` (a missing `Idempotency-Key` must be the first
//! refusal — but the API's documented order of checks answers a 409 of the order's state
//! before it judges the payload, `protocol/README.md`, "Order of checks"). A third, the
//! stateful `use_after_free` (a resource deleted with a 2xx must be 404 afterwards), is left
//! out because `DELETE /api/products/{sku}` of a product that open orders hold keeps it
//! readable, `discontinued`, by design (issue #15; answered 200 with the product, not 204).
//!
//! The seed is random unless `SCHEMATHESIS_SEED` is set, and printed with the case count
//! (also to `target/tmp/schemathesis/summary.txt`, which `scripts/test.sh` shows after the
//! suite); rerun a failure with the same seed. Bounded: at most `MAX_EXAMPLES` cases per operation
//! and phase, and `PER_ROLE` per role. Reports land in `target/tmp/schemathesis/`.

use common::process::{self, ServerProcess};
use common::pypi;
use common::{SECRET, token};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_client::Rest;
use switchyard_protocol::order::{Item, NewOrder};
use switchyard_protocol::{OrderStatus, Role};

/// Time budget of one role's run (Schemathesis fuzzes until it is spent).
const PER_ROLE: Duration = Duration::from_secs(20);
/// Cases per operation and phase.
const MAX_EXAMPLES: &str = "25";
const CHECKS: &str = "all";
const NOT_CHECKED: &str = "positive_data_acceptance,missing_required_header,use_after_free";

/// Orders in several states, so that ids 1 to 5 exist for every role's requests.
async fn seed(base: &str) {
    let c1 = Rest::new(base, token("c1", Role::Customer));
    let admin = c1.as_caller(token("admin", Role::Admin));
    let new = NewOrder {
        items: vec![Item {
            sku: "milk-1l".into(),
            qty: 2,
            unit_price_paise: Some(6500),
        }],
        address: "12 MG Road".into(),
    };
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(c1.create_order(&new).await.unwrap().id);
    }
    // 1: placed; 2: paid, confirmed; 3: assigned to p1, out for delivery; 4: delivered;
    // 5: cancelled.
    c1.pay(&ids[1], 13_000, "seed-2").await.unwrap();
    admin
        .set_status(&ids[1], OrderStatus::Confirmed)
        .await
        .unwrap();
    for id in &ids[2..4] {
        for status in [OrderStatus::Confirmed, OrderStatus::Packed] {
            admin.set_status(id, status).await.unwrap();
        }
        admin.assign(id, "p1").await.unwrap();
        admin
            .set_status(id, OrderStatus::OutForDelivery)
            .await
            .unwrap();
    }
    admin
        .set_status(&ids[3], OrderStatus::Delivered)
        .await
        .unwrap();
    admin
        .set_status(&ids[4], OrderStatus::Cancelled)
        .await
        .unwrap();
}

/// `Test cases:` / `  N generated, …` from Schemathesis' summary.
fn cases(output: &str) -> Option<u64> {
    let mut lines = output.lines().skip_while(|l| !l.starts_with("Test cases:"));
    lines.next()?;
    lines.next()?.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_survives_schemathesis_for_every_role() {
    let schemathesis = pypi::tool("SCHEMATHESIS", "schemathesis");
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["all", "--listen", "127.0.0.1:0"],
        &[("JWT_SECRET", SECRET), ("RUST_LOG", "warn")],
    );
    let base = server.url("");
    seed(&base).await;
    let seed: u64 = std::env::var("SCHEMATHESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
        });
    let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let _ = std::fs::remove_dir_all(&reports);
    std::fs::create_dir_all(&reports).unwrap();

    let roles = [
        ("c1", Role::Customer),
        ("p1", Role::Partner),
        ("admin", Role::Admin),
        ("svc", Role::Service),
    ];
    let mut total = 0;
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for (sub, role) in roles {
        let mut cmd = Command::new(&schemathesis);
        cmd.arg("run")
            .arg(server.url("/api/openapi.json"))
            .args([
                "--header",
                &format!("Authorization: Bearer {}", token(sub, role)),
            ])
            .args(["--checks", CHECKS, "--exclude-checks", NOT_CHECKED])
            .args(["--seed", &seed.to_string()])
            .args(["--max-examples", MAX_EXAMPLES])
            .args(["--max-time", &PER_ROLE.as_secs().to_string()])
            // One worker: CPython 3.11's `ast.parse` is not thread-safe ("AST constructor
            // recursion depth mismatch" in Hypothesis' lambda descriptions) with several.
            .args(["--request-timeout", "10", "--workers", "1"])
            .arg("--report-dir")
            .arg(reports.join(role.as_str()))
            .args(["--report", "junit"])
            .env("NO_COLOR", "1")
            .current_dir(dir.path());
        // Its own limit leaves the run time for shrinking a failure; this only stops a hang.
        let (status, output) = process::run(cmd, PER_ROLE * 4);
        std::fs::write(reports.join(format!("{role}.log")), &output).unwrap();
        let n = cases(&output).unwrap_or_else(|| panic!("no case count for {role}:\n{output}"));
        total += n;
        summary.push(format!(
            "schemathesis: role {role}: {n} test cases, seed {seed} ({status})"
        ));
        eprintln!("{}", summary.last().unwrap());
        if !status.success() {
            let failures = output
                .split_once("FAILURES")
                .map_or(output.as_str(), |(_, f)| f);
            failed.push(format!("role {role}:\n{failures}"));
        }
    }
    summary.push(format!(
        "schemathesis: {total} test cases in all, seed {seed}; reports in {}",
        reports.display()
    ));
    eprintln!("{}", summary.last().unwrap());
    // scripts/test.sh prints it after the suite (libtest keeps a passing test's output).
    std::fs::write(reports.join("summary.txt"), summary.join("\n") + "\n").unwrap();
    assert!(
        failed.is_empty(),
        "Schemathesis found failures (rerun with SCHEMATHESIS_SEED={seed}):\n{}",
        failed.join("\n")
    );
}
