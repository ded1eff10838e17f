# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev
# what `make lint` formats and checks with ruff; pyright takes its paths from pyproject.toml
LINT_PATHS := $(wildcard src tests examples benchmarks)
# pytest workers: 2 cores on the reference machine
WORKERS ?= 2

.PHONY: venv test test-docs test-debug-nans lint demo demo-quick docs docs-serve bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# the tests, the docs and everything they import (the demo's tests and the README's example
# need the `demo` extra); it covers what `make demo` needs too
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet -e ".[tests,docs,demo]"
	touch $(STAMP) $(DEMO_STAMP)

# `make demo` installs only the `demo` extra (scikit-learn, matplotlib, tqdm, scipy)
$(DEMO_STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet -e ".[demo]"
	touch $(DEMO_STAMP)

# the linters (the `dev` extra) only for `make lint`, so `make demo` stays lean
$(DEV_STAMP): $(STAMP)
	$(PIP) install --quiet -e ".[dev]"
	touch $(DEV_STAMP)

venv: $(STAMP)

# with jaxtyping's run-time checks of every annotation in scoredyn (beartype as the checker)
test: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup -q --durations=15 --jaxtyping-packages=scoredyn,beartype.beartype tests --ignore=tests/test_docs_examples.py

# every Python block of the README and the docs pages runs (tests/test_docs_examples.py)
test-docs: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) -q tests/test_docs_examples.py

# the whole suite once more with jax_debug_nans on (docs/reliability.md)
test-debug-nans: $(STAMP)
	SCOREDYN_DEBUG_NANS=1 $(PY) -m pytest -n $(WORKERS) --dist loadgroup -q tests

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/pyright

demo: $(DEMO_STAMP)
	$(PY) -m examples.digits $(DEMO_ARGS)

demo-quick: $(DEMO_STAMP)
	$(PY) -m examples.digits --quick $(DEMO_ARGS)

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict
	$(PY) scripts/check_docs_math.py site

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PIP) install --quiet -e ".[bench]"
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis
