# The two commands of the README: `make demo` and `make test`. Each creates .venv if missing and
# installs from the lock files in requirements/ (`make lock` writes them from pyproject.toml).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := $(wildcard sharded_queue simulator tests benchmarks notebooks)
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
LOCK_RUN := requirements/run.txt
LOCK_DEV := requirements/dev.txt
LATEST := .venv-latest
COMPILE = $(BIN)/uv pip compile pyproject.toml requirements/build.in --generate-hashes --universal \
	--python-version 3.11 --custom-compile-command "make lock" --quiet
PYTEST = python -m pytest -q -p no:cacheprovider --nbval-lax
# The quick tests run on every core, a file per process (a file's servers are started once).
QUICK = $(PYTEST) -n auto --dist loadfile -m "not slow"

.PHONY: demo test test-slow test-all test-latest lint lock bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The lock holds the build backend too, so nothing unlocked is fetched (--no-build-isolation).
$(STAMP_RUN): $(LOCK_RUN) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK_RUN)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(STAMP_DEV): $(LOCK_DEV) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK_DEV)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(BIN)/python -m sharded_queue demo

# The quick suite (a few minutes); tests marked slow run in test-all, which CI runs.
test: $(STAMP_DEV)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/mypy
	$(BIN)/$(QUICK) tests notebooks

# The slow tests run one at a time: several of them measure real runs, which a neighbour would slow.
test-slow: $(STAMP_DEV)
	$(BIN)/$(PYTEST) -m slow tests notebooks

test-all: test test-slow

# The quick suite on the newest versions pyproject.toml allows, in a throwaway venv: what the
# next releases break, before the lock is moved to them. Not part of CI.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE '^(redis|hiredis|fakeredis|lupa|msgspec|numpy|pandas|simpy|pytest|mypy|ruff)=='
	$(LATEST)/bin/ruff check $(SOURCES)
	$(LATEST)/bin/mypy
	$(LATEST)/bin/$(QUICK) tests notebooks

# The documentation site (mkdocs, warnings as errors; the notebooks run against a redis-server it starts).
docs: $(STAMP_DEV)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python docs/build.py

lock: $(STAMP_DEV)
	$(COMPILE) -o $(LOCK_RUN)
	$(COMPILE) --extra dev -o $(LOCK_DEV)

lint: $(STAMP_DEV)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy

bench: $(STAMP_DEV)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(LATEST) build .pytest_cache .mypy_cache .ruff_cache
