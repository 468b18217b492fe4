#!/usr/bin/env bash
# A three-node mysocket cluster on this machine: nodes 1, 2 and 3 on 127.0.0.1, .2 and .3 with
# the default ports. Data, logs and pid files live in one folder ($MYSOCKET_LOCAL_DIR, default
# ./.local-cluster). Its rate limits are raised for development and benchmarks, whose clients
# all come from this machine. `up` twice is harmless and restarts a node that died; `down` stops only the
# processes this script started.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
DIR="${MYSOCKET_LOCAL_DIR:-$ROOT/.local-cluster}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mysocket-target}"
BIN="$CARGO_TARGET_DIR/release/mysocketd"
CTL="$CARGO_TARGET_DIR/release/mysocketctl"
IDS=(1 2 3)
INITIAL="1=127.0.0.1:7071,2=127.0.0.2:7071,3=127.0.0.3:7071"

ip_of() { echo "127.0.0.$1"; }
pidfile() { echo "$DIR/node-$1.pid"; }

running() {
  local pf; pf="$(pidfile "$1")"
  [[ -f "$pf" ]] || return 1
  local pid; pid="$(cat "$pf")"
  # Only a process that is our mysocketd for this node counts (pids get reused).
  [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "mysocketd --id $1 "
}

build() {
  echo "building release binaries (first build compiles RocksDB: ~15 minutes)..."
  cargo build --release --workspace >&2
}

start_node() {
  local id="$1" ip; ip="$(ip_of "$id")"
  mkdir -p "$DIR"
  "$BIN" --id "$id" --host "$ip" --data-dir "$DIR/node-$id" \
    --cluster-secret-file "$DIR/cluster-secret" --operator-token-file "$DIR/operator-token" \
    --initial-cluster "$INITIAL" --dns-listen "$ip:5353" \
    --login-rate 100000 --signup-rate 100000 --write-rate 100000 --max-connections-per-source 100000 \
    >>"$DIR/node-$id.log" 2>&1 &
  echo $! > "$(pidfile "$id")"
  echo "started node $id (pid $!) on $ip"
}

status() {
  for id in "${IDS[@]}"; do
    if running "$id"; then echo "node $id: running (pid $(cat "$(pidfile "$id")")), API http://$(ip_of "$id"):7070"
    else echo "node $id: stopped"; fi
  done
  if command -v curl >/dev/null; then
    echo
    curl -fsS --max-time 3 "http://127.0.0.1:7070/cluster" 2>/dev/null || \
      curl -fsS --max-time 3 "http://127.0.0.2:7070/cluster" 2>/dev/null || echo "(no node answered /cluster)"
    echo
  fi
}

wait_leader() {
  for _ in $(seq 1 120); do
    for id in "${IDS[@]}"; do
      if curl -fsS --max-time 1 "http://$(ip_of "$id"):7070/readyz" >/dev/null 2>&1; then return 0; fi
    done
    sleep 0.5
  done
  echo "no leader after 60 s; see $DIR/node-*.log" >&2
  return 1
}

case "${1:-}" in
  up)
    command -v curl >/dev/null || { echo "curl is needed: apt-get install -y curl" >&2; exit 1; }
    build
    mkdir -p "$DIR"
    # Two credentials, never the same: the cluster secret (nodes among themselves) and the
    # operator token (membership, the dashboard's detail, metrics; MYSOCKET_OPERATOR_TOKEN_FILE
    # for mysocketctl).
    for f in cluster-secret operator-token; do
      if [[ ! -s "$DIR/$f" ]]; then
        (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/$f")
      fi
    done
    for id in "${IDS[@]}"; do
      if running "$id"; then echo "node $id already running"; else start_node "$id"; fi
    done
    wait_leader
    echo
    status
    cat <<NEXT
The cluster is up. Data and logs: $DIR

Next:
  $CTL --help                       # the CLI
  curl http://127.0.0.1:7070/cluster    # leader, term, nodes
  dig @127.0.0.1 -p 5353 localhost NS   # the cluster's DNS: each node answers with the live nodes
  export MYSOCKET_OPERATOR_TOKEN_FILE=$DIR/operator-token   # the operator's credential
  $CTL cluster status                   # each node's role, applied index, tunnels
  deploy/local-cluster.sh status        # this summary again
  deploy/local-cluster.sh logs          # follow the node logs
  deploy/local-cluster.sh down          # stop the three nodes
NEXT
    ;;
  down)
    for id in "${IDS[@]}"; do
      if running "$id"; then
        pid="$(cat "$(pidfile "$id")")"
        kill -TERM "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "stopped node $id"
      fi
      rm -f "$(pidfile "$id")"
    done
    ;;
  status) status ;;
  logs) exec tail -n 50 -F "$DIR"/node-*.log ;;
  *)
    echo "usage: $0 up|down|status|logs" >&2
    exit 2
    ;;
esac
