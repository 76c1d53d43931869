# The README's two commands: `make demo` and `make test`. Each installs what it
# needs (scripts/deps.sh) and starts the servers it needs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test demo demo-stop deps lint unit bench

deps:
	@scripts/deps.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# Architecture invariant: the control plane links no code that can derive
	@# an env private key or open a sealed env.
	@if $(CARGO) tree -p cloud -e normal --prefix none | grep -E '^(envseal|kms|guest) '; then \
	  echo "error: crate cloud depends on envseal/kms/guest (see ARCHITECTURE.md)"; exit 1; fi

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
