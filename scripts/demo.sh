#!/usr/bin/env bash
# `make demo`: what works today, for real: an app's env key pair, a .env with
# registry credentials sealed to it exactly as the official clients seal, and
# the CVM side opening it. Nothing here is mocked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --quiet -p berth-cli
BERTH="$PWD/target/debug/berth"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. The app's env key pair (in a real deployment the KMS holds the private key)"
echo "\$ berth keygen --out app.key"
PUB="$("$BERTH" keygen --out "$WORK/app.key")"
echo "$PUB"
ls -l "$WORK/app.key" | awk '{print $1, $NF}'

step "2. The user's .env with private-registry credentials"
cat > "$WORK/.env" <<'ENV'
# Docker Hub / any OCI registry
DSTACK_DOCKER_USERNAME=alice
DSTACK_DOCKER_PASSWORD="dckr_pat_demo-not-a-real-token"
# AWS ECR
DSTACK_AWS_ACCESS_KEY_ID=AKIADEMO
DSTACK_AWS_SECRET_ACCESS_KEY='demo/secret+key=='
DSTACK_AWS_REGION=us-east-1
DSTACK_AWS_ECR_REGISTRY=123456789012.dkr.ecr.us-east-1.amazonaws.com
GREETING="hello from inside the CVM"
ENV
sed 's/^/    /' "$WORK/.env"

step "3. Sealed on the user's machine (X25519 + AES-256-GCM, dstack's format)"
echo "\$ berth seal --pubkey $PUB -e .env -e GREETING='overridden on the command line'"
"$BERTH" seal --pubkey "$PUB" -e "$WORK/.env" -e "GREETING=overridden on the command line" > "$WORK/sealed.hex"
printf '%s…  (%d hex characters; this is all the cloud ever sees)\n' "$(head -c 96 "$WORK/sealed.hex")" "$(tr -d '\n' < "$WORK/sealed.hex" | wc -c)"

step "4. Opened with the app's key (what the CVM does at boot)"
echo "\$ berth unseal --key-file app.key sealed.hex"
"$BERTH" unseal --key-file "$WORK/app.key" "$WORK/sealed.hex" | sed 's/^/    /'

step "5. Opened with any other key: refused, and nothing leaks"
"$BERTH" keygen --out "$WORK/other.key" >/dev/null
echo "\$ berth unseal --key-file other.key sealed.hex"
"$BERTH" unseal --key-file "$WORK/other.key" "$WORK/sealed.hex" || echo "(exit code $?)"

step "6. One flipped byte: refused"
python3 - "$WORK/sealed.hex" <<'PY'
import sys
p = sys.argv[1]
h = bytearray(open(p).read().strip(), "ascii")
h[120] = ord("0") if h[120] != ord("0") else ord("1")
open(p, "w").write(h.decode())
PY
"$BERTH" unseal --key-file "$WORK/app.key" "$WORK/sealed.hex" || echo "(exit code $?)"

printf '\nDemo done. Next: `berth pull` (private registries) and `berth up` (the local cloud) are on the way; see README.md.\n'
