# tsbridge — the two commands that matter:
#   make run    set up the example app and serve it on 127.0.0.1:8787
#   make test   lint + every test (what CI runs)

CARGO ?= cargo
CONFIG ?= examples/omega-workflow/tsbridge.toml
# npm projects whose packages the example and the tests need (TypeScript runners, esbuild, ...)
NPM_DIRS := . examples/omega-workflow crates/tsbridge-runtime/tests/fixtures-pool

.PHONY: run test setup build lint unit js-test bench soak

setup:
	@for d in $(NPM_DIRS); do \
	  if [ -f $$d/package-lock.json ]; then \
	    echo "npm ci in $$d"; (cd $$d && npm ci --no-audit --no-fund --loglevel=error) || exit 1; \
	  fi; \
	done

build:
	$(CARGO) build --release --bin tsbridge

run: setup build
	@[ -n "$$TSBRIDGE_TOKEN" ] || echo "TSBRIDGE_TOKEN not set: using the development token dev-token (curl -H 'Authorization: Bearer dev-token' ...)"
	TSBRIDGE_TOKEN=$${TSBRIDGE_TOKEN:-dev-token} ./target/release/tsbridge serve --config $(CONFIG)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Doctests first: the last line CI reads is nextest's summary. The tests
# leave no cgroup and no job TMPDIR behind: .ci/leftovers lists tsbridge's
# before nextest and fails the run, naming them, if new ones are left after
# it (quiet when there are none; no cgroupfs: only the TMPDIRs are checked).
LEFTOVERS := $(or $(TMPDIR),/tmp)/.tsbridge-leftovers-before.$(shell echo $$PPID)
unit:
	$(CARGO) test --workspace --doc
	@.ci/leftovers list > $(LEFTOVERS)
	$(CARGO) nextest run --workspace --no-fail-fast
	@.ci/leftovers check $(LEFTOVERS); rc=$$?; rm -f $(LEFTOVERS); exit $$rc

# The JavaScript parts: the pool worker host and the example app's own suite.
js-test:
	node --test js/test/*.test.mjs
	cd examples/omega-workflow && npm test

test: setup lint js-test unit

bench: setup
	bench/run.sh

# Not part of `make test`: a randomized soak of a real server (mixed load,
# cancels, timeouts, escapees, SIGKILLs of the server) that checks SPEC §4's
# invariants at the end; bench/soak/soak.py says what. SOAK_SECONDS=600 for
# a longer one.
SOAK_SECONDS ?= 120
soak: setup
	$(CARGO) build --bin tsbridge
	bench/soak/soak.py target/debug/tsbridge --seconds $(SOAK_SECONDS)
