# The two commands: `make demo` (the whole pipeline on built-in data) and `make test`.
# Each creates .venv and installs what it needs on first use.
# For development: `make test-fast` (the inner loop: no slow or reliability tests) and `make lint` (ruff + mypy).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# `make interop`: the official Triton and KServe clients, in a side venv (their pins clash with TensorFlow's)
INTEROP_VENV ?= .venv-interop
INTEROP_PY   := $(INTEROP_VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-all test-fast lint venv clean bench bench-detect interop interop-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: venv
	$(VENV)/bin/hybrid-vision demo

test: venv
	$(PY) -m pytest -q -m "not extended"

test-all: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not reliability"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

interop-venv: $(INTEROP_VENV)/.installed

$(INTEROP_VENV)/.installed: tests/interop/requirements.txt
	rm -rf $(INTEROP_VENV)
	$(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_PY) -m pip install -q --upgrade pip
	$(INTEROP_PY) -m pip install -q -r tests/interop/requirements.txt
	touch $@

# tritonclient (sync, asyncio) and kserve's REST client against `hybrid-vision serve` (run by the main venv),
# and the SDK against a kserve ModelServer; see tests/interop/.
interop: venv interop-venv
	HV_INTEROP=1 HV_MAIN_PYTHON=$(abspath $(PY)) $(INTEROP_PY) -m pytest -q -p no:cacheprovider tests/interop

bench: venv
	$(PY) benchmarks/quantize_bench.py
	$(PY) benchmarks/edge_bench.py
	$(PY) benchmarks/cloud_bench.py

# Detection targets on the built-in shapes set; BUNDLE=a trained, quantized detect bundle, else it trains one (slow)
bench-detect: venv
	$(PY) benchmarks/detect_bench.py $(if $(BUNDLE),--bundle $(BUNDLE))

clean:
	rm -rf $(VENV) $(INTEROP_VENV) demo-out .pytest_cache .hypothesis
