# Two commands do everything on a fresh machine:
#   make demo   install into .venv and run a real search on a built-in model (GPU if present, else CPU)
#   make test   install into .venv and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	# torch first, so the CPU build on this machine's disk is used where there is no GPU; deepspeed
	# compiles nothing at install (DS_BUILD_OPS=0) but its setup.py imports torch: no build isolation.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Two pytest-xdist workers by default, whole files each, the slowest files first (tests/conftest.py);
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu" -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=10 tests

# On the GPU machine (see ../shared/device/README.md: the stack travels as wheels in .wheels/, beside the
# machine's own torch and pytest; its pytest plugins are not loaded: pytest-timeout there breaks the carried
# pytest). Writes pytest.log and gpu.txt into GPU_TESTS_OUT.
GPU_TESTS_OUT ?= results/gpu-tests
test-gpu:
	mkdir -p $(GPU_TESTS_OUT)
	bash -c 'source .wheels/setup.sh > $(GPU_TESTS_OUT)/stack.txt && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $(GPU_TESTS_OUT)/gpu.txt && \
	  set -o pipefail && PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -m gpu -p no:cacheprovider -v -rs --durations=0 tests/test_gpu.py tests/test_techniques_gpu.py 2>&1 | tee $(GPU_TESTS_OUT)/pytest.log'

demo: $(STAMP)
	$(BIN)/python -m autofit demo

clean:
	rm -rf $(VENV) results/demo-*
