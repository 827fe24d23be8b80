# The e-tax identity platform. `make run` and `make test` bootstrap everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUF := npx --yes @bufbuild/buf@1.75.0

.PHONY: help run test lint protos system-deps clean format tools
GOBIN := $(CURDIR)/build/bin
GRPCURL_VERSION := v1.9.4

help:
	@echo "make run     - every service on the embedded default (SQLite, in-process store)"
	@echo "make test    - the whole test suite (starts its own Redis and PostgreSQL)"
	@echo "make lint    - ruff, mypy, buf lint"
	@echo "make protos  - generate Python code and the descriptor set (only when protos changed)"
	@echo "make tools   - grpcurl into build/bin"

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import grpc, sqlalchemy, redis, pytest" || { echo "dependency install failed" >&2; exit 1; }
	@touch $@

# Cheap when nothing changed: the script compares a hash of every .proto with its stamp.
protos: $(INSTALLED)
	@$(PY) scripts/gen_protos.py

system-deps:
	@scripts/ensure_system_deps.sh

run: protos
	$(PY) -m etax_platform.launch

test: protos system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: protos
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(BUF) lint

# grpcurl for calling the services by hand (README); Go is on this machine for tools only.
tools: $(GOBIN)/grpcurl

$(GOBIN)/grpcurl:
	GOBIN=$(GOBIN) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

format: $(INSTALLED)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf gen build var .pytest_cache .mypy_cache .ruff_cache
