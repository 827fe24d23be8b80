"""The key-value store contract, run on the in-process store, on real Redis and on a
real three-primary Redis Cluster (E3); the key layout that lets scripts span keys."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import redis
from pydantic import ValidationError
from redis.crc import key_slot

from etax_platform.kv import (
    STORE_UNAVAILABLE,
    KeyValueStore,
    Records,
    RedisStore,
    Script,
    Versioned,
    cluster_nodes,
    owned_key,
)
from etax_platform.settings import PlatformSettings
from tests.conftest import STORE_URL_FIXTURES

TTL = timedelta(minutes=5)


def test_create_only_when_absent(kv_store: KeyValueStore) -> None:
    assert kv_store.get("k") is None
    created = kv_store.create("k", b"one", TTL)
    assert created is not None and created.version == 1
    assert kv_store.create("k", b"two", TTL) is None
    assert kv_store.get("k") == created


def test_replace_needs_the_current_version(kv_store: KeyValueStore) -> None:
    kv_store.create("k", b"one", TTL)
    replaced = kv_store.replace("k", 1, b"two", TTL)
    assert replaced is not None and replaced.version == 2
    assert kv_store.replace("k", 1, b"stale", TTL) is None
    assert kv_store.replace("missing", 1, b"x", TTL) is None
    current = kv_store.get("k")
    assert current is not None and current.value == b"two"


def test_delete_at_version_has_one_winner(kv_store: KeyValueStore) -> None:
    kv_store.create("k", b"one", TTL)
    assert not kv_store.delete("k", expected_version=7)
    assert kv_store.delete("k", expected_version=1)
    assert not kv_store.delete("k", expected_version=1)
    assert kv_store.get("k") is None


def test_values_are_binary_safe(kv_store: KeyValueStore) -> None:
    value = bytes(range(256)) + "手机号码".encode()
    kv_store.create("k", value, TTL)
    current = kv_store.get("k")
    assert current is not None and current.value == value


def test_records_expire_after_their_ttl(kv_store: KeyValueStore) -> None:
    kv_store.create("short", b"x", timedelta(milliseconds=50))
    threading.Event().wait(0.2)  # store TTL is garbage collection in real time, by design
    assert kv_store.get("short") is None
    assert kv_store.create("short", b"y", TTL) is not None


def test_update_returns_the_result_and_can_delete(kv_store: KeyValueStore) -> None:
    def bump(current: bytes | None) -> tuple[bytes | None, int]:
        count = int(current or b"0") + 1
        return str(count).encode(), count

    assert kv_store.update("n", bump, TTL) == 1
    assert kv_store.update("n", bump, TTL) == 2
    assert kv_store.update("n", lambda _current: (None, "gone"), TTL) == "gone"
    assert kv_store.get("n") is None


def test_update_that_changes_nothing_writes_nothing(kv_store: KeyValueStore) -> None:
    kv_store.create("k", b"same", TTL)
    assert kv_store.update("k", lambda current: (current, "read"), TTL) == "read"
    current = kv_store.get("k")
    assert current is not None and current.version == 1


def test_concurrent_updates_are_exact(kv_store: KeyValueStore) -> None:
    """E3: 40 threads x 25 increments on one key lose no update."""

    def bump(current: bytes | None) -> tuple[bytes | None, None]:
        return str(int(current or b"0") + 1).encode(), None

    def worker() -> None:
        for _ in range(25):
            kv_store.update("counter", bump, TTL)

    with ThreadPoolExecutor(40) as pool:
        for future in [pool.submit(worker) for _ in range(40)]:
            future.result()
    current = kv_store.get("counter")
    assert current is not None and current.value == b"1000"


def test_concurrent_capped_claims_admit_exactly_the_cap(kv_store: KeyValueStore) -> None:
    """E3: a check-and-update under contention never admits more than its limit."""

    def claim(current: bytes | None) -> tuple[bytes | None, bool]:
        taken = int(current or b"0")
        if taken >= 5:
            return current, False
        return str(taken + 1).encode(), True

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: kv_store.update("cap", claim, TTL), range(50)))
    assert results.count(True) == 5


# --- key layout (hash tags) ----------------------------------------------------------------

_TWO_KEYS = "return redis.call('EXISTS', KEYS[1], KEYS[2])"


def test_owned_keys_of_one_owner_share_a_slot_and_a_script(kv_store: KeyValueStore) -> None:
    """A script may touch several records of one owner, on a cluster too (issue 14's
    throttle and code record of one recipient); every other key is tagged whole."""
    if not isinstance(kv_store, RedisStore):
        pytest.skip("slots are Redis's")
    throttle = owned_key("sms:throttle", "phone:abc")
    code = owned_key("sms:code", "phone:abc", "v1")
    assert (throttle, code) == ("sms:throttle:{phone:abc}", "sms:code:{phone:abc}:v1")
    kv_store.create(throttle, b"1", TTL)
    kv_store.create(code, b"2", TTL)
    redis_keys = [kv_store._key(throttle), kv_store._key(code)]
    assert key_slot(redis_keys[0].encode()) == key_slot(redis_keys[1].encode())
    assert kv_store._redis.eval(_TWO_KEYS, 2, *redis_keys) == 2
    assert kv_store._key("auth:qr:1") == f"{kv_store._prefix}{{auth:qr:1}}"


def test_keys_of_two_owners_in_one_script_fail_on_a_cluster(kv_store: KeyValueStore) -> None:
    if not isinstance(kv_store, RedisStore) or not isinstance(kv_store._redis, redis.RedisCluster):
        pytest.skip("only a cluster has slots that differ")
    owners = [f"person-{n}" for n in range(20)]
    first = kv_store._key(owned_key("auth:lockout", owners[0]))
    other = next(
        kv_store._key(owned_key("auth:lockout", owner))
        for owner in owners[1:]
        if key_slot(kv_store._key(owned_key("auth:lockout", owner)).encode())
        != key_slot(first.encode())
    )
    with pytest.raises(redis.exceptions.RedisClusterException):
        kv_store._redis.eval(_TWO_KEYS, 2, first, other)


def test_owned_key_parts_carry_no_braces() -> None:
    for parts in (("a{b", "o"), ("a", "o}"), ("a", ""), ("", "o"), ("a", "o", "x{y}")):
        with pytest.raises(ValueError):
            owned_key(*parts)


def test_a_key_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValidationError, match="braces"):
        PlatformSettings(kv_prefix="{etax}:")


# --- cluster URLs ------------------------------------------------------------------------


def test_cluster_url_names_startup_nodes_and_keeps_credentials_and_options() -> None:
    assert cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002") == (
        "redis://10.0.0.1:7000",
        [("10.0.0.2", 7001), ("::1", 7002)],
    )
    assert cluster_nodes("rediss+cluster://u:p%40ss@a:7000,b/0?ssl_cert_reqs=none") == (
        "rediss://u:p%40ss@a:7000?ssl_cert_reqs=none",
        [("b", 6379)],
    )
    assert cluster_nodes("redis+cluster://[::1]?socket_keepalive=true")[0] == (
        "redis://[::1]:6379?socket_keepalive=true"
    )


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+cluster://a:7000/3", "database 0"),
        ("redis+cluster://a:port", "bad node"),
        ("redis+cluster://a:7000,,b:7001", "host:port"),
        ("redis+cluster://", "host:port"),
        ("cluster://a:7000", "kv_url must be"),
    ],
)
def test_settings_refuse_a_bad_store_url_and_say_why(url: str, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        PlatformSettings(kv_url=url)


def test_settings_accept_a_cluster_url() -> None:
    settings = PlatformSettings(kv_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert settings.kv_url.startswith("redis+cluster://")


# --- scripts: Lua on Redis, the Python twin in memory ----------------------------------------

_HASH_OPS_LUA = """
redis.call('HSET', KEYS[1], 'a', ARGV[1], 'b', 2)
local n = redis.call('HINCRBY', KEYS[1], 'b', 3)
local got = redis.call('HMGET', KEYS[1], 'a', 'b', 'c')
local removed = redis.call('HDEL', KEYS[1], 'a', 'zz')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local before = redis.call('EXISTS', KEYS[1])
redis.call('HDEL', KEYS[1], 'b')
local after = redis.call('EXISTS', KEYS[1])
local other = redis.call('HGET', KEYS[2], 'v')
local deleted = redis.call('DEL', KEYS[2])
return {n, got[1], got[2], got[3], removed, before, after, other, deleted}
"""


def _hash_ops_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> object:
    records.hset(keys[0], {"a": args[0], "b": 2})
    n = records.hincrby(keys[0], "b", 3)
    got = records.hmget(keys[0], "a", "b", "c")
    removed = records.hdel(keys[0], "a", "zz")
    records.pexpire(keys[0], int(args[1]))
    before = int(records.exists(keys[0]))
    records.hdel(keys[0], "b")
    after = int(records.exists(keys[0]))
    other = records.hget(keys[1], "v")
    deleted = int(records.delete(keys[1]))
    return [n, *got, removed, before, after, other, deleted]


HASH_OPS = Script("hash-ops", _HASH_OPS_LUA, _hash_ops_twin)


def test_a_script_and_its_twin_answer_alike(kv_store: KeyValueStore) -> None:
    """The twin does what the Lua does, on the same record layout: a versioned record
    written by create() is read and deleted by the script on every store."""
    first, second = owned_key("t:hash", "owner"), owned_key("t:record", "owner")
    kv_store.create(second, b"value", TTL)
    reply = kv_store.run(HASH_OPS, [first, second], ["x", 60_000])
    assert reply == [5, b"x", b"5", None, 1, 1, 0, b"value", 1]
    assert kv_store.get(second) is None and kv_store.get(first) is None


def test_script_arguments_arrive_as_redis_gives_them(kv_store: KeyValueStore) -> None:
    echo = Script(
        "echo", "return {ARGV[1], ARGV[2], ARGV[3]}", lambda _records, _keys, args: list(args)
    )
    assert kv_store.run(echo, ["t:echo"], [12, "手机", b"\x00\xff"]) == [
        b"12",
        "手机".encode(),
        b"\x00\xff",
    ]


@pytest.mark.parametrize("url_fixture", list(STORE_URL_FIXTURES.values()))
def test_new_connections_are_made_without_reading_package_metadata(
    request: pytest.FixtureRequest, url_fixture: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect after Redis is back opens every pooled connection anew; redis-py left to
    itself reads its version from package metadata for each (0.9 ms of CPU)."""
    url = request.getfixturevalue(url_fixture)

    def no_metadata(_package: str) -> str:
        raise AssertionError("package metadata read for a new connection")

    monkeypatch.setattr(redis.utils.metadata, "version", no_metadata)
    store = RedisStore(url, prefix=f"t{uuid.uuid4().hex}:")
    try:
        assert store.create("k", b"v", TTL) is not None
        assert store.get("k") is not None
    finally:
        store.close()


