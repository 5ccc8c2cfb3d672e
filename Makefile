# The two commands: `make run` (the demo) and `make test` (the whole suite).
# The project's own venv is the Django 5.2 LTS combination, on Python 3.11 where there is one;
# tests/run.py makes the venvs of the newer Djangos (.venv-django60, .venv-django61).
PYTHON ?= $(shell command -v python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
# The MariaDB/MySQL driver builds against the client library: installed when that is present
# (.ci/run installs it), so that `make test` also works on a machine without it.
EXTRAS := api,postgres,redis$(shell pkg-config --exists mysqlclient 2>/dev/null && echo ,mysql)
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: run test lint format check-python venv clean bench bench-faults

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]' --group dev 'django~=5.2.0'
	@touch $(STAMP)

venv: $(STAMP)

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "trusthub_eval needs Python 3.11 or newer; run: make PYTHON=python3.11 ...")'

run: $(STAMP)
	$(BIN)/python -m project.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy trusthub_eval

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) lint
	$(BIN)/python -m tests.run

# Needs PostgreSQL on 127.0.0.1:5432; loads a million evaluations once (a few minutes).
bench: $(STAMP)
	$(BIN)/python bench/rest.py
	$(BIN)/python bench/admin.py

# Faults, worker kills, database and broker restarts; see docs/RELIABILITY.md (~15 min).
# Needs redis-server and PostgreSQL's server binaries: it starts private copies on free ports.
bench-faults: $(STAMP)
	$(BIN)/python bench/faults.py $(BENCH_FAULTS_ARGS)

clean:
	rm -rf $(VENV) $(VENV)-django6* var node_modules .pytest_cache .mypy_cache .ruff_cache
