#!/usr/bin/env bash
# Data plane: the same local origin (an iperf3 server and nginx) reached directly, through
# OpenSSH `ssh -R`, bore, rathole, and mysocket (the tunnel on the node that takes the public
# connection, and relayed from another node), with the same tools and durations for every row,
# in one run on this machine; and the resident memory a node spends per idle tunnel (measured
# first, while node 1 is fresh).
#
#   bench/dataplane.sh          # SECS=5 per measurement, ROUNDS=5, TUNNELS=1000 idle tunnels
#   SKIP_BUILD=1 bench/dataplane.sh   # use the binaries already in $CARGO_TARGET_DIR/release
#   ONLY=mysocket TUNNELS=0 bench/dataplane.sh   # only the rows matching ONLY; no idle tunnels
#   REUSEPORT=1 bench/dataplane.sh   # nginx listens with `reuseport` (see below)
#
# Per row: iperf3 -t SECS (sender Gbit/s); wrk -t2 -c50 -dSECS --latency (keep-alive req/s,
# p50, p99); the same wrk with `Connection: close` (every request on a new connection: the
# origin closes it after the answer and wrk reconnects); errors = wrk's non-2xx answers plus
# its socket errors over both wrk runs. Every system is set up first; then ROUNDS rounds each
# measure every system once, in the same order, and the table gives each column's median over
# the rounds (errors: the sum), so a slow spell of this shared machine weighs on all rows alike
# instead of on whichever row it fell on. The rounds' own rows go to stderr as they come.
# mysocket: the local cluster (deploy/local-cluster.sh; a running one is reused and left up),
# a tcp socket for iperf3 and an http socket for wrk (`Host: <dnsname>` on port 8080), both
# tunnelled by `mysocketctl connect` to node 1's SSH server. "same-node" hits 127.0.0.1 (node 1),
# "relayed" hits 127.0.0.2, which relays to node 1. "haproxy -> same-node": Debian's haproxy
# (TCP mode, splice-auto, 256 KiB buffers) on 127.0.0.5 in front of node 1's ports, a mature proxy
# as the extra hop: what any relaying hop costs on this machine. "tcp socket" (keep-alive and new
# connections only): nginx behind a tcp socket on node 1, the same plain TCP tunnel bore and
# rathole give, without the edge's HTTP layer.
# Idle tunnels: a Python asyncssh client (venv in /var/tmp/mysocket-bench-venv) opens TUNNELS
# SSH sessions to node 1, one remote forward each, spread over accounts of at most
# PER_ACCOUNT sessions (the node's default per-account session limit is 20); node 1's VmRSS
# is read before the sessions open and once they are all up. The accounts are made through
# node 2's API: their password hashes (argon2, 19 MiB each) would otherwise swell node 1's
# heap just before the first reading and make the difference meaningless.
#
# Prints a table, the RSS per idle tunnel, keep-alive mysocket/bore (http and tcp socket) and
# relayed/same-node ratios and, last, `mysocket/openssh throughput ratio: X.XX`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mysocket-target}"
SECS="${SECS:-5}"
ROUNDS="${ROUNDS:-5}"
TUNNELS="${TUNNELS:-1000}"
PER_ACCOUNT="${PER_ACCOUNT:-20}"
VENV="${VENV:-/var/tmp/mysocket-bench-venv}"
CLUSTER_DIR="${MYSOCKET_LOCAL_DIR:-$ROOT/.local-cluster}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- tools and peers: Debian packages; bore and rathole from crates.io, built once ---
need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v curl >/dev/null || need+=(curl)
command -v haproxy >/dev/null || need+=(haproxy)
command -v ss >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  echo "installing ${need[*]} (Debian)..." >&2
  apt-get update -qq
  if [[ " ${need[*]} " == *" nginx "* ]] && apt-cache show nginx-light >/dev/null 2>&1; then
    need=("${need[@]/#nginx/nginx-light}")
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
PEER_TARGET=/var/tmp/peer-target
if ! command -v bore >/dev/null; then
  echo "building bore (cargo install bore-cli, once)..." >&2
  CARGO_TARGET_DIR=$PEER_TARGET cargo install -q --locked -j1 bore-cli >&2 || echo "could not build bore" >&2
