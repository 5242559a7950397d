# `make demo` and `make test` work on a fresh machine: they create .venv and install everything.
# torch is installed first and pinned: a bare `torch` requirement can pull a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test validate benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[test,all]"
	touch $(STAMP)

demo: install
	$(BIN)/napari-connectomics demo

# The napari tests need a virtual display: tools/system-packages.sh installs Xvfb and the Qt
# libraries (as root with apt-get), or says how and the napari tests are skipped (tests/conftest.py).
# pytest-xvfb starts the virtual display when there is none.
test: install
	bash tools/system-packages.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

validate: install
	$(BIN)/npe2 validate --imports napari-connectomics

benchmark: install
	$(BIN)/python benchmarks/bench_models.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
