# One command to run the hub, one to run every test; both set up what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
IS_ROOT := $(filter 0,$(shell id -u))

# The shared server's environment (GPUSLICE_SPAWNER=gpuslice-local, tests/integration/test_shared_server.py):
# a venv of Debian's python3 in a folder every account can run, with a copy of this package installed
# (not editable: the checkout may sit in a private home), so that the hub, the users' servers and their
# jobs all run the same code. Built as root only (the test needs root to create its users); a change to
# a file of the package reinstalls the package (about 6 s); a fresh machine builds it whole (about 30 s).
SYSTEM_PYTHON ?= /usr/bin/python3
SHARED_VENV ?= /opt/gpuslice-dev/venv
SHARED_STAMP := $(SHARED_VENV)/.installed
# Folders too, so that a file removed from the package counts as a change.
PACKAGE_FILES := pyproject.toml README.md $(shell find spawner -name __pycache__ -prune -o -print)
SHARED_SERVER := $(filter gpuslice-local,$(GPUSLICE_SPAWNER))

.PHONY: run test lint system-deps shared-env bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(SHARED_STAMP): $(PACKAGE_FILES) | system-deps
	umask 022; test -x $(SHARED_VENV)/bin/python || $(SYSTEM_PYTHON) -m venv $(SHARED_VENV)
	umask 022; src=$$(mktemp -d) && tar -c --exclude=__pycache__ pyproject.toml README.md spawner | tar -x -C $$src \
		&& $(SHARED_VENV)/bin/python -m pip install --quiet $$src; status=$$?; rm -rf $$src; exit $$status
	chmod -R a+rX $(SHARED_VENV)
	touch $(SHARED_STAMP)

shared-env: $(SHARED_STAMP)

# From Debian's packages: PostgreSQL server binaries for the ledger's PostgreSQL tests, Chromium
# for the browser tests (Playwright drives /usr/bin/chromium; no browser is downloaded), and, as
# root, python3-venv for the shared server's environment where `python3 -m venv` lacks it.
DEBIAN_PACKAGES := $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql) \
	$(if $(wildcard /usr/bin/chromium),,chromium fonts-liberation) \
	$(if $(IS_ROOT),$(if $(shell $(SYSTEM_PYTHON) -c 'import ensurepip, venv' 2>/dev/null && echo ok),,python3-venv))
system-deps:
	@if [ -n "$(strip $(DEBIAN_PACKAGES))" ]; then \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian packages: $(strip $(DEBIAN_PACKAGES))"; \
			$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				$(SUDO) apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; \
		else echo "warning: no apt-get; tests needing $(strip $(DEBIAN_PACKAGES)) will be skipped"; fi; \
	fi

# GPUSLICE_SPAWNER=gpuslice-local (as root) runs the shared server: from the environment every account can run.
run: $(STAMP) $(if $(SHARED_SERVER),$(SHARED_STAMP))
	$(if $(SHARED_SERVER),$(SHARED_VENV)/bin,$(BIN))/jupyterhub -f hub_config.py

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) $(if $(IS_ROOT),$(SHARED_STAMP)) system-deps lint
	GPUSLICE_SHARED_VENV=$(SHARED_VENV) $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/placement.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