fi
if ! command -v rathole >/dev/null; then
  echo "building rathole (cargo install rathole, once)..." >&2
  # rathole 0.5.0's own Cargo.lock pins time 0.3.29, which no longer compiles with current
  # Rust (E0282), so a --locked install fails; without --locked cargo picks a newer time.
  CARGO_TARGET_DIR=$PEER_TARGET cargo install -q --locked -j1 rathole >&2 2>/dev/null ||
    CARGO_TARGET_DIR=$PEER_TARGET cargo install -q -j1 rathole >&2 ||
    CARGO_TARGET_DIR=$PEER_TARGET cargo install -q -j1 rathole --no-default-features --features server,client,noise >&2 ||
    echo "could not build rathole" >&2
fi
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import asyncssh' 2>/dev/null; then
  echo "setting up $VENV with asyncssh (PyPI)..." >&2
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q asyncssh >&2 || echo "could not install asyncssh" >&2
fi
[[ -n "${SKIP_BUILD:-}" ]] || cargo build --release -q --workspace
BIN="$CARGO_TARGET_DIR/release"
CTL="$BIN/mysocketctl"

WORK="$(mktemp -d /tmp/mysocket-dataplane.XXXXXX)"
PIDS=()
CLUSTER_STARTED=""
cleanup() {
  local i p
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    p="${PIDS[$i]}"
    kill -TERM "$p" 2>/dev/null || true
    # mysocketctl deletes its socket on SIGTERM; give everything a moment to go.
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [[ -n "$CLUSTER_STARTED" ]]; then deploy/local-cluster.sh down >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# bg NAME CMD...: run in the background, log to $WORK/NAME.log, remember the pid for cleanup.
bg() { local name=$1; shift; "$@" >"$WORK/$name.log" 2>&1 & PIDS+=($!); }
wait_listen() { # port: something listens on it, checked without connecting (a probe through a
  # tunnel would reach the origin's iperf3 server and could leave it busy with a dead client)
  for _ in $(seq 1 150); do [[ -n "$(ss -Hltn "sport = :$1")" ]] && return 0; sleep 0.1; done
  echo "nothing listens on port $1" >&2
  return 1
}
wait_port() { # host port
  for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1:$2" >&2
  return 1
}

# --- the origin: iperf3 on 127.0.0.1:5201, nginx (own config and prefix) on 127.0.0.1:8081 ---
# REUSEPORT=1: nginx listens with `reuseport`, a socket per worker, so the kernel spreads
# connections over the workers by address rather than by which worker waits when they arrive
# (mysocketctl opens its pooled connections to the origin in bursts; see BENCHMARKS.md).
NGINX_REUSEPORT=""
[[ -n "${REUSEPORT:-}" ]] && NGINX_REUSEPORT=" reuseport"
ORIGIN_IPERF=5201 ORIGIN_HTTP=8081 ORIGIN_HTTP_PROXIED=8082
# An origin left running by someone else would answer in place of this one (and without the
# options above): its ports must be free.
for port in $ORIGIN_IPERF $ORIGIN_HTTP $ORIGIN_HTTP_PROXIED; do
  if [[ -n "$(ss -Hltn "sport = :$port")" ]]; then
    echo "port $port is taken (another iperf3 or nginx?): $(ss -Hltnp "sport = :$port" | grep -o 'users:.*' | head -n 1)" >&2
    exit 1
  fi
done
bg iperf3 iperf3 -s -B 127.0.0.1 -p $ORIGIN_IPERF
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx/logs/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  server {
    listen 127.0.0.1:$ORIGIN_HTTP backlog=4096$NGINX_REUSEPORT;
    location / { default_type text/plain; return 200 "hello from the origin\n"; }
  }
  # The same answer behind a PROXY protocol header (nginx reads it before the request).
  server {
    listen 127.0.0.1:$ORIGIN_HTTP_PROXIED backlog=4096 proxy_protocol$NGINX_REUSEPORT;
    location / { default_type text/plain; return 200 "hello from the origin\n"; }
  }
}
EOF
bg nginx nginx -e "$WORK/nginx/logs/error.log" -p "$WORK/nginx" -c "$WORK/nginx.conf" -g "daemon off;"
wait_port 127.0.0.1 $ORIGIN_IPERF
wait_port 127.0.0.1 $ORIGIN_HTTP
wait_port 127.0.0.1 $ORIGIN_HTTP_PROXIED

