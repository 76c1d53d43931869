#!/usr/bin/env bash
# Stops what `make demo` started: the demo CVM, `berth up` (and its private
# dockerd, if it started one) and the demo registry.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEMO="$PWD/.demo"
[ -f "$DEMO/pids" ] || { echo "no demo is running"; exit 0; }
if [ -f "$DEMO/cloud/api-key" ]; then
  PORT="$(sed -n 's#^API: *http://127.0.0.1:\([0-9]*\)/api/v1#\1#p' "$DEMO/berth-up.log" | head -1)"
  BERTH_API_URL="http://127.0.0.1:$PORT/api/v1" BERTH_API_KEY="$(cat "$DEMO/cloud/api-key")" \
    target/debug/berth cvms delete demo-private-app >/dev/null 2>&1 || true
fi
while read -r pid; do
  kill -TERM "$pid" 2>/dev/null || true
done < "$DEMO/pids"
sleep 2
rm -f "$DEMO/pids"
echo "demo stopped (its files stay in $DEMO)"
