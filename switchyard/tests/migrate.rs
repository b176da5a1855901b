//! `switchyard migrate` on both engines: it brings a new database to the current schema,
//! running it twice changes nothing, and a URL it cannot use is a clear error.

use common::process::switchyard;
use switchyard_store::testing::TestDatabase;

fn migrate(url: &str) -> (bool, String) {
    let out = switchyard()
        .args(["migrate", "--database-url", url])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn migrate_brings_both_engines_to_the_schema() {
    for db in TestDatabase::each_engine().await {
        let engine = db.engine.name();
        for _ in 0..2 {
            let (ok, out) = migrate(&db.url);
            assert!(ok, "{out}");
            assert!(
                out.contains(&format!("{engine} schema at version")),
                "{out}"
            );
        }
        // The store opens the migrated database as it is.
        let store = db.open().await;
        assert!(store.ping().await);
    }
}

#[test]
fn an_unusable_url_is_a_clear_error() {
    let (ok, out) = migrate("mysql://db/switchyard");
    assert!(!ok);
    assert!(out.contains("sqlite:// or postgres://"), "{out}");
}