# --- one row: iperf3 Gbit/s; wrk keep-alive req/s p50 p99; wrk new-connection req/s ---
FMT="%-21s %7s %12s %8s %8s %11s %7s\n"
SYSTEMS=() # "name|iperf_host|iperf_port|http_url|host_header", measured in this order each round
ROWS="" # set below: each round's rows, "name<TAB>gbit rps p50 p99 newconn errors"
system() { # name iperf_host iperf_port http_url host_header: measured in every round
  if [[ -n "${ONLY:-}" && ! "$1" =~ $ONLY ]]; then return 0; fi
  SYSTEMS+=("$1|$2|$3|$4|$5")
}
na_row() { if [[ -z "${ONLY:-}" || "$1" =~ $ONLY ]]; then printf '%s\tn/a n/a n/a n/a n/a -\n' "$1" >>"$ROWS"; fi; }
measure() { # name iperf_host iperf_port http_url host_header
  local name=$1 ih=$2 ip=$3 url=$4 host=$5 gbit row
  # The iperf3 server runs one test at a time and may still be closing the previous one:
  # up to three retries after a pause. No iperf3 host ("-"): HTTP only.
  : >"$WORK/iperf.json"
  for _ in 1 2 3 4; do
    [[ "$ih" == - ]] && break
    iperf3 -c "$ih" -p "$ip" -t "$SECS" -J >"$WORK/iperf.json" 2>&1 && break
    sleep 2
  done
  gbit="$(python3 - "$WORK/iperf.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    print("%.2f" % (r["end"]["sum_sent"]["bits_per_second"] / 1e9))
except Exception:
    print("n/a")
EOF
)"
  wrk -t2 -c50 -d"${SECS}s" --latency -H "Host: $host" "$url" >"$WORK/wrk-ka.txt" 2>&1 || true
  wrk -t2 -c50 -d"${SECS}s" -H "Host: $host" -H "Connection: close" "$url" >"$WORK/wrk-nc.txt" 2>&1 || true
  row="$(python3 - "$WORK/wrk-ka.txt" "$WORK/wrk-nc.txt" <<'EOF'
import re, sys
def ms(v, u): return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
def errors(t):
    n = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", t))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    return n + (sum(int(x) for x in m.groups()) if m else 0)
ka, nc = open(sys.argv[1]).read(), open(sys.argv[2]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", ka)
p50 = re.search(r"\n\s+50%\s+([\d.]+)(us|ms|s)\b", ka)
p99 = re.search(r"\n\s+99%\s+([\d.]+)(us|ms|s)\b", ka)
ncr = re.search(r"Requests/sec:\s+([\d.]+)", nc)
out = ["%.0f" % float(rps.group(1)) if rps else "n/a",
       "%.2f" % ms(*p50.groups()) if p50 else "n/a",
       "%.2f" % ms(*p99.groups()) if p99 else "n/a"]
print(" ".join(out), "%.0f" % float(ncr.group(1)) if ncr else "n/a", errors(ka) + errors(nc))
EOF
)"
  if [[ "$gbit" == n/a && "$ih" != - ]]; then
    echo "$name: iperf3 failed: $(grep -o '"error":.*' "$WORK/iperf.json" | head -n 1 || tail -c 300 "$WORK/iperf.json")" >&2
  fi
  printf '%s\t%s %s\n' "$name" "$gbit" "$row" >>"$ROWS"
  # shellcheck disable=SC2086
  printf "$FMT" "$name" "$gbit" $row >&2
}
ROWS="$WORK/rows.tsv"
: >"$ROWS"

system direct 127.0.0.1 $ORIGIN_IPERF "http://127.0.0.1:$ORIGIN_HTTP/" localhost

