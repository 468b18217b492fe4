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
cargo build --release --workspace --locked

echo "== tests"
cargo test --release --workspace --locked -- --test-threads 2
