#!/usr/bin/env bash
# Schemathesis (from PyPI) against /openapi.json of a live three-node local cluster, three times:
# with no credential, with an account's token and with the operator token (membership changes
# left out of that run: a fuzzer with the operator's token would add and remove nodes). Fails
# on any 5xx and on any answer that breaks the document's own schemas (status codes, content
# types, headers, bodies), and checks that the three replicas agree afterwards.
#
#   scripts/fuzz-api.sh                 # 60 s per credential
#   FUZZ_SECONDS=600 scripts/fuzz-api.sh
#
# scripts/test.sh runs it for FUZZ_SECONDS=20. Not checked: that every schema-valid input is
# accepted (Schemathesis's positive_data_acceptance): a valid SSH key or email is more than a
# pattern can say, and such inputs get a clear 400.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${FUZZ_SECONDS:-60}"
VENV="${FUZZ_VENV:-/var/tmp/mysocket-fuzz-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mysocket-target}"

if [[ ! -x "$VENV/bin/schemathesis" ]]; then
  python3 -m venv "$VENV" 2>/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
  "$VENV/bin/pip" install -q schemathesis
fi

export MYSOCKET_LOCAL_DIR="$(mktemp -d /tmp/mysocket-fuzz.XXXXXX)"
cleanup() {
  deploy/local-cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$MYSOCKET_LOCAL_DIR"
}
trap cleanup EXIT
deploy/local-cluster.sh up >/dev/null
API=http://127.0.0.1:7070
OPERATOR="$(cat "$MYSOCKET_LOCAL_DIR/operator-token")"

# An account and its token, for the runs that need one.
ssh-keygen -q -t ed25519 -N '' -f "$MYSOCKET_LOCAL_DIR/fuzz-key"
python3 - "$API" "$MYSOCKET_LOCAL_DIR/fuzz-key.pub" >"$MYSOCKET_LOCAL_DIR/token" <<'EOF'
import json, sys, urllib.request
api, key = sys.argv[1], open(sys.argv[2]).read().strip()
def post(path, body):
    req = urllib.request.Request(api + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=30))
post("/user", {"name": "Fuzz", "email": "fuzz@example.com", "password": "fuzz-password", "sshkey": key})
print(post("/login", {"email": "fuzz@example.com", "password": "fuzz-password"})["token"])
EOF
TOKEN="$(cat "$MYSOCKET_LOCAL_DIR/token")"

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
status=0
run() {
  local what="$1"; shift
  echo "== schemathesis: $what, ${SECS} s"
  # From the cluster's folder: Schemathesis keeps its example cache in the working directory.
  (cd "$MYSOCKET_LOCAL_DIR" && "$VENV/bin/schemathesis" run "$API/openapi.json" --checks "$CHECKS" \
    --max-time "$SECS" --workers 2 --seed 1 --warnings off "$@") >"$MYSOCKET_LOCAL_DIR/$what.out" 2>&1 || status=1
  grep -E "^(API Operations|  Tested|Test cases|  [0-9]+ generated)|passed|failures|ST[0-9]+" "$MYSOCKET_LOCAL_DIR/$what.out" | tail -8
  [[ $status -eq 0 ]] || sed -n '/FAILURES/,/SUMMARY/p' "$MYSOCKET_LOCAL_DIR/$what.out" | head -150
}
run anonymous
run account -H "x-access-token: $TOKEN"
run operator -H "Authorization: Bearer $OPERATOR" --exclude-path-regex '^/cluster/nodes'

# The replicas agree on what the accepted requests did.
python3 - "$OPERATOR" <<'EOF' || status=1
import json, sys, time, urllib.request
op = sys.argv[1]
def digest(ip):
    req = urllib.request.Request(f"http://{ip}:7070/cluster/digest", headers={"authorization": "Bearer " + op})
    return json.load(urllib.request.urlopen(req, timeout=10))
for _ in range(50):
    d = [digest(f"127.0.0.{i}") for i in (1, 2, 3)]
    if len({(x["last_applied"], x["digest"]) for x in d}) == 1:
        print(f"replicas agree: applied {d[0]['last_applied']}, {d[0]['accounts']} accounts, {d[0]['sockets']} sockets")
        sys.exit(0)
    time.sleep(0.2)
sys.exit(f"the replicas disagree: {d}")
EOF
exit $status