# --- OpenSSH: Debian's sshd on 127.0.0.9:2022 with its own config, `ssh -R` for both origins ---
ssh-keygen -q -t ed25519 -N "" -C bench-host -f "$WORK/hostkey"
ssh-keygen -q -t ed25519 -N "" -C bench-user -f "$WORK/userkey"
cp "$WORK/userkey.pub" "$WORK/authorized_keys"
mkdir -p /run/sshd
cat >"$WORK/sshd_config" <<EOF
Port 2022
ListenAddress 127.0.0.9
HostKey $WORK/hostkey
PidFile $WORK/sshd.pid
AuthorizedKeysFile $WORK/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
AllowTcpForwarding yes
GatewayPorts no
EOF
if [[ -x /usr/sbin/sshd ]] && /usr/sbin/sshd -t -f "$WORK/sshd_config" 2>"$WORK/sshd-check.log"; then
  bg sshd /usr/sbin/sshd -D -e -f "$WORK/sshd_config"
  wait_port 127.0.0.9 2022
  bg ssh ssh -N -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
    -o ExitOnForwardFailure=yes -o LogLevel=ERROR -i "$WORK/userkey" -p 2022 \
    -R 127.0.0.1:15201:127.0.0.1:$ORIGIN_IPERF -R 127.0.0.1:18081:127.0.0.1:$ORIGIN_HTTP "$(id -un)@127.0.0.9"
  if wait_listen 15201 && wait_port 127.0.0.1 18081; then
    system openssh 127.0.0.1 15201 "http://127.0.0.1:18081/" localhost
  else
    na_row openssh
  fi
else
  echo "sshd unavailable: $(cat "$WORK/sshd-check.log" 2>/dev/null)" >&2
  na_row openssh
fi

# --- bore (plain TCP, no encryption) ---
if command -v bore >/dev/null; then
  bg bore-server bore server --bind-addr 127.0.0.1 --min-port 30000 --max-port 30100
  wait_port 127.0.0.1 7835
  bg bore-iperf bore local $ORIGIN_IPERF --local-host 127.0.0.1 --to 127.0.0.1 --port 30001
  bg bore-http bore local $ORIGIN_HTTP --local-host 127.0.0.1 --to 127.0.0.1 --port 30002
  if wait_listen 30001 && wait_port 127.0.0.1 30002; then
    system bore 127.0.0.1 30001 "http://127.0.0.1:30002/" localhost
  else
    na_row bore
  fi
else
  na_row bore
fi

# --- rathole (plain TCP transport, no encryption) ---
if command -v rathole >/dev/null; then
  cat >"$WORK/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:2333"
[server.services.iperf]
token = "bench"
bind_addr = "127.0.0.1:31001"
[server.services.web]
token = "bench"
bind_addr = "127.0.0.1:31002"
EOF
  cat >"$WORK/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:2333"
[client.services.iperf]
token = "bench"
local_addr = "127.0.0.1:$ORIGIN_IPERF"
[client.services.web]
token = "bench"
local_addr = "127.0.0.1:$ORIGIN_HTTP"
EOF
  bg rathole-server rathole --server "$WORK/rathole-server.toml"
  wait_port 127.0.0.1 2333
  bg rathole-client rathole --client "$WORK/rathole-client.toml"
  # rathole binds the public ports at once but serves them only once the client's control
  # channel is up: wait for the client's log line.
  for _ in $(seq 1 100); do grep -q "Control channel established" "$WORK/rathole-client.log" 2>/dev/null && break; sleep 0.1; done
  if wait_listen 31001 && wait_port 127.0.0.1 31002 && sleep 1; then
    system rathole 127.0.0.1 31001 "http://127.0.0.1:31002/" localhost
  else
    na_row rathole
  fi
else
  na_row rathole
fi

# --- mysocket: the three-node local cluster, tunnels by mysocketctl to node 1 ---
running_nodes="$(deploy/local-cluster.sh status 2>/dev/null | grep -c ': running' || true)"
if [[ "$running_nodes" != 3 ]]; then
  if [[ -n "${SKIP_BUILD:-}" ]]; then
    # local-cluster.sh builds before it starts; keep that from happening.
    mkdir -p "$WORK/nocargo"
    printf '#!/bin/sh\nexit 0\n' >"$WORK/nocargo/cargo"
    chmod +x "$WORK/nocargo/cargo"
    PATH="$WORK/nocargo:$PATH" deploy/local-cluster.sh up >"$WORK/cluster-up.log" 2>&1
  else
    deploy/local-cluster.sh up >"$WORK/cluster-up.log" 2>&1
  fi
  [[ "$running_nodes" == 0 ]] && CLUSTER_STARTED=1
