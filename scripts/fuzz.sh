#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing of Berth's parsers with cargo-fuzz
# (libFuzzer), FUZZ_SECONDS per target (default 30). Targets and what each
# checks: fuzz/checks/*.rs. Only a stable toolchain is needed: cargo-fuzz's
# `-Z` flags are allowed with RUSTC_BOOTSTRAP=1. cargo-fuzz itself is
# installed into .deps/cargo (nothing else is touched).
#
#   make fuzz                         # every target, 30 s each
#   FUZZ_SECONDS=600 make fuzz        # longer
#   FUZZ_TARGETS="compose dotenv" make fuzz
#
# A crash leaves its input in fuzz/artifacts/TARGET/; copy it to
# fuzz/regressions/TARGET/ and `make test` replays it forever after (the
# crate's tests/fuzz_TARGET.rs runs the same check on every saved input).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
ALL="dotenv sealed_env image_reference manifest www_authenticate compose serial_log"
FUZZ_TARGETS=${FUZZ_TARGETS:-$ALL}

CF=.deps/cargo/bin/cargo-fuzz
if ! "$CF" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: cargo install cargo-fuzz $CARGO_FUZZ_VERSION into .deps/cargo"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root .deps/cargo --quiet
fi
command -v c++ >/dev/null || { echo "fuzz: libFuzzer needs a C++ compiler (apt-get install g++)" >&2; exit 1; }

export RUSTC_BOOTSTRAP=1
cd fuzz
echo "fuzz: building the targets (first build: several minutes)"
"../$CF" build -O

failed=()
for t in $FUZZ_TARGETS; do
  mkdir -p "corpus/$t" "artifacts/$t"
  dict=()
  [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
  echo "fuzz: $t for ${FUZZ_SECONDS}s"
  if ! "../$CF" run -O "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 "${dict[@]}" \
      -artifact_prefix="artifacts/$t/" >"artifacts/$t.log" 2>&1; then
    failed+=("$t")
    echo "fuzz: $t FAILED; input in fuzz/artifacts/$t/, log in fuzz/artifacts/$t.log" >&2
    grep -E "panicked|ERROR|SUMMARY" "artifacts/$t.log" | head -5 >&2 || true
  else
    grep -E "^stat::number_of_executed_units|^Done" "artifacts/$t.log" | tail -1 || true
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: failures in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ok"
