# Two commands set everything up on a fresh machine: `make dev` (the local gateway) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test dev lint bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

dev: $(STAMP)
	$(BIN)/aigw dev

# Debian's Chromium for tests/browser (skipped, saying why, where it cannot be installed).
browser:
	@.ci/ensure-chromium

# Two workers (this project's machines have two cores); a file's tests stay on one worker, so module-scoped
# gateways start once. `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2

test: $(STAMP) lint browser
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m benchmarks.metering

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
