#!/usr/bin/env bash
# The side-by-side load benchmark (issue #5): Switchyard vs Socket.IO 4 + @socket.io/redis-adapter.
#
#   benches/run.sh [--quick] [--debug] [--repeat N] [--skip-build] [--no-criterion] [--only "idle ..."]
#                  [--fleet-partners N]
#   benches/run.sh --soak [--soak-minutes M]
#
# Builds release, starts on loopback: redis-server + 2 Switchyard gateways + 1 API (distributed
# mode, shared JWT secret, temp dirs), a second redis-server + 2 peer instances (benches/peer/),
# and 2 bare fan-out servers (target/release/bare: the machine's limit, issue #17); runs the
# scenarios against them with target/release/loadgen; stops everything it started (by PID, trap
# on exit); writes benches/results/<scenario>-<system>[.rN].json, renders the PNG plots and
# regenerates BENCHMARKS.md (benches/plot.py, matplotlib in a venv under target/).
# --quick: every scenario with small counts and one short step (a smoke run of the harness,
# scripts/test.sh runs it; results go to target/bench-quick/, BENCHMARKS.md is not touched).
# --debug: the debug binaries (what `cargo test` built) instead of a release build.
# --soak: instead of the scenarios, 30 minutes (--soak-minutes) at 10,000 connections with mixed
# traffic (ordered events, latest-value events, subscribes/unsubscribes, 1 % of the clients
# reconnecting per minute): the slopes of the gateways' RSS and open files and of Redis' memory,
# and the loss (benches/results/soak-switchyard.json; `loadgen soak --help`).
#
# Scenarios: idle handshake broadcast orders slow api locations scale crud cluster (bare: idle, broadcast, orders).
# orders: the stepped ladder (Switchyard, the peer, bare), then once per invocation the sustained
#   target on Switchyard: one step of 60,000 events/s for 60 s (orders-sustained-switchyard.json;
#   loss, gaps, what the publisher could not publish, and whether every server was alive at the end).
# locations: Switchyard only (the peer has no relay handler); orders created/assigned via REST first.
# scale: 100,000 idle connections over 6 fresh gateways (Switchyard only; the target is about gateways).
# crud: the CRUD side (target/release/crudload): REST status change -> WebSocket event, and
#   payments, on SQLite with 1 API process vs PostgreSQL (durable, scripts/postgres.sh) with 2;
#   requests/s at p99 <= 50 ms and their ratio, in BENCHMARKS.md (benches/crud_report.py).
# catalog: product reads/s at p99 <= 5 ms through the API with the read cache on (Redis) and off,
#   and orders/s (stock reserved in the order's transaction) at p99 <= 50 ms, on SQLite with 1 API
#   process and PostgreSQL (durable) with 2, in BENCHMARKS.md (benches/catalog_report.py).
# cluster: the order-room scenario (Switchyard only) on two buses, one after the other in the same
#   run: one fresh redis-server, and a Redis Cluster of 3 primaries + 3 replicas
#   (scripts/redis-cluster.sh) — each with an API and 2 gateways of its own; events/s at
#   p99 <= 10 ms and Redis CPU per event (every node's CPU sampled), side by side (issue #13).
# chat: order chat over the socket (target/release/crudload chat, issue #14): customer/partner
#   pairs, customers on one gateway and partners on another, an API on SQLite and a Redis of its
#   own; messages/s at p99 <= 20 ms from `send` to the other side's chat.message event, through
#   the full durable path (API commit with the outbox row, relay, bus), in BENCHMARKS.md
#   (benches/chat_report.py). Stepping stops at the first step over the bound.
# fleet: 10,000 partners online on one gateway (target/release/loadgen fleet, issue #16), a ladder
#   of 10 % .. 100 % of them sending fixes at 4 Hz (4,000 .. 40,000 fixes/s), stopping at the
#   first step the gateway does not sustain (≥ 95 % accepted), twice on fresh gateways of the same
#   Redis and API: the plain order-room location path (SWITCHYARD_FLEET_POSITIONS=false, no admin)
#   and admin:fleet with 10 admins watching; the gateway's CPU per fix in both and their ratio at
#   the largest step both sustained, admin deliveries/s and latency, in BENCHMARKS.md
#   (benches/fleet_report.py). --fleet-partners N: N partners online instead (the ladder alike).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fleet_partners_arg=""; quick=0; repeat=1; build=1; criterion=1; profile=release; soak=0; soak_minutes=30
all_scenarios="idle handshake broadcast orders slow api locations scale crud catalog cluster chat fleet"
only=$all_scenarios
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --debug) profile=debug; shift ;;
    --soak) soak=1; only=""; criterion=0; shift ;;
    --soak-minutes) soak_minutes=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --skip-build) build=0; shift ;;
    --no-criterion) criterion=0; shift ;;
    --only) only=$2; shift 2 ;;
    --fleet-partners) fleet_partners_arg=$2; shift 2 ;;
    *) sed -n '2,49p' "$0"; exit 2 ;;
  esac