# --- the store's own connections to a standalone Redis (kv._Connections) ------------------


@pytest.fixture
def standalone(redis_url: str) -> Iterator[RedisStore]:
    store = RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex}:")
    yield store
    store.close()


_FAILS = Script(
    "fails", "return redis.error_reply('ERR refused by the script')", lambda *_args: None
)


def test_an_error_reply_is_raised_and_leaves_the_connection_usable(
    standalone: RedisStore,
) -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="refused by the script"):
        standalone.run(_FAILS, ["t:fails"], [])
    assert standalone.pool_usage() == (0, 128)  # given back, not dropped
    assert standalone.create("k", b"v", TTL) is not None
    assert standalone.get("k") == Versioned(b"v", 1)


def test_a_script_flushed_from_redis_is_loaded_again(standalone: RedisStore) -> None:
    """EVALSHA of a script the server no longer has (a restart, SCRIPT FLUSH) answers
    NOSCRIPT, which must reach the store as NoScriptError to be loaded again."""
    assert standalone.create("k", b"v", TTL) is not None
    standalone._redis.script_flush()
    assert standalone.replace("k", 1, b"w", TTL) == Versioned(b"w", 2)


def test_a_reply_larger_than_one_read_arrives_whole(standalone: RedisStore) -> None:
    value = bytes(range(256)) * 4096  # 1 MiB: many reads of the connection's buffer
    assert standalone.create("big", value, TTL) is not None
    assert standalone.get("big") == Versioned(value, 1)


