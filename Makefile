# The two commands: `make demo` (the whole pipeline on built-in data) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test venv clean bench bench-detect

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

bench: venv
	$(PY) benchmarks/quantize_bench.py
	$(PY) benchmarks/edge_bench.py
	$(PY) benchmarks/cloud_bench.py

# Detection targets on the built-in shapes set; BUNDLE=a trained, quantized detect bundle, else it trains one (slow)
bench-detect: venv
	$(PY) benchmarks/detect_bench.py $(if $(BUNDLE),--bundle $(BUNDLE))

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
