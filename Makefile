# The two quickstart commands: `make demo` and `make test` (both create .venv as needed).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint deps system-deps bench image-check

$(BIN)/gateway: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

deps: $(BIN)/gateway

demo: deps
	$(BIN)/gateway demo

# installs redis-server and nginx from Debian when missing (the tests start their own instances)
system-deps:
	@command -v redis-server >/dev/null && command -v nginx >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server nginx >/dev/null; }

test: deps system-deps
	$(BIN)/pytest -q

lint: deps
	$(BIN)/ruff check gateway tests bench tools
	$(BIN)/mypy

# the benchmark (BENCHMARKS.md); flags through BENCH_ARGS, e.g. make bench BENCH_ARGS="--rounds 3 --no-apache"
bench: deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# opt-in, not part of CI: build the Dockerfile with buildah (no daemon) and smoke-test the image
image-check:
	bash ci/image-build.sh
