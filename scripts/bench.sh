#!/usr/bin/env bash
# `make bench`: benchmarks that run Berth and its peer side by side.
# Results go to stdout; record them in BENCHMARKS.md with this command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${RUNS:-5}"
LAYER_MB="${LAYER_MB:-100}"
cargo build --release --quiet -p berth-cli
cargo build --release --quiet -p testkit --example bench_pull --example bench_boot
# Pull: 4 x LAYER_MB on loopback (RUNS runs); then one PULL_BIG_MB layer on
# loopback and through the throttling proxy (PULL_LINK_MBPS per connection,
# PULL_RTT_MS round trip), PULL_BIG_RUNS runs each. PULL_BIG_MB=0 skips those.
PULL_BIG_MB="${PULL_BIG_MB:-1000}"
PULL_LINK_MBPS="${PULL_LINK_MBPS:-50}"
PULL_RTT_MS="${PULL_RTT_MS:-20}"
PULL_BIG_RUNS="${PULL_BIG_RUNS:-3}"
echo "== berth pull vs skopeo copy (4 x ${LAYER_MB} MB, ${RUNS} runs each; 1 x ${PULL_BIG_MB} MB on loopback and at ${PULL_LINK_MBPS} MB/s per connection + ${PULL_RTT_MS} ms, ${PULL_BIG_RUNS} runs each; alternating)"
target/release/examples/bench_pull target/release/berth "$RUNS" "$LAYER_MB" \
  "$PULL_BIG_MB" "$PULL_LINK_MBPS" "$PULL_RTT_MS" "$PULL_BIG_RUNS"
echo
# Boot: busybox + 2 x BOOT_LAYER_MB, cold and warm, BOOT_RUNS runs each,
# through the throttling proxy (BOOT_LINK: MB/s per connection / round-trip
# ms), then on loopback; then the boot agent's peak RSS for a cold boot of
# busybox + BOOT_RSS_GB x 1 GB (0 skips it).
BOOT_LAYER_MB="${BOOT_LAYER_MB:-300}"
BOOT_RUNS="${BOOT_RUNS:-3}"
BOOT_LINK="${BOOT_LINK:-50/20}"
BOOT_RSS_GB="${BOOT_RSS_GB:-4}"
echo "== berth guest boot vs docker login + docker-compose pull + up (busybox + 2 x ${BOOT_LAYER_MB} MB, cold and warm, ${BOOT_RUNS} runs each, alternating): at ${BOOT_LINK}, then on loopback"
target/release/examples/bench_boot target/release/berth "$BOOT_RUNS" "$BOOT_LAYER_MB" "$BOOT_LINK"
target/release/examples/bench_boot target/release/berth "$BOOT_RUNS" "$BOOT_LAYER_MB" none
if [ "$BOOT_RSS_GB" != 0 ]; then
  echo "== the boot agent's peak RSS: a cold boot of busybox + ${BOOT_RSS_GB} x 1 GB on loopback"
  target/release/examples/bench_boot target/release/berth rss "$BOOT_RSS_GB"
fi
echo
# API (issue 21): API_CVMS CVM rows (10,000), wrk -c API_CONNECTIONS for
# API_SECONDS per route: the page of 50 (/cvms/paginated, /apps), /auth/me
# and the full streamed /cvms, on SQLite and then on a private PostgreSQL
# (scripts/with-pg.sh starts one and sets BERTH_TEST_PG_URL, or uses the
# server that variable already names).
echo "== API under load: wrk against a page of 50, /auth/me and the full list with ${API_CVMS:-10000} CVMs, next to a no-DB route of the same server; SQLite, then PostgreSQL"
cargo build --release --quiet -p testkit --example bench_api
scripts/with-pg.sh target/release/examples/bench_api target/release/berth "${API_CVMS:-10000}" "${API_SECONDS:-10}" "${API_CONNECTIONS:-16}"
echo
echo "== the guest agent: GetKey and GetQuote latency over its Unix socket (${AGENT_CALLS:-2000} calls each) and the serving process's RSS"
cargo build --release --quiet -p agent --example bench_agent
target/release/examples/bench_agent "${AGENT_CALLS:-2000}"
echo
# Pre-launch in a dstack guest (issue 19): testkit's guest emulation runs
# Berth's pre-launch script and the documented default flow (docker login +
# docker compose pull, then the runner's up) on the same image through the
# throttling proxy (PRELAUNCH_LINK: MB/s per connection / round-trip ms):
# cold boot, reboot, registry requests per reboot.
PRELAUNCH_LAYER_MB="${PRELAUNCH_LAYER_MB:-100}"
PRELAUNCH_RUNS="${PRELAUNCH_RUNS:-3}"
PRELAUNCH_LINK="${PRELAUNCH_LINK:-50/20}"
echo "== pre-launch in a dstack guest: berth's script vs the default flow (busybox + 2 x ${PRELAUNCH_LAYER_MB} MB at ${PRELAUNCH_LINK}, ${PRELAUNCH_RUNS} runs each)"
cargo build --release --quiet -p testkit --example bench_prelaunch
target/release/examples/bench_prelaunch target/release/berth "$PRELAUNCH_RUNS" "$PRELAUNCH_LAYER_MB" "$PRELAUNCH_LINK"
echo
echo "== isolation (issue 17): berth up --isolation container vs shared, cold and warm boot of a one-service app (${ISO_RUNS:-3} runs each, alternating), idle memory per CVM, ${ISO_FLEET:-20} CVMs at once (needs root)"
cargo build --release --quiet -p testkit --example bench_isolation
target/release/examples/bench_isolation target/release/berth "${ISO_RUNS:-3}" "${ISO_FLEET:-20}"
echo
# Image policy (issue 20): a cold boot of a 4-image app (busybox +
# VERIFY_LAYER_MB each) with every image pinned and its cosign signature
# verified, against the same boot with no policy, alternating, VERIFY_RUNS
# runs each; on loopback, then through the throttling proxy (VERIFY_LINK).
VERIFY_RUNS="${VERIFY_RUNS:-5}"
VERIFY_LAYER_MB="${VERIFY_LAYER_MB:-20}"
VERIFY_LINK="${VERIFY_LINK:-50/20}"
echo "== image policy: cold boot of a 4-image app (busybox + ${VERIFY_LAYER_MB} MB each) with signatures verified vs no policy (${VERIFY_RUNS} runs each, alternating): on loopback, then at ${VERIFY_LINK}"
cargo build --release --quiet -p testkit --example bench_verify
target/release/examples/bench_verify target/release/berth "$VERIFY_RUNS" "$VERIFY_LAYER_MB" none
target/release/examples/bench_verify target/release/berth "$VERIFY_RUNS" "$VERIFY_LAYER_MB" "$VERIFY_LINK"
