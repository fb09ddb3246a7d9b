# Two entry points for a fresh machine: `make demo` (end-to-end run on a small real default) and
# `make test` (the test suite). Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
export FKD_SHARED ?= $(SHARED)

.PHONY: venv demo test bench-quick gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest tests

demo: venv
	bash scripts/demo.sh

bench-quick: venv
	$(PY) benchmarks/run_all.py --quick

# On a CUDA machine: the GPU paths CI cannot run (GPU teacher, AMP, --compile, NCCL, --replay-device cuda), under 10 minutes (with the short GPU-labelgen benchmark).
gpu-check: venv
	$(PY) scripts/gpu_check.py

clean:
	rm -rf $(VENV) demo runs
