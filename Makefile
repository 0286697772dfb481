# One command to run the hub, one to run every test; both set up what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint system-deps bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# From Debian's packages: PostgreSQL server binaries for the ledger's PostgreSQL tests, and
# Chromium for the browser tests (Playwright drives /usr/bin/chromium; no browser is downloaded).
DEBIAN_PACKAGES := $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql) \
	$(if $(wildcard /usr/bin/chromium),,chromium fonts-liberation)
system-deps:
	@if [ -n "$(strip $(DEBIAN_PACKAGES))" ]; then \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian packages: $(strip $(DEBIAN_PACKAGES))"; \
			$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				$(SUDO) apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; \
		else echo "warning: no apt-get; tests needing $(strip $(DEBIAN_PACKAGES)) will be skipped"; fi; \
	fi

run: $(STAMP)
	$(BIN)/jupyterhub -f hub_config.py

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/placement.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
