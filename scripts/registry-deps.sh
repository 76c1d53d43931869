#!/usr/bin/env bash
# Installs what crates/testkit needs to start real registry fixtures:
#   Debian: docker-registry (distribution), skopeo, umoci, openssl, apache2-utils, curl
#   PyPI:   moto[server] 5.x into <repo>/.deps/py (project-local, used via PYTHONPATH)
# Idempotent and non-interactive; run as root. Skips whatever is already present.
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
else
  echo "registry-deps: Debian packages already installed"
fi

PY="${PYTHON:-python3}"
PY_TARGET="$REPO_ROOT/.deps/py"
# Only moto inside .deps/py counts (a system-wide moto could be another version).
if compgen -G "$PY_TARGET/moto-5.*.dist-info" >/dev/null \
  && PYTHONPATH="$PY_TARGET" "$PY" -c 'import sys, moto.server; sys.exit(0 if moto.__file__.startswith(sys.argv[1]) else 1)' "$PY_TARGET" >/dev/null 2>&1; then
  echo "registry-deps: moto[server] already in .deps/py"
else
  echo "registry-deps: installing moto[server]==5.* into .deps/py"
  mkdir -p "$PY_TARGET"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-input \
    --upgrade --target "$PY_TARGET" 'moto[server]==5.*'
fi
echo "registry-deps: done"
