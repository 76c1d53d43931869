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

# The suite runs under scripts/with-pg.sh: a private PostgreSQL whose
# superuser URL is BERTH_TEST_PG_URL (the database tests run on SQLite and
# on it). Then a second pass runs the tests of the API and of the official
# clients again with BERTH_TEST_DATABASE=postgres (`berth up` and the
# in-process API on a fresh PostgreSQL database each): the binaries that
# store and read the control plane's state; those of pulls, boots, the
# guest and the engine's isolation do not touch its database. Both passes
# always run; `make unit` fails if either failed.
PG_PASS_CLI := cloud client update up_lifecycle node_lifecycle node_faults image_policy pinning console boot_queue
PG_PASS_CLOUD := api_rules api_shapes api_lists console_api tenant_bounds slow_clients
# Tests of SQLite itself (an operator's sqlite3 holding the file's lock;
# PostgreSQL's lock is tested in the cloud crate's database tests).
PG_PASS_SQLITE_ONLY := a_held_database_lock_stalls_no_reader_and_bounds_writers
PG_PASS_FILTER := ($(foreach t,$(PG_PASS_CLI),binary_id(berth-cli::$(t)) |) \
  $(foreach t,$(PG_PASS_CLOUD),binary_id(cloud::$(t)) |) none()) \
  - ($(foreach t,$(PG_PASS_SQLITE_ONLY),test(=$(t)) |) none())

unit:
	@scripts/with-pg.sh bash -c 'set -u; status=0; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast || status=1; \
	  echo "unit: second pass, the API and client tests on PostgreSQL (BERTH_TEST_DATABASE=postgres)"; \
	  BERTH_TEST_DATABASE=postgres $(CARGO) nextest run --workspace --no-fail-fast \
	    -E "$(PG_PASS_FILTER)" || status=1; \
	else \
	  $(CARGO) test --workspace --no-fail-fast || status=1; \
	  echo "unit: second pass, the API and client tests on PostgreSQL (BERTH_TEST_DATABASE=postgres)"; \
	  BERTH_TEST_DATABASE=postgres $(CARGO) test --no-fail-fast \
	    -p berth-cli $(foreach t,$(PG_PASS_CLI),--test $(t)) || status=1; \
	  BERTH_TEST_DATABASE=postgres $(CARGO) test --no-fail-fast \
	    -p cloud $(foreach t,$(PG_PASS_CLOUD),--test $(t)) \
	    -- $(foreach t,$(PG_PASS_SQLITE_ONLY),--skip $(t)) || status=1; \
	fi; \
	exit $$status'

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
