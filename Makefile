# Set-up for a fresh machine: `make demo` and `make test` create .venv when it is missing.
#
# Which PyTorch: with an NVIDIA driver present (nvidia-smi answers) the default PyPI build
# (CUDA); otherwise torch==2.13.0, a CPU build where one is on local disk or the index.
# Override:  make test TORCH='torch==2.14.1'   or   make demo TORCH=torch
# Which ONNX Runtime: the extra `gpu` (onnxruntime-gpu) with the driver, else `cpu` (onnxruntime);
# never both. Override:  make install ORT=cpu
# Another photo for the demo:  make demo IMAGE=photo.jpg
# Another interpreter:  make test PYTHON=python3.12
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(HAS_GPU),yes)
TORCH ?= torch
ORT ?= gpu
else
TORCH ?= torch==2.13.0
ORT ?= cpu
endif
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip here warns once per missing mirror folder; keep its real messages only.
QUIET := 2>&1 | { grep -v "is ignored: it is neither" || true; }
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
ORT_OTHER := $(if $(filter gpu,$(ORT)),onnxruntime,onnxruntime-gpu)

.PHONY: install web-deps demo test test-all bench clean

install: $(STAMP)

# Switching ONNX Runtime builds: both packages own the `onnxruntime` folder, so both go, then the
# one wanted is installed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)" $(QUIET)
	if $(PY) -m pip show -q $(ORT_OTHER) >/dev/null 2>&1; then $(PIP) uninstall -y onnxruntime onnxruntime-gpu; fi
	$(PIP) install -e ".[distill,dev,$(ORT)]" $(QUIET)
	$(PY) -c "import torch, onnxruntime, runtime, distill"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/toonify-fast distill demo $(if $(IMAGE),--image "$(IMAGE)")

test: $(STAMP) web-deps
	$(PY) -m pytest -q

test-all: $(STAMP) web-deps
	$(PY) -m pytest -q -m ""

# The browser tests (tests/runtime/test_web.py) need Debian's chromium and the page's npm packages,
# installed from runtime/web/package-lock.json. As root both install here; otherwise the message
# says what to run.
CHROMIUM := /usr/bin/chromium
WEB := runtime/web
ROOT_HINT = { echo "the browser tests need $(1): as root run: $(2)" >&2; exit 1; }

web-deps: $(CHROMIUM) $(WEB)/node_modules/.package-lock.json

$(CHROMIUM):
	if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	else $(call ROOT_HINT,Debian's chromium,apt-get update && apt-get install -y chromium); fi

$(WEB)/node_modules/.package-lock.json: $(WEB)/package-lock.json $(WEB)/package.json
	command -v npm >/dev/null || if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q nodejs npm; \
	else $(call ROOT_HINT,node and npm,apt-get update && apt-get install -y nodejs npm); fi
	cd $(WEB) && npm ci --no-audit --no-fund --ignore-scripts
	touch $@

# The head-to-head benchmark compares against the demo's teacher and student.
bench: $(STAMP)
	test -f demo/demo.json || $(MAKE) demo
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info $(WEB)/node_modules
