"""The key-value store contract, run on the in-process store and on real Redis (E3)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from etax_platform.kv import KeyValueStore

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
