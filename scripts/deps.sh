#!/usr/bin/env bash
# Installs everything `make test` and `make demo` need on a fresh Debian
# machine, idempotently: Debian packages with apt-get (PostgreSQL and HAProxy
# among them), npm packages into
# interop/node_modules and e2e/node_modules, PyPI packages into the venv .deps/venv, cargo-deny into
# .deps/cargo. Nothing else is touched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_missing=()
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3 python3-venv)
# The boot agent's tests: a real Docker engine, the compose tool, and a static
# busybox to build runnable test images; GNU time for the benchmarks.
command -v dockerd >/dev/null 2>&1 || apt_missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || apt_missing+=(docker-compose)
dpkg -s busybox-static >/dev/null 2>&1 || apt_missing+=(busybox-static)
# CVMs that are machines of their own (`berth up --isolation container`):
# a rootless system container per CVM, with its own engine.
command -v rootlesskit >/dev/null 2>&1 || apt_missing+=(rootlesskit)
command -v slirp4netns >/dev/null 2>&1 || apt_missing+=(slirp4netns)
command -v newuidmap >/dev/null 2>&1 || apt_missing+=(uidmap)
[ -x /usr/bin/time ] || apt_missing+=(time)
# The dstack guest emulation (prelaunch tests): what a dstack guest has.
command -v jq >/dev/null 2>&1 || apt_missing+=(jq)
# The API load benchmark (`make bench`): a well-known HTTP load generator.
command -v wrk >/dev/null 2>&1 || apt_missing+=(wrk)
# The control plane on PostgreSQL (scripts/with-pg.sh starts a private
# cluster from the server binaries; Debian's own cluster is not used, so
# none is created) and the API replicas' load balancer.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  apt_missing+=(postgresql)
  $SUDO mkdir -p /etc/postgresql-common/createcluster.d
  echo 'create_main_cluster = false' | $SUDO tee /etc/postgresql-common/createcluster.d/berth.conf >/dev/null
fi
command -v psql >/dev/null 2>&1 || apt_missing+=(postgresql-client)
command -v haproxy >/dev/null 2>&1 || apt_missing+=(haproxy)
if ((${#apt_missing[@]})); then
  echo "deps: installing ${apt_missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi

# The official clients, pinned by interop/package-lock.json.
if ! cmp -s interop/package-lock.json interop/node_modules/.berth-installed-lock; then
  echo "deps: npm ci in interop/"
  (cd interop && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.berth-installed-lock)
fi

# The web console's browser tests: Debian's chromium (no browser download)
# and playwright-core pinned by e2e/package-lock.json.
if [ ! -x /usr/bin/chromium ]; then
  echo "deps: installing chromium"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium
fi
if ! cmp -s e2e/package-lock.json e2e/node_modules/.berth-installed-lock; then
  echo "deps: npm ci in e2e/"
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.berth-installed-lock)
fi

# Registry fixtures (docker-registry, skopeo, umoci, moto); it also creates
# .deps/venv, the project's own Python environment for test-only tools.
scripts/registry-deps.sh

# An independent AES-GCM/X25519 implementation for the interop test, in the
# same venv (the tests run .deps/venv/bin/python).
VPY=.deps/venv/bin/python
if ! "$VPY" -c 'import cryptography.hazmat.primitives.ciphers.aead' >/dev/null 2>&1; then
  echo "deps: pip install cryptography into .deps/venv"
  "$VPY" -m pip install --quiet --disable-pip-version-check --no-input 'cryptography>=42'
fi

# The official Python dstack SDK, for the guest agent's interop test.
if ! "$VPY" -c 'import dstack_sdk' >/dev/null 2>&1; then
  echo "deps: pip install dstack-sdk into .deps/venv"
  "$VPY" -m pip install --quiet --disable-pip-version-check --no-input 'dstack-sdk==0.5.4'
fi

# Bridges of Docker engines that are gone (a test engine killed before it
# could remove its networks) keep their subnets routed, and enough of them
# take every default address pool of the next engines. With no dockerd
# running, no br-* bridge has an owner.
if ! pgrep -x dockerd >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then
  for b in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | grep '^br-' || true); do
    $SUDO ip link delete "$b" 2>/dev/null || true
  done
fi

# `make lint`'s dependency check (deny.toml), into .deps/cargo like
# cargo-fuzz (about 6 minutes to build, once).
CARGO_DENY_VERSION=0.20.2
if ! .deps/cargo/bin/cargo-deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  echo "deps: cargo install cargo-deny $CARGO_DENY_VERSION into .deps/cargo"
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --root .deps/cargo --quiet
fi

# The test runner: cargo-nextest is on the machine image; fall back to cargo test.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "deps: cargo-nextest not found; the suite will run with cargo test"
fi
echo "deps: ok"
