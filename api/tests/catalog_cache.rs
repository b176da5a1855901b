//! The catalog's read cache against the race it exists to win, on both caches (in memory;
//! in a real redis-server this test starts); a write whose request is cancelled after its
//! commit, and one whose invalidation fails because Redis is down (a real SQLite store).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use switchyard_api::catalog::{CacheConfig, CacheKey, Catalog, MemoryCache, ReadCache, RedisCache};
use switchyard_protocol::catalog::{ProductPatch, ProductPut};
use switchyard_store::Store;

/// The classic cache-aside race: a reader misses and reads the database, a write commits and
/// invalidates, and only then the reader stores what it read. It must not be answered again;
/// a reader after the write fills the cache with the new value.
async fn a_raced_fill_is_never_answered(cache: &dyn ReadCache) {
    for key in [
        CacheKey::Product("milk-1l".into()),
        CacheKey::Page {
            after: String::new(),
            limit: 20,
        },
    ] {
        let (before, cached) = cache.get(&key).await.unwrap();
        assert_eq!(cached, None, "{}: {key:?}", cache.name());
        // The reader read the database here (the old value); the write commits:
        cache.invalidate(&["milk-1l".to_owned()]).await.unwrap();
        cache.fill(&key, before, bytes("old")).await.unwrap();
        let (now, cached) = cache.get(&key).await.unwrap();
        assert_ne!(now, before, "{}: {key:?}", cache.name());
        assert_eq!(cached, None, "{}: the raced fill came back", cache.name());
        cache.fill(&key, now, bytes("new")).await.unwrap();
        assert_eq!(cache.get(&key).await.unwrap(), (now, Some(bytes("new"))));
        // The next write hides it.
        cache.invalidate(&["milk-1l".to_owned()]).await.unwrap();
        assert_eq!(cache.get(&key).await.unwrap().1, None, "{}", cache.name());
    }
}

fn bytes(s: &str) -> Arc<[u8]> {
    s.as_bytes().into()
}

#[tokio::test]
async fn the_memory_cache_never_answers_a_raced_fill() {
    a_raced_fill_is_never_answered(&MemoryCache::new(&CacheConfig::default())).await;
}

#[tokio::test]
async fn the_redis_cache_never_answers_a_raced_fill() {
    let redis = RedisServer::start();
    let cache = RedisCache::connect(
        &redis.url(),
        "test:",
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    a_raced_fill_is_never_answered(&cache).await;
}

/// A write's request dropped right after the commit (the client went away, the deadline
/// passed): the invalidation still happens, so the cached value from before the write is
/// never answered again.
#[tokio::test]
async fn a_cancelled_request_still_invalidates_what_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_milk(dir.path()).await;
    let config = CacheConfig::default();
    let cache: Arc<dyn ReadCache> = Arc::new(MemoryCache::new(&config));
    let catalog = Catalog::new(store.clone(), Some(cache), &config);
    catalog.product("milk").await.unwrap();
    let (cached, status) = catalog.product("milk").await.unwrap();
    assert_eq!((cached.unwrap().stock, status.as_str()), (1, "hit"));

    let (committed, on_commit) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let request = tokio::spawn({
        let (catalog, store) = (catalog.clone(), store.clone());
        async move {
            let patch = ProductPatch {
                stock: Some(2),
                ..ProductPatch::default()
            };
            catalog
                .write(
                    async move {
                        let written = store.patch_product("milk", &patch).await;
                        let _ = committed.send(());
                        // The request is cancelled here, between the commit and the answer.
                        let _ = released.await;
                        written
                    },
                    |_| vec!["milk".to_owned()],
                )
                .await
        }
    });
    on_commit.await.unwrap();
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    drop(release);
    // The write's task runs on; once it has, no read answers stock 1.
    for _ in 0..500 {
        let (product, _) = catalog.product("milk").await.unwrap();
        if product.unwrap().stock == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the cancelled write was never invalidated: stock 1 still answered");
}

/// Redis down when a write commits: the write answers; this process reads the database
/// (`miss`) until the invalidation, retried in the background, lands — also when Redis comes
/// back with the old value still in it (an append-only file keeps it here) — and then the
/// cache serves the new value.
#[tokio::test]
async fn a_failed_invalidation_is_retried_and_reads_bypass_the_cache_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_milk(dir.path()).await;
    let mut redis = RedisServer::start_persistent(dir.path());
    let cache = RedisCache::connect(
        &redis.url(),
        "test:",
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let config = CacheConfig::default();
    let catalog = Catalog::new(store.clone(), Some(Arc::new(cache)), &config);
    let stock = async || {
        let (product, status) = catalog.product("milk").await.unwrap();
        (product.unwrap().stock, status.as_str())
    };
    stock().await;
    assert_eq!(stock().await, (1, "hit"));

    redis.stop();
    let patch = ProductPatch {
        stock: Some(2),
        ..ProductPatch::default()
    };
    let written = catalog
        .write(
            {
                let store = store.clone();
                async move { store.patch_product("milk", &patch).await }
            },
            |_| vec!["milk".to_owned()],
        )
        .await
        .unwrap();
    assert_eq!(written.stock, 2);
    assert_eq!(stock().await, (2, "miss"));

    redis.restart();
    for _ in 0..500 {
        let (stock, status) = stock().await;
        assert_eq!(
            stock, 2,
            "a read after the write answered the old value ({status})"
        );
        if status == "hit" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the cache never served again");
}

/// A store in an SQLite file in `dir`, with one unit of `milk`.
async fn store_with_milk(dir: &std::path::Path) -> Store {
    let store = Store::open(&format!("sqlite://{}/catalog.db", dir.display()))
        .await
        .unwrap();
    let put = ProductPut {
        name: "Milk".into(),
        price_paise: 100,
        stock: 1,
    };
    store.put_product("milk", &put).await.unwrap();
    store
}

/// A redis-server of this test's own on a free loopback port, stopped (by its pid) on drop.
struct RedisServer {
    child: Child,
    port: u16,
    /// Where an append-only file keeps the data across a restart (none: nothing is kept).
    dir: Option<std::path::PathBuf>,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer {
            child: spawn_redis(port, None),
            port,
            dir: None,
        }
    }

    /// A server that keeps its data in `dir` across [`RedisServer::restart`].
    fn start_persistent(dir: &std::path::Path) -> RedisServer {
        let mut server = RedisServer::start();
        server.stop();
        server.dir = Some(dir.to_owned());
        server.restart();
        server
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.child = spawn_redis(self.port, self.dir.as_deref());
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Starts redis-server on `port` and waits until it answers; with `dir`, every write goes to
/// an append-only file there (fsynced), read back at the next start.
fn spawn_redis(port: u16, dir: Option<&std::path::Path>) -> Child {
    let mut command = Command::new("redis-server");
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null());
    match dir {
        Some(dir) => command
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(dir),
        None => command.args(["--appendonly", "no"]),
    };
    let mut child = command
        .spawn()
        .expect("redis-server (Debian: apt-get install redis-server)");
    // Up to 30 s: a loaded machine can take seconds to start it.
    for _ in 0..3_000 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server did not listen on {port}");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
