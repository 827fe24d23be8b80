"""A key-value store for counters, throttles and short-lived tickets.

One atomic primitive carries every check-and-update in the platform: a versioned record
with compare-and-set. Domain code reads a record, decides in plain Python, and writes back
only if nobody wrote in between (`KeyValueStore.update` retries until it does). On Redis
each write is one Lua script, so the decision is exact across replicas; the in-process
store gives the same semantics to one replica.

Expiry here is garbage collection only: records carry their own logical deadlines, which
domain code checks against the injected clock, so tests move time without sleeping.

Lockout counters, throttles and revocation markers must survive a Redis restart, so
`open_store` asks the server how it persists (append-only file) and says what it found;
production refuses a Redis without it (`check_persistence`).
"""

from __future__ import annotations

import abc
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import redis

T = TypeVar("T")

log = logging.getLogger("etax.kv")

_MAX_ATTEMPTS = 500


class StoreContention(RuntimeError):
    """update() lost the race too many times in a row."""


@dataclass(frozen=True)
class Versioned:
    value: bytes
    version: int


class KeyValueStore(Protocol):
    def get(self, key: str) -> Versioned | None: ...

    def create(self, key: str, value: bytes, ttl: timedelta) -> Versioned | None:
        """Writes only if the key is absent; None if it exists."""
        ...

    def replace(
        self, key: str, expected_version: int, value: bytes, ttl: timedelta
    ) -> Versioned | None:
        """Writes only if the key still has expected_version; None otherwise."""
        ...

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        """Deletes (only at expected_version, if given); True if this call deleted it."""
        ...

    def update(
        self, key: str, change: Callable[[bytes | None], tuple[bytes | None, T]], ttl: timedelta
    ) -> T:
        """Atomically replaces the value with change(current) and returns its result.

        `change` gets the current value (None if absent) and returns (new value, result);
        a new value of None deletes the key; returning the current value unchanged writes
        nothing. It may run several times under contention, so it must not have effects.
        """
        ...

    def close(self) -> None: ...


class _CompareAndSet(abc.ABC):
    """update() in terms of get/create/replace/delete, shared by both stores."""

    @abc.abstractmethod
    def get(self, key: str) -> Versioned | None: ...

    @abc.abstractmethod
    def create(self, key: str, value: bytes, ttl: timedelta) -> Versioned | None: ...

    @abc.abstractmethod
    def replace(
        self, key: str, expected_version: int, value: bytes, ttl: timedelta
    ) -> Versioned | None: ...

    @abc.abstractmethod
    def delete(self, key: str, expected_version: int | None = None) -> bool: ...

    def update(
        self, key: str, change: Callable[[bytes | None], tuple[bytes | None, T]], ttl: timedelta
    ) -> T:
        for attempt in range(_MAX_ATTEMPTS):
            current = self.get(key)
            new_value, result = change(None if current is None else current.value)
            if current is None:
                if new_value is None or self.create(key, new_value, ttl) is not None:
                    return result
            elif new_value == current.value:
                return result
            elif new_value is None:
                if self.delete(key, current.version):
                    return result
            elif self.replace(key, current.version, new_value, ttl) is not None:
                return result
            if attempt >= 3:
                # Many writers on one key: step aside briefly so one of them finishes.
                time.sleep(random.uniform(0, 0.001 * min(attempt, 20)))  # noqa: S311
        raise StoreContention(key)


class MemoryStore(_CompareAndSet):
    """In-process store with the same semantics as RedisStore, valid for one replica."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, int, float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> tuple[bytes, int, float] | None:
        entry = self._data.get(key)
        if entry is not None and entry[2] <= time.monotonic():
            del self._data[key]
            return None
        return entry

    def get(self, key: str) -> Versioned | None:
        with self._lock:
            entry = self._live(key)
            return None if entry is None else Versioned(entry[0], entry[1])

    def create(self, key: str, value: bytes, ttl: timedelta) -> Versioned | None:
        with self._lock:
            if self._live(key) is not None:
                return None
            self._data[key] = (value, 1, time.monotonic() + ttl.total_seconds())
            return Versioned(value, 1)

    def replace(
        self, key: str, expected_version: int, value: bytes, ttl: timedelta
    ) -> Versioned | None:
        with self._lock:
            entry = self._live(key)
            if entry is None or entry[1] != expected_version:
                return None
            version = expected_version + 1
            self._data[key] = (value, version, time.monotonic() + ttl.total_seconds())
            return Versioned(value, version)

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        with self._lock:
            entry = self._live(key)
            if entry is None or (expected_version is not None and entry[1] != expected_version):
                return False
            del self._data[key]
            return True

    def close(self) -> None:
        with self._lock:
            self._data.clear()


# Records are hashes {v: value, n: version}. Each script touches one key, so they also
# work on Redis Cluster.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_REPLACE = """
local n = redis.call('HGET', KEYS[1], 'n')
if n == false or tonumber(n) ~= tonumber(ARGV[1]) then return false end
local version = tonumber(n) + 1
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'n', version)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return version
"""
_DELETE_AT = """
local n = redis.call('HGET', KEYS[1], 'n')
if n == false or tonumber(n) ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def _millis(ttl: timedelta) -> int:
    return max(1, int(ttl.total_seconds() * 1000))


