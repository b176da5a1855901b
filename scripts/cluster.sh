#!/usr/bin/env bash
# The distributed topology from plain processes on loopback — the same shape as
# docker-compose.yml: PostgreSQL, redis-server, N gateways, M API processes, nginx in front.
#
#   scripts/cluster.sh up DIR [--gateways N] [--apis M] [--bin PATH] [--redis-cluster]
#                      [--redis-url URL [--redis-port PORT]] [--database-url URL]
#       Starts everything with its state, logs and pid files under DIR, waits until every
#       process is ready, and writes DIR/cluster.env (ports and URLs, shell syntax).
#       Defaults: 3 gateways, 2 API processes, and a PostgreSQL server of its own in
#       DIR/postgres (scripts/postgres.sh). --database-url: the API processes use that database
#       instead (sqlite:// only with --apis 1: an SQLite file means one API process). Only the
#       API processes get a database; every process runs in its own directory DIR/<name>.
#       --redis-cluster: a Redis Cluster (3 primaries, 3 replicas, scripts/redis-cluster.sh)
#       instead of one redis-server. --redis-url: the processes use this Redis (a managed one,
#       a cluster, a proxy), and no redis-server is started — unless --redis-port, where one
#       is started (behind the URL's proxy, say).
#   scripts/cluster.sh restart-redis DIR   Stops redis-server and starts it again, same port.
#   scripts/cluster.sh stop-redis DIR / start-redis DIR   The same in two steps.
#   scripts/cluster.sh down DIR            Stops every process it started (by pid file).
#
# Environment: JWT_SECRET (generated into DIR when unset), SWITCHYARD_* settings pass through.
# Needs redis-server and nginx (Debian: apt-get install redis-server nginx-light), and
# PostgreSQL unless --database-url is given (scripts/postgres.sh installs it when root).
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,26p' "$0"; exit 2; }
shift 2
gateways=3; apis=2; redis_cluster=""; redis_url=""; redis_port=""; database_url=""
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/switchyard"
while [ $# -gt 0 ]; do
  case "$1" in
    --gateways) gateways=$2; shift 2 ;;
    --apis) apis=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --redis-cluster) redis_cluster=1; shift ;;
    --redis-url) redis_url=$2; shift 2 ;;
    --redis-port) redis_port=$2; shift 2 ;;
    --database-url) database_url=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || { echo "error: $1 not found; install it (Debian: apt-get install $2)" >&2; exit 1; }; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits are generous (60 s): on a loaded machine a debug build migrating PostgreSQL can take
# many seconds to answer; a healthy start on an idle one takes well under a second.
wait_for() { # url or redis port; up to 60 s
  for _ in $(seq 1 1200); do
    if [ "$1" = redis ]; then redis-cli -p "$2" ping >/dev/null 2>&1 && return 0
    else curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; fi
    sleep 0.05
  done
  echo "error: $* did not become ready" >&2; return 1
}

start_redis() {
  local port=$1
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize no --logfile "$dir/redis.log" < /dev/null >/dev/null 2>&1 &
  echo $! > "$dir/redis.pid"
  wait_for redis "$port"
}

