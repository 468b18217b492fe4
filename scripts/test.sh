#!/usr/bin/env bash
# The one test command (README and CI call it): installs what a fresh Debian machine lacks for
# the build and the tests, then builds the release binaries once and runs every test against
# them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: clang/libclang for RocksDB's bindings, curl for the local-cluster script,
# the OpenSSH client for the data-plane tests.
NEED_PKGS=()
command -v clang >/dev/null || NEED_PKGS+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || NEED_PKGS+=(libclang-dev)
command -v curl >/dev/null || NEED_PKGS+=(curl)
# The data-plane tests drive the real OpenSSH client against our SSH server.
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || NEED_PKGS+=(openssh-client)
# The tests signal nodes with /bin/kill (SIGTERM, SIGINT), which Debian ships in procps.
[[ -x /bin/kill || -x /usr/bin/kill ]] || NEED_PKGS+=(procps)
# The fault-injection suite: network namespaces (ip) and partitions (iptables).
command -v ip >/dev/null || NEED_PKGS+=(iproute2)
command -v iptables >/dev/null || NEED_PKGS+=(iptables)
# The DNS and ACME tests: dig (bind9-dnsutils), Pebble and its challenge test server (pebble),
# and a recursive resolver that follows the delegations (unbound).
command -v dig >/dev/null || NEED_PKGS+=(bind9-dnsutils)
command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null || NEED_PKGS+=(pebble)
command -v unbound >/dev/null || [[ -x /usr/sbin/unbound ]] || NEED_PKGS+=(unbound)
# The PROXY protocol test puts HAProxy (accept-proxy) in front of its service.
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || NEED_PKGS+=(haproxy)
# The deployment check (deploy/check-deploy.py) reads YAML: Python 3 with PyYAML.
python3 -c 'import yaml' 2>/dev/null || /usr/bin/python3 -c 'import yaml' 2>/dev/null || NEED_PKGS+=(python3 python3-yaml)
if ((${#NEED_PKGS[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "installing: ${NEED_PKGS[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${NEED_PKGS[@]}" >/dev/null
  else
    echo "missing packages; run: sudo apt-get install -y ${NEED_PKGS[*]}" >&2
    exit 1
  fi
fi

# One target folder and one profile (release) for the build, the tests and the suites, so
# nothing is compiled twice; CI points it outside the clone so later runs reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mysocket-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== build (release)"
# First the fault-injection build with its planted bugs, kept aside as mysocketd-planted, then
# the normal one. Both feature sets stay cached in the target folder, so after the first run
# switching between them costs no compilation.
cargo build --release --workspace --locked --features mysocket-node/planted-bugs
cp "$CARGO_TARGET_DIR/release/mysocketd" "$CARGO_TARGET_DIR/release/mysocketd-planted"
cargo build --release --workspace --locked
refusal="$("$CARGO_TARGET_DIR/release/mysocketd" --planted-bug stale-read --id 1 2>&1 || true)"
if [[ $refusal == *"no planted bugs"* ]]; then
  echo "normal mysocketd refuses --planted-bug: ok"
else
  echo "the normal mysocketd accepts --planted-bug: refusing to go on" >&2
  exit 1
fi

echo "== clippy (the release profile, so it reuses the build's RocksDB; warnings fail)"
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo clippy --release --workspace --all-targets --locked -- -D warnings

echo "== the OpenID provider (oidc-provider-mock), the browser (Chromium, Selenium) and grpcio the tests use"
BROWSER_VENV="${BROWSER_VENV:-/var/tmp/mysocket-browser-venv}" scripts/browser-login.sh --install-only
export MYSOCKET_OIDC_PROVIDER="${BROWSER_VENV:-/var/tmp/mysocket-browser-venv}/bin/oidc-provider-mock"
# The same venv's Python, with grpcio and Selenium, for the gRPC and inspector tests.
export MYSOCKET_TEST_PYTHON="${BROWSER_VENV:-/var/tmp/mysocket-browser-venv}/bin/python"

echo "== tests"
cargo test --release --workspace --locked -- --test-threads 2

echo "== fault injection, quick mode (3 nodes; kill, pause, partition; fixed seeds)"
RUNS="$(mktemp -d /tmp/mysocket-jepsen.XXXXXX)"
for seed in 1 2; do
  "$CARGO_TARGET_DIR/release/mysocket-jepsen" --quick --seed "$seed" --out "$RUNS/seed$seed"
  # The reports stay; the nodes' RocksDB directories (about 75 MB each, 450 MB a run) go, or
  # repeated runs fill the disk, and a full disk fails every later cluster test.
  rm -rf "$RUNS/seed$seed"/node-*
done
echo "== fault injection, quick mode with the fleet: the node holding 100 tunnels killed (kill, fleet)"
"$CARGO_TARGET_DIR/release/mysocket-jepsen" --quick --nemesis kill,fleet --seed 3 --out "$RUNS/fleet"
rm -rf "$RUNS/fleet"/node-*
echo "reports in $RUNS"
# The inspector's browser test (client/tests/cli.rs) leaves its screenshots in the target folder.
if [[ -d "$CARGO_TARGET_DIR/tmp/inspector-shots" ]]; then
  cp -r "$CARGO_TARGET_DIR/tmp/inspector-shots" "$RUNS/inspector"
  echo "inspector screenshots in $RUNS/inspector"
fi
# The console's and the dashboard's browser tests (node/tests/console.rs) leave theirs there too.
for shots in console console-oidc dashboard; do
  if [[ -d "$CARGO_TARGET_DIR/tmp/$shots-shots" ]]; then
    cp -r "$CARGO_TARGET_DIR/tmp/$shots-shots" "$RUNS/$shots"
    echo "$shots screenshots in $RUNS/$shots"
  fi
done

echo "== hostile clients: one attacker process per attack against a three-node cluster (mysocket-hostile)"
"$CARGO_TARGET_DIR/release/mysocket-hostile" --out "$RUNS/hostile"
rm -rf "$RUNS/hostile"/node-[0-9] "$RUNS/hostile"/home-*

echo "== API fuzzing: Schemathesis against a live three-node cluster (scripts/fuzz-api.sh)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" scripts/fuzz-api.sh

echo "== cloud authentication in a real browser: headless Chromium signs in through the edge (scripts/browser-login.sh)"
BROWSER_OUT="$RUNS/browser" scripts/browser-login.sh

echo "== deployment files: deploy/compose.yaml and deploy/kubernetes.yaml, run without an engine"
PY=python3
python3 -c 'import yaml' 2>/dev/null || PY=/usr/bin/python3
for what in compose kubernetes; do
  "$PY" deploy/check-deploy.py "$what"
done
