# smtpeter: `make run` starts the service (SQLite, etc/smtpeter.toml);
# `make test` installs what the tests need and runs them all.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench system-deps

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat mode puts the checkout on sys.path, so twistd finds twisted/plugins/.
	$(BIN)/pip install -q --config-settings editable_mode=compat -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/twistd -n --pidfile= smtpeter --config etc/smtpeter.toml

system-deps:
	scripts/install-system-deps

lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: $(VENV)/.installed system-deps lint
	$(BIN)/pytest

bench: $(VENV)/.installed
	scripts/install-system-deps --bench
	$(BIN)/python bench/ingress.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/api.py
