//! Tools from PyPI that tests run against the real binary (Schemathesis, openapi-python-client).
//! `scripts/test.sh` installs each, pinned, into a venv under `target/` and names it in an
//! environment variable; run alone, a test finds the venv there itself.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The program `name` of the venv `target/<name>-<version>/`, or `$var` when set.
pub fn tool(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let venv = std::fs::read_dir(&target)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| {
            p.is_file()
                && p.parent()
                    .and_then(|bin| bin.parent())
                    .and_then(|venv| venv.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-")))
        })
        .max();
    venv.unwrap_or_else(|| {
        panic!(
            "{name} not found: run ./scripts/test.sh (it installs it into target/{name}-<version>), \
             or set {var} to its path"
        )
    })
}

/// Runs `cmd` to completion within `limit` (killed after it), returning its status and
/// combined output.
pub fn run(mut cmd: Command, limit: Duration) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let file = std::fs::File::create(&out).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(&out).unwrap_or_default();
            panic!("{cmd:?} ran over {limit:?}:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, std::fs::read_to_string(&out).unwrap_or_default())
}
