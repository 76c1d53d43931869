#!/usr/bin/env bash
# `make demo`: Berth's main job, end to end, on this machine, for real:
# a private registry with a password and a private image, the local
# confidential cloud (`berth up`: API, KMS, node on a Docker engine), and an
# app deployed with its registry credentials sealed on the user's side.
# Everything it starts keeps running until `make demo-stop`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
DEMO="$ROOT/.demo"
BERTH="$ROOT/target/debug/berth"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ -f "$DEMO/pids" ]; then
  echo "stopping the previous demo first"
  scripts/demo-stop.sh >/dev/null 2>&1 || true
fi
rm -rf "$DEMO"
mkdir -p "$DEMO/app"
chmod 700 "$DEMO"

step "Building berth"
cargo build --quiet -p berth-cli
cargo build --quiet -p testkit --example demo_registry

step "1. A private registry with a password and a private image"
python3 -c 'import secrets; print("demo-" + secrets.token_hex(12))' > "$DEMO/registry-password"
chmod 600 "$DEMO/registry-password"
# The registry serves while its standard input is open: a FIFO held by a
# `sleep`; `make demo-stop` ends the sleep and the registry shuts down cleanly.
mkfifo "$DEMO/registry.stdin"
"$ROOT/target/debug/examples/demo_registry" demo "$DEMO/registry-password" acme/hello:1 \
  < "$DEMO/registry.stdin" > "$DEMO/registry.out" 2> "$DEMO/registry.log" &
sleep infinity > "$DEMO/registry.stdin" 2>/dev/null < /dev/null &
echo "$!" >> "$DEMO/pids"
for _ in $(seq 1 600); do grep -q '^image ' "$DEMO/registry.out" 2>/dev/null && break; sleep 0.1; done
REGISTRY="$(sed -n 's/^registry //p' "$DEMO/registry.out")"
IMAGE="$(sed -n 's/^image //p' "$DEMO/registry.out")"
[ -n "$REGISTRY" ] || { echo "the demo registry did not start:"; cat "$DEMO/registry.log"; exit 1; }
echo "registry: $REGISTRY (user demo, password in $DEMO/registry-password)"
echo "image:    $IMAGE"
echo "anonymous pull is refused, as it should be:"
"$BERTH" check "$REGISTRY/acme/hello:1" 2>&1 | sed 's/^/    /' || true

step "2. The local confidential cloud: berth up"
PORT="${BERTH_DEMO_PORT:-8000}"
if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$PORT))!=0)"; then
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi
# The demo registry listens on loopback: a CVM reaches a loopback or private
# address only for a registry the operator mapped.
env -u BERTH_ADMIN_API_KEY "$BERTH" up --state "$DEMO/cloud" --listen "127.0.0.1:$PORT" \
  --registry-endpoint "$REGISTRY=http://$REGISTRY" > "$DEMO/berth-up.log" 2>&1 < /dev/null &
echo "$!" >> "$DEMO/pids"
for _ in $(seq 1 900); do grep -q 'Stop with Ctrl-C' "$DEMO/berth-up.log" 2>/dev/null && break; sleep 0.1; done
grep -q 'Stop with Ctrl-C' "$DEMO/berth-up.log" || { echo "berth up did not start:"; cat "$DEMO/berth-up.log"; exit 1; }
sed -n '/^Berth local cloud/,/^Isolation/p' "$DEMO/berth-up.log" | sed 's/^/    /'
export BERTH_API_URL="http://127.0.0.1:$PORT/api/v1"
BERTH_API_KEY="$(cat "$DEMO/cloud/api-key")"
export BERTH_API_KEY
KMS_PUBKEY="$(cat "$DEMO/cloud/kms-public-key")"
export BERTH_KMS_PUBKEY="$KMS_PUBKEY"
# The owner key that signs this demo's upgrades (berth deploy creates it);
# kept with the demo instead of in ~/.config/berth.
export BERTH_OWNER_KEY="$DEMO/owner-key"

step "3. Deploy an app whose image is private; the credentials are sealed here"
cat > "$DEMO/app/docker-compose.yml" <<YAML
services:
  hello:
    image: $REGISTRY/acme/hello:1
    network_mode: none
    environment:
      - GREETING=\${GREETING}
    command: ["sh", "-c", "echo \"\$\$GREETING (from a private image, inside a CVM)\"; sleep 86400"]
YAML
{
  echo "GREETING=Hello from Berth"
  echo "DSTACK_DOCKER_USERNAME=demo"
  echo "DSTACK_DOCKER_PASSWORD=$(cat "$DEMO/registry-password")"
  echo "DSTACK_DOCKER_REGISTRY=$REGISTRY"
} > "$DEMO/app/.env"
chmod 600 "$DEMO/app/.env"
sed 's/^/    /' "$DEMO/app/docker-compose.yml"
echo "    .env: GREETING, DSTACK_DOCKER_USERNAME, DSTACK_DOCKER_PASSWORD, DSTACK_DOCKER_REGISTRY"
echo
# Exactly the command shown: the KMS key it trusts is BERTH_KMS_PUBKEY, exported
# above, as in the suggestions printed at the end.
echo "\$ berth deploy -n demo-private-app -c docker-compose.yml -e .env --wait"
(cd "$DEMO/app" && "$BERTH" deploy -n demo-private-app -c docker-compose.yml -e .env --wait)

step "4. The app's output"
sleep 1
"$BERTH" cvms logs demo-private-app --stdout | sed 's/^/    /'
echo
"$BERTH" cvms list | sed 's/^/    /'
echo
"$BERTH" cvms get demo-private-app | sed 's/^/    /'

step "5. What the control plane holds"
# -f: the password is read from its file, never put on grep's command line.
if grep -qFf "$DEMO/registry-password" "$DEMO/cloud/berth.db" "$DEMO/berth-up.log"; then
  echo "    the password was found in the database or the control plane's log: this is a bug"
  exit 1
fi
echo "    the registry password is in neither the database ($DEMO/cloud/berth.db) nor the API log: only the sealed env is stored"

cat <<EOF2

The demo keeps running:
  API:            $BERTH_API_URL   (X-API-Key: the key in $DEMO/cloud/api-key)
  web console:    http://127.0.0.1:$PORT/   (sign in with the key in $DEMO/cloud/api-key;
                  deploy a second app from the form: its image $IMAGE,
                  provider "Other registry", registry $REGISTRY, user demo,
                  the password in $DEMO/registry-password)
  try:            export BERTH_API_URL=$BERTH_API_URL BERTH_API_KEY=\$(cat $DEMO/cloud/api-key) BERTH_KMS_PUBKEY=$KMS_PUBKEY BERTH_OWNER_KEY=$DEMO/owner-key
                  $BERTH cvms list
                  $BERTH cvms get demo-private-app
                  $BERTH cvms logs demo-private-app --serial
                  $BERTH deploy --update demo-private-app -c $DEMO/app/docker-compose.yml --wait   (signed with the owner key)
                  $BERTH cvms history demo-private-app
                  $BERTH deploy -n demo-second-app -c $DEMO/app/docker-compose.yml -e $DEMO/app/.env --wait
  official CLI:   PHALA_CLOUD_API_PREFIX=$BERTH_API_URL PHALA_CLOUD_API_KEY=\$(cat $DEMO/cloud/api-key) \\
                  $ROOT/interop/node_modules/.bin/phala cvms list
  stop it all:    make demo-stop
EOF2
