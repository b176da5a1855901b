//! Child processes: the real `switchyard` binary, for tests that measure the process (RSS),
//! signal it, read its output, or need it to be a separate program; and any other program
//! run to completion within a time limit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `switchyard` binary cargo built for the running test: it sits in the directory above
/// the test executable (`target/<profile>/deps/<test>-<hash>`). (`CARGO_BIN_EXE_switchyard`
/// is only known when compiling an integration test, not this library.)
pub fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable under target/<profile>/deps");
    let bin = profile.join("switchyard");
    assert!(
        bin.is_file(),
        "{} not found: build it (cargo test -p switchyard builds it)",
        bin.display()
    );
    bin
}

/// A command running the `switchyard` binary, shielded from the environment the tests run in.
pub fn switchyard() -> Command {
    shielded(Command::new(bin()))
}

/// `cmd` without the settings of the caller's shell: a server's keys, database and Redis come
/// from the test, never from whoever runs it.
fn shielded(mut cmd: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("SWITCHYARD_")
            || [
                "JWT_SECRET",
                "JWT_PUBLIC_KEY_FILE",
                "DATABASE_URL",
                "REDIS_URL",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

/// Waits for `child` to exit; kills it and answers `None` when it runs over `limit`.
pub fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion within `limit` (failing if it runs over), returning its status
/// and its combined stdout and stderr.
pub fn run(mut cmd: Command, limit: Duration) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let file = std::fs::File::create(&out).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let status = wait_at_most(&mut child, limit);
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    match status {
        Some(status) => (status, output),
        None => panic!("{cmd:?} ran over {limit:?}:\n{output}"),
    }
}

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
        let mut cmd = shielded(Command::new("sh"));
        cmd.args(["-c", "ulimit -n \"$0\" && exec \"$@\""])
            .arg(limit.to_string())
            .arg(bin())
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
        let mut cmd = switchyard();
        cmd.args(args);
        ServerProcess::spawn(cmd, dir, env, stderr)
    }

    fn spawn(mut cmd: Command, dir: &Path, env: &[(&str, &str)], stderr: Stdio) -> ServerProcess {
        cmd.current_dir(dir)
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

    /// Waits for the process to exit; fails when it runs over `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        wait_at_most(&mut self.child, limit)
            .unwrap_or_else(|| panic!("process did not exit in {limit:?}"))
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