done
started=$(date +%s)
# Everything else on the machine before our servers start: CPU cores busy over one second (the load
# average lags by minutes, so it cannot tell a machine whose builds were just stopped).
busy_cores() { python3 -c '
import os, time
def t():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v), v[3] + v[4]
a, ia = t(); time.sleep(1); b, ib = t()
print(round((1 - (ib - ia) / max(1, b - a)) * os.cpu_count(), 2))'; }
others_start=$(busy_cores)
results="$root/benches/results"
[ $quick = 1 ] && results="$root/target/bench-quick"
mkdir -p "$results"
work=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
log() { echo "[$(date +%T)] $*" >&2; }

# ── processes we start, stopped by PID on exit ───────────────────────────────────────────────
started_pids=()
cleanup() {
  local pid
  for pid in "${started_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started_pids[@]}"; do
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done; log "error: $1 not ready"; return 1; }

start_redis() { # name -> prints port
  local port; port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    --maxclients 10000 --daemonize no --logfile "$work/$1.log" < /dev/null > /dev/null 2>&1 &
  started_pids+=($!); echo "$!" > "$work/$1.pid"
  for _ in $(seq 1 200); do redis-cli -p "$port" ping > /dev/null 2>&1 && break; sleep 0.05; done
  REPLY_PORT=$port
}

