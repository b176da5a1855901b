//! The distributed topology for tests: `scripts/cluster.sh` starts a real redis-server (or
//! uses the Redis it is given: a Redis Cluster, a [`ChaosProxy`](super::chaos::ChaosProxy)),
//! gateways, API processes and nginx on loopback; dropping the [`Cluster`] stops them. The API
//! processes share a fresh database on the test run's PostgreSQL server (see
//! `switchyard_store::testing`); gateways have none.

use super::SECRET;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use switchyard_store::testing::TestDatabase;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nginx: String,
    pub gateways: Vec<String>,
    pub apis: Vec<String>,
    /// The API processes' PostgreSQL database.
    pub database_url: String,
    /// The redis-server `cluster.sh` started (0: none, the cluster uses a Redis it was given).
    pub redis_port: u16,
    pub http: reqwest::Client,
}

fn script() -> PathBuf {
    super::workspace_root().join("scripts/cluster.sh")
}

impl Cluster {
    pub fn up(gateways: usize, apis: usize) -> Cluster {
        Cluster::up_with(gateways, apis, &[])
    }

    /// Like [`Cluster::up`], with `SWITCHYARD_*` settings for every process.
    pub fn up_with(gateways: usize, apis: usize, settings: &[(&str, &str)]) -> Cluster {
        Cluster::start(gateways, apis, settings, &[])
    }

    /// Processes on the Redis at `url` (a Redis Cluster, a proxy); `cluster.sh` starts no
    /// redis-server — unless `port`, where it starts one (behind the proxy at `url`).
    pub fn on_redis(
        url: &str,
        port: Option<u16>,
        gateways: usize,
        apis: usize,
        settings: &[(&str, &str)],
    ) -> Cluster {
        let mut redis = vec!["--redis-url".to_owned(), url.to_owned()];
        if let Some(port) = port {
            redis.extend(["--redis-port".to_owned(), port.to_string()]);
        }
        Cluster::start(gateways, apis, settings, &redis)
    }

