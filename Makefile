# yolov5face: `make serve` starts the server, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= cpu,export,serve,bench,dev
STAMP := $(VENV)/.installed-$(shell echo $(EXTRAS) | tr ',' '-')
# torch is installed first, pinned, from TORCH_INDEX: the PyTorch CPU wheel index by default
# (PyPI's Linux torch is the CUDA build, GBs of nvidia-* wheels). A CUDA host picks its index,
# e.g. `make serve TORCH_INDEX=https://download.pytorch.org/whl/cu126`; TORCH_INDEX=none takes
# pip's configured index as it is. When TORCH_INDEX does not answer within 10 s, torch comes from
# pip's configured index only if that is a CPU build (scripts/install_torch.py).
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: help venv install test test-fast fuzz test-docker serve archive bench lint format clean gpu-check

help:
	@echo "make serve    install, build model-store/fd1.mar, start TorchServe (foreground)"
	@echo "make test     install test dependencies, lint, and run the whole test suite"
	@echo "make test-docker  build the CPU image and run it with compose (Docker; not in make test)"
	@echo "make archive  (re)build model-store/fd1.mar when its inputs changed"
	@echo "make bench    regenerate docs/benchmarks.md and its plots"
	@echo "make lint     ruff check + format check"
	@echo "make gpu-check  the GPU path on this machine, parts it cannot run skipped (gpu-check.json)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) scripts/install_torch.py "$(TORCH_VERSION)" --index "$(TORCH_INDEX)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	touch $@

venv install: $(STAMP)

# Lint first: a lint regression fails `make test` (and so CI) like a failing test.
test: lint
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not server"

# `make test` fuzzes the request -> image path for 60 s (tests/test_fuzz.py); this for longer.
FUZZ_SECONDS ?= 1800
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest -q -p no:cacheprovider -o timeout=0 tests/test_fuzz.py

# The CPU image built and run with Docker Compose v2 (tests/test_docker.py; minutes, root, apt):
# starts a dockerd when none runs, and a local Debian base when the pinned one cannot be pulled.
test-docker: $(STAMP)
	$(PY) -m pytest -q -m docker tests/test_docker.py -o log_cli=true --log-cli-level=INFO

# Mutation testing of the request path (mutmut, in a copy under build/mutants; slow, not in CI):
# survivors and what each means are in docs/mutation.md.
.PHONY: mutants
mutants: $(STAMP)
	$(PY) scripts/mutants.py

archive: $(STAMP)
	$(VENV)/bin/yolov5face archive

serve: $(STAMP)
	$(VENV)/bin/yolov5face serve

bench: $(STAMP)
	$(VENV)/bin/yolov5face bench report --out docs/benchmarks.md

# No install: runs from a plain copy of the tree with a Python that has torch, onnxruntime, onnx,
# numpy and OpenCV (a GPU machine's own). GPU_PYTHON=.venv/bin/python runs it here.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) scripts/gpu_check.py --out gpu-check.json

lint: $(STAMP)
	$(VENV)/bin/ruff check yolov5face tests scripts
	$(VENV)/bin/ruff format --check yolov5face tests scripts

format: $(STAMP)
	$(VENV)/bin/ruff format yolov5face tests scripts
	$(VENV)/bin/ruff check --fix yolov5face tests scripts

clean:
	rm -rf model-store logs build *.egg-info .pytest_cache
