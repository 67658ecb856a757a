# The two commands: `make demo` (the whole pipeline on built-in data) and `make test`.
# Each creates .venv and installs what it needs on first use.
# For development: `make test-fast` (the inner loop: no slow or reliability tests) and `make lint` (ruff + mypy).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast lint venv clean bench

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: venv
	$(VENV)/bin/hybrid-vision demo

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not reliability"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: venv
	$(PY) benchmarks/quantize_bench.py
	$(PY) benchmarks/edge_bench.py
	$(PY) benchmarks/cloud_bench.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