else
  # A cluster left running by someone else: reused as it is, and left up.
  for id in 1 2 3; do
    if [[ "$(readlink "/proc/$(cat "$CLUSTER_DIR/node-$id.pid")/exe")" == *"(deleted)" ]]; then
      echo "note: node $id of the running local cluster runs a mysocketd that has since been rebuilt;" \
        "deploy/local-cluster.sh down first to measure the current build" >&2
      break
    fi
  done
fi
NODE1_PID="$(cat "$CLUSTER_DIR/node-1.pid")"

# --- node 1's resident memory with TUNNELS idle tunnels, before the traffic below grows its heap ---
cat >"$WORK/idle_tunnels.py" <<'EOF'
"""Open N idle tunnels to one node (one SSH session each, with one remote forward of a
tunnel's relay port, as N `mysocketctl connect`s would) and report that node's VmRSS before
and after, as one JSON line. Accounts, sockets and tunnels come from the REST API."""
import asyncio, json, os, sys, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor

import asyncssh

api, ssh_host, ssh_port, pid, n, per_account, key_path, origin_port = sys.argv[1:9]
ssh_port, n, per_account, origin_port = int(ssh_port), int(n), int(per_account), int(origin_port)
PER_SOCKET = 16  # tunnels per socket the cluster allows
pubkey = open(key_path + ".pub").read().strip()
stamp = "%d" % time.time()


def call(method, path, body=None, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["x-access-token"] = token
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api + path, data=data, method=method, headers=headers)
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == 4:
                raise RuntimeError("%s %s: %d %s" % (method, path, e.code, e.read().decode(errors="replace")))
        except OSError:
            if attempt == 4:
                raise
        time.sleep(0.5 * (attempt + 1))


def mem_kib():
    """(VmRSS, RssAnon) of the node in KiB."""
    f = {}
    for line in open("/proc/%s/status" % pid):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon"):
            f[k] = int(v.split()[0])
    return f["VmRSS"], f["RssAnon"]