start_switchyard() { # role name
  local role=$1 name=$2 addr=""
  : > "$work/$name.out"   # exists before the background process opens it (no race with sed)
  "$bin/switchyard" "$role" --listen 127.0.0.1:0 < /dev/null > "$work/$name.out" 2> "$work/$name.log" &
  local pid=$!; started_pids+=("$pid"); echo "$pid" > "$work/$name.pid"
  for _ in $(seq 1 300); do
    addr=$(sed -n 's/^listening on //p' "$work/$name.out" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  wait_http "http://$addr/readyz"
  REPLY_ADDR=$addr; REPLY_PID=$pid
}

start_bare() { # name
  : > "$work/$1.out"
  "$bin/bare" --listen 127.0.0.1:0 < /dev/null > "$work/$1.out" 2> "$work/$1.log" &
  local pid=$!; started_pids+=("$pid"); local addr=""
  for _ in $(seq 1 300); do
    addr=$(sed -n 's/^listening on //p' "$work/$1.out" | head -n1)
    [ -n "$addr" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { cat "$work/$1.log" >&2; exit 1; }
  REPLY_ADDR=$addr; REPLY_PID=$pid
}

start_peer() { # name
  local port; port=$(free_port)
  : > "$work/$1.out"
  PORT=$port HOST=127.0.0.1 REDIS_URL="$PEER_REDIS_URL" node benches/peer/server.js \
    < /dev/null > "$work/$1.out" 2> "$work/$1.log" &
  local pid=$!; started_pids+=("$pid")
  for _ in $(seq 1 300); do grep -q listening "$work/$1.out" 2>/dev/null && break; sleep 0.05; done
  grep -q listening "$work/$1.out" || { cat "$work/$1.log" >&2; exit 1; }
  REPLY_ADDR=127.0.0.1:$port; REPLY_PID=$pid
}

# ── build, peer deps, plotting venv ──────────────────────────────────────────────────────────
bin="$root/target/$profile"
if [ $build = 1 ]; then
  log "cargo build --profile $profile -p switchyard -p switchyard-benches"   # loadgen, bare and crudload
  cargo build --profile "$([ $profile = debug ] && echo dev || echo release)" -q -p switchyard -p switchyard-benches
fi
[ -d benches/peer/node_modules ] || (log "npm ci (benches/peer)"; cd benches/peer && npm ci --no-audit --no-fund > /dev/null)
venv="$root/target/plot-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2> /dev/null; then
  (python3 -m venv "$venv" && "$venv/bin/pip" install -q matplotlib > "$work/pip.log" 2>&1) &
  pip_pid=$!
fi
loadgen="$bin/loadgen"

# ── Switchyard: redis + API + 2 gateways ─────────────────────────────────────────────────────
JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export JWT_SECRET
start_redis redis-switchyard; sy_redis_port=$REPLY_PORT
export REDIS_URL="redis://127.0.0.1:$sy_redis_port" DATABASE_URL="sqlite://$work/switchyard.db"
export SWITCHYARD_MAX_CONNECTIONS=19500 RUST_LOG=warn SWITCHYARD_DRAIN_TIMEOUT_MS=1000 SWITCHYARD_DRAIN_SPREAD_MS=200
start_switchyard api api1; api_addr=$REPLY_ADDR; api_pid=$REPLY_PID
export SWITCHYARD_API_URL="http://$api_addr"   # gateways have no database: they ask the API
start_switchyard gateway gateway1; gw1=$REPLY_ADDR; gw1_pid=$REPLY_PID
start_switchyard gateway gateway2; gw2=$REPLY_ADDR; gw2_pid=$REPLY_PID
sy_redis_pid=$(cat "$work/redis-switchyard.pid")
log "switchyard: gateways $gw1 $gw2, api $api_addr, redis $REDIS_URL"

# ── peer: its own redis + 2 Socket.IO instances ──────────────────────────────────────────────
start_redis redis-peer; PEER_REDIS_URL="redis://127.0.0.1:$REPLY_PORT"
peer_redis_pid=$(cat "$work/redis-peer.pid")
start_peer peer1; p1=$REPLY_ADDR; p1_pid=$REPLY_PID
start_peer peer2; p2=$REPLY_ADDR; p2_pid=$REPLY_PID
log "peer: instances $p1 $p2, redis $PEER_REDIS_URL"

# ── bare: 2 fan-out servers, the machine's limit (no auth, no Redis) ─────────────────────────
start_bare bare1; b1=$REPLY_ADDR; b1_pid=$REPLY_PID
start_bare bare2; b2=$REPLY_ADDR; b2_pid=$REPLY_PID
log "bare: $b1 $b2"

sy_targets=(--proto switchyard --target "$gw1" --target "$gw2" --pid "gateway1=$gw1_pid" --pid "gateway2=$gw2_pid" --pid "redis=$sy_redis_pid")
bare_targets=(--proto bare --target "$b1" --target "$b2" --pid "bare1=$b1_pid" --pid "bare2=$b2_pid")
peer_targets=(--proto socketio --target "$p1" --target "$p2" --pid "peer1=$p1_pid" --pid "peer2=$p2_pid" --pid "redis=$peer_redis_pid")

# ── sizes ────────────────────────────────────────────────────────────────────────────────────
if [ $quick = 1 ]; then # bounded smoke run: every load scenario, one short step each
  only=${only/ crud/}; crud_rates=20   # crud needs PostgreSQL and crudload's release build: not in the smoke run
  loc_orders=20; loc_fractions=1; scale_levels=30; scale_gateways=2; idle_levels=100; hs_count=300; hs_secs=1
  bc_clients=200; bc_rates=20; step=1; slow_step=1; or_clients=200; or_rates=500; slow_rates=500; api_clients=100; api_rates=200
  or_sustained_rate=500; or_sustained_secs=2
  read_rates=50; catalog_order_rates=20   # catalog: SQLite only in the smoke run
  chat_rates=20; chat_pairs=10; fleet_partners=20; fleet_active=10,20
else
  step=4; slow_step=6; loc_orders=2500; loc_fractions=0.1,0.2,0.4,1; scale_levels=8350,16700; scale_gateways=6; api_clients=2000
  idle_levels=5000,10000,18000; hs_count=60000; hs_secs=8; bc_clients=10000
  bc_rates=1,2,5,10,25,50,100,150,200   # to 2M deliveries/s: the bare limit on this machine is 1.0–1.6M (issue #17)
  or_clients=10000; or_rates=1000,5000,10000,15000,20000,30000,45000,60000,80000
  or_sustained_rate=60000; or_sustained_secs=60   # issue #17: 60,000 events/s for 60 s, no loss, no crash
  slow_rates=5000,20000; api_rates=1000,5000,10000; crud_rates=50,100,200,300,400,600,800,1200,1600,2400
  read_rates=250,500,1000,2000,3000,4000,6000,8000,11000,15000; catalog_order_rates=25,50,100,200,300,400,600,800,1200
  chat_rates=25,50,100,200,300,400,600,800,1000,1500; chat_pairs=200; fleet_partners=10000
  fleet_active=1000,2500,5000,7500,10000
fi

if [ -n "$fleet_partners_arg" ]; then # a smaller fleet: its ladder scaled down alike
  fleet_active=$(python3 -c "import sys; n = int(sys.argv[1]); print(','.join(str(max(1, n * k // 100)) for k in (10, 25, 50, 75, 100)))" "$fleet_partners_arg")
  fleet_partners=$fleet_partners_arg
fi

has() { [[ " $only " == *" $1 "* ]]; }

# The CRUD side on one engine: its own Redis, N API processes on DATABASE_URL, one gateway;
# both crudload scenarios; then those processes are stopped.
crud_run() { # label database_url api_count
  local label=$1 url=$2 count=$3 apis=() urls="" pids=() i gw scenario
  start_redis "redis-$label"; local redis="redis://127.0.0.1:$REPLY_PORT"
  pids+=("$(cat "$work/redis-$label.pid")")
  for i in $(seq 1 "$count"); do
    REDIS_URL=$redis DATABASE_URL=$url start_switchyard api "api-$label-$i"
    apis+=(--api "http://$REPLY_ADDR"); urls+="${urls:+,}http://$REPLY_ADDR"; pids+=("$REPLY_PID")
  done
  REDIS_URL=$redis SWITCHYARD_API_URL=$urls start_switchyard gateway "gateway-$label"
  gw=$REPLY_ADDR; pids+=("$REPLY_PID")
  for scenario in status payments; do
    "$bin/crudload" "$scenario" "${apis[@]}" --gateway "$gw" --label "$label" \
      --rates "$crud_rates" --step-secs "$step" --max-p99-ms 50 --json "$results/crud-$scenario-$label.json" > /dev/null
  done
  for i in "${pids[@]}"; do kill -TERM "$i" 2>/dev/null || true; done
}
# The catalog on one engine: N API processes on DATABASE_URL (a fresh one per cache setting:
# $2 with %s replaced by on/off), each setting with its own Redis; product reads with the read
# cache on and off, orders (stock reservation) with it on; then those processes are stopped.
catalog_run() { # label database_url_pattern api_count
  local label=$1 pattern=$2 count=$3 cache apis pids i url
  for cache in on off; do
    # shellcheck disable=SC2059
    url=$(printf "$pattern" "$cache")
    start_redis "redis-catalog-$label-$cache"; local redis="redis://127.0.0.1:$REPLY_PORT"
    apis=(); pids=("$(cat "$work/redis-catalog-$label-$cache.pid")")
    for i in $(seq 1 "$count"); do
      REDIS_URL=$redis DATABASE_URL=$url SWITCHYARD_CATALOG_CACHE=$([ $cache = on ] && echo true || echo false) \
        start_switchyard api "catalog-$label-$cache-$i"
      apis+=(--api "http://$REPLY_ADDR"); pids+=("$REPLY_PID")
    done
    "$bin/crudload" reads "${apis[@]}" --label "$label-cache-$cache" --rates "$read_rates" \
      --step-secs "$step" --max-p99-ms 5 --json "$results/catalog-reads-$label-cache-$cache.json" > /dev/null
    if [ $cache = on ]; then
      "$bin/crudload" orders "${apis[@]}" --label "$label" --rates "$catalog_order_rates" \
        --step-secs "$step" --max-p99-ms 50 --json "$results/catalog-orders-$label.json" > /dev/null
    fi
    for i in "${pids[@]}"; do kill -TERM "$i" 2>/dev/null || true; done
  done
}

# Order chat: its own Redis, an API on SQLite, 2 gateways (customers on one, partners on the
# other); the per-connection chat and op rates lifted (the bench offers the load, not one
# client); then those processes are stopped.
chat_run() {
  local api gws=() pids=() i
  start_redis redis-chat; local redis="redis://127.0.0.1:$REPLY_PORT"
  pids+=("$(cat "$work/redis-chat.pid")")
  export SWITCHYARD_CHAT_RATE=100000 SWITCHYARD_CHAT_BURST=100000 SWITCHYARD_OP_RATE=100000 SWITCHYARD_OP_BURST=100000
  REDIS_URL=$redis DATABASE_URL="sqlite://$work/chat.db" start_switchyard api api-chat
  api=$REPLY_ADDR; pids+=("$REPLY_PID")
  for i in 1 2; do
    REDIS_URL=$redis SWITCHYARD_API_URL="http://$api" start_switchyard gateway "gateway-chat-$i"
    gws+=(--gateway "$REPLY_ADDR"); pids+=("$REPLY_PID")
  done
  unset SWITCHYARD_CHAT_RATE SWITCHYARD_CHAT_BURST SWITCHYARD_OP_RATE SWITCHYARD_OP_BURST
  "$bin/crudload" chat --api "http://$api" "${gws[@]}" --customers "$chat_pairs" --label sqlite-1api \
    --rates "$chat_rates" --step-secs "$step" --max-p99-ms 20 --json "$results/chat-sqlite-1api.json" > /dev/null
  for i in "${pids[@]}"; do kill -TERM "$i" 2>/dev/null || true; done
}

# The order-room scenario on a bus of its own: an API and 2 gateways on REDIS_URL=url, loadgen
# publishing through the broker crate; the Redis processes sampled as the extra --pid arguments
# say. Writes cluster-<label>.json; then those processes are stopped.
bus_run() { # label redis_url --pid name=pid...
  local label=$1 url=$2 api pids=() targets=() i; shift 2
  REDIS_URL=$url DATABASE_URL="sqlite://$work/bus-$label.db" start_switchyard api "api-$label"
  api=$REPLY_ADDR; pids+=("$REPLY_PID")
  for i in 1 2; do
    REDIS_URL=$url SWITCHYARD_API_URL="http://$api" start_switchyard gateway "gateway-$label-$i"
    targets+=(--target "$REPLY_ADDR" --pid "gateway$i=$REPLY_PID"); pids+=("$REPLY_PID")
  done
  # A debug gateway answers handshakes slower: a slower ramp keeps the handshakes in flight under
  # SWITCHYARD_MAX_HTTP_CONNECTIONS (512; beyond, 503).
  # Its clients too: 2,000 (Redis CPU per event hardly depends on the number of rooms).
  local ramp=2000 clients=$or_clients
  if [ "$profile" = debug ] && [ $quick = 0 ]; then ramp=400; clients=2000; fi
  "$loadgen" run --label "cluster-$label" --rooms pairs --clients "$clients" --ramp "$ramp" --rates "$or_rates" \
    --step-secs "$step" --max-p99-ms 250 --proto switchyard "${targets[@]}" "$@" --publisher redis --redis "$url" \
    --json "$results/cluster-$label$sfx.json"
  for i in "${pids[@]}"; do kill -TERM "$i" 2>/dev/null || true; done
}
# The fleet: two fresh gateways on the scenarios' Redis and API, one per phase — plain (fixes to
# their order rooms only, no admin) then fleet (admin:fleet on, 10 admins); then they are stopped.
fleet_run() {
  local pids=() targets=() phase
  for phase in plain fleet; do
    SWITCHYARD_FLEET_POSITIONS=$([ $phase = plain ] && echo false || echo true) \
      start_switchyard gateway "gateway-fleet-$phase"
    targets+=(--target "$REPLY_ADDR" --pid "gateway-$phase=$REPLY_PID"); pids+=("$REPLY_PID")
  done
  "$loadgen" fleet --proto switchyard "${targets[@]}" --pid "redis=$sy_redis_pid" --api "http://$api_addr" \
    --partners "$fleet_partners" --active "$fleet_active" --hz 4 --phases plain,fleet --admins 0,10 --step-secs "$step" \
    --json "$results/fleet-switchyard.json"
  for i in "${pids[@]}"; do kill -TERM "$i" 2>/dev/null || true; done
}
suffix() { [ "$repeat" -gt 1 ] && echo ".r$1" || echo ""; }
for s in $only; do rm -f "$results/$s"-*.json; done   # no stale repeats mixed into the medians

for r in $(seq 1 "$repeat"); do
  sfx=$(suffix "$r")
  if has idle && [ "$r" = 1 ]; then # RSS per connection: once (fresh processes) per run
    log "scenario 1 idle ($idle_levels per instance)"
    "$loadgen" idle "${sy_targets[@]}" --levels "$idle_levels" --work-dir "$work" --json "$results/idle-switchyard.json"
    "$loadgen" idle "${peer_targets[@]}" --levels "$idle_levels" --work-dir "$work" --json "$results/idle-socketio.json"
    "$loadgen" idle "${bare_targets[@]}" --levels "$idle_levels" --work-dir "$work" --json "$results/idle-bare.json"
  fi
  if has handshake; then
    log "scenario 2 handshake (one instance)"
    "$loadgen" handshake --proto switchyard --target "$gw1" --pid "gateway1=$gw1_pid" --pid "redis=$sy_redis_pid" \
      --count "$hs_count" --secs "$hs_secs" --concurrency 256 --json "$results/handshake-switchyard$sfx.json"
    "$loadgen" handshake --proto socketio --target "$p1" --pid "peer1=$p1_pid" --pid "redis=$peer_redis_pid" \
      --count "$hs_count" --secs "$hs_secs" --concurrency 256 --json "$results/handshake-socketio$sfx.json"
  fi
  if has broadcast; then
    log "scenario 3 broadcast ($bc_clients members, rates $bc_rates)"
    common=(run --label broadcast --rooms shared --clients "$bc_clients" --ramp 2000 --rates "$bc_rates" --step-secs "$step" --max-p99-ms 2000)
    "$loadgen" "${common[@]}" "${sy_targets[@]}" --publisher redis --redis "$REDIS_URL" --json "$results/broadcast-switchyard$sfx.json"
    "$loadgen" "${common[@]}" "${peer_targets[@]}" --publisher peer --redis "$PEER_REDIS_URL" --json "$results/broadcast-socketio$sfx.json"
    "$loadgen" "${common[@]}" "${bare_targets[@]}" --publisher bare --json "$results/broadcast-bare$sfx.json"
  fi
  if has orders; then
    log "scenario 4 order rooms ($or_clients clients in 2-member rooms, rates $or_rates)"
    common=(run --label orders --rooms pairs --clients "$or_clients" --ramp 2000 --rates "$or_rates" --step-secs "$step" --max-p99-ms 250)
    "$loadgen" "${common[@]}" "${sy_targets[@]}" --publisher redis --redis "$REDIS_URL" --json "$results/orders-switchyard$sfx.json"
    "$loadgen" "${common[@]}" "${peer_targets[@]}" --publisher peer --redis "$PEER_REDIS_URL" --json "$results/orders-socketio$sfx.json"
    "$loadgen" "${common[@]}" "${bare_targets[@]}" --publisher bare --json "$results/orders-bare$sfx.json"
    if [ "$r" = 1 ]; then # the sustained target: one long step at one rate, once per invocation
      log "scenario 4b order rooms sustained ($or_sustained_rate events/s for $or_sustained_secs s, Switchyard only)"
      "$loadgen" run --label orders-sustained --rooms pairs --clients "$or_clients" --ramp 2000 --rates "$or_sustained_rate" \
        --step-secs "$or_sustained_secs" --max-p99-ms 250 "${sy_targets[@]}" --publisher redis --redis "$REDIS_URL" \
        --json "$results/orders-sustained-switchyard.json"
    fi
  fi
  if has slow && [ "$r" = 1 ]; then
    log "scenario 7 slow consumers (orders with 5% of clients not reading, rates $slow_rates)"
    common=(run --label slow --rooms pairs --clients "$or_clients" --ramp 2000 --rates "$slow_rates" --step-secs "$slow_step" --max-p99-ms 1000 --stall-percent 5)
    "$loadgen" "${common[@]}" "${sy_targets[@]}" --publisher redis --redis "$REDIS_URL" --json "$results/slow-switchyard.json"
    "$loadgen" "${common[@]}" "${peer_targets[@]}" --publisher peer --redis "$PEER_REDIS_URL" --json "$results/slow-socketio.json"
  fi
  if has api && [ "$r" = 1 ]; then
    log "scenario 6 api end-to-end (publish API -> WebSocket, Switchyard only)"
    "$loadgen" run --label api --rooms pairs --clients "$api_clients" --ramp 2000 --rates "$api_rates" --step-secs "$step" \
      --max-p99-ms 250 --batch 10 "${sy_targets[@]}" --pid "api=$api_pid" --publisher api --api "http://$api_addr" \
      --json "$results/api-switchyard.json"
  fi
  if has locations && [ "$r" = 1 ]; then
    log "scenario 5 locations ($loc_orders orders: partners at 4 Hz -> customers, Switchyard only)"
    "$loadgen" locations "${sy_targets[@]}" --pid "api=$api_pid" --api "http://$api_addr" --orders "$loc_orders" \
      --hz 4 --fractions "$loc_fractions" --step-secs "$step" --ramp 2000 --json "$results/locations-switchyard.json"
  fi
  if has scale && [ "$r" = 1 ]; then
    log "scale: idle connections over $scale_gateways fresh gateways ($scale_levels per gateway)"
    scale_args=(); scale_pids=()
    for i in $(seq 3 $((2 + scale_gateways))); do
      start_switchyard gateway "gateway$i"
      scale_args+=(--target "$REPLY_ADDR" --pid "gateway$i=$REPLY_PID"); scale_pids+=("$REPLY_PID")
    done
    # 6 children ramp at once: 333/s each stays within the 2,000/s ramp limit.
    "$loadgen" idle --proto switchyard "${scale_args[@]}" --pid "redis=$sy_redis_pid" --levels "$scale_levels" \
      --ramp 333 --sources 16 --work-dir "$work" --json "$results/scale-switchyard.json"
    for pid in "${scale_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  fi
  if has cluster; then
    log "cluster: order rooms on one Redis vs a Redis Cluster (3 primaries + 3 replicas), rates $or_rates"
    start_redis redis-single
    bus_run single "redis://127.0.0.1:$REPLY_PORT" --pid "redis=$(cat "$work/redis-single.pid")"
    kill -TERM "$(cat "$work/redis-single.pid")" 2>/dev/null || true
    rc="$work/redis-cluster-$r"
    "$root/scripts/redis-cluster.sh" up "$rc" --watch $$ > /dev/null
    # Read, not sourced: the URL's `&`s would background half of the assignment (and REDIS_URL
    # would stay the main topology's single Redis).
    cluster_url=$(sed -n 's/^REDIS_URL=//p' "$rc/redis-cluster.env")
    case "$cluster_url" in redis-cluster://*) ;; *) log "error: no cluster URL in $rc/redis-cluster.env"; exit 1 ;; esac
    cluster_pids=()
    for port in $(. "$rc/redis-cluster.env" && echo "$REDIS_PORTS"); do
      pid=$(cat "$rc/node-$port.pid"); started_pids+=("$pid")
      role=$(redis-cli -p "$port" role | head -n1)
      cluster_pids+=(--pid "redis-$([ "$role" = master ] && echo primary || echo replica)-$port=$pid")
    done
    bus_run cluster "$cluster_url" "${cluster_pids[@]}"
    "$root/scripts/redis-cluster.sh" down "$rc"
  fi
  if has crud && [ "$r" = 1 ]; then
    log "scenario 8 crud (REST status -> WebSocket event, payments): SQLite 1 API vs PostgreSQL 2 APIs, rates $crud_rates"
    crud_run sqlite-1api "sqlite://$work/crud.db" 1
    pg_dir="$root/target/bench-postgres"   # under target/: its owner (nobody, as root) can reach it
    "$root/scripts/postgres.sh" stop "$pg_dir"
    crud_run postgres-2api "$("$root/scripts/postgres.sh" start "$pg_dir" --durable --while $$)" 2
    "$root/scripts/postgres.sh" stop "$pg_dir"
  fi
  if has chat && [ "$r" = 1 ]; then
    log "scenario 10 chat ($chat_pairs customer/partner pairs on 2 gateways, messages/s $chat_rates, p99 <= 20 ms)"
    chat_run
  fi
  if has fleet && [ "$r" = 1 ]; then
    log "scenario 11 fleet ($fleet_partners partners online on one gateway, $fleet_active of them sending at 4 Hz: plain order rooms vs admin:fleet with 10 admins)"
    fleet_run
  fi
  if has catalog && [ "$r" = 1 ]; then
    log "scenario 9 catalog (product reads, cache on/off; orders with stock reservation): reads $read_rates, orders $catalog_order_rates"
    catalog_run sqlite-1api "sqlite://$work/catalog-%s.db" 1
    if [ $quick = 0 ]; then
      pg_dir="$root/target/bench-postgres"
      "$root/scripts/postgres.sh" stop "$pg_dir"
      pg_url=$("$root/scripts/postgres.sh" start "$pg_dir" --durable --while $$)
      catalog_run postgres-2api "$pg_url" 2   # the same database for both settings
      "$root/scripts/postgres.sh" stop "$pg_dir"
    fi
  fi
done

if [ $soak = 1 ]; then
  log "soak: $soak_minutes min at 10,000 connections, mixed traffic, 1 %/min reconnecting"
  "$loadgen" soak "${sy_targets[@]}" --redis "$REDIS_URL" --clients 10000 --minutes "$soak_minutes" \
    --json "$results/soak-switchyard.json"
fi

# ── machine and versions ─────────────────────────────────────────────────────────────────────
{
  echo "{"
  echo "\"cpu\": $(lscpu | sed -n 's/^Model name: *//p' | head -n1 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),"
  echo "\"cores\": $(nproc),"
  echo "\"mem_gib\": $(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo),"
  echo "\"kernel\": \"$(uname -r)\","
  echo "\"rustc\": \"$(rustc --version)\","
  echo "\"node\": \"$(node --version)\","
  echo "\"redis\": \"$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')\","
  echo "\"socketio\": \"$(node -p 'require("./benches/peer/node_modules/socket.io/package.json").version')\","
  echo "\"redis_adapter\": \"$(node -p 'require("./benches/peer/node_modules/@socket.io/redis-adapter/package.json").version')\","
  echo "\"redis_emitter\": \"$(node -p 'require("./benches/peer/node_modules/@socket.io/redis-emitter/package.json").version')\","
  echo "\"switchyard_commit\": \"$(git rev-parse --short HEAD)\","
  echo "\"date\": \"$(date -u +%F)\","
  echo "\"repeat\": $repeat,"
  echo "\"profile\": \"$profile\","
  echo "\"only\": \"$only\","
  echo "\"quick\": $quick,"
  echo "\"others_busy_cores_start\": $others_start,"
  echo "\"load_average\": $(cut -d' ' -f1 /proc/loadavg)"
  echo "}"
} > "$results/machine.next.json"
# A run of every scenario describes them all (machine.json, the header of BENCHMARKS.md); a run
# of some (`--only`) stamps just those (machine.<scenario>.json, shown under their own sections),
# so an older run's figures are not presented under a newer date and commit.
if [ "$only" = "$all_scenarios" ] || [ $quick = 1 ]; then
  mv "$results/machine.next.json" "$results/machine.json"
else
  for scenario in $only; do cp "$results/machine.next.json" "$results/machine.$scenario.json"; done
  rm "$results/machine.next.json"
fi

# ── stop servers before criterion (quiet machine for it) ─────────────────────────────────────
cleanup; started_pids=(); work=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
if [ $criterion = 1 ] && [ $quick = 0 ]; then
  log "criterion hot paths"
  { echo "# measured $(date -u +%FT%RZ), load average $(cut -d' ' -f1 /proc/loadavg) at the start"
    cargo bench -q -p switchyard-benches --bench hot_paths -- --warm-up-time 1 --measurement-time 3 2>&1
  } | tee "$results/criterion.txt" | grep -E 'time:|^[a-z_]+/' >&2 || true
fi
if [ -n "${pip_pid:-}" ]; then wait "$pip_pid" || { log "pip install matplotlib failed: see target/"; }; fi
if [ $quick = 0 ]; then
  "$venv/bin/python" benches/plot.py "$results" "$root/BENCHMARKS.md"
  python3 benches/crud_report.py "$results" "$root/BENCHMARKS.md"
  python3 benches/catalog_report.py "$results" "$root/BENCHMARKS.md"
  python3 benches/chat_report.py "$results" "$root/BENCHMARKS.md"
  python3 benches/fleet_report.py "$results" "$root/BENCHMARKS.md"
else
  "$venv/bin/python" benches/plot.py "$results" "$results/BENCHMARKS.md"
fi
if [ $quick = 1 ]; then # the smoke run fails when a scenario measured nothing (no timing is judged)
  python3 - "$results" <<'PY'
import glob, json, os, sys
bad = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    r, name = json.load(open(f)), os.path.basename(f)
    if "steps" in r and (not r["steps"] or any(st.get("delivered", 0) == 0 for st in r["steps"])):
        bad.append(f"{name}: a step delivered nothing ({r.get('stopped_because')})")
    if "levels" in r and (r.get("error") or r["levels"][-1]["connected"] == 0):
        bad.append(f"{name}: idle connections failed ({r.get('error')})")
    if "handshakes" in r and r["handshakes"] == 0:
        bad.append(f"{name}: no handshake succeeded ({r.get('first_error')})")
if bad:
    sys.exit("benches/run.sh --quick: " + "; ".join(bad))
print(f"benches/run.sh --quick: every scenario measured something ({len(glob.glob(os.path.join(sys.argv[1], '*.json')))} result files)")
PY
fi
log "done in $(( $(date +%s) - started )) s; results in $results"
