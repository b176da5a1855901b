//! Tools from PyPI that tests run against the real binary (Schemathesis, openapi-python-client,
//! kosoku); run them with [`crate::process::run`].
//! `scripts/test.sh` installs each, pinned, into a venv under `target/` and names it in an
//! environment variable; run alone, a test finds the venv there itself.

use std::path::PathBuf;

/// The program `name`: `$var` when set, else the venv `target/<name>-<version>/`, else on
/// `PATH`.
pub fn tool(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let target = crate::workspace_root().join("target");
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
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    };
    venv.or_else(on_path).unwrap_or_else(|| {
        panic!(
            "{name} not found: run ./scripts/test.sh (it installs it into target/{name}-<version>), \
             or set {var} to its path"
        )
    })
}
