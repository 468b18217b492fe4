#!/usr/bin/env bash
# Cloud authentication end to end, in a real browser: a three-node local cluster whose nodes
# trust a mock OpenID Connect provider (oidc-provider-mock from PyPI, on 127.0.0.1:9400, with
# the predefined users alice@example.com and bob@other.org), an http socket made with
# `mysocketctl connect --cloudauth --allowed_email_addresses alice@example.com` in front of a
# tiny local service that shows the X-Mysocket-Email header it gets, and headless Chromium
# driven by Selenium (scripts/browser-login.py): the login redirect, alice's login reaching the
# service with her email, the session cookie, sign-out, and bob refused with a 403. Screenshots
# of each step go to the output folder.
#
#   scripts/browser-login.sh                              # output in a new /tmp folder
#   BROWSER_OUT=/tmp/shots scripts/browser-login.sh       # output there
#   BROWSER_VENV=/path/to/venv scripts/browser-login.sh   # Selenium and the provider's venv
#   scripts/browser-login.sh --install-only               # only install Chromium, Selenium, the provider
#
# scripts/test.sh runs it as one step. Ports: 127.0.0.1:9400 (the provider), and the local
# cluster's (7070 API, 8080 public HTTP on node 1); nothing else may listen there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BROWSER_VENV:-/var/tmp/mysocket-browser-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mysocket-target}"
CTL="$CARGO_TARGET_DIR/release/mysocketctl"
ISSUER_PORT=9400
ISSUER="http://127.0.0.1:$ISSUER_PORT"
ALLOWED=alice@example.com
REFUSED=bob@other.org

