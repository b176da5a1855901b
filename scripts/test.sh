#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against real servers on loopback,
# and the criterion benches compiled and run once in test mode.
#
# Needs only the Rust toolchain today. Tests that need external programs (redis-server,
# nginx, chromium) install them from Debian packages here, or stop with a message that
# says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

cargo test --workspace --all-targets --locked "$@"
