//! The real `switchyard` binary as a child process: for tests that measure the process
//! (RSS), signal it, or need it to be a separate program.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `switchyard <args>` in `dir` and waits for its `listening on` line.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(dir)
            .env_remove("JWT_SECRET")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("switchyard exited before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        ServerProcess { child, addr }
    }

    /// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl ServerProcess {
    /// One REST call; returns the status and the JSON body (`null` when not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        super::http_call(
            &reqwest::Client::new(),
            method,
            &self.url(path),
            token,
            body,
        )
        .await
    }
}
