"""Fixtures every test may use: real Redis, Redis Cluster, PostgreSQL and PgBouncer,
databases, stores, a clock.

`database_url` runs a test on SQLite and on PostgreSQL; `kv_store` on the in-process
store, on standalone Redis and on a three-primary Redis Cluster. Servers start once per
session, on free loopback ports.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import etax_platform  # noqa: F401 - puts generated code on sys.path
from etax_platform.clock import ManualClock
from etax_platform.kv import KeyValueStore, MemoryStore, RedisStore
from etax_platform.pii import Keyring, PersonalData
from tests.harness.servers import (
    PgBouncer,
    PostgresServer,
    pgbouncer,
    postgres_server,
    redis_cluster,
    redis_server,
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """Three primaries, no replicas (the failover test starts its own cluster)."""
    with redis_cluster(primaries=3) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def pgbouncer_server(postgres: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of `postgres`, with few server connections
    per database, so concurrent callers' transactions share them."""
    with pgbouncer(postgres) as bouncer:
        yield bouncer


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url(server.create_database())


STORE_URL_FIXTURES = {"redis": "redis_url", "redis-cluster": "redis_cluster_url"}


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def kv_store(request: pytest.FixtureRequest) -> Iterator[KeyValueStore]:
    """A fresh store of each kind (on Redis: its own key prefix)."""
    store: KeyValueStore
    if request.param == "memory":
        store = MemoryStore()
    else:
        url = request.getfixturevalue(STORE_URL_FIXTURES[request.param])
        store = RedisStore(url, prefix=f"t{uuid.uuid4().hex}:")
    yield store
    store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def personal_data(keyring: Keyring) -> PersonalData:
    return PersonalData(keyring)
