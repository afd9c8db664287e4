# `make build`: install everything (first time: a few minutes) and run the default build.
# `make test`:  install everything (with podman and runc, for the container tests) and run the test suite,
#               one test file per pytest-xdist worker, TEST_WORKERS at a time (default 2; 0: one process).
# `make test-fast`: the in-process unit tests only (tests/unit, under a minute).
# `make bench`: the benchmarks (bench/results.json); `make bench-results`: bench/RESULTS.md from results.json.
EDGEBUILD_HOME ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/edgebuild
VENV ?= $(EDGEBUILD_HOME)/venv
TEST_WORKERS ?= 2
export EDGEBUILD_HOME
export EDGEBUILD_VENV := $(VENV)

.PHONY: install build test test-fast bench bench-results
install:
	@bash scripts/install.sh >/dev/null

build: install
	$(VENV)/bin/edgebuild build

test:
	@bash scripts/install.sh --container >/dev/null
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench: install
	$(VENV)/bin/python -m bench
	$(VENV)/bin/python -m bench.render

bench-results: install
	$(VENV)/bin/python -m bench.render
