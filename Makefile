# klrank: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# Airflow has an environment of its own, so that the main one stays light (see jobs/airflow/).
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
# So has the MLflow tracking server that the MLflow tests start (mlflow, about 820 MB); klrank's
# client, mlflow-skinny (the mlflow extra), is in the main one.
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
# Azurite, Azure's Blob emulator, that the az:// tests start (conftest.py): an npm package, in
# .azurite (about 190 MB, 20 s to install); Node.js and npm come from the system (.ci/run).
# (fake-gcs-server, for the gs:// tests, is a wheel of the test extra: in $(VENV), not here.)
AZURITE_DIR := .azurite
AZURITE_VERSION := 3.35.0
AZURITE_STAMP := $(AZURITE_DIR)/.installed-$(AZURITE_VERSION)
# So has the language-model test (tests/tools/test_dump_logits_model.py): torch and transformers,
# which klrank does not depend on, beside klrank and pytest (about 1.6 GB, torch 750 MB of it).
LM_VENV := .venv-lm
LM_STAMP := $(LM_VENV)/.installed
# The benchmark times klrank as users install it: the runtime dependencies only (with the ray
# extra, for the Ray engine's contender; klrank imports Ray only when that engine runs). The main
# environment also holds the test and benchmark extras (pandas among them): its klrank is the
# contender "klrank with pandas", as most users' environments have pandas.
USER_VENV := .venv-user
USER_STAMP := $(USER_VENV)/.installed
LINT_TREE := build/lint

.DEFAULT_GOAL := help
.PHONY: help demo test azurite test-airflow test-mlflow test-lm lint examples bench bench-lm clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,ray,mlflow,gcs]'
	touch $(STAMP)

demo: $(STAMP) ## Create the environment and rank the example models (prints the table)
	$(BIN)/klrank run --labels examples/data/labels.parquet \
	    --predictions examples/data/predictions --slice-by region --out demo-out

test: $(STAMP) $(AZURITE_STAMP) ## Create the environment and run the test suite (Airflow's, MLflow's, the LM's: make test-airflow, test-mlflow, test-lm)
	$(BIN)/pytest

$(AZURITE_STAMP):
	rm -rf $(AZURITE_DIR) && mkdir -p $(AZURITE_DIR)
	npm install --prefix $(AZURITE_DIR) --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)
	touch $(AZURITE_STAMP)

azurite: $(AZURITE_STAMP) ## Install Azurite, Azure's Blob emulator, in .azurite with npm (make test does)

$(AIRFLOW_STAMP): jobs/airflow/constraints.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install --quiet apache-airflow --constraint jobs/airflow/constraints.txt
	touch $(AIRFLOW_STAMP)

test-airflow: $(STAMP) $(AIRFLOW_STAMP) ## Install Airflow in .venv-airflow, type-check the DAG and run it (airflow dags test)
	MYPYPATH=jobs/airflow $(BIN)/mypy --python-executable $(AIRFLOW_VENV)/bin/python -m klrank_nightly
	$(BIN)/pytest -m airflow

$(MLFLOW_STAMP): tests/tracking/server-constraints.txt
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(MLFLOW_VENV)/bin/pip install --quiet mlflow --constraint tests/tracking/server-constraints.txt
	touch $(MLFLOW_STAMP)

test-mlflow: $(STAMP) $(MLFLOW_STAMP) ## Install an MLflow server in .venv-mlflow and run the MLflow tests against it
	$(BIN)/pytest -m mlflow

$(LM_STAMP): tests/tools/lm-constraints.txt pyproject.toml
	$(PYTHON) -m venv $(LM_VENV)
	$(LM_VENV)/bin/pip install --quiet --upgrade pip
	$(LM_VENV)/bin/pip install --quiet -e . pytest torch transformers --constraint tests/tools/lm-constraints.txt
	touch $(LM_STAMP)

# Only the LM test's module: .venv-lm lacks the test extra that the other modules import.
test-lm: $(LM_STAMP) ## Install torch and transformers in .venv-lm and dump a tiny model's logits (klrank.tools.dump_logits)
	$(LM_VENV)/bin/pytest -m lm tests/tools/test_dump_logits_model.py

lint: $(STAMP) ## ruff, ruff format --check, mypy --strict and the layering contracts (.importlinter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# The package laid out as installed: mypy and import-linter cannot see an editable package-dir.
	rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE)
	cp -R jobs $(LINT_TREE)/klrank && rm -rf $(LINT_TREE)/klrank/airflow
	cp -R pipeline $(LINT_TREE)/klrank/pipeline && cp -R schemas $(LINT_TREE)/klrank/schemas
	MYPYPATH=$(LINT_TREE) $(BIN)/mypy -p klrank
	MYPYPATH=jobs/airflow $(BIN)/mypy -m klrank_task
	PYTHONPATH=$(LINT_TREE) $(BIN)/lint-imports

examples: $(STAMP) ## Regenerate the example data in examples/data (deterministic)
	$(BIN)/python examples/generate.py examples/data

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

$(USER_STAMP): pyproject.toml
	test -d $(USER_VENV) || $(PYTHON) -m venv $(USER_VENV)
	$(USER_VENV)/bin/pip install --quiet --upgrade pip
	$(USER_VENV)/bin/pip install --quiet '.[ray]'
	touch $(USER_STAMP)

bench: $(BENCH_STAMP) $(USER_STAMP) ## Time klrank (as installed by users) against a read floor, DuckDB and pandas (ARGS="--sizes tiny,2m")
	rm -rf build  # setuptools would reuse it, deleted modules included
	$(USER_VENV)/bin/pip install --quiet --force-reinstall --no-deps .  # not editable, this source
	$(BIN)/python benchmarks/run.py --klrank $(USER_VENV)/bin/klrank $(ARGS)

bench-lm: $(BENCH_STAMP) $(USER_STAMP) ## The language-model case of make bench: K = 1k, 32k and 128k logits, beside llama.cpp's statistics in numpy (ARGS="--lm-rows 500")
	rm -rf build
	$(USER_VENV)/bin/pip install --quiet --force-reinstall --no-deps .
	$(BIN)/python benchmarks/run.py --klrank $(USER_VENV)/bin/klrank --sizes lm1k,lm32k,lm128k --repeat 3 $(ARGS)

clean: ## Remove the environment and demo output
	rm -rf $(VENV) $(AIRFLOW_VENV) $(MLFLOW_VENV) $(LM_VENV) $(USER_VENV) $(AZURITE_DIR) build demo-out
