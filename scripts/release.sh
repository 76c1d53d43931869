#!/usr/bin/env bash
# `make release`: the static `berth` the pre-launch script downloads
# (docs/phala-cloud.md). Installs what it needs, builds, prints sha256 and size.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${1:-x86_64-unknown-linux-musl}"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq musl-tools
fi
cc_var="CC_$(echo "$target" | tr '-' '_')"
export "$cc_var=musl-gcc"
cargo build --release --locked --target "$target" -p berth-cli \
  --config 'profile.release.strip = true'
bin="${CARGO_TARGET_DIR:-target}/$target/release/berth"
if [ ! -f "$bin" ]; then
  echo "error: $bin was not built" >&2
  exit 1
fi
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "error: $bin links shared libraries:" >&2
  ldd "$bin" >&2
  exit 1
fi
echo "built $bin (static, $target)"
echo "sha256 $(sha256sum "$bin" | cut -d' ' -f1)"
echo "size   $(stat -c %s "$bin") bytes"