# A switchyard process in its own working directory DIR/NAME; its chosen port is read from its
# "listening on" line. Extra arguments are VAR=value settings for that process only.
start_switchyard() { # role name [VAR=value ...]
  local role=$1 name=$2 log="$dir/$2.log"
  shift 2
  mkdir -p "$dir/$name"
  (cd "$dir/$name" && exec env "$@" "$bin" "$role" --listen 127.0.0.1:0) < /dev/null > "$log.out" 2> "$log" &
  echo $! > "$dir/$name.pid"
  for _ in $(seq 1 1200); do
    addr=$(sed -n 's/^listening on //p' "$log.out" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null || { echo "error: $name exited; see $log" >&2; cat "$log" >&2; exit 1; }
    sleep 0.05
  done
  [ -n "$addr" ] || { echo "error: $name did not report its address" >&2; exit 1; }
  wait_for "http://$addr/readyz"
  echo "$addr"
}

stop_pidfile() {
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

case "$cmd" in
  up)
    need redis-server redis-server; need redis-cli redis-tools; need nginx nginx-light; need curl curl
    [ -x "$bin" ] || { echo "error: $bin missing; run: cargo build --release" >&2; exit 1; }
    mkdir -p "$dir/nginx"
    dir=$(cd "$dir" && pwd)
    if [ -z "${JWT_SECRET:-}" ]; then
      [ -f "$dir/jwt.secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/jwt.secret"
      JWT_SECRET=$(cat "$dir/jwt.secret")
    fi
    if [ -n "$redis_cluster" ]; then
      redis_url=$(bash "$root/scripts/redis-cluster.sh" up "$dir/redis-cluster" | sed -n 's/^REDIS_URL=//p')
    elif [ -z "$redis_url" ] || [ -n "$redis_port" ]; then
      redis_port=${redis_port:-$(free_port)}
      start_redis "$redis_port"
      redis_url=${redis_url:-redis://127.0.0.1:$redis_port}
    fi
    export JWT_SECRET REDIS_URL="$redis_url"
    # Only the API processes have a database. Gateways have none: they read room snapshots
    # from Redis and ask the APIs (SWITCHYARD_API_URL) when Redis cannot answer.
    unset DATABASE_URL
    if [ -z "$database_url" ]; then
      database_url=$("$root/scripts/postgres.sh" start "$dir/postgres")
    elif [[ "$database_url" == sqlite:* ]] && [ "$apis" -gt 1 ]; then
      echo "error: SQLite means one API process (a file on one machine); use --apis 1 or a postgres:// URL" >&2
      exit 2
    fi
    api_addrs=(); gw_addrs=()
    for i in $(seq 1 "$apis"); do
      api_addrs+=("$(start_switchyard api "api$i" DATABASE_URL="$database_url")")
    done
    api_urls=""; for a in "${api_addrs[@]}"; do api_urls+="${api_urls:+,}http://$a"; done
    for i in $(seq 1 "$gateways"); do
      gw_addrs+=("$(start_switchyard gateway "gateway$i" SWITCHYARD_API_URL="$api_urls")")
    done
    nginx_port=$(free_port)
    gw_servers=""; for a in "${gw_addrs[@]}"; do gw_servers+="server $a; "; done
    api_servers=""; for a in "${api_addrs[@]}"; do api_servers+="server $a; "; done
    LISTEN="127.0.0.1:$nginx_port" GATEWAY_SERVERS="$gw_servers" API_SERVERS="$api_servers" \
      NGINX_RUN_DIR="$dir/nginx" python3 - "$root/nginx.conf" "$dir/nginx/nginx.conf" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
names = ("LISTEN", "GATEWAY_SERVERS", "API_SERVERS", "NGINX_RUN_DIR")
text = re.sub(r"\$\{(\w+)\}", lambda m: os.environ[m.group(1)] if m.group(1) in names else m.group(0), text)
open(sys.argv[2], "w").write(text)
PY
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
    "$nginx_bin" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -g "daemon off;" < /dev/null > /dev/null 2> "$dir/nginx/stderr.log" &
    echo $! > "$dir/nginx.pid"
    wait_for "http://127.0.0.1:$nginx_port/nginx-health"
    {
      echo "NGINX=127.0.0.1:$nginx_port"
      echo "REDIS_PORT=$redis_port"
      echo "REDIS_URL=$REDIS_URL"
      echo "DATABASE_URL=$database_url"
      echo "API_URLS=$api_urls"
      echo "JWT_SECRET=$JWT_SECRET"
      echo "GATEWAYS=\"${gw_addrs[*]}\""
      echo "APIS=\"${api_addrs[*]}\""
    } > "$dir/cluster.env"
    cat "$dir/cluster.env"
    ;;
  restart-redis|stop-redis|start-redis)
    dir=$(cd "$dir" && pwd)
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
    [ "$cmd" = start-redis ] || stop_pidfile "$dir/redis.pid"
    [ "$cmd" = stop-redis ] || start_redis "$REDIS_PORT"
    ;;
  down)
    [ -d "$dir" ] || exit 0
    stop_pidfile "$dir/nginx.pid"
    for f in "$dir"/gateway*.pid "$dir"/api*.pid; do [ -e "$f" ] && stop_pidfile "$f"; done
    stop_pidfile "$dir/redis.pid"
    if [ -d "$dir/redis-cluster" ]; then bash "$root/scripts/redis-cluster.sh" down "$dir/redis-cluster"; fi
    if [ -d "$dir/postgres" ]; then "$root/scripts/postgres.sh" stop "$dir/postgres"; fi
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
