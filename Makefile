# The two quickstart commands: `make demo` and `make test` (both create .venv as needed).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Every dependency (runtime and dev) comes from requirements/*.lock: exact versions with hashes,
# compiled by uv from the ranges in pyproject.toml. `make lock` after editing pyproject.toml;
# `make lock-upgrade` moves every pin to the newest allowed release (on purpose, reviewed).
# the system trust store, so uv works behind a TLS-inspecting proxy as pip does
export UV_NATIVE_TLS := 1
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -q \
	--custom-compile-command 'make lock'

.PHONY: demo test lint deps system-deps bench bench-quick image-check k8s-check chart-docs lock lock-upgrade lock-check

$(BIN)/gateway: pyproject.toml requirements/dev.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements/dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

deps: $(BIN)/gateway

demo: deps
	$(BIN)/gateway demo

lock: deps
	$(UV_COMPILE) --extra dev -o requirements/dev.lock
	$(UV_COMPILE) -o requirements/runtime.lock

lock-upgrade: deps
	$(UV_COMPILE) --upgrade --extra dev -o requirements/dev.lock
	$(UV_COMPILE) --upgrade -o requirements/runtime.lock

# fails when pyproject.toml asks for something the lock files do not hold (CI runs it)
lock-check: deps
	@tmp=$$(mktemp -d) && cp requirements/*.lock $$tmp/ && \
	$(UV_COMPILE) --extra dev -o $$tmp/dev.lock && $(UV_COMPILE) -o $$tmp/runtime.lock && \
	diff -u requirements/dev.lock $$tmp/dev.lock && diff -u requirements/runtime.lock $$tmp/runtime.lock && \
	echo "lock files match pyproject.toml" || { echo "requirements/*.lock disagree with pyproject.toml: run make lock"; exit 1; }

# installs redis-server, nginx, prometheus (tests/test_prometheus_live.py) and, without Node.js,
# nodejs and npm (tests/interop) from Debian when missing (the tests start their own instances)
system-deps:
	@command -v redis-server >/dev/null && command -v nginx >/dev/null && command -v prometheus >/dev/null \
	  && command -v npm >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); NODE=$$(command -v npm >/dev/null || echo nodejs npm); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends redis-server nginx prometheus $$NODE >/dev/null; }

test: deps system-deps
	$(BIN)/pytest -q

lint: deps
	$(BIN)/ruff check gateway tests bench tools
	$(BIN)/mypy

# the benchmark (BENCHMARKS.md); flags through BENCH_ARGS, e.g. make bench BENCH_ARGS="--rounds 3 --no-apache"
bench: deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# a look in under a minute (a few rows, one round, the floors, start-up with 100,000 revocation entries)
bench-quick: deps
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

# opt-in, not part of CI: build the Dockerfile with buildah (no daemon) and smoke-test the image
image-check:
	bash ci/image-build.sh

# the offline chart and Dockerfile checks CI runs (ci/k8s-checks.sh; helm, promtool and the
# schema tools are cached in ~/.cache/k8s-tools); the gateway's .venv checks the values schema
k8s-check: deps
	PATH="$(CURDIR)/$(BIN):$$PATH" bash ci/k8s-checks.sh

# rewrite charts/tokengate/README.md's values table from the comments in values.yaml
chart-docs: deps
	$(BIN)/python tools/chart_values_doc.py
