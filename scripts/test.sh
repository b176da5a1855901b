#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against real servers on loopback,
# the criterion benches compiled and run once in test mode, and a smoke run of the load
# benchmark harness (benches/run.sh --quick).
#
# Needs the Rust toolchain; PostgreSQL (scripts/postgres.sh), redis-server, redis-cli, nginx,
# curl, python3, docker-compose,
# node/npm (the JavaScript client's tests) and chromium (the dashboard's browser test) are
# installed here from Debian packages when missing (as root), or the script stops with a
# message that says what to install. The PyPI tools (kosoku, Schemathesis,
# openapi-python-client), pinned below, are installed into venvs under target/ when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

# The distributed-mode tests run a real redis-server and nginx (scripts/cluster.sh); the
# compose file is validated with docker-compose (no Docker engine needed for that).
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
missing=()
for pair in redis-server:redis-server redis-cli:redis-tools nginx:nginx-light curl:curl \
            python3:python3 docker-compose:docker-compose node:nodejs npm:npm; do
  have "${pair%%:*}" || missing+=("${pair#*:}")
done
# The dashboard's browser test drives Debian's chromium (CHROMIUM overrides its path).
if [ -z "${CHROMIUM:-}" ]; then
  have chromium || missing+=(chromium)
elif [ ! -x "$CHROMIUM" ]; then
  echo "error: CHROMIUM=$CHROMIUM is not an executable; unset it to use Debian's chromium" >&2
  exit 1
fi
# PyPI tools, pinned, each in its own venv under target/ (Debian's own python3 refuses pip
# installs outside one, and venvs need python3-venv there):
# - kosoku runs the Autobahn cases of the RFC 6455 conformance test (also pinned in
#   switchyard/tests/autobahn/expected.json);
# - Schemathesis fuzzes the OpenAPI document against the binary (switchyard/tests/schemathesis.rs);
# - openapi-python-client generates the client of switchyard/tests/generated_client.rs.
KOSOKU_VERSION=0.1.0
SCHEMATHESIS_VERSION=4.32.5
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
kosoku_venv="$PWD/target/kosoku-$KOSOKU_VERSION"
schemathesis_venv="$PWD/target/schemathesis-$SCHEMATHESIS_VERSION"
generator_venv="$PWD/target/openapi-python-client-$OPENAPI_PYTHON_CLIENT_VERSION"
for tool in "$kosoku_venv/bin/kosoku" "$schemathesis_venv/bin/schemathesis" \
            "$generator_venv/bin/openapi-python-client"; do
  if [ ! -x "$tool" ]; then
    python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
    break
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (Debian packages) for the tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts packaged services on install where it can; the tests start their own.
  else
    echo "error: missing ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

# Installs PyPI package $2==$3 into venv $1 unless its program $4 is already there.
pypi_tool() {
  local venv=$1 package=$2 version=$3 program=$4
  if [ ! -x "$venv/bin/$program" ]; then
    echo "installing $package==$version (PyPI) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$package==$version"
  fi
}
if ! command -v kosoku >/dev/null 2>&1; then
  pypi_tool "$kosoku_venv" kosoku "$KOSOKU_VERSION" kosoku
  export PATH="$kosoku_venv/bin:$PATH"
fi
pypi_tool "$schemathesis_venv" schemathesis "$SCHEMATHESIS_VERSION" schemathesis
pypi_tool "$generator_venv" openapi-python-client "$OPENAPI_PYTHON_CLIENT_VERSION" openapi-python-client
export SCHEMATHESIS="$schemathesis_venv/bin/schemathesis"
export OPENAPI_PYTHON_CLIENT="$generator_venv/bin/openapi-python-client"

# Valid, and the distributed topology it promises (scripts/check-compose.py): PostgreSQL with a
# health check and a named volume, APIs on it, gateways without volume or database, nginx in
# front, no file shared between services.
# PyYAML comes with Schemathesis, so its venv's python reads the resolved YAML.
JWT_SECRET=compose-config-check docker-compose -f docker-compose.yml config \
  | "$schemathesis_venv/bin/python" scripts/check-compose.py
echo "docker-compose.yml: valid"
# The Grafana dashboard must parse (switchyard/tests/metrics.rs also checks that every
# metric it queries is exported).
python3 -m json.tool deploy/grafana/dashboards/switchyard.json >/dev/null
echo "deploy/grafana/dashboards/switchyard.json: valid JSON"

# One PostgreSQL server for the whole run, shared by every test through
# SWITCHYARD_TEST_POSTGRES_URL; each test creates its own database on it (store/src/testing.rs).
# scripts/postgres.sh installs Debian's postgresql when missing (as root) and runs a throwaway
# cluster under target/ as an unprivileged user; it is stopped on exit (and, should this script
# be killed, by its watcher once this shell is gone).
pg_dir="$PWD/target/postgres-test-run"
scripts/postgres.sh stop "$pg_dir"
SWITCHYARD_TEST_POSTGRES_URL=$(scripts/postgres.sh start "$pg_dir" --while $$)
export SWITCHYARD_TEST_POSTGRES_URL
trap 'scripts/postgres.sh stop "$pg_dir"' EXIT
echo "PostgreSQL for the tests: $SWITCHYARD_TEST_POSTGRES_URL"

# The test client logs every frame it exchanges here; the AsyncAPI check then validates them
# all against protocol/asyncapi.yaml (switchyard/tests/asyncapi.rs).
export SWITCHYARD_FRAME_LOG="$PWD/target/frames"
rm -rf "$SWITCHYARD_FRAME_LOG" target/tmp/schemathesis/summary.txt
cargo test --workspace --all-targets --locked "$@"
# The fuzzing run's seed and case counts (switchyard/tests/schemathesis.rs).
cat target/tmp/schemathesis/summary.txt 2>/dev/null || true
cargo test --locked -p switchyard --test asyncapi -- --ignored --nocapture captured_frames_match_the_document

# The load-benchmark harness (benches/run.sh) in a small bounded smoke run of every scenario
# against the debug binaries — Switchyard, the Socket.IO peer and the bare fan-out server — so a
# broken harness fails here, not on the day of a measurement. No timing is asserted.
benches/run.sh --quick --debug

# The JavaScript client (clients/js) against the binary cargo test just built: `ws` is its
# only (dev) dependency, pinned by package-lock.json.
bin="$PWD/target/debug/switchyard"
if [ ! -x "$bin" ]; then
  echo "error: $bin not found after cargo test (the JavaScript client's tests need it)" >&2
  exit 1
fi
(cd clients/js && npm ci --no-audit --no-fund --silent && SWITCHYARD_BIN="$bin" node --test test/)

# The dashboard (web/) in headless Chromium against the same binary: playwright-core, pinned by
# web/test/package-lock.json, drives the system's chromium (no browser download).
chromium_bin="${CHROMIUM:-$(command -v chromium || echo /usr/bin/chromium)}"
(cd web/test && npm ci --no-audit --no-fund --silent \
  && SWITCHYARD_BIN="$bin" CHROMIUM="$chromium_bin" node --test dashboard.test.js)
