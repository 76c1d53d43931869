# The README's two commands: `make demo` and `make test`. Each installs what it
# needs (scripts/deps.sh) and starts the servers it needs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test demo deps lint unit bench

deps:
	@scripts/deps.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

test: deps lint unit

demo: deps
	@scripts/demo.sh

bench: deps
	@scripts/bench.sh
