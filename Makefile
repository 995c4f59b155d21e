# Every target sets up what it needs; `make demo` and `make test` are the two
# commands of the README. The project installs itself into .venv/.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv services services-stop services-status browser flink-cluster demo lint test test-unit bench codegen clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py collector/_wire.pyx pipeline/_columns.pyx core/_wire_primitives.pxd
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

services: venv
	APIM_PYTHON=$(abspath $(VPY)) deploy/local/services.sh start

services-stop:
	deploy/local/services.sh stop

services-status:
	APIM_PYTHON=$(abspath $(VPY)) deploy/local/services.sh status

# Headless Chromium (Debian's package) for the dashboard's browser tests.
browser:
	deploy/local/chromium.sh >/dev/null

# The standalone Flink 1.19 cluster (2.5 GB) for the streaming tests on a cluster; `make test` starts it
# beside the other set-up steps and stops it after the tests (deploy/local/flink-cluster.sh stop).
flink-cluster: venv
	APIM_PYTHON=$(abspath $(VPY)) deploy/local/flink-cluster.sh start >/dev/null

demo: services
	$(VENV)/bin/apim-analytics demo

# ruff (lint and import order) and mypy, both configured in pyproject.toml; either
# failing fails `make test` before any test runs.
lint: venv
	$(VPY) -m ruff check .
	$(VPY) -m mypy

# The set-up steps run side by side (lint is CPU, the services mostly wait on the JVMs and downloads).
test: venv
	$(MAKE) --no-print-directory -j4 lint services browser flink-cluster
	$(VPY) -m pytest; status=$$?; deploy/local/flink-cluster.sh stop >/dev/null; exit $$status

test-unit: venv
	$(VPY) -m pytest tests/unit

bench: services
	$(VPY) -m pip install --quiet -e '.[test,bench]'
	$(VPY) -m bench

codegen: venv
	$(VPY) -m schemas.codegen

clean:
	rm -rf $(VENV) .local build *.egg-info
