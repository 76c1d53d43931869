#!/usr/bin/env bash
# Installs what crates/testkit needs to start real registry fixtures:
#   Debian: docker-registry (distribution), skopeo, umoci, openssl, apache2-utils, curl
#   PyPI:   moto[server] 5.x into the venv <repo>/.deps/venv (tests run its bin/python)
# Idempotent and non-interactive; run as root. Skips whatever is already present
# and prints nothing then.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
export DEBIAN_FRONTEND=noninteractive

# package -> a command it provides (checked with command -v, then dpkg -s)
declare -A CMD=(
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [umoci]=umoci
  [openssl]=openssl
  [apache2-utils]=htpasswd
  [curl]=curl
)

missing=()
for pkg in docker-registry skopeo umoci openssl apache2-utils curl; do
  if command -v "${CMD[$pkg]}" >/dev/null 2>&1; then
    continue
  fi
  if dpkg -s "$pkg" >/dev/null 2>&1; then
    continue
  fi
  missing+=("$pkg")
done

if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  echo "registry-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# moto[server] 5.x goes into the project's own venv (.deps/venv, shared with
# scripts/deps.sh), never next to the machine's Python packages: pip then has
# nothing unrelated to resolve, or to complain about.
VENV="$REPO_ROOT/.deps/venv"
VPY="$VENV/bin/python"
if ! "$VPY" -c 'import sys' >/dev/null 2>&1; then
  PY="${PYTHON:-python3}"
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
    # Debian splits ensurepip out of python3.
    echo "registry-deps: installing python3-venv"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3-venv
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
  fi
fi
if ! "$VPY" -c 'import sys, moto.server, importlib.metadata as m; sys.exit(0 if m.version("moto").startswith("5.") else 1)' >/dev/null 2>&1; then
  echo "registry-deps: installing moto[server]==5.* into .deps/venv"
  "$VPY" -m pip install --quiet --disable-pip-version-check --no-input 'moto[server]==5.*'
fi
