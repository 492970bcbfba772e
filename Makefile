# Two commands matter: `make demo` and `make test`. Both set everything up from scratch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast lint layers typecheck protos benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24" "setuptools>=77" wheel
	# torch first and pinned, so nothing later can pull a CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.*"
	$(BIN)/pip install --quiet -e ".[simulation,datasets,dev]"
	touch $(STAMP)

## demo: set up, then federate MNIST with the edge preset and print the results table
demo: $(STAMP)
	$(BIN)/stamen simulate --preset edge --dataset mnist --rounds 20 --out runs/demo

## test: set up, lint, check the layers, type-check, then every test but the benchmarks (end-to-end included)
test: $(STAMP) lint layers typecheck
	$(BIN)/pytest -q -m "not benchmark"

## test-fast: the quick loop: unit and in-process tests, no Ray or flwr processes
test-fast: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## layers: the import-linter contract in pyproject.toml (docs/architecture.md)
layers: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/python scripts/typecheck.py

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

## benchmark: the compression matrix, edge vs fp32 on six tasks, three seeds (resumable; hours on 2 cores)
benchmark: $(STAMP)
	nice -n 10 $(BIN)/python benchmarks/compression_matrix.py --jobs 2

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
