# smtpeter: `make run` starts the service (SQLite, etc/smtpeter.toml);
# `make test` installs what the tests need and runs them all, then the accuracy
# checks over the outside corpora (../shared/corpora, beside the checkout in CI).

PYTHON ?= python3
VENV   := .venv
CORPORA ?= ../shared/corpora
BIN    := $(VENV)/bin

.PHONY: run test lint bench system-deps accuracy

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
	$(MAKE) accuracy

# The inliner over Juice's cases (at least css-inline's pass count) and, in headless
# Chromium, over real templates (target 100%); the bounce classifier over Sisimai's samples.
accuracy: $(VENV)/.installed
	@if [ -d "$(CORPORA)" ]; then \
		$(BIN)/python scripts/juice_accuracy.py $(CORPORA)/juice --min-pass 61 && \
		$(BIN)/python scripts/css_accuracy.py $(CORPORA)/templates --differences 0 && \
		$(BIN)/python scripts/bounce_accuracy.py $(CORPORA)/sisimai --min-reason 90 --min-status 95; \
	else echo "accuracy: no corpora at $(CORPORA); pass CORPORA=path"; fi

bench: $(VENV)/.installed
	scripts/install-system-deps --bench
	$(BIN)/python bench/ingress.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/redirect.py
	$(BIN)/python bench/signing.py
