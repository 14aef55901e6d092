# Switchyard developer commands. `make run` runs the platform; `make test` runs every check.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
export PYTHONPATH := src:.
# Tests always run with the test settings, whatever DJANGO_SETTINGS_MODULE the shell has.
PYTEST := $(BIN)/pytest --ds=config.settings_test

# The lock (scripts/lock.py): every dependency, direct and transitive, pinned with hashes.
# `make lock` writes it from pyproject.toml; the venv installs it and nothing else.
LOCK := requirements/runtime.txt requirements/dev.txt

.PHONY: help venv lock lock-check lint-docker migrations-check k8s-check run test test-fast test-slow test-pgbouncer test-reliability lint format typecheck imports openapi openapi-check pytest pytest-slow migrate bench bench-quick clean

help:
	@echo "make run     - run web + stream + three worker pools + beat with the fake provider (prints a demo API key)"
	@echo "make test    - ruff, mypy, lint-imports, OpenAPI drift, migration checks, the whole pytest suite"
	@echo "make test-fast / test-slow - the suite without / only the tests that start workers and servers"
	@echo "make test-reliability - the fault scenarios on a whole stack with its own PostgreSQL and Redis (docs/reliability.md)"
	@echo "make openapi - regenerate contracts/openapi.yaml;  make bench - run benchmarks (bench-quick: smaller counts)"
	@echo "make lock    - re-resolve requirements/*.txt from pyproject.toml (after adding or changing a pin)"
	@echo "make test-pgbouncer - the API, llm and pipeline tests through a real PgBouncer (transaction mode)"

# Exactly the locked files: hashes checked, no resolution, wheels only (no compiler, no build
# step fetching unpinned tools). pip is the one the interpreter's venv ships; the project itself
# is not installed (the code runs from the work tree; it has no packages of its own to install).
# Re-runs when the lock changes; never uninstalls, so a shared venv keeps what it has.
$(BIN)/.installed: $(LOCK)
	@PY=$$(scripts/find-python.sh) && { [ -x $(BIN)/python ] || "$$PY" -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps --only-binary :all: -r requirements/dev.txt
	@touch $@

venv: $(BIN)/.installed

# Network (the package index). LOCK_ARGS=--upgrade moves every pin, --upgrade-package NAME one.
lock: venv
	$(BIN)/python scripts/lock.py $(LOCK_ARGS)

# Offline: fails when pyproject.toml's dependencies changed since `make lock`.
lock-check:
	@"$$(scripts/find-python.sh)" scripts/lock.py --check

lint-docker: venv
	$(BIN)/hadolint Dockerfile

run: venv
	@scripts/run.sh

# docs/migrations.md: every model change has its migration, and no migration locks a
# table or breaks the release still running during a rolling deploy (needs PostgreSQL).
migrations-check: venv
	scripts/ensure-services.sh
	DJANGO_SETTINGS_MODULE=config.settings_test $(BIN)/python manage.py makemigrations --check --dry-run
	DJANGO_SETTINGS_MODULE=config.settings_test $(BIN)/python manage.py lint_migrations

# deploy/k8s: kustomize base and overlays against the Kubernetes API schemas, offline.
k8s-check: venv
	$(BIN)/python scripts/k8s_check.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy src contracts tests bench

imports: venv
	$(BIN)/lint-imports --config importlinter.ini

openapi: venv
	DJANGO_SETTINGS_MODULE=config.settings_test $(BIN)/python manage.py spectacular --validate --fail-on-warn --file contracts/openapi.yaml

openapi-check: venv
	@tmp=$$(mktemp) && DJANGO_SETTINGS_MODULE=config.settings_test $(BIN)/python manage.py spectacular --validate --fail-on-warn --file $$tmp \
	  && if diff -u contracts/openapi.yaml $$tmp; then echo "OpenAPI: contracts/openapi.yaml is up to date"; rm -f $$tmp; \
	  else echo "OpenAPI drift: run 'make openapi' and commit contracts/openapi.yaml" >&2; rm -f $$tmp; exit 1; fi

pytest: venv
	scripts/ensure-services.sh
	$(PYTEST) -m "not slow and not reliability" $(PYTEST_ARGS)

pytest-slow: venv
	scripts/ensure-services.sh
	$(PYTEST) -m slow $(PYTEST_ARGS)

test-fast: lock-check lint lint-docker k8s-check typecheck imports openapi-check migrations-check pytest

test-slow: pytest-slow

# Every fault scenario (tests/reliability, docs/reliability.md), over a PostgreSQL and a Redis of its own
# on free ports (started by the tests); `make test` runs only the ones marked reliability_fast.
test-reliability: venv
	scripts/ensure-services.sh
	$(PYTEST) -m reliability tests/reliability $(PYTEST_ARGS)

test: lock-check lint lint-docker k8s-check typecheck imports openapi-check migrations-check
	scripts/ensure-services.sh
	$(PYTEST) --create-db -m "not reliability or reliability_fast" $(PYTEST_ARGS)

# Installs Debian's pgbouncer when missing, starts it on a free port in front of the test
# database (transaction pooling, DATABASE_POOLED=true) and runs the suites through it.
test-pgbouncer: venv
	scripts/ensure-services.sh
	deploy/pgbouncer/run-tests.sh $(PYTEST_ARGS)

migrate: venv
	$(BIN)/python manage.py migrate --noinput

# The bench uses its own database and Redis databases (bench/stack.py): 8 for the cache, 0 for the broker.
BENCH_SERVICES := DATABASE_URL=postgres:///switchyard_bench REDIS_URL=redis://127.0.0.1:6379/8

bench: venv
	$(BENCH_SERVICES) scripts/ensure-services.sh
	@command -v wrk >/dev/null || { echo "bench: installing wrk"; apt-get install -y -q wrk >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }; }
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-quick: BENCH_ARGS += --quick
bench-quick: bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache staticfiles
