#!/usr/bin/env bash
# Failover, side by side in one run: mysocket's three-node local cluster and a three-node etcd
# 3.4 (Debian's etcd-server, its default timings: heartbeat 100 ms, election timeout 1000 ms).
#
#   bench/failover.sh                 # TRIALS=20 leader kills per system, SECS=10 per write point
#   SKIP_BUILD=1 TRIALS=5 bench/failover.sh
#
# (a) Leader failover: find the leader, kill -9 it, time until both survivors name the same new
#     leader (each polled every 10 ms: mysocket's GET /cluster, etcd's maintenance status);
#     restart the killed node, wait until all three agree again, repeat (bench/failover.py).
# (b) Tunnel failover at scale: TUNNELS (default 1000) tunnels, one socket each, held by node 1
#     through an SSH session each (mysocket-fleet: russh, as mysocketctl); node 1 killed
#     with -9; the time until 50%, 99% and 100% of the sockets answer through nodes 2 and 3, the
#     claims per second, and the p99 of another tenant's socket asked through node 3 all along,
#     before and during the storm (bench/failover_tunnels.py).
# (c) Writes: one client sent to the leader, one sent to a follower, and 64 clients spread
#     over the three, creating then deleting records (mysocket-loadgen, as bench/registry.sh),
#     p50 and p99 latency.
#
# Prints a table and, last, `leader failover mysocket/etcd: X.XX` (the ratio of the medians:
# below 1 is faster than etcd).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mysocket-target}"
TRIALS="${TRIALS:-20}"
TUNNELS="${TUNNELS:-1000}"
VENV="${VENV:-/var/tmp/mysocket-bench-venv}"
SECS="${SECS:-10}"
ulimit -n 65536 2>/dev/null || true

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing etcd (Debian's etcd-server and etcd-client)..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import asyncssh' 2>/dev/null; then
  echo "setting up $VENV with asyncssh (PyPI)..." >&2
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q asyncssh >&2
fi
[[ -n "${SKIP_BUILD:-}" ]] || cargo build --release -q --workspace
LOADGEN="$CARGO_TARGET_DIR/release/mysocket-loadgen"

WORK="$(mktemp -d /tmp/mysocket-failover.XXXXXX)"
export MYSOCKET_LOCAL_DIR="$WORK/cluster"
cleanup() {
  deploy/local-cluster.sh down >/dev/null 2>&1 || true
  for i in 1 2 3; do
    [[ -f "$WORK/e$i.pid" ]] && kill -9 "$(cat "$WORK/e$i.pid")" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- mysocket: the local cluster in a folder of its own ---
for ip in 127.0.0.1 127.0.0.2 127.0.0.3; do
  if (exec 3<>"/dev/tcp/$ip/7070") 2>/dev/null; then
    echo "$ip:7070 is in use (a local cluster left running?); stop it first" >&2
    exit 1
  fi
done
deploy/local-cluster.sh up >/dev/null
echo "== mysocket: $TRIALS leader kills" >&2
M="$(python3 bench/failover.py mysocket "$MYSOCKET_LOCAL_DIR" "$TRIALS")"

# --- (b) tunnels: node 1 holding TUNNELS of them, killed ---
T='{}'
if [[ "$TUNNELS" -gt 0 ]]; then
  deploy/local-cluster.sh up >/dev/null 2>&1
  ssh-keygen -q -t ed25519 -N '' -f "$WORK/tunnel-key"
  echo "== mysocket: $TUNNELS tunnels on node 1, node 1 killed" >&2
  T="$("$VENV/bin/python" bench/failover_tunnels.py "$MYSOCKET_LOCAL_DIR" "$TUNNELS" "$WORK/tunnel-key" \
    "$CARGO_TARGET_DIR/release/mysocket-fleet")"
  deploy/local-cluster.sh up >/dev/null 2>&1
fi

# --- etcd: three members on 127.0.2.1-3, default timings ---
INITIAL="e1=http://127.0.2.1:2380,e2=http://127.0.2.2:2380,e3=http://127.0.2.3:2380"
for i in 1 2 3; do
  ip="127.0.2.$i"
  cat >"$WORK/start-e$i.sh" <<SH
#!/usr/bin/env bash
ETCD_UNSUPPORTED_ARCH= etcd --name e$i --data-dir "$WORK/e$i" \\
  --listen-client-urls http://$ip:2379 --advertise-client-urls http://$ip:2379 \\
  --listen-peer-urls http://$ip:2380 --initial-advertise-peer-urls http://$ip:2380 \\
  --initial-cluster "$INITIAL" --initial-cluster-state new --initial-cluster-token failover \\
  >>"$WORK/e$i.log" 2>&1 &
echo \$! >"$WORK/e$i.pid"
SH
  chmod +x "$WORK/start-e$i.sh"
  "$WORK/start-e$i.sh"
done
ETCD_EPS="http://127.0.2.1:2379,http://127.0.2.2:2379,http://127.0.2.3:2379"
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint health >/dev/null 2>&1 && break
  sleep 0.3
done
echo "== etcd: $TRIALS leader kills" >&2
E="$(python3 bench/failover.py etcd "$WORK" "$TRIALS")"

# --- writes: 1 and 64 clients ---
SSHKEY='ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEKB/+HUsFGo5IjxjdpUNkfai/lOgRCdHyy1c7BmPvcN bench'
MYSOCKET_EPS="http://127.0.0.1:7070,http://127.0.0.2:7070,http://127.0.0.3:7070"
# One client sent to the leader, one to a follower (which forwards to the leader: where a
# client lands is chance), and 64 spread over the three.
mysocket_leader() {
  curl -fsS --max-time 3 http://127.0.0.1:7070/cluster | python3 -c 'import json,sys; print("http://127.0.0.%d:7070" % json.load(sys.stdin)["leader"])'
}
etcd_leader() {
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint status -w json |
    python3 -c 'import json,sys; print([s["Endpoint"] for s in json.load(sys.stdin) if s["Status"]["leader"] == s["Status"]["header"]["member_id"]][0])'
}
follower_of() { # a comma-separated endpoint list, the leader: the first other endpoint
  tr ',' '\n' <<<"$1" | grep -vxF "$2" | head -1
}
point() { # system, label, endpoints, clients
  local r
  if [[ "$1" == mysocket ]]; then
    r="$("$LOADGEN" --target mysocket --endpoints "$3" --clients "$4" --secs "$SECS" --sshkey "$SSHKEY")"
  else
    r="$("$LOADGEN" --target etcd --endpoints "$3" --clients "$4" --secs "$SECS")"
  fi
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["to"]=sys.argv[2]; print(json.dumps(r))' "$r" "$2"
}
ML="$(mysocket_leader)"
EL="$(etcd_leader)"
W=(
  "$(point mysocket "the leader" "$ML" 1)"
  "$(point etcd "the leader" "$EL" 1)"
  "$(point mysocket "a follower" "$(follower_of "$MYSOCKET_EPS" "$ML")" 1)"
  "$(point etcd "a follower" "$(follower_of "$ETCD_EPS" "$EL")" 1)"
  "$(point mysocket "all three" "$MYSOCKET_EPS" 64)"
  "$(point etcd "all three" "$ETCD_EPS" 64)"
)

python3 - "$M" "$E" "$T" "${W[@]}" <<'PY'
import json, sys
m, e, t = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
print("leader failover (kill -9 of the leader until both survivors name a new one), %d trials each" % m["trials"])
print("%-9s %10s %10s %10s %10s" % ("system", "median ms", "p90 ms", "min ms", "max ms"))
for r in (m, e):
    print("%-9s %10d %10d %10d %10d" % (r["system"], r["median_ms"], r["p90_ms"], r["min_ms"], r["max_ms"]))
print("  mysocket: %s" % " ".join(map(str, m["times_ms"])))
print("  etcd:     %s" % " ".join(map(str, e["times_ms"])))
print()
if t:
    print("tunnel failover: %d tunnels held by node 1, node 1 (%s) killed with -9" % (
        t["tunnels"], "the leader" if t["killed_leader"] else "a follower"))
    print("  answering again through nodes 2 and 3: 50%% %ss, 99%% %ss, 100%% %ss (%d of %d)" % (
        t["t50_s"], t["t99_s"], t["t100_s"], t["answered"], t["tunnels"]))
    print("  claims absorbed: %s/s on average, %s in the busiest second" % (t["claims_per_sec_mean"], t["claims_per_sec_peak"]))
    print("  another tenant's socket through node 3: p99 %s ms before, %s ms during (median %s / %s ms); errors %s" % (
        t["bystander_p99_ms_before"], t["bystander_p99_ms_storm"], t["bystander_median_ms_before"],
        t["bystander_median_ms_storm"], t["bystander_errors"]))
    print()
print("writes (create then delete, each one write)")
print("%-9s %8s %-11s %10s %8s %8s %7s" % ("system", "clients", "sent to", "writes/s", "p50 ms", "p99 ms", "errors"))
for w in map(json.loads, sys.argv[4:]):
    print("%-9s %8d %-11s %10.0f %8.2f %8.2f %7d" % (w["target"], w["clients"], w["to"], w["writes_per_sec"], w["p50_ms"], w["p99_ms"], w["errors"]))
print("leader failover mysocket/etcd: %.2f" % (m["median_ms"] / max(e["median_ms"], 1)))
PY