async def settled(min_secs, max_secs):
    """The node's memory once it stops moving: one sample a second, at least min_secs, until
    the last five VmRSS samples lie within 1% of each other (or max_secs); their medians."""
    samples, t0 = [], time.time()
    while True:
        samples.append(mem_kib())
        last = samples[-5:]
        spread = max(s[0] for s in last) - min(s[0] for s in last)
        waited = time.time() - t0
        if waited >= max_secs or (waited >= min_secs and len(last) == 5 and spread <= last[-1][0] / 100):
            return tuple(sorted(s[i] for s in last)[len(last) // 2] for i in (0, 1))
        await asyncio.sleep(1)


def provision(i, count):
    """One account with `count` tunnels: (user_name, token, socket ids, relay ports)."""
    email = "idle-%s-%d@example.com" % (stamp, i)
    u = call("POST", "/user", {"name": "idle %d" % i, "email": email, "password": "idle-password-1", "sshkey": pubkey})
    token = call("POST", "/login", {"email": email, "password": "idle-password-1"})["token"]
    sockets, ports = [], []
    while len(ports) < count:
        s = call("POST", "/socket", {"name": "idle-%d-%d" % (i, len(sockets)), "socket_type": "http"}, token)
        sockets.append(s["socket_id"])
        for _ in range(min(PER_SOCKET, count - len(ports))):
            ports.append(call("POST", "/socket/%s/tunnel" % s["socket_id"], None, token)["local_port"])
    return u["user_name"], token, sockets, ports


def held_on_node():
    # Tunnels per node are an operator's to see.
    view = call("GET", "/cluster", None, os.environ["MYSOCKET_OPERATOR_TOKEN"])
    me = [x for x in view["nodes"] if x["ssh_addr"] == "%s:%d" % (ssh_host, ssh_port)]
    return me[0]["tunnels"] if me else None


async def main():
    counts = [min(per_account, n - i) for i in range(0, n, per_account)]
    with ThreadPoolExecutor(8) as pool:
        accounts = list(pool.map(provision, range(len(counts)), counts))
    key = asyncssh.read_private_key(key_path)
    held_before = held_on_node()
    rss_before, anon_before = await settled(5, 60)
    sem = asyncio.Semaphore(32)
    conns, failures = [], []

    async def one(user, port):
        async with sem:
            try:
                conn = await asyncssh.connect(ssh_host, ssh_port, username=user, client_keys=[key],
                                              known_hosts=None)
            except Exception as e:
                failures.append("connect: %r" % e)
                return
            try:
                await conn.forward_remote_port("127.0.0.1", port, "127.0.0.1", origin_port)
                conns.append(conn)
            except Exception as e:
                failures.append("forward %d: %r" % (port, e))
                conn.close()

    t0 = time.time()
    await asyncio.gather(*(one(user, p) for user, _, _, ports in accounts for p in ports))
    open_secs = time.time() - t0
    rss_after, anon_after = await settled(10, 60)
    held_after = held_on_node()
    up = len(conns)
    for c in conns:
        c.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    rss_closed, anon_closed = await settled(10, 60)
    print(json.dumps({
        "tunnels": up, "asked": n, "failures": len(failures), "first_failures": failures[:3],
        "accounts": len(accounts), "open_secs": round(open_secs, 1),
        "held_before": held_before, "held_after": held_after,
        "rss_before_kib": rss_before, "rss_after_kib": rss_after, "rss_closed_kib": rss_closed,
        "anon_before_kib": anon_before, "anon_after_kib": anon_after, "anon_closed_kib": anon_closed,
        "kib_per_tunnel": (rss_after - rss_before) / up if up else None,
        "anon_kib_per_tunnel": (anon_after - anon_before) / up if up else None,
    }), flush=True)
    with ThreadPoolExecutor(8) as pool:  # leave the registry as it was
        list(pool.map(lambda a: [call("DELETE", "/socket/" + s, None, a[1]) for s in a[2]], accounts))


asyncio.run(main())
EOF
IDLE_LINE=""
if ((TUNNELS == 0)); then
  IDLE_LINE="idle tunnels: not measured (TUNNELS=0)"
elif "$VENV/bin/python" -c 'import asyncssh' 2>/dev/null; then
  MYSOCKET_OPERATOR_TOKEN="$(cat "$CLUSTER_DIR/operator-token")" \
    "$VENV/bin/python" "$WORK/idle_tunnels.py" http://127.0.0.2:7070 127.0.0.1 2222 "$NODE1_PID" \
    "$TUNNELS" "$PER_ACCOUNT" "$WORK/userkey" $ORIGIN_HTTP >"$WORK/idle.json" 2>"$WORK/idle.err" &
  PIDS+=($!)
  wait $! || true
  IDLE_LINE="$(python3 - "$WORK/idle.json" <<'EOF'
import json, sys
try:
    r = json.loads(open(sys.argv[1]).readline())
except Exception:
    sys.exit(0)
line = ("node 1 RSS with %d idle tunnels: %.1f KiB per idle tunnel (VmRSS %d -> %d KiB, %d once closed;"
        " anonymous %.1f KiB per tunnel)") % (
    r["tunnels"], r["kib_per_tunnel"] or 0, r["rss_before_kib"], r["rss_after_kib"], r["rss_closed_kib"],
    r["anon_kib_per_tunnel"] or 0)
if r["failures"]:
    line += " (%d of %d sessions failed: %s)" % (r["failures"], r["asked"], "; ".join(r["first_failures"]))
print(line)
EOF
)"
fi

export MYSOCKET_API="http://127.0.0.1:7070" MYSOCKET_TOKEN_FILE="$WORK/token"
EMAIL="bench-$(date +%s)-$$@example.com"
"$CTL" account create --name "Data plane bench" --email "$EMAIL" --password bench-password-1 \
  --sshkey "$WORK/userkey.pub" >"$WORK/account.log" 2>&1
"$CTL" login --email "$EMAIL" --password bench-password-1 >"$WORK/login.log" 2>&1
bg ctl-iperf "$CTL" connect --port $ORIGIN_IPERF --type tcp --name bench-iperf --identity "$WORK/userkey"
bg ctl-web "$CTL" connect --port $ORIGIN_HTTP --type http --name bench-web --identity "$WORK/userkey" --inspect false
# The same with the request inspector on (connect's default): every request and answer read
# as they pass through mysocketctl.
bg ctl-webinspect "$CTL" connect --port $ORIGIN_HTTP --type http --name bench-webinspect --identity "$WORK/userkey" \
  --inspect 127.0.0.1:4040
# The web origin behind a tcp socket too: the same TCP tunnel bore and rathole give, without
# the edge's HTTP layer (Host routing, X-Forwarded-*, a log line per request).
bg ctl-webtcp "$CTL" connect --port $ORIGIN_HTTP --type tcp --name bench-webtcp --identity "$WORK/userkey"
# ... and with a PROXY protocol header before each connection's bytes (nginx reads it).
bg ctl-webproxied "$CTL" connect --port $ORIGIN_HTTP_PROXIED --type tcp --name bench-webproxied \
  --identity "$WORK/userkey" --proxy-protocol v1
# The web origin behind an http socket with access rules the edge checks on every request (an
# allow list, a deny list, a rate limit per visitor far above what wrk sends): the policy step's
# cost.
bg ctl-webpolicy "$CTL" connect --port $ORIGIN_HTTP --type http --name bench-webpolicy --identity "$WORK/userkey" \
  --ip-allow 127.0.0.0/8,::1 --ip-deny 10.0.0.0/8,192.168.0.0/16 --rate-limit 100000
for _ in $(seq 1 150); do
  grep -q "tunnel up via" "$WORK/ctl-iperf.log" && grep -q "tunnel up via" "$WORK/ctl-web.log" &&
    grep -q "tunnel up via" "$WORK/ctl-webtcp.log" && grep -q "tunnel up via" "$WORK/ctl-webpolicy.log" &&
    grep -q "tunnel up via" "$WORK/ctl-webinspect.log" && grep -q "tunnel up via" "$WORK/ctl-webproxied.log" && break
  sleep 0.1
done
VIA="$(grep -ho 'tunnel up via [^:]*' "$WORK"/ctl-iperf.log "$WORK"/ctl-web*.log | sort -u | tr '\n' ' ')"
read -r IPORT WNAME WPORT PNAME INAME XPORT <<<"$("$CTL" socket ls --output json | python3 -c '
import json, sys
s = {x["name"]: x for x in json.load(sys.stdin)}
print(s["bench-iperf"]["socket_tcp_ports"][0], s["bench-web"]["dnsname"], s["bench-webtcp"]["socket_tcp_ports"][0],
      s.get("bench-webpolicy", {}).get("dnsname", "-"), s.get("bench-webinspect", {}).get("dnsname", "-"),
      s.get("bench-webproxied", {}).get("socket_tcp_ports", ["-"])[0])')"
if [[ "$VIA" == "tunnel up via 127.0.0.1 " ]]; then
  system "mysocket same-node" 127.0.0.1 "$IPORT" "http://127.0.0.1:8080/" "$WNAME"
  if [[ "$PNAME" != - ]]; then
    system "mysocket with rules" - - "http://127.0.0.1:8080/" "$PNAME"
  else
    na_row "mysocket with rules"
  fi
  if [[ "$INAME" != - ]]; then
    system "mysocket inspected" - - "http://127.0.0.1:8080/" "$INAME"
  else
    na_row "mysocket inspected"
  fi
  system "mysocket relayed" 127.0.0.2 "$IPORT" "http://127.0.0.2:8080/" "$WNAME"
  if command -v haproxy >/dev/null; then
    cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 2
  tune.bufsize 262144
  tune.pipesize 262144
defaults
  mode tcp
  option splice-auto
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen iperf
  bind 127.0.0.5:$IPORT
  server node1 127.0.0.1:$IPORT
listen web
  bind 127.0.0.5:8080
  server node1 127.0.0.1:8080
EOF
    bg haproxy haproxy -db -f "$WORK/haproxy.cfg"
    if wait_port 127.0.0.5 8080; then
      system "haproxy -> same-node" 127.0.0.5 "$IPORT" "http://127.0.0.5:8080/" "$WNAME"
    else
      na_row "haproxy -> same-node"
    fi
  else
    na_row "haproxy -> same-node"
  fi
  system "mysocket tcp socket" - - "http://127.0.0.1:$WPORT/" localhost
  if [[ "$XPORT" != - ]]; then
    system "mysocket tcp + PROXY v1" - - "http://127.0.0.1:$XPORT/" localhost
  else
    na_row "mysocket tcp + PROXY v1"
  fi
else
  echo "mysocketctl tunnels not up on node 1 (${VIA:-none}):" >&2
  tail -n 5 "$WORK/ctl-iperf.log" "$WORK"/ctl-web*.log >&2
  na_row "mysocket same-node"
  na_row "mysocket with rules"
  na_row "mysocket inspected"
  na_row "mysocket relayed"
  na_row "haproxy -> same-node"
  na_row "mysocket tcp socket"
  na_row "mysocket tcp + PROXY v1"
fi

# --- the rounds: every system once per round, in the same order ---
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS:" >&2
  for spec in "${SYSTEMS[@]}"; do
    IFS='|' read -r name ih ip url host <<<"$spec"
    measure "$name" "$ih" "$ip" "$url" "$host"
  done
done

# --- the table: each column's median over the rounds, errors summed ---
python3 - "$ROWS" "$ROUNDS" "$FMT" <<'EOF'
import statistics, sys
rows, rounds, fmt = sys.argv[1], int(sys.argv[2]), sys.argv[3].replace("\\n", "\n")
order, cols = [], {}
for line in open(rows):
    name, _, rest = line.rstrip("\n").partition("\t")
    if name not in cols:
        order.append(name)
        cols[name] = []
    cols[name].append(rest.split())

def median(values, digits):
    nums = []
    for v in values:
        try:
            nums.append(float(v))
        except ValueError:
            pass
    return "%.*f" % (digits, statistics.median(nums)) if nums else "n/a"

print(fmt % ("system", "Gbit/s", "keepalive/s", "p50 ms", "p99 ms", "newconn/s", "errors"), end="")
gbit = {}
for name in order:
    runs = cols[name]
    errors = [int(r[5]) for r in runs if r[5].isdigit()]
    row = [median([r[i] for r in runs], d) for i, d in ((0, 2), (1, 0), (2, 2), (3, 2), (4, 0))]
    gbit[name] = row[0]
    print(fmt % (name, *row, sum(errors) if errors else "-"), end="")
print("(medians over %d rounds)" % rounds)
EOF

if [[ -z "$IDLE_LINE" ]]; then
  echo "idle tunnels: n/a" && tail -n 5 "$WORK/idle.err" >&2 2>/dev/null || true
else
  echo "$IDLE_LINE"
fi

python3 - "$ROWS" <<'EOF'
import statistics, sys
gbit, rps = {}, {}
for line in open(sys.argv[1]):
    name, _, rest = line.rstrip("\n").partition("\t")
    for col, into in ((0, gbit), (1, rps)):
        try:
            into.setdefault(name, []).append(float(rest.split()[col]))
        except ValueError:
            pass
def ratio(col, a, b):
    try:
        return "%.2f" % (statistics.median(col[a]) / statistics.median(col[b]))
    except (KeyError, ZeroDivisionError, statistics.StatisticsError):
        return "n/a"
print("keep-alive req/s, mysocket/bore: http socket %s, tcp socket %s" % (
    ratio(rps, "mysocket same-node", "bore"), ratio(rps, "mysocket tcp socket", "bore")))
print("relayed/same-node: Gbit/s %s, keep-alive req/s %s; haproxy -> same-node/same-node: Gbit/s %s,"
      " keep-alive req/s %s" % (
    ratio(gbit, "mysocket relayed", "mysocket same-node"), ratio(rps, "mysocket relayed", "mysocket same-node"),
    ratio(gbit, "haproxy -> same-node", "mysocket same-node"), ratio(rps, "haproxy -> same-node", "mysocket same-node")))
print("keep-alive req/s, an http socket with access rules / without: %s" % (
    ratio(rps, "mysocket with rules", "mysocket same-node")))
try:
    ratio = statistics.median(gbit["mysocket same-node"]) / statistics.median(gbit["openssh"])
    print("mysocket/openssh throughput ratio: %.2f" % ratio)
except (KeyError, ZeroDivisionError, statistics.StatisticsError):
    print("mysocket/openssh throughput ratio: n/a")
EOF
