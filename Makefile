# Two commands set everything up on a fresh machine: `make dev` (the local gateway) and `make test`.
# What is installed is decided by uv.lock (`uv sync --frozen`), never by what the package index serves today.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LATEST := .venv-latest

.PHONY: test dev lint typecheck bench clean browser upgrade lock test-latest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv itself, at the version uv.lock names and checked against the lock's hashes.
$(BIN)/uv: uv.lock | $(BIN)/python
	$(BIN)/python .ci/bootstrap-uv $(BIN)/python
	touch $(BIN)/uv

# Reinstall only when the dependency list or the lock changes. --frozen: the lock is used as it is, never
# re-resolved; a pyproject.toml that no longer matches it fails here (run `make lock`).
$(STAMP): pyproject.toml uv.lock | $(BIN)/uv
	$(BIN)/uv lock --check -q
	$(BIN)/uv sync --frozen -q
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# `make dev ARGS="--port 5000"` passes flags to `aigw dev`.
dev: $(STAMP)
	$(BIN)/aigw dev $(ARGS)

# Debian's Chromium for tests/browser (skipped, saying why, where it cannot be installed).
browser:
	@.ci/ensure-chromium

# Two workers (this project's machines have two cores); a file's tests stay on one worker, so module-scoped
# gateways start once. `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2

test: $(STAMP) lint typecheck browser
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Re-resolve the lock after editing pyproject.toml (adds/removes only what changed).
lock: | $(BIN)/uv
	$(BIN)/uv lock

# Move every locked dependency to the newest release its range allows, then sync. Review the uv.lock diff
# and run `make test` before committing it.
upgrade: | $(BIN)/uv
	$(BIN)/uv lock --upgrade
	$(BIN)/uv sync --frozen -q
	touch $(STAMP)

# The suite against the newest releases the ranges allow, in a throwaway venv: sees ecosystem breakage
# before users do. It never touches uv.lock or .venv; it may fail when an upstream release breaks us.
test-latest: $(STAMP) browser
	rm -rf $(LATEST)
	$(BIN)/uv venv -q --python $(BIN)/python $(LATEST)
	VIRTUAL_ENV=$(LATEST) $(BIN)/uv pip install -q --upgrade -e . --group dev
	@echo "Differing from the lock (locked -> latest):"
	@$(BIN)/python .ci/lock-drift $(LATEST)/bin/python
	PATH=$(CURDIR)/$(LATEST)/bin:$$PATH HYPOTHESIS_PROFILE=ci $(LATEST)/bin/python -m pytest -n $(PYTEST_WORKERS) \
		--dist loadfile -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.metering

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .hypothesis .ruff_cache .mypy_cache
