"""The real envoy binary in front of real (fake-contract) gRPC servers, on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from etax_platform.certs import CertificatePaths
from etax_platform.clock import Clock, ManualClock, SystemClock
from etax_platform.tokens import AccessClaims, SigningKey, TokenIssuer
from tests.gateway.upstreams import Upstreams, start_upstreams
from tests.harness.gateway import RunningGateway, gateway_certificates, running_gateway


@pytest.fixture(scope="session")
def gateway_certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return gateway_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def upstreams(signing_key: SigningKey) -> Iterator[Upstreams]:
    servers = start_upstreams([signing_key.public_jwk()])
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def gateway(
    upstreams: Upstreams,
    gateway_certs: CertificatePaths,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    """Province 37, JWKS fetched from (fake) auth's GetPublicKeys through the gateway."""
    with running_gateway(
        upstreams.addresses,
        workdir=tmp_path_factory.mktemp("gateway"),
        certificates=gateway_certs,
    ) as running:
        running.wait_for_jwks()
        yield running


def mint(key: SigningKey, *, person_id: str = "p-1", expired: bool = False, **extra: Any) -> str:
    """An access token as auth issues it (etax_platform.tokens)."""
    clock: Clock = SystemClock()
    if expired:
        clock = ManualClock(SystemClock().now() - timedelta(hours=2))
    token, _ = TokenIssuer(key, clock).issue(
        AccessClaims(
            person_id=person_id,
            session_id="s-1",
            entry=1,
            province="37",
            real_name_level=4,
            extra=extra,
        )
    )
    return token


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
