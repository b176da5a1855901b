#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: a fresh cluster (initdb) in DIR, listening on a
# free loopback port only, trust authentication (nothing but this machine can reach it).
#
#   scripts/postgres.sh start DIR [--while PID] [--durable]
#       Creates and starts the cluster and prints its URL (postgres://postgres@127.0.0.1:PORT/postgres).
#       With --while PID, a watcher stops it and deletes DIR once process PID has exited
#       (a test binary that started its own server). Tests run without fsync; --durable keeps
#       PostgreSQL's defaults (fsync, synchronous commit) for benchmarks.
#   scripts/postgres.sh stop DIR     Stops the server and deletes DIR.
#
# Needs Debian's postgresql package (installed here via apt-get when missing and run as root;
# otherwise the script says what to install). PostgreSQL refuses to run as root: as root, the
# cluster belongs to and runs as the unprivileged user `nobody`.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,14p' "$0"; exit 2; }
shift 2
watch_pid=""; durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
while [ $# -gt 0 ]; do
  case "$1" in
    --while) watch_pid=$2; shift 2 ;;
    --durable) durability=""; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

# Runs a PostgreSQL program as the cluster's owner.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

case "$cmd" in
  start)
    if [ -z "$(bindir)" ]; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing postgresql (Debian package) for the tests" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
      fi
      if [ -z "$(bindir)" ]; then
        echo "error: PostgreSQL not found (no /usr/lib/postgresql/*/bin); install it (Debian: sudo apt-get install postgresql)" >&2
        exit 1
      fi
    fi
    bin=$(bindir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    data="$dir/data"
    if [ ! -f "$data/PG_VERSION" ]; then
      rm -rf "$data"; mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown nobody "$dir" "$data"
      as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { echo "error: initdb failed; see $dir/initdb.log" >&2; cat "$dir/initdb.log" >&2; exit 1; }
    fi
    port=$(free_port)
    # Loopback TCP only (no Unix socket); unless --durable, fsync off: a throwaway cluster
    # trades durability for speed. Enough connections for several API processes and parallel tests.
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories= $durability -c max_connections=400" \
      start >/dev/null \
      || { echo "error: PostgreSQL did not start; see $dir/postgres.log" >&2; cat "$dir/postgres.log" >&2; exit 1; }
    echo "$port" > "$dir/port"
    if [ -n "$watch_pid" ]; then
      # Detached from the caller's pipes, so the caller reading our output is not kept waiting.
      nohup bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" stop "$3"' \
        watcher "$watch_pid" "$0" "$dir" </dev/null >/dev/null 2>&1 &
    fi
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    [ -d "$dir" ] || exit 0
    bin=$(bindir)
    if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
