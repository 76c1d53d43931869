# The README's two commands: `make demo` and `make test`. Each installs what it
# needs (scripts/deps.sh) and starts the servers it needs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test demo demo-stop deps lint unit bench fuzz release

deps:
	@scripts/deps.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# Docs build with no broken link and no link to a private item.
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
	@# Dependencies: licenses, banned crates, sources (deny.toml says why
	@# advisories are left out). cargo-deny comes from `make deps`.
	@test -x .deps/cargo/bin/cargo-deny || { echo "error: cargo-deny is missing: run make deps"; exit 1; }
	.deps/cargo/bin/cargo-deny --log-level error check bans licenses sources
	@# No module uses a sibling that uses it back (scripts/module-cycles.allow
	@# lists the cycles not broken yet).
	scripts/module-cycles.py
	@# Architecture invariant: the control plane links no code that can derive
	@# an env private key or open a sealed env.
	@if $(CARGO) tree -p cloud -e normal --prefix none | grep -E '^(envseal|kms|guest|agent) '; then \
	  echo "error: crate cloud depends on envseal/kms/guest/agent (see ARCHITECTURE.md)"; exit 1; fi

unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

test: deps lint unit

demo: deps
	@scripts/demo.sh

demo-stop:
	@scripts/demo-stop.sh

bench: deps
	@scripts/bench.sh

# Fuzzing (not part of `make test`): coverage-guided cargo-fuzz targets in
# fuzz/ (stable toolchain with RUSTC_BOOTSTRAP=1; cargo-fuzz is installed
# into .deps/cargo), FUZZ_SECONDS per target, after the same checks as
# proptest properties with BERTH_FUZZ_CASES cases each (`make test` runs
# them with a few hundred, and replays every input saved in fuzz/regressions
# and fuzz/seeds). See scripts/fuzz.sh.
FUZZ_SECONDS ?= 30
FUZZ_CASES ?= 10000
fuzz:
	BERTH_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test -p envseal -p contract -p registry -p guest \
	  --test fuzz_dotenv --test fuzz_sealed_env --test fuzz_image_reference --test fuzz_compose \
	  --test fuzz_manifest --test fuzz_www_authenticate --test fuzz_serial_log
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# The static agent for dstack / Phala Cloud CVMs (not part of `make test`):
# `berth` for x86_64-unknown-linux-musl, no glibc dependency. Installs the
# Rust target and Debian's musl-tools (musl-gcc, for the C parts) when
# missing; prints the binary's sha256 and size, which `berth
# prelaunch-script --sha256` pins. See docs/phala-cloud.md.
RELEASE_TARGET := x86_64-unknown-linux-musl
release:
	@scripts/release.sh $(RELEASE_TARGET)
