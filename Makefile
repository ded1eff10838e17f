# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# pytest workers: 2 cores on the reference machine
WORKERS ?= 2

.PHONY: venv test test-debug-nans demo demo-quick docs docs-serve bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet -e ".[tests,docs,demo]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup -q tests

# the whole suite once more with jax_debug_nans on (docs/reliability.md)
test-debug-nans: $(STAMP)
	SCOREDYN_DEBUG_NANS=1 $(PY) -m pytest -n $(WORKERS) --dist loadgroup -q tests

demo: $(STAMP)
	$(PY) -m scoredyn.demo $(DEMO_ARGS)

demo-quick: $(STAMP)
	$(PY) -m scoredyn.demo --quick $(DEMO_ARGS)

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PIP) install --quiet -e ".[bench]"
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis
