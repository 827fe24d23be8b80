"""Binding built with its app.build on port 0, over SQLite and PostgreSQL, talking to a
fake auth on a real gRPC server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etax.binding.v1 import binding_pb2_grpc

from etax_platform.clock import ManualClock
from etax_platform.pii import PersonalData
from etax_platform.settings import PlatformSettings
from etax_platform.tokens import SigningKey, TokenIssuer
from services.binding.app import MIGRATIONS, build
from services.binding.settings import BindingSettings
from tests.binding.fake_auth import FakeAuth
from tests.binding.support import Binding
from tests.harness.schemas import migrated_sqlite_url
from tests.harness.servers import PostgresServer


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def fake_auth(signing_key: SigningKey) -> Iterator[FakeAuth]:
    fake = FakeAuth(signing_key)
    yield fake
    fake.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def binding_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Binding's database of each kind, at its newest migration: a copy of one migrated
    once (tests/harness/schemas.py). The migrations' own test starts from `database_url`."""
    if request.param == "sqlite":
        return migrated_sqlite_url(tmp_path / "binding.sqlite3", MIGRATIONS)
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url(server.migrated_database(MIGRATIONS))


@pytest.fixture
def settings(binding_database_url: str, tmp_path: Path) -> BindingSettings:
    return BindingSettings(
        port=0,
        database_url=binding_database_url,
        platform=PlatformSettings(data_dir=tmp_path / "data"),
    )


@pytest.fixture
def binding(
    settings: BindingSettings,
    fake_auth: FakeAuth,
    signing_key: SigningKey,
    clock: ManualClock,
    personal_data: PersonalData,
) -> Iterator[Binding]:
    auth_channel = grpc.insecure_channel(fake_auth.address)
    host = build(settings, clock=clock, auth_channel=auth_channel, personal_data=personal_data)
    host.start()
    channel = grpc.insecure_channel(host.address)
    yield Binding(
        host=host,
        public=binding_pb2_grpc.BindingServiceStub(channel),
        internal=binding_pb2_grpc.InternalBindingServiceStub(channel),
        auth=fake_auth,
        issuer=TokenIssuer(signing_key, clock),
        clock=clock,
    )
    channel.close()
    host.stop(grace=0)
    auth_channel.close()