# Debian packages when missing: Chromium and its WebDriver (Selenium drives them), the OpenSSH
# client for the tunnel's key, curl for the local-cluster script, Python 3 for the venv and
# the local service.
apt_install() {
  if [[ $(id -u) -eq 0 ]]; then
    echo "installing: $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing packages; run: sudo apt-get install -y $*" >&2
    exit 1
  fi
}
NEED_PKGS=()
[[ -x /usr/bin/chromium ]] || NEED_PKGS+=(chromium)
[[ -x /usr/bin/chromedriver ]] || NEED_PKGS+=(chromium-driver)
command -v ssh-keygen >/dev/null || NEED_PKGS+=(openssh-client)
command -v curl >/dev/null || NEED_PKGS+=(curl)
command -v python3 >/dev/null || NEED_PKGS+=(python3)
if ((${#NEED_PKGS[@]})); then
  apt_install "${NEED_PKGS[@]}"
fi

# Selenium and the mock provider from PyPI, in a venv of their own; grpcio too, for the gRPC
# tests (a Python gRPC server and client through a socket).
if [[ ! -x "$VENV/bin/oidc-provider-mock" ]] || ! "$VENV/bin/python" -c 'import selenium, grpc' 2>/dev/null; then
  if [[ ! -x "$VENV/bin/pip" ]]; then
    python3 -m venv "$VENV" 2>/dev/null || {
      apt_install python3-venv
      python3 -m venv "$VENV"
    }
  fi
  "$VENV/bin/pip" install -q selenium oidc-provider-mock grpcio
fi

# `--install-only`: the installs above and nothing more (scripts/test.sh does this before the
# tests, whose OpenID provider is this venv's oidc-provider-mock).
if [[ ${1:-} == --install-only ]]; then
  exit 0
fi

# Something already listening on a port this run needs would answer in place of ours.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$ISSUER_PORT" 7070 8080; do
  if listening "$port"; then
    echo "127.0.0.1:$port is in use (a local cluster or provider left running?); stop it first" >&2
    exit 1
  fi
done

WORK="$(mktemp -d /tmp/mysocket-browser.XXXXXX)"
OUT="${BROWSER_OUT:-$(mktemp -d /tmp/mysocket-browser-out.XXXXXX)}"
mkdir -p "$OUT"
export MYSOCKET_LOCAL_DIR="$WORK/cluster"
# The CLI's token and remembered nodes stay in the temp folder, not in ~/.mysocketio_token.
export MYSOCKET_TOKEN_FILE="$WORK/token"
export MYSOCKET_API=http://127.0.0.1:7070
unset MYSOCKET_OPERATOR_TOKEN MYSOCKET_OPERATOR_TOKEN_FILE MYSOCKET_CACERT

CONNECT_PID='' SERVICE_PID='' PROVIDER_PID=''
# Stops a process this script started: SIGTERM, then SIGKILL after 10 s.
stop() {
  local pid="$1"
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$?
  set +e
  # connect first: on SIGTERM it deletes its socket, which needs the cluster.
  stop "$CONNECT_PID"
  stop "$SERVICE_PID"
  stop "$PROVIDER_PID"
  deploy/local-cluster.sh down >/dev/null 2>&1
  # The logs stay with the screenshots; the nodes' data goes.
  mkdir -p "$OUT/logs"
  cp "$WORK"/*.log "$WORK"/*.out "$WORK"/*.err "$MYSOCKET_LOCAL_DIR"/node-*.log "$OUT/logs/" 2>/dev/null
  rm -rf "$WORK"
  if ((status)); then
    echo "browser login: FAILED; screenshots and logs in $OUT" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to $1 s for the command after it to succeed.
wait_for() {
  local secs="$1"; shift
  for _ in $(seq 1 $((secs * 5))); do
    "$@" && return 0
    sleep 0.2
  done
  return 1
}

echo "== the identity provider: oidc-provider-mock on $ISSUER"
"$VENV/bin/oidc-provider-mock" --host 127.0.0.1 --port "$ISSUER_PORT" \
  --user-claims "{\"sub\":\"$ALLOWED\",\"email\":\"$ALLOWED\",\"email_verified\":true}" \
  --user-claims "{\"sub\":\"$REFUSED\",\"email\":\"$REFUSED\",\"email_verified\":true}" \
  >"$WORK/provider.log" 2>&1 &
PROVIDER_PID=$!
provider_up() {
  kill -0 "$PROVIDER_PID" 2>/dev/null || { echo "the provider exited:" >&2; cat "$WORK/provider.log" >&2; exit 1; }
  curl -fsS --max-time 2 "$ISSUER/.well-known/openid-configuration" >/dev/null 2>&1
}
wait_for 30 provider_up || { echo "the provider did not answer in 30 s:" >&2; cat "$WORK/provider.log" >&2; exit 1; }

(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/oidc-client-secret")
export MYSOCKET_OIDC_ISSUER="$ISSUER"
export MYSOCKET_OIDC_CLIENT_ID=mysocket-browser-test
export MYSOCKET_OIDC_CLIENT_SECRET_FILE="$WORK/oidc-client-secret"

echo "== a three-node local cluster with cloud authentication (deploy/local-cluster.sh)"
deploy/local-cluster.sh up >"$WORK/cluster-up.log" 2>&1 || {
  echo "deploy/local-cluster.sh up failed:" >&2
  tail -n 30 "$WORK/cluster-up.log" >&2
  tail -n 20 "$MYSOCKET_LOCAL_DIR"/node-*.log >&2 2>/dev/null || true
  exit 1
}

echo "== an account, a local service and its socket"
ssh-keygen -q -t ed25519 -N '' -C browser-login -f "$WORK/id_ed25519"
PASSWORD="browser-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
"$CTL" account create --name "Browser Login" --email owner@example.com --password "$PASSWORD" \
  --sshkey "$WORK/id_ed25519.pub" >/dev/null
"$CTL" login --email owner@example.com --password "$PASSWORD" >/dev/null

# The service: every GET gets a page showing the X-Mysocket-Email header it came with. It binds
# a free port and writes the port to a file.
cat >"$WORK/service.py" <<'EOF'
import html
import http.server
import os
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        email = self.headers.get("X-Mysocket-Email") or "none"
        body = (
            "<!doctype html><html><head><title>The service</title></head><body>"
            "<h1>Hello from the service</h1>"
            f'<p id="email">{html.escape(email)}</p></body></html>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
EOF
python3 "$WORK/service.py" "$WORK/service-port" >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
service_up() {
  kill -0 "$SERVICE_PID" 2>/dev/null || { echo "the service exited:" >&2; cat "$WORK/service.log" >&2; exit 1; }
  [[ -s "$WORK/service-port" ]]
}
wait_for 10 service_up || { echo "the service did not start in 10 s" >&2; exit 1; }
SERVICE_PORT="$(cat "$WORK/service-port")"

# stdout: the socket (JSON), then the tunnel's log; stderr: the public URLs, errors.
"$CTL" -o json connect --port "$SERVICE_PORT" --name team-web --type http \
  --cloudauth --allowed_email_addresses "$ALLOWED" -i "$WORK/id_ed25519" \
  >"$WORK/connect.out" 2>"$WORK/connect.err" &
CONNECT_PID=$!

# The socket's dnsname, once its tunnel is connected (a tunnel with a session). A team-web
# socket without cloud authentication fails the run at once.
cat >"$WORK/dnsname.py" <<'EOF'
import json
import sys

allowed = sys.argv[1]
for s in json.load(sys.stdin):
    if s["name"] != "team-web":
        continue
    if not s.get("cloud_authentication_enabled") or allowed not in s.get(
        "cloud_authentication_email_allowed_addressses", []
    ):
        print(f"the socket does not have cloud authentication for {allowed}: {json.dumps(s)}", file=sys.stderr)
        sys.exit(3)
    if any(t.get("session") for t in s["tunnels"]):
        print(s["dnsname"])
EOF
DNSNAME=''
tunnel_up() {
  if ! kill -0 "$CONNECT_PID" 2>/dev/null; then
    echo "mysocketctl connect exited:" >&2
    cat "$WORK/connect.err" >&2
    exit 1
  fi
  local list rc=0
  list="$("$CTL" -o json socket ls 2>/dev/null)" || return 1
  DNSNAME="$(python3 "$WORK/dnsname.py" "$ALLOWED" <<<"$list")" || rc=$?
  ((rc == 3)) && exit 1
  [[ -n $DNSNAME ]]
}
wait_for 30 tunnel_up || {
  echo "the socket's tunnel did not connect in 30 s; mysocketctl connect said:" >&2
  cat "$WORK/connect.err" >&2
  exit 1
}
PUBLIC="http://$DNSNAME:8080"
echo "socket team-web: $PUBLIC -> 127.0.0.1:$SERVICE_PORT, allowed: $ALLOWED"

echo "== the browser: headless Chromium through Selenium (scripts/browser-login.py)"
"$VENV/bin/python" scripts/browser-login.py "$PUBLIC" "$OUT" --issuer "$ISSUER" \
  --allowed "$ALLOWED" --refused "$REFUSED"
echo "browser login: ok; screenshots in $OUT (1-provider.png, 2-service.png, 3-refused.png)"
