# Chorus — the two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
DISTS := core provider-svc history-svc orchestrator-svc gateway cli
STAMP := $(VENV)/.installed

.PHONY: run test lint format proto proto-check install bench browser-deps clean

$(STAMP): $(foreach d,$(DISTS),$(d)/pyproject.toml) requirements-dev.txt overrides.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --quiet --python $(PY) --override overrides.txt \
		-r requirements-dev.txt $(foreach d,$(DISTS),-e ./$(d))
	touch $(STAMP)

install: $(STAMP) ## create .venv and install every distribution (editable) and the dev tools

run: $(STAMP) ## start the four services on embedded defaults; Ctrl-C stops them
	$(PY) -m chorus.cli.stack

test: $(STAMP) browser-deps ## the whole test suite (CI=true: skipped PostgreSQL/Redis tests fail)
	$(PY) -m pytest $(PYTEST_ARGS)

browser-deps: ## Debian's chromium for the browser tests (installed when missing and root)
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's chromium for browser tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "chromium missing and not root: browser tests will skip (fail under CI=true)"; fi; }

lint: $(STAMP) ## ruff check + format check, mypy on core, buf lint + format, generated code fresh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy core/src/chorus/core
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code
	$(MAKE) --no-print-directory proto-check

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/buf format -w

proto: $(STAMP) ## regenerate core/src/chorus/v1 from proto/
	PYTHON=$(PY) scripts/generate_proto.sh

proto-check: $(STAMP) ## fail when the committed generated code is stale
	@tmp=$$(mktemp -d); cp -r core/src/chorus/v1 $$tmp/v1; \
	PYTHON=$(PY) scripts/generate_proto.sh; \
	if ! diff -r -q $$tmp/v1 core/src/chorus/v1 >/dev/null; then \
		diff -r $$tmp/v1 core/src/chorus/v1 | head -20; \
		echo "generated code is stale: run 'make proto' and commit"; rm -rf $$tmp; exit 1; fi; \
	rm -rf $$tmp; echo "generated code is up to date"

bench: $(STAMP) ## benchmarks (see bench/README.md); results in bench/results/
	$(UV) pip install --quiet --python $(PY) --override overrides.txt -r bench/requirements.txt
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
