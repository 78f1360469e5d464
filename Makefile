# Chorus — the two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
DISTS := core provider-svc history-svc orchestrator-svc gateway cli
STAMP := $(VENV)/.installed
# uv resolves and installs from uv.lock; its version is pinned so the lock's format and the
# resolution are the same on every machine (Dockerfile: the same version).
UV_VERSION := 0.13.9
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test lint format proto proto-check install lock bench browser-deps clean

$(STAMP): pyproject.toml uv.lock $(foreach d,$(DISTS),$(d)/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@# --locked: fail instead of re-resolving when a pyproject changed without `make lock`;
	@# --inexact: keep what else is in .venv (bench extras)
	$(UV) sync --quiet --locked --inexact --all-packages \
		|| { echo "uv sync failed; if uv.lock is stale (a pyproject.toml changed): make lock, then commit uv.lock"; exit 1; }
	touch $(STAMP)

install: $(STAMP) ## create .venv and install every distribution (editable) and the dev tools from uv.lock

lock: ## re-resolve uv.lock after a dependency change in a pyproject.toml (then commit it)
	test -x $(UV) || { test -x $(PY) || $(PYTHON) -m venv $(VENV); $(PY) -m pip install --quiet uv==$(UV_VERSION); }
	$(UV) lock

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

lint: $(STAMP) ## lock fresh, no dependency conflict, ruff, mypy on every package (strict on core), buf lint + format, generated code fresh
	$(UV) lock --check
	$(UV) pip check --python $(PY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# mypy on every package, one invocation (pyproject.toml [tool.mypy]: strict on core and provider-svc)
	$(VENV)/bin/mypy core/src/chorus/core provider-svc/src/chorus/provider \
		history-svc/src/chorus/history orchestrator-svc/src/chorus/orchestrator \
		gateway/src/chorus/gateway cli/src/chorus/cli
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
	$(UV) pip install --quiet --python $(PY) -r bench/requirements.txt
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
