//! Test databases on both engines (feature `testing`): the store's own tests and the binary's
//! integration tests run against a real SQLite file and a real PostgreSQL server.
//!
//! PostgreSQL: one server for the whole test run, shared by every test, and a fresh database
//! per test (`CREATE DATABASE`, copied from the server's `template1`), so tests stay
//! independent and cheap. The server is `SWITCHYARD_TEST_POSTGRES_URL` when set
//! (`scripts/test.sh` starts one for the run with `scripts/postgres.sh`); otherwise the first
//! test that asks starts one itself with `scripts/postgres.sh start … --while <this process>`,
//! which stops and deletes it once the test process has exited.

use crate::{Engine, Store};
use sqlx::{Connection, Executor, PgConnection};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the shared test server (an admin URL of a throwaway cluster).
pub const POSTGRES_URL_VAR: &str = "SWITCHYARD_TEST_POSTGRES_URL";

/// A database for one test; an SQLite file lives as long as this value.
#[derive(Debug)]
pub struct TestDatabase {
    pub engine: Engine,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A new SQLite file in a temporary directory.
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}/test.db", dir.path().display());
        TestDatabase {
            engine: Engine::Sqlite,
            url,
            _dir: Some(dir),
        }
    }

    /// A new, empty database on the shared PostgreSQL server.
    pub async fn postgres() -> TestDatabase {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let server = postgres_server_url();
        let name = format!(
            "test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            crate::now_ms()
        );
        let mut admin = PgConnection::connect(server)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL at {server}: {e}"));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
        TestDatabase {
            engine: Engine::Postgres,
            url: with_database(server, &name),
            _dir: None,
        }
    }

    /// [`TestDatabase::postgres`] for synchronous callers (inside a runtime or not).
    pub fn postgres_blocking() -> TestDatabase {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(TestDatabase::postgres())
        })
        .join()
        .expect("creating a test database")
    }

    /// One new database per engine: SQLite first, then PostgreSQL.
    pub async fn each_engine() -> [TestDatabase; 2] {
        [TestDatabase::sqlite(), TestDatabase::postgres().await]
    }

    /// The store on this database (migrated).
    pub async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.url))
    }
}

/// `server` (`postgres://user@host:port/db`) with another database name.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (server, String::new()),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..authority_end])
}

/// The shared test server's admin URL, starting a server on first use when none is given.
pub fn postgres_server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var(POSTGRES_URL_VAR) {
            return url;
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join(format!("target/postgres-test-{}", std::process::id()));
        let pid = std::process::id().to_string();
        let out = std::process::Command::new(root.join("scripts/postgres.sh"))
            .arg("start")
            .arg(&dir)
            .args(["--while", &pid])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("running scripts/postgres.sh");
        assert!(
            out.status.success(),
            "the tests need PostgreSQL: scripts/postgres.sh could not start one (see above), \
             or set {POSTGRES_URL_VAR} to a server's admin URL"
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_database_name_replaces_the_path() {
        assert_eq!(
            super::with_database("postgres://postgres@127.0.0.1:5/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5/t1"
        );
        assert_eq!(
            super::with_database("postgres://u:p@h:5/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h:5/t1?sslmode=disable"
        );
    }
}
