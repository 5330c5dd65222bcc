# Two entry points a newcomer needs; each bootstraps its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The daemon in the foreground, user mode (no root), on the shipped config.
run: $(STAMP)
	OGSD_USER_MODE=1 $(BIN)/ogsd run --config config/ogsd.toml

# A real decision with no gateways of your own: four lab gateways at real distances
# (needs root for the network namespaces).
demo: $(STAMP)
	$(BIN)/python -m ogsd.lab demo

# Every benchmark on the lab (root), written to bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python -m bench

test: $(STAMP)
	$(BIN)/ruff check ogsd tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check ogsd tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
