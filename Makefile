# rightsizer — the two commands: `make run` and `make test`.
# The venv is cached in .venv and rebuilt only when pyproject.toml changes.
# GPU users: make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= test,deepspeed,kubeflow
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast bench compile clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=python3.x (3.10-3.12)"; exit 2; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing below pulls a different (CUDA) build
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

run: setup
	$(BIN)/rightsizer run examples/demo.yaml --output runs/demo
	@echo "report: runs/demo/report.md"

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

compile: setup
	$(BIN)/rightsizer compile examples/demo.yaml --output runs/demo-pipeline.yaml

clean:
	rm -rf runs .pytest_cache
