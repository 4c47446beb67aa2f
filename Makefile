# The two commands of the README: `make up` (run taskgate) and `make test` (pass the tests).
# Both set up what they need first: a virtualenv in .venv, web/node_modules, system packages.
VENV ?= .venv
PY := $(VENV)/bin/python
SHELL := /bin/bash

.PHONY: setup up test lint unit bench system-deps clean

setup: $(VENV)/.installed web/node_modules/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

system-deps:
	bash scripts/system-deps.sh

up: setup
	$(VENV)/bin/taskgate up

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: system-deps setup lint
	$(VENV)/bin/pytest -q

bench: system-deps setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) web/node_modules .taskgate .pytest_cache .mypy_cache .ruff_cache

# docs/screenshot-390.png and docs/screenshot-1280.png, from the page in chromium with tasks in flight.
.PHONY: screenshots
screenshots: setup
	TASKGATE_UPDATE_SCREENSHOT=1 $(VENV)/bin/pytest -q tests/web -k screenshot

# docs/dashboard.png and docs/dashboard-data.json: the panels of docs/grafana-dashboard.json drawn
# from a real run of `taskgate up` on loopback, about 80 s (scripts/dashboard.py).
.PHONY: dashboard
dashboard: setup
	$(PY) scripts/dashboard.py

# docs/cli-follow.png: `taskgate submit demo.count --follow` in a pseudo-terminal, its screen
# rendered (pyte) and drawn by chromium (tests/client/test_cli_terminal.py).
.PHONY: cli-screenshot
cli-screenshot: setup
	TASKGATE_UPDATE_CLI_SCREENSHOT=1 $(VENV)/bin/pytest -q tests/client/test_cli_terminal.py
