//! The OpenAPI document is good enough to generate a working client from: a Python client is
//! generated from the running binary's `/api/openapi.json` with openapi-python-client (PyPI,
//! pinned in `scripts/test.sh`, installed into `target/openapi-python-client-<version>/`), and
//! `generated_client/flow.py` uses it — with the client raising on any status the document
//! does not list — to place an order, pay it (and replay the payment), and read the revenue.
//! This tests the document's quality; the client is not shipped.

use common::process::{self, ServerProcess};
use common::pypi;
use common::{SECRET, token};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use switchyard_client::Rest;
use switchyard_protocol::Role;

/// Generating and running take seconds; this only stops a hang.
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_document_orders_pays_and_reads_revenue() {
    let generator = pypi::tool("OPENAPI_PYTHON_CLIENT", "openapi-python-client");
    // The generator's venv has what a generated client needs (httpx, attrs) and its python.
    let bin = generator.parent().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["all", "--listen", "127.0.0.1:0"],
        &[("JWT_SECRET", SECRET), ("RUST_LOG", "warn")],
    );
    let document = reqwest::get(server.url("/api/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generated-client");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("openapi.json"), &document).unwrap();
    std::fs::write(
        work.join("config.yml"),
        "project_name_override: switchyard-api-client\npackage_name_override: switchyard_api_client\n",
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut generate = Command::new(&generator);
    generate
        .args([
            "generate",
            "--path",
            "openapi.json",
            "--config",
            "config.yml",
        ])
        .args(["--output-path", "switchyard_api_client", "--meta", "none"])
        .current_dir(&work)
        // Its post-processing runs `ruff`, installed beside it.
        .env("PATH", &path);
    let (status, output) = process::run(generate, LIMIT);
    assert!(status.success(), "generation failed:\n{output}");
    // Warnings mean pieces of the document the generator could not turn into code.
    assert!(
        !output.contains("Warning"),
        "the generator skipped parts of the document:\n{output}"
    );

    let mut flow = Command::new(bin.join("python"));
    flow.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/generated_client/flow.py"))
        .current_dir(&work)
        .env("PYTHONPATH", &work)
        .env("SWITCHYARD_URL", server.url(""))
        .env("CUSTOMER_TOKEN", token("c1", Role::Customer))
        .env("ADMIN_TOKEN", token("admin", Role::Admin));
    let (status, output) = process::run(flow, LIMIT);
    assert!(
        status.success(),
        "the generated client's flow failed:\n{output}"
    );
    let seen: serde_json::Value = serde_json::from_str(output.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {output}"));
    eprintln!("generated client: {seen}");

    // What the Python client did is what the server holds.
    let rest = Rest::new(server.url(""), token("admin", Role::Admin));
    let revenue = rest.revenue().await.unwrap();
    assert_eq!(seen["revenue_paise"], revenue.total_paise);
    assert_eq!(revenue.total_paise, 17_500);
    let order = rest.order(seen["order"].as_str().unwrap()).await.unwrap();
    assert!(order.paid && order.customer == "c1", "{order:?}");
}
