"""The store checks at start that Redis keeps an append-only file, so lockouts (E1),
throttles (E2) and revocations survive a restart of Redis (DESIGN.md, Storage and state):
production refuses a Redis without it unless allowed, elsewhere it is a WARNING, and a
managed Redis that refuses CONFIG is "unknown" with a WARNING."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from etax_platform.kv import MemoryStore, PersistenceError, RedisStore, open_store
from etax_platform.pii import Keyring
from etax_platform.settings import PlatformSettings
from tests.harness.servers import free_port, redis_server


@pytest.fixture(scope="module")
def redis_without_aof() -> Iterator[str]:
    with redis_server(appendonly=False) as url:
        yield url


def production(tmp_path: Path, kv_url: str, **overrides: object) -> PlatformSettings:
    keys = Keyring.generate().dump()
    return PlatformSettings(
        environment="production",
        data_dir=tmp_path,
        kv_url=kv_url,
        pii_keys=keys["keys"],
        pii_index_key=keys["index_key"],
        **overrides,  # type: ignore[arg-type]
    )


def test_a_redis_with_an_append_only_file_is_reported_at_start(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etax.kv")
    store = production(tmp_path, redis_url).open_store()
    try:
        assert isinstance(store, RedisStore)
        found = store.check_persistence(required=True)
        assert (found.appendonly, found.appendfsync, found.durable) == ("yes", "everysec", True)
    finally:
        store.close()
    (line,) = [r for r in caplog.records if r.getMessage().startswith("store at")][:1]
    assert line.levelno == logging.INFO
    assert "append-only file, appendfsync everysec" in line.getMessage()


def test_production_refuses_a_redis_without_an_append_only_file(
    redis_without_aof: str, tmp_path: Path
) -> None:
    with pytest.raises(PersistenceError, match="appendonly no") as refused:
        production(tmp_path, redis_without_aof).open_store()
    assert "ETAX_KV_ALLOW_WITHOUT_AOF" in str(refused.value)


def test_production_may_allow_it_explicitly_and_development_warns(
    redis_without_aof: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etax.kv")
    allowed = production(tmp_path, redis_without_aof, kv_allow_without_aof=True).open_store()
    allowed.close()
    development = PlatformSettings(data_dir=tmp_path, kv_url=redis_without_aof).open_store()
    development.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("no append-only file" in w and "forgets lockouts" in w for w in warnings)


def test_a_redis_that_refuses_config_is_unknown_with_a_warning(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A managed Redis often forbids CONFIG: the check cannot tell, so it warns (and
    production still starts: its operator vouches for the persistence)."""
    user, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all", "-config"]
    )
    try:
        url = redis_url.replace("redis://", f"redis://{user}:{password}@")
        caplog.set_level(logging.INFO, logger="etax.kv")
        store = production(tmp_path, url).open_store()
        try:
            assert isinstance(store, RedisStore)
            assert store.check_persistence(required=True).durable is None
        finally:
            store.close()
    finally:
        admin.acl_deluser(user)
        admin.close()
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "unknown (CONFIG GET refused)" in warning
    assert password not in caplog.text


def test_an_unreachable_redis_is_refused_in_production_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(PersistenceError, match="unreachable"):
        production(tmp_path, dead).open_store()
    caplog.set_level(logging.WARNING, logger="etax.kv")
    open_store(dead).close()
    assert "persistence not checked" in caplog.text


def test_the_in_process_store_says_it_keeps_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="etax.kv")
    assert isinstance(open_store("memory://"), MemoryStore)
    assert "state ends with the process" in caplog.text
