# klrank: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.DEFAULT_GOAL := help
.PHONY: help demo test lint examples bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP) ## Create the environment and rank the example models (prints the table)
	$(BIN)/klrank run --labels examples/data/labels.parquet \
	    --predictions examples/data/predictions --slice-by region --out demo-out

test: $(STAMP) ## Create the environment and run the whole test suite
	$(BIN)/pytest

lint: $(STAMP) ## ruff, ruff format --check and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

examples: $(STAMP) ## Regenerate the example data in examples/data (deterministic)
	$(BIN)/python examples/generate.py examples/data

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Time klrank against a read floor, DuckDB and pandas (ARGS="--sizes tiny,2m")
	$(BIN)/python benchmarks/run.py $(ARGS)

clean: ## Remove the environment and demo output
	rm -rf $(VENV) demo-out
