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

test: $(STAMP) lint browser
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.metering

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
