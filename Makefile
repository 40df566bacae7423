# The two commands of the README: `make run` (the demo) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Debian packages the integration tests drive (real broker, serial ptys, an independent Modbus master,
# a browser for the dashboard and a CJK font for its Chinese pages, PostgreSQL for the shared ledger,
# openssl for the broker's test certificate).
DEB_PACKAGES := mosquitto mosquitto-clients socat mbpoll chromium fonts-wqy-microhei postgresql openssl

.PHONY: run test venv test-deps debs unit integration e2e bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed pyproject.toml
	$(PIP) install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/meter-gateway demo --data-dir var/demo

# Installs the Debian packages when running as root and one is missing; otherwise says what is missing.
debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages (install them as root):$$missing"; fi; \
	fi

test-deps: $(VENV)/.test-installed debs

test: test-deps
	$(VENV)/bin/pytest -q

unit: $(VENV)/.test-installed
	$(VENV)/bin/pytest -q tests/unit

integration: test-deps
	$(VENV)/bin/pytest -q tests/integration

e2e: test-deps
	$(VENV)/bin/pytest -q tests/e2e

clean:
	rm -rf $(VENV) var/demo .pytest_cache
