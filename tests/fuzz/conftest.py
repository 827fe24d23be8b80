"""One platform for the bounded fuzz run: the four services in-process (their log records
reach this process's logging, where the fuzz watches them) and the real Envoy in front.

The backend is PostgreSQL and Redis (the production configuration) unless
ETAX_FUZZ_BACKEND=sqlite+memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.platform import Platform, postgresql_redis, running_platform, sqlite_memory
from tests.fuzz.generate import Pool
from tests.fuzz.run import Targets
from tests.fuzz.seed import seed_pool
from tests.harness.gateway import RunningGateway, gateway_certificates

BACKEND = os.environ.get("ETAX_FUZZ_BACKEND", "postgresql+redis")


@pytest.fixture(scope="module")
def fuzz_platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    workdir = tmp_path_factory.mktemp("fuzz")
    if BACKEND == "sqlite+memory":
        backend = sqlite_memory(workdir)
    elif BACKEND == "postgresql+redis":
        backend = postgresql_redis(
            request.getfixturevalue("postgres"), request.getfixturevalue("redis_url")
        )
    else:
        raise ValueError(f"unknown ETAX_FUZZ_BACKEND {BACKEND!r}")
    certificates = gateway_certificates(tmp_path_factory.mktemp("fuzz-certs"))
    with running_platform(backend, certificates, workdir) as platform:
        yield platform


@pytest.fixture(scope="module")
def fuzz_gateway(fuzz_platform: Platform) -> Iterator[RunningGateway]:
    with fuzz_platform.gateway("37") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def targets(fuzz_platform: Platform, fuzz_gateway: RunningGateway) -> Targets:
    return Targets(fuzz_platform.upstreams, fuzz_gateway)


@pytest.fixture(scope="module")
def pool(fuzz_gateway: RunningGateway) -> Pool:
    return seed_pool(fuzz_gateway)
