# The two commands a new user needs: `make run` and `make test`. Every install step lives here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run clickhouse test redis-server bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m app

clickhouse: install
	$(PY) -m app clickhouse

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

test: install redis-server
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Benchmarks print figures and ratios measured in one run; they assert nothing.
bench: install
	$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]'
	$(PY) bench/ingest.py
	$(PY) bench/queries.py
	$(PY) bench/usage.py --events 1000000
	$(PY) bench/stream.py

clean:
	rm -rf $(VENV) var
