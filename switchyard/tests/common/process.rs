//! The real `switchyard` binary as a child process: for tests that measure the process
//! (RSS), signal it, read its output, or need it to be a separate program.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A `switchyard` process; SIGKILLed on drop if still running.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stdout line, including those printed after `listening on` (read by a thread).
    pub stdout: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_with_stderr(dir, args, env, Stdio::null())
    }

    /// Starts with stderr (the logs) written to `log`.
    pub fn start_logging_to(
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> ServerProcess {
        let file = std::fs::File::create(log).unwrap();
        ServerProcess::start_with_stderr(dir, args, env, Stdio::from(file))
    }

    /// Starts with the open-file limit (`ulimit -n`) lowered to `limit`, logging to `log`.
    pub fn start_with_open_files(
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
        limit: u32,
    ) -> ServerProcess {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ulimit -n \"$0\" && exec \"$@\""])
            .arg(limit.to_string())
            .arg(BIN)
            .args(args);
        let file = std::fs::File::create(log).unwrap();
        ServerProcess::spawn(cmd, dir, env, Stdio::from(file))
    }

    fn start_with_stderr(
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> ServerProcess {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        ServerProcess::spawn(cmd, dir, env, stderr)
    }

    fn spawn(mut cmd: Command, dir: &Path, env: &[(&str, &str)], stderr: Stdio) -> ServerProcess {
        cmd.current_dir(dir)
            .env_remove("JWT_SECRET")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = Vec::new();
        let addr = loop {
            let line = lines
                .next()
                .expect("switchyard exited before listening")
                .unwrap();
            stdout.push(line.clone());
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.parse().unwrap();
            }
        };
        // Collect the token banner that follows in the embedded mode, and anything else.
        let stdout = Arc::new(Mutex::new(stdout));
        let collected = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        ServerProcess {
            child,
            addr,
            stdout,
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
