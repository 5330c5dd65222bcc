# Two entry points a newcomer needs; each bootstraps its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test lint bench clean deb lintian

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

# The Debian package dist/ogsd_<version>_<arch>.deb (debian/, dh-virtualenv), built from
# the tracked files as they are now (uncommitted edits included, untracked files not: what
# a fresh clone of this state would build), then checked by lintian. Needs debian's build
# tools (.ci/run installs them) and PyPI. dpkg-buildpackage writes next to the source, so
# everything happens in build/deb/.
DEB_BUILD := build/deb

deb:
	rm -rf $(DEB_BUILD) && mkdir -p $(DEB_BUILD)/src dist
	tree=$$(git stash create) && git archive --format=tar "$${tree:-HEAD}" | tar -x -C $(DEB_BUILD)/src
	cd $(DEB_BUILD)/src && dpkg-buildpackage --build=binary --no-sign
	rm -f dist/ogsd_*.deb && mv $(DEB_BUILD)/ogsd_*.deb dist/
	$(MAKE) --no-print-directory lintian

# Errors and warnings fail, but those debian/ogsd.lintian-overrides accepts, each with why.
lintian:
	lintian --fail-on error,warning dist/ogsd_*.deb

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache build dist
