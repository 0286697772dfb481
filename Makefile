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

.PHONY: run test lint system-deps shared-env bench clean kube-control-plane labextension labextension-test

# The JupyterLab extension (labextension/, TypeScript): built with npm's @jupyter/builder into the
# package's Jupyter data directory, which every server our spawners start has on JUPYTER_PATH, so
# `pip install` ships it prebuilt; its server half is enabled by a jupyter_server config file
# (installed by pip as data-files; copied here into the editable .venv). Rebuilt only when its
# sources change. Without npm it is left out with a warning (the browser test then skips).
LABEXT_OUT := spawner/enforce/jupyter_data/labextensions/jupyterlab-gpuslice
LABEXT_BUILT := $(LABEXT_OUT)/package.json
LABEXT_MODULES := labextension/node_modules/.installed
LABEXT_SOURCES := $(wildcard labextension/src/*.ts labextension/style/*) labextension/tsconfig.json
SERVER_EXT_CONFIG := jupyter_server_config.d/jupyterhub-gpuslice.json
HAVE_NPM := $(shell command -v npm >/dev/null 2>&1 && echo yes)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(SHARED_STAMP): $(PACKAGE_FILES) | system-deps labextension
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

$(LABEXT_MODULES): labextension/package.json labextension/package-lock.json
	cd labextension && nice -n 19 npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(LABEXT_BUILT): $(LABEXT_MODULES) $(LABEXT_SOURCES) | $(STAMP)
	cd labextension && nice -n 19 npx tsc --sourceMap false \
		&& PATH=$(abspath $(BIN)):$$PATH nice -n 19 jupyter-builder build .
	touch $@

$(VENV)/etc/jupyter/$(SERVER_EXT_CONFIG): spawner/magic/jupyter-config/$(SERVER_EXT_CONFIG) | $(STAMP)
	mkdir -p $(@D) && cp $< $@

labextension: $(VENV)/etc/jupyter/$(SERVER_EXT_CONFIG) $(if $(HAVE_NPM),$(LABEXT_BUILT))
	$(if $(HAVE_NPM),,@echo "warning: no npm; the JupyterLab extension is not built (its browser test skips)")

labextension-test: $(if $(HAVE_NPM),$(LABEXT_MODULES))
	$(if $(HAVE_NPM),cd labextension && nice -n 19 npx jest --ci,@echo "warning: no npm; the extension's unit tests are skipped")

# GPUSLICE_SPAWNER=gpuslice-local (as root) runs the shared server: from the environment every account can run.
run: $(STAMP) labextension $(if $(SHARED_SERVER),$(SHARED_STAMP))
	$(if $(SHARED_SERVER),$(SHARED_VENV)/bin,$(BIN))/jupyterhub -f hub_config.py

lint: $(STAMP)
	$(BIN)/ruff check .

# The Kubernetes control plane of tests/kube (kube-apiserver, controller manager, scheduler, etcd,
# kwok), built once from the Go module proxy into ~/.cache/gpuslice-kube/<release>/ when go is on
# PATH (the script returns at once when its stamp is there). A failed build leaves those tests
# skipped with the reason, not the suite red; GPUSLICE_SKIP_KUBE_BUILD=1 skips the build. A cold
# build took 38 min on a busy 2-core machine: past GPUSLICE_KUBE_BUILD_TIMEOUT seconds it is
# stopped (what Go compiled stays in its cache, so the next run carries on) and the tests skip.
GPUSLICE_KUBE_BUILD_TIMEOUT ?= 2700
kube-control-plane:
	@if [ -n "$(GPUSLICE_SKIP_KUBE_BUILD)" ]; then echo "control plane build skipped (GPUSLICE_SKIP_KUBE_BUILD)"; \
	elif command -v go >/dev/null 2>&1; then \
		timeout $(GPUSLICE_KUBE_BUILD_TIMEOUT) nice -n 19 bash tests/kube/build_control_plane.sh \
			|| echo "warning: control plane build failed; the tests/kube control-plane tests will be skipped"; \
	else echo "go is not on PATH: the tests/kube control-plane tests will be skipped"; fi

test: $(STAMP) labextension $(if $(IS_ROOT),$(SHARED_STAMP)) system-deps lint labextension-test kube-control-plane
	GPUSLICE_SHARED_VENV=$(SHARED_VENV) $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/placement.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis labextension/node_modules labextension/lib $(LABEXT_OUT)