class RedisStore(_CompareAndSet):
    def __init__(self, url: str, *, prefix: str = "etax:", max_connections: int = 128) -> None:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=5,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
        self._redis = redis.Redis(connection_pool=pool)
        self._prefix = prefix
        self._create = self._redis.register_script(_CREATE)
        self._replace = self._redis.register_script(_REPLACE)
        self._delete_at = self._redis.register_script(_DELETE_AT)

    def _key(self, key: str) -> str:
        return self._prefix + key

    def get(self, key: str) -> Versioned | None:
        value, version = self._redis.hmget(self._key(key), ["v", "n"])
        if value is None or version is None:
            return None
        return Versioned(value if isinstance(value, bytes) else value.encode(), int(version))

    def create(self, key: str, value: bytes, ttl: timedelta) -> Versioned | None:
        created: Any = self._create(keys=[self._key(key)], args=[value, _millis(ttl)])
        return Versioned(value, 1) if created else None

    def replace(
        self, key: str, expected_version: int, value: bytes, ttl: timedelta
    ) -> Versioned | None:
        version: Any = self._replace(
            keys=[self._key(key)], args=[expected_version, value, _millis(ttl)]
        )
        return Versioned(value, int(version)) if version else None

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        if expected_version is None:
            return bool(self._redis.delete(self._key(key)))
        return bool(self._delete_at(keys=[self._key(key)], args=[expected_version]))

    def ping(self) -> bool:
        return bool(self._redis.ping())

    def check_persistence(self, *, required: bool) -> Persistence:
        kwargs = self._redis.connection_pool.connection_kwargs
        where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        if "path" in kwargs:
            where = str(kwargs["path"])
        return check_persistence(self._redis, where, required=required)

    def close(self) -> None:
        self._redis.close()


class PersistenceError(RuntimeError):
    """The store would lose security state on a restart, and that is not allowed here."""


@dataclass(frozen=True)
class Persistence:
    """What the server said about its append-only file; None: it would not say."""

    appendonly: str | None
    appendfsync: str | None

    @property
    def durable(self) -> bool | None:
        return None if self.appendonly is None else self.appendonly == "yes"

    def describe(self) -> str:
        if self.appendonly is None:
            return "unknown (CONFIG GET refused)"
        if self.appendonly != "yes":
            return "no append-only file (appendonly no)"
        return f"append-only file, appendfsync {self.appendfsync or 'unknown'}"


def _config_value(client: Any, name: str) -> str | None:
    found = client.config_get(name)
    for raw, value in found.items():
        if (raw.decode() if isinstance(raw, bytes) else raw) == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def read_persistence(client: Any) -> Persistence:
    """CONFIG GET appendonly / appendfsync. A managed Redis may refuse CONFIG: unknown.
    A store that cannot be reached raises redis' ConnectionError."""
    try:
        return Persistence(
            _config_value(client, "appendonly"), _config_value(client, "appendfsync")
        )
    except redis.exceptions.ResponseError:  # NOPERM, unknown or renamed command
        return Persistence(None, None)


def check_persistence(client: Any, where: str, *, required: bool) -> Persistence:
    """Says at start how the store persists. Without an append-only file a restart of Redis
    forgets every lock, throttle and revocation: refused when `required` (production),
    a WARNING otherwise. Unknown (CONFIG refused) is a WARNING either way: the operator
    of a managed Redis must make sure it persists."""
    try:
        found = read_persistence(client)
    except redis.exceptions.RedisError as error:
        if required:
            raise PersistenceError(
                f"the store at {where} is unreachable ({type(error).__name__}), so its "
                "persistence cannot be checked; start Redis first"
            ) from None
        log.warning("store at %s unreachable at start: persistence not checked", where)
        return Persistence(None, None)
    if found.durable is None:
        log.warning(
            "store at %s: persistence %s; make sure it keeps an append-only file "
            "(appendonly yes, appendfsync everysec) or lockouts and throttles are lost "
            "when it restarts",
            where,
            found.describe(),
        )
    elif not found.durable:
        if required:
            raise PersistenceError(
                f"the store at {where} runs without an append-only file (appendonly no): a "
                "restart would forget every lockout, SMS throttle and revocation. Start Redis "
                "with --appendonly yes --appendfsync everysec, or set "
                "ETAX_KV_ALLOW_WITHOUT_AOF=true if its persistence is managed elsewhere"
            )
        log.warning(
            "store at %s: %s; a restart of Redis forgets lockouts, throttles and "
            "revocations (allowed outside production or by ETAX_KV_ALLOW_WITHOUT_AOF)",
            where,
            found.describe(),
        )
    else:
        if found.appendfsync not in ("everysec", "always"):
            log.warning(
                "store at %s: appendfsync %s; use everysec (at most one second of writes "
                "lost when the machine fails)",
                where,
                found.appendfsync,
            )
        log.info("store at %s: persistence %s", where, found.describe())
    return found


def open_store(
    url: str, *, prefix: str = "etax:", require_persistence: bool = False
) -> KeyValueStore:
    """memory:// or redis://host:port/db (the URL scheme picks the implementation).

    A Redis store is checked for persistence when opened (`check_persistence`)."""
    if url.startswith("memory://"):
        log.info("store: in-process (state ends with the process; one replica only)")
        return MemoryStore()
    store = RedisStore(url, prefix=prefix)
    try:
        store.check_persistence(required=require_persistence)
    except BaseException:
        store.close()
        raise
    return store