def test_a_connection_redis_closed_is_replaced_on_the_next_call(standalone: RedisStore) -> None:
    """A call on a connection Redis has closed (a restart, CLIENT KILL) is sent once more
    on a new one, so the caller sees its answer, not the broken connection."""
    assert standalone.create("k", b"v", TTL) is not None
    assert standalone._connections is not None
    (idle,) = standalone._connections._idle
    standalone._redis.client_kill_filter(_id=standalone._connections.execute("CLIENT", "ID"))
    assert standalone.get("k") == Versioned(b"v", 1)
    assert standalone._connections._idle and standalone._connections._idle[0] is not idle


def test_a_call_redis_does_not_answer_ends_at_the_socket_timeout_as_unavailable(
    redis_url: str,
) -> None:
    """The socket timeout still ends a call once it lives in the kernel (SO_RCVTIMEO on a
    blocking socket), and ends it as a store error the servers answer UNAVAILABLE with,
    not an OSError (INTERNAL). CLIENT PAUSE WRITE holds every script but lets the new
    connection's handshake through, so both attempts time out in the store's own read."""
    store = RedisStore(
        redis_url + ("&" if "?" in redis_url else "?") + "socket_timeout=1",
        prefix=f"t{uuid.uuid4().hex}:",
    )
    admin = redis.Redis.from_url(redis_url)
    try:
        assert store.create("k", b"v", TTL) is not None  # connected before the pause
        admin.client_pause(20_000, all=False)
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError) as raised:
            store.create("k2", b"v", TTL)
        assert time.monotonic() - started < 10  # two timeouts, not the pause
        assert isinstance(raised.value, STORE_UNAVAILABLE)
        admin.client_unpause()
        assert store.get("k") == Versioned(b"v", 1)  # a new connection once Redis answers
    finally:
        admin.client_unpause()
        admin.close()
        store.close()
