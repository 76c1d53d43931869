#!/usr/bin/env bash
# `make bench`: benchmarks that run Berth and its peer side by side.
# Results go to stdout; record them in BENCHMARKS.md with this command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${RUNS:-5}"
LAYER_MB="${LAYER_MB:-100}"
cargo build --release --quiet -p berth-cli
cargo build --release --quiet -p testkit --example bench_pull --example bench_boot
echo "== berth pull vs skopeo copy (4 x ${LAYER_MB} MB, ${RUNS} runs each, alternating)"
target/release/examples/bench_pull target/release/berth "$RUNS" "$LAYER_MB"
echo
echo "== berth guest boot vs docker login + docker-compose pull + up (cold and warm, ${RUNS} runs each)"
target/release/examples/bench_boot target/release/berth "$RUNS" "${BOOT_LAYER_MB:-50}"
echo
echo "== API under load: wrk against GET /api/v1/cvms with ${API_CVMS:-1000} CVMs, next to a no-DB route of the same server"
cargo build --release --quiet -p testkit --example bench_api
target/release/examples/bench_api target/release/berth "${API_CVMS:-1000}" "${API_SECONDS:-10}" "${API_CONNECTIONS:-16}"
