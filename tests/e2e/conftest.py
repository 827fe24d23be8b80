"""Every FAQ question end to end: the four services in-process, the real Envoy in front.

One platform per test module (services + gateway take about two seconds to start); tests
use fresh people, phones and enterprises, so they do not see each other. The backend is
SQLite with the in-process store by default; ETAX_E2E_BACKENDS chooses others
(comma-separated: sqlite+memory, postgresql+redis), e.g.

    ETAX_E2E_BACKENDS=postgresql+redis .venv/bin/pytest tests/e2e -q
    ETAX_E2E_BACKENDS=sqlite+memory,postgresql+redis .venv/bin/pytest tests/e2e -q
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from etax_platform.certs import CertificatePaths
from etax_platform.clock import CST
from tests.e2e.platform import Backend, Platform, postgresql_redis, running_platform, sqlite_memory
from tests.e2e.story import Bureau
from tests.harness.gateway import RunningGateway, gateway_certificates

BACKENDS = [
    name.strip()
    for name in os.environ.get("ETAX_E2E_BACKENDS", "sqlite+memory").split(",")
    if name.strip()
]
SHANDONG = "37"


@pytest.fixture(scope="session")
def e2e_certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return gateway_certificates(tmp_path_factory.mktemp("e2e-certs"))


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    if request.param == "sqlite+memory":
        return sqlite_memory(tmp_path_factory.mktemp("e2e-sqlite"))
    if request.param == "postgresql+redis":
        return postgresql_redis(
            request.getfixturevalue("postgres"), request.getfixturevalue("redis_url")
        )
    raise ValueError(f"unknown e2e backend {request.param!r}")


@pytest.fixture(scope="module")
def platform(
    backend: Backend,
    e2e_certificates: CertificatePaths,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    with running_platform(
        backend, e2e_certificates, tmp_path_factory.mktemp("e2e-platform")
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def clock_keeps_up_with_real_time(platform: Platform) -> None:
    """Envoy checks tokens' expiry against the real clock, the services against theirs: the
    services' clock is moved up whenever real time has overtaken it (never back)."""
    lag = datetime.now(CST) - platform.clock.now()
    if lag > timedelta(0):
        platform.clock.advance(lag)


@pytest.fixture(scope="module")
def gateway(platform: Platform) -> Iterator[RunningGateway]:
    """Shandong's bureau (province 37)."""
    with platform.gateway(SHANDONG) as running:
        yield running


@pytest.fixture(scope="module")
def bureau(gateway: RunningGateway, platform: Platform) -> Iterator[Bureau]:
    opened = Bureau(gateway, platform.clock)
    yield opened
    opened.close()
