# Medallion pipeline for sales operations. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
INPUT ?=
ROWS ?= 1000000
PARAMS_ENV ?= local
EXECUTOR ?= LocalExecutor
WORKERS ?= 2
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.DEFAULT_GOAL := help
.PHONY: help venv run services stop status bootstrap airflow airflow-stop airflow-status celery-check redis-server chromium lab psql report test test-fast reliability lint format sample sample-committed notebooks bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the pinned requirements (runtime + tests + embedded services)

run: $(STAMP) ## Run the whole DAG in-process (sample data, or INPUT=file-or-folder) on the embedded or configured services
	$(PY) -m medallion.cli run --params-env $(PARAMS_ENV) $(if $(INPUT),--input "$(INPUT)")

airflow: $(STAMP) $(if $(filter CeleryExecutor,$(EXECUTOR)),redis-server) ## Start a real Airflow on 127.0.0.1 (api-server, scheduler, dag-processor, triggerer; EXECUTOR=CeleryExecutor WORKERS=2)
	$(PY) -m medallion.deploy start --executor $(EXECUTOR) --workers $(WORKERS)

airflow-stop: ## Stop every process `make airflow` started
	@if [ -x $(PY) ]; then $(PY) -m medallion.deploy stop; fi

airflow-status: $(STAMP) ## Show the processes of `make airflow`
	$(PY) -m medallion.deploy status

celery-check: $(STAMP) redis-server ## Redis + two Celery workers against a local Airflow: a run's per-file tasks on both
	$(PY) -m pytest tests/test_celery.py -p no:cacheprovider

redis-server: # Debian's redis-server, the Celery broker of the checks (installed once)
	@command -v redis-server >/dev/null || { echo "installing redis-server (Debian) for the Celery check"; \
		$(SUDO) apt-get install -y -qq redis-server >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }; }

chromium: # Debian's chromium, the headless browser of the report's check (installed once)
	@test -x /usr/bin/chromium || { echo "installing chromium (Debian) for the browser check"; \
		$(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }; }

services: $(STAMP) ## Start the embedded S3 (SeaweedFS) and PostgreSQL on 127.0.0.1
	$(PY) -m medallion.cli services start

stop: ## Stop the embedded services
	@if [ -x $(PY) ]; then $(PY) -m medallion.cli services stop; fi

status: $(STAMP) ## Show whether the embedded services are running
	$(PY) -m medallion.cli services status

bootstrap: $(STAMP) ## Create the buckets and apply sql/ (idempotent)
	$(PY) -m medallion.cli bootstrap --params-env $(PARAMS_ENV)

lab: $(STAMP) ## Open JupyterLab at the project root (notebooks/, outputs/) against the same services
	eval "$$($(PY) -m medallion.cli env)" && $(BIN)/jupyter lab --ip 127.0.0.1 --no-browser \
		--notebook-dir "$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root)

psql: $(STAMP) ## Open psql on the warehouse (PARAMS_ENV's postgres connection); SQL="select ..." runs one statement
	$(PY) -m medallion.cli psql --params-env $(PARAMS_ENV) $(if $(SQL),-- -c "$$SQL")

report: $(STAMP) ## Render every executed notebook to HTML and rebuild outputs/index.html
	$(PY) -m medallion.report

test: $(STAMP) redis-server chromium ## Run all tests (notebooks with nbval, DAG, end to end, make airflow, Celery) against real services
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env --ignore=tests/reliability

test-fast: $(STAMP) ## Tests without the end-to-end DAG runs
	$(PY) -m pytest tests -m "not e2e and not reliability" --ignore=tests/reliability

# The fault suite stops and crashes its services: it gets its own (root under .local/, ports).
RELIABILITY_ENV := MEDALLION_LOCAL_DIR=$(CURDIR)/.local/reliability \
	MEDALLION_OUTPUTS_DIR=$(CURDIR)/.local/reliability/outputs \
	MEDALLION_S3_PORT=18433 MEDALLION_PG_PORT=25339 \
	AIRFLOW_CONN_MINIO_DEFAULT= AIRFLOW_CONN_POSTGRES_DEFAULT=

reliability: $(STAMP) ## Faults and hostile input against services of its own; prints the outcome table
	env $(RELIABILITY_ENV) $(PY) -m pytest tests/reliability -p no:cacheprovider

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check medallion dags tests
	$(BIN)/ruff format --check medallion dags tests

format: $(STAMP) ## ruff format + autofix
	$(BIN)/ruff check --fix medallion dags tests
	$(BIN)/ruff format medallion dags tests

sample: $(STAMP) ## Generate ROWS realistic sales lines into data/generated/
	$(PY) -m medallion.sample --rows $(ROWS) --out data/generated

notebooks: $(STAMP) ## Re-execute notebooks/ and store the outputs nbval checks
	eval "$$($(PY) -m medallion.cli env)" && $(PY) -m medallion.notebooks

sample-committed: $(STAMP) ## Regenerate the committed sample in data/sample/
	$(PY) -m medallion.sample --committed

bench: $(STAMP) ## Benchmark ROWS lines (default 1M): per step, psql \copy ceiling, naive way, incremental, dlt as peer (NO_PEER=1 skips it)
	$(PY) -m medallion.bench --rows $(ROWS) $(if $(NO_PEER),--no-peer)

clean: airflow-stop stop ## Stop services and remove local state (.local/, outputs/)
	rm -rf .local outputs/*/
