# Two entry points a newcomer needs; each bootstraps its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ogsd evaluate --config config/ogsd.toml --state-dir $(CURDIR)/.state

test: $(STAMP)
	$(BIN)/ruff check ogsd tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check ogsd tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
