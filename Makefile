# Two commands do everything on a fresh machine:
#   make demo   install into .venv and run a real search on a built-in model (GPU if present, else CPU)
#   make test   install into .venv and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	# torch first, so the CPU build on this machine's disk is used where there is no GPU; deepspeed
	# compiles nothing at install (DS_BUILD_OPS=0) but its setup.py imports torch: no build isolation.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu" tests

demo: $(STAMP)
	$(BIN)/python -m autofit demo

clean:
	rm -rf $(VENV) results/demo-*