    fn start(gateways: usize, apis: usize, settings: &[(&str, &str)], redis: &[String]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let database = TestDatabase::postgres_blocking();
        let out = Command::new("bash")
            .arg(script())
            .args(["up", dir.path().to_str().unwrap()])
            .args([
                "--gateways",
                &gateways.to_string(),
                "--apis",
                &apis.to_string(),
            ])
            .args(["--database-url", &database.url])
            .arg("--bin")
            .arg(super::process::bin())
            .args(redis)
            .env("JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .envs(settings.iter().copied())
            .output()
            .expect("run scripts/cluster.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            let _ = Command::new("bash")
                .arg(script())
                .args(["down", dir.path().to_str().unwrap()])
                .status();
            panic!(
                "cluster.sh up failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let env: HashMap<String, String> = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        let list = |k: &str| {
            env[k]
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        Cluster {
            nginx: env["NGINX"].clone(),
            gateways: list("GATEWAYS"),
            apis: list("APIS"),
            database_url: database.url,
            redis_port: env["REDIS_PORT"].parse().unwrap_or(0),
            dir,
            http: reqwest::Client::new(),
        }
    }

    fn run(&self, cmd: &str) {
        let status = Command::new("bash")
            .arg(script())
            .args([cmd, self.dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "cluster.sh {cmd} failed");
    }

    /// The logs (stderr) of process `name` (`gateway1`, `api2`, …), for a failure's message.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn stop_redis(&self) {
        self.run("stop-redis");
    }

    pub fn start_redis(&self) {
        self.run("start-redis");
    }

    /// SIGKILLs gateway `index` (0-based, as in `gateways`) — that one process, by the pid
    /// `cluster.sh` recorded — and waits until its port refuses connections. Its pid file is
    /// removed so `down` never signals a pid the system may have reused.
    pub async fn kill_gateway(&self, index: usize) {
        let pid_file = self.dir.path().join(format!("gateway{}.pid", index + 1));
        let pid = std::fs::read_to_string(&pid_file).expect("gateway pid file");
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -KILL {}", pid.trim());
        std::fs::remove_file(&pid_file).unwrap();
        let addr = &self.gateways[index];
        super::eventually(
            "the killed gateway's port refuses connections",
            async || tokio::net::TcpStream::connect(addr).await.is_err(),
        )
        .await;
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to API process `index` (0-based, as in `apis`).
    pub fn signal_api(&self, index: usize, signal: &str) {
        let pid_file = self.dir.path().join(format!("api{}.pid", index + 1));
        let pid = std::fs::read_to_string(&pid_file).expect("api pid file");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", pid.trim());
    }

    /// SIGKILLs API process `index` and waits until its port refuses connections; its pid
    /// file is removed so `down` never signals a pid the system may have reused.
    pub async fn kill_api(&self, index: usize) {
        self.signal_api(index, "KILL");
        std::fs::remove_file(self.dir.path().join(format!("api{}.pid", index + 1))).unwrap();
        let addr = &self.apis[index];
        super::eventually(
            "the killed API process's port refuses connections",
            async || tokio::net::TcpStream::connect(addr).await.is_err(),
        )
        .await;
    }

    /// `redis-cli` against the cluster's Redis; returns stdout.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.redis_port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Subscribers of a room's channel across all gateways (`PUBSUB NUMSUB`).
    pub fn numsub(&self, room: &str) -> u64 {
        let out = self.redis_cli(&["pubsub", "numsub", &format!("sy:room:{{{room}}}")]);
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn ws(&self, addr: &str) -> String {
        format!("ws://{addr}/ws")
    }

    /// Asserts that every gateway refuses one more connection with `token` (429, the user's
    /// connection limit across the gateways).
    pub async fn refuses_another_connection(&self, token: &str) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderValue;
        for gw in &self.gateways {
            let mut req = self.ws(gw).into_client_request().unwrap();
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            let (status, body) = super::refused(req).await;
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["error"], "limit_exceeded", "{body}");
        }
    }

    /// A REST call to `base` (an API process or nginx).
    pub async fn call(
        &self,
        base: &str,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("http://{base}{path}"))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The HTTP status of `GET /readyz` on a process (0 when it does not answer).
    pub async fn readyz(&self, addr: &str) -> u16 {
        self.http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Waits until every gateway and API process answers `/readyz` with 200.
    pub async fn wait_ready(&self) {
        for process in self.gateways.iter().chain(&self.apis) {
            super::eventually("every process ready", async || {
                self.readyz(process).await == 200
            })
            .await;
        }
    }

    /// `POST /api/orders/{order}/status` as admin through `base`.
    pub async fn set_status(
        &self,
        base: &str,
        order: &str,
        status: &str,
    ) -> (u16, serde_json::Value) {
        self.call(
            base,
            "POST",
            &format!("/api/orders/{order}/status"),
            &super::admin(),
            Some(serde_json::json!({ "status": status })),
        )
        .await
    }

    /// `POST /api/orders/{order}/assign` as admin through `base`.
    pub async fn assign(&self, base: &str, order: &str, partner: &str) {
        let (status, body) = self
            .call(
                base,
                "POST",
                &format!("/api/orders/{order}/assign"),
                &super::admin(),
                Some(serde_json::json!({ "partner": partner })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Places an order of one `tea` (created in the catalog if missing: the distributed mode
    /// starts with an empty one) for `customer` through `base`.
    pub async fn create_order(&self, base: &str, customer: &str) -> String {
        let (status, _) = self
            .call(base, "GET", "/api/products/tea", &super::admin(), None)
            .await;
        if status == 404 {
            let tea = serde_json::json!({"name":"Tea","price_paise":250,"stock":1_000_000});
            let (status, body) = self
                .call(base, "PUT", "/api/products/tea", &super::admin(), Some(tea))
                .await;
            assert!(status == 201 || status == 200, "{body}");
        }
        let (status, body) = self
            .call(
                base,
                "POST",
                "/api/orders",
                &super::token(customer, switchyard_protocol::Role::Customer),
                Some(serde_json::json!({"items":[{"sku":"tea","qty":1,"unit_price_paise":250}],"address":"x"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", self.dir.path().to_str().unwrap()])
            .status();
    }
}
