#!/usr/bin/env bash
# Registry write throughput: mysocket's three-node local cluster against a three-node etcd 3.4
# cluster, side by side on this machine, with the same load generator and the same shape of
# load (create then delete a record; each is one write) at 1, 64 and 1000 concurrent clients.
#
#   bench/registry.sh            # SECS=10 per point by default
#
# Prints a table and, last, `mysocket/etcd writes ratio at 1000 clients: X.XX`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mysocket-target}"
SECS="${SECS:-10}"
CLIENTS=(${CLIENTS:-1 64 1000})
ulimit -n 65536 2>/dev/null || true

if ! command -v etcd >/dev/null; then
  echo "installing etcd (Debian's etcd-server)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
cargo build --release -q --workspace
LOADGEN="$CARGO_TARGET_DIR/release/mysocket-loadgen"

deploy/local-cluster.sh up >/dev/null
MYSOCKET_EPS="http://127.0.0.1:7070,http://127.0.0.2:7070,http://127.0.0.3:7070"

WORK="$(mktemp -d /tmp/mysocket-bench.XXXXXX)"
ETCD_PIDS=()
cleanup() { for p in "${ETCD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
INITIAL="e1=http://127.0.2.1:2380,e2=http://127.0.2.2:2380,e3=http://127.0.2.3:2380"
for i in 1 2 3; do
  ip="127.0.2.$i"
  ETCD_UNSUPPORTED_ARCH= etcd --name "e$i" --data-dir "$WORK/e$i" \
    --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "$INITIAL" --initial-cluster-state new --initial-cluster-token bench \
    >"$WORK/e$i.log" 2>&1 &
  ETCD_PIDS+=($!)
done
ETCD_EPS="http://127.0.2.1:2379,http://127.0.2.2:2379,http://127.0.2.3:2379"
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" endpoint health >/dev/null 2>&1 && break
  sleep 0.3
done
SSHKEY="$(cat node/tests/fixtures/bench_key.pub 2>/dev/null || echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEKB/+HUsFGo5IjxjdpUNkfai/lOgRCdHyy1c7BmPvcN bench')"

printf "%-9s %8s %12s %10s %10s %8s\n" system clients "writes/s" "p50 ms" "p99 ms" errors
RATIO=""
for c in "${CLIENTS[@]}"; do
  m="$("$LOADGEN" --target mysocket --endpoints "$MYSOCKET_EPS" --clients "$c" --secs "$SECS" --sshkey "$SSHKEY")"
  e="$("$LOADGEN" --target etcd --endpoints "$ETCD_EPS" --clients "$c" --secs "$SECS")"
  for r in "$m" "$e"; do
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%-9s %8d %12.0f %10.2f %10.2f %8d" % (r["target"], r["clients"], r["writes_per_sec"], r["p50_ms"], r["p99_ms"], r["errors"]))' "$r"
  done
  RATIO="$(python3 -c 'import json,sys; m=json.loads(sys.argv[1]); e=json.loads(sys.argv[2]); print("%.2f" % (m["writes_per_sec"]/max(e["writes_per_sec"],1e-9)))' "$m" "$e")"
done
echo "mysocket/etcd writes ratio at ${CLIENTS[-1]} clients: $RATIO"
