# The e-tax identity platform. `make run` and `make test` bootstrap everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUF := npx --yes @bufbuild/buf@1.75.0
# Go tools (grpcurl, ghz) are installed with `go install` into build/bin; the Go module
# proxy serves both (checked with go 1.26).
GOBIN := $(CURDIR)/build/bin
GRPCURL_VERSION := v1.9.4
GHZ_VERSION := v0.121.0
GHZ_BIN := $(GOBIN)
GHZ := $(GHZ_BIN)/ghz
# grpc-gateway's protoc plugin for the OpenAPI document of the public JSON API (make protos).
OPENAPIV2_VERSION := v2.33.0
OPENAPIV2_STAMP := $(GOBIN)/.protoc-gen-openapiv2-$(OPENAPIV2_VERSION)

.PHONY: help run run-shared test lint protos system-deps clean format tools certs envoy-validate load bench bench-size fuzz observe prometheus-check

help:
	@echo "make run     - every service on the embedded default (SQLite, in-process store), the gateway and the web pages on :8080"
	@echo "make run-shared - shared Redis and PostgreSQL (var/shared), REPLICAS= per service (default: one per core), gateways for PROVINCES= (37,11)"
	@echo "make test    - the whole test suite (starts its own Redis and PostgreSQL; browser tests in headless chromium)"
	@echo "make lint    - ruff, mypy, buf lint, envoy --mode validate on every gateway config, the OpenAPI check, promtool on deploy/prometheus"
	@echo "make observe - a real Prometheus on loopback scraping a running make run (docs/operations.md)"
	@echo "make protos  - generate Python code, the descriptor set and the OpenAPI document (only when protos changed)"
	@echo "make tools   - grpcurl into build/bin"
	@echo "make certs   - private CA, gateway server and hall / core-tax client certificates"
	@echo "make load    - data set-up, then the ghz scenarios of deploy/ghz against a running gateway (LOAD_ARGS=...)"
	@echo "make bench   - the benchmark: bench/report.md and bench/charts/ (BENCH_ARGS=...)"
	@echo "make bench-size - hot RPCs at 10,000 and at PERSONS (1,000,000) persons: bench/size-report.md"
	@echo "make fuzz    - the long fuzz run on a platform of its own (SEED=, COUNT=, FUZZ_ARGS=...)"

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import grpc, sqlalchemy, redis, pytest" || { echo "dependency install failed" >&2; exit 1; }
	@touch $@

# Cheap when nothing changed: the script compares a hash of every .proto with its stamp.
protos: $(INSTALLED) $(OPENAPIV2_STAMP)
	@$(PY) scripts/gen_protos.py

# The stamp names the version, so changing OPENAPIV2_VERSION installs again.
$(OPENAPIV2_STAMP):
	@command -v go >/dev/null || { echo "go is missing (protoc-gen-openapiv2 is installed with go install)" >&2; exit 1; }
	GOBIN=$(GOBIN) go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@$(OPENAPIV2_VERSION)
	@touch $@

system-deps:
	@scripts/ensure_system_deps.sh

run: protos certs
	$(PY) -m etax_platform.launch

# The shared-store configuration the replica tests run (README, "Replicas and provinces").
run-shared: protos certs system-deps
	$(PY) -m etax_platform.launch --shared $(if $(REPLICAS),--replicas $(REPLICAS)) $(if $(PROVINCES),--provinces $(PROVINCES))

test: protos system-deps certs $(GHZ_BIN)/.ghz-$(GHZ_VERSION)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: protos certs prometheus-check
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(BUF) lint
	$(PY) -m etax_platform.gateway validate --profiles
	$(PY) -m etax_platform.apidocs check

# The scrape configuration and the alert rules (Debian's prometheus package brings promtool).
prometheus-check: system-deps
	cd deploy/prometheus && promtool check config prometheus.yml && promtool check rules rules/*.yml

# A real Prometheus (Debian's) on 127.0.0.1:9090 scraping the processes of a running
# `make run` (start that first, in another terminal) and its Envoy; Ctrl-C stops it.
# After `make run-shared`: OBSERVE_ARGS="--replicas N --gateways 2".
observe: protos system-deps
	$(PY) -m etax_platform.observe $(OBSERVE_ARGS)

# Creates only what is missing or expiring (FORCE=1: everything anew).
certs: $(INSTALLED)
	@$(PY) -m etax_platform.certs deploy/certs $(if $(FORCE),--force)

# envoy --mode validate on every gateway config: this environment's and each
# deploy/envoy/*.env profile, with both JWKS sources.
envoy-validate: protos certs
	$(PY) -m etax_platform.gateway validate --profiles

# The stamp names the version, so changing GHZ_VERSION installs again.
$(GHZ_BIN)/.ghz-$(GHZ_VERSION):
	@command -v go >/dev/null || { echo "go is missing (ghz is installed with go install)" >&2; exit 1; }
	GOBIN=$(GHZ_BIN) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)
	@touch $@

# The data set-up (bench/dataset.py) registers the load-test persons and makes fresh
# single-use login material against the services of `make run` (LOAD_DATA_ARGS=...).
load: protos certs $(GHZ_BIN)/.ghz-$(GHZ_VERSION)
	$(PY) -m bench.dataset $(LOAD_DATA_ARGS)
	$(PY) scripts/load.py --ghz $(GHZ) $(LOAD_ARGS)

BENCH_INSTALLED := $(VENV)/.installed-bench

$(BENCH_INSTALLED): pyproject.toml $(INSTALLED)
	$(PY) -m pip install --quiet -e '.[dev,bench]' 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import matplotlib, yappi" || { echo "bench dependency install failed" >&2; exit 1; }
	@touch $@

# Starts its own PostgreSQL, Redis, services and Envoy on free ports; about 8 minutes.
bench: protos system-deps certs $(BENCH_INSTALLED) $(GHZ_BIN)/.ghz-$(GHZ_VERSION)
	$(PY) -m bench.run $(BENCH_ARGS)

# The size comparison: PERSONS loaded in bulk (COPY), every hot RPC at 10,000 and at
# PERSONS; about 10 minutes for a million. Never part of make test.
PERSONS ?= 1000000
bench-size: protos system-deps certs $(BENCH_INSTALLED) $(GHZ_BIN)/.ghz-$(GHZ_VERSION)
	$(PY) -m bench.run --persons $(PERSONS) $(BENCH_ARGS)

# Malformed and hostile requests to every RPC and JSON route (tests/fuzz); starts its own
# PostgreSQL, Redis, services and Envoy on free ports. 100,000 requests take about 5 minutes.
# Fails on any gRPC INTERNAL/UNKNOWN, HTTP 5xx, logged ERROR or service not SERVING.
SEED ?= 7
COUNT ?= 100000
fuzz: protos system-deps certs
	$(PY) -m tests.fuzz --seed $(SEED) --count $(COUNT) $(FUZZ_ARGS)

# grpcurl for calling the services by hand (README); Go is on this machine for tools only.
tools: $(GOBIN)/grpcurl

$(GOBIN)/grpcurl:
	GOBIN=$(GOBIN) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

format: $(INSTALLED)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf gen build var .pytest_cache .mypy_cache .ruff_cache
