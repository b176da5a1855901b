#!/usr/bin/env bash
# A Redis Cluster on loopback — 3 primaries, 3 replicas — for the cluster topology of
# scripts/cluster.sh and for the tests (switchyard/tests/common/redis_cluster.rs).
#
#   scripts/redis-cluster.sh up DIR [--node-timeout MS] [--watch PID]
#       Starts six `redis-server --cluster-enabled yes` on free loopback ports (state and logs
#       under DIR), joins them with `redis-cli --cluster create … --cluster-replicas 1`, waits
#       until every node reports cluster_state:ok, and writes DIR/redis-cluster.env:
#       REDIS_URL (fred's redis-cluster://host:port?node=host:port&… form) and REDIS_PORTS.
#       --node-timeout: cluster-node-timeout (default 5000 ms; a failover takes about twice
#       that). --watch PID: tear the cluster down by itself once process PID has exited.
#   scripts/redis-cluster.sh down DIR     Stops every node (by pid file).
#
# Needs redis-server and redis-cli 7.0+ (sharded pub/sub).
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,16p' "$0"; exit 2; }
shift 2
node_timeout=5000; watch=""
while [ $# -gt 0 ]; do
  case "$1" in
    --node-timeout) node_timeout=$2; shift 2 ;;
    --watch) watch=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

down() {
  local f pid
  for f in "$dir"/node-*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

case "$cmd" in
  up)
    for tool in redis-server redis-cli; do
      command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool not found; install it (Debian: apt-get install redis-server redis-tools)" >&2; exit 1; }
    done
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # Six ports whose cluster bus ports (port + 10000) are free too.
    read -r -a ports <<< "$(python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
ports = []
while len(ports) < 6:
    p = random.randint(20000, 50000)
    if p not in ports and free(p) and free(p + 10000):
        ports.append(p)
print(" ".join(map(str, ports)))
PY
)"
    for port in "${ports[@]}"; do
      mkdir -p "$dir/$port"
      redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$dir/$port/nodes.conf" --cluster-node-timeout "$node_timeout" \
        --cluster-replica-validity-factor 0 --cluster-require-full-coverage no \
        --save '' --appendonly no --dir "$dir/$port" --daemonize no \
        --logfile "$dir/$port/redis.log" < /dev/null > /dev/null 2>&1 &
      echo $! > "$dir/node-$port.pid"
    done
    for port in "${ports[@]}"; do
      for _ in $(seq 1 200); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
    done
    nodes=(); for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes > "$dir/create.log" 2>&1 \
      || { cat "$dir/create.log" >&2; down; exit 1; }
    # Every node agrees, and every replica has its primary's data link up.
    for port in "${ports[@]}"; do
      ok=""
      for _ in $(seq 1 400); do
        if redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' \
          && [ "$(redis-cli -p "$port" cluster nodes | grep -c 'connected')" -ge 6 ]; then ok=1; break; fi
        sleep 0.05
      done
      [ -n "$ok" ] || { echo "error: redis cluster node $port is not ok" >&2; down; exit 1; }
    done
    url="redis-cluster://${nodes[0]}?"
    for n in "${nodes[@]:1}"; do url+="node=$n&"; done
    {
      echo "REDIS_URL=${url%&}"
      echo "REDIS_PORTS=\"${ports[*]}\""
    } > "$dir/redis-cluster.env"
    if [ -n "$watch" ]; then
      nohup bash -c "while kill -0 $watch 2>/dev/null; do sleep 1; done; '$0' down '$dir' && rm -rf '$dir'" \
        < /dev/null > /dev/null 2>&1 &
    fi
    cat "$dir/redis-cluster.env"
    ;;
  down)
    [ -d "$dir" ] || exit 0
    down
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
