"""A key-value store for counters, throttles and short-lived tickets.

One atomic primitive carries every check-and-update in the platform: a versioned record
with compare-and-set. Domain code reads a record, decides in plain Python, and writes back
only if nobody wrote in between (`KeyValueStore.update` retries until it does). On Redis
each write is one Lua script, so the decision is exact across replicas; the in-process
store gives the same semantics to one replica.

Expiry here is garbage collection only: records carry their own logical deadlines, which
domain code checks against the injected clock, so tests move time without sleeping.

Stores by URL (`open_store`): `memory://`; standalone Redis `redis://host:port/db` (or
`rediss://`); Redis Cluster `redis+cluster://host:port[,host:port...]` (or
`rediss+cluster://`), any node or several as startup nodes, the rest is discovered.

Key layout (hash tags, for Redis Cluster): a script may only touch keys of one cluster
slot, and Redis puts a key in the slot of its hash tag, the text between its first `{`
and the `}` after it. So every key the store writes carries one:
- a key built with `owned_key(kind, owner, ...)` is `kind:{owner}:...`: every record of
  one owner (a person, a recipient, a ticket) hashes to one slot, so a script that
  checks and updates several of them at once (a throttle and the code it admits) works
  on a cluster. Multi-key scripts must use owned keys of one owner only.
- a key without braces is tagged whole (`etax:{auth:qr:123}`): a slot of its own.
The prefix never carries braces (it would become every key's tag). A key that a caller
builds from outside input may contain braces; it then only picks another slot.

Lockout counters, throttles and revocation markers must survive a Redis restart, so
`open_store` asks the server how it persists (append-only file) and says what it found;
production refuses a Redis without it (`check_persistence`).
"""

from __future__ import annotations

import abc
import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry

from etax_platform import metrics, tracing

T = TypeVar("T")
P = ParamSpec("P")
S = TypeVar("S")

log = logging.getLogger("etax.kv")

_MAX_ATTEMPTS = 500

# Errors that mean "the store is down, failing over or too slow": the call interceptor
# answers them UNAVAILABLE (retryable), never INTERNAL. On a cluster: no primary for a
# slot yet (CLUSTERDOWN, MASTERDOWN, a slot nobody covers), a slot being moved (TRYAGAIN,
# MOVED/ASK beyond the client's redirections, ClusterError "TTL exhausted"), a full pool
# (MaxConnectionsError is a ConnectionError). A replica that was a primary a moment ago
# answers writes with READONLY. Cross-slot and other client-side cluster errors stay out:
# they are bugs.
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.ReadOnlyError,
)


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


def owned_key(kind: str, owner: str, *rest: str) -> str:
    """`kind:{owner}:rest...`, the key of a record that belongs to owner: all of one
    owner's keys share a Redis Cluster slot (see the module docstring)."""
    parts = (kind, owner, *rest)
    if not kind or not owner or any("{" in part or "}" in part for part in parts):
        raise ValueError("key parts must be non-empty and free of braces")
    return ":".join((kind, f"{{{owner}}}", *rest))


def check_prefix(prefix: str) -> str:
    if "{" in prefix or "}" in prefix:
        raise ValueError("the key prefix must not contain braces (they make a hash tag)")
    return prefix


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """redis+cluster://[user:password@]host:port[,host:port...][/0][?options] as the
    URL of the first node for redis-py (credentials and options apply to every node)
    and the startup nodes after it. ValueError names what is wrong."""
    scheme, _, rest = url.partition("://")
    if scheme not in CLUSTER_SCHEMES:
        raise ValueError("a cluster URL starts with redis+cluster:// or rediss+cluster://")
    authority, slash, tail = rest.partition("/")
    authority, question, query = authority.partition("?")
    if question:
        tail = f"?{query}"
    credentials, at, hosts = authority.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for node in hosts.split(","):
        parsed = urlsplit(f"//{node}")
        try:
            port = parsed.port or 6379
        except ValueError:
            raise ValueError(f"bad node in the cluster URL: {node!r}") from None
        if not parsed.hostname:
            raise ValueError("a cluster URL names at least one host:port")
        nodes.append((parsed.hostname, port))
    database = tail.partition("?")[0]
    if slash and database not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0")
    options = tail.partition("?")[2]
    host, port = nodes[0]
    host = f"[{host}]" if ":" in host else host
    first = f"{CLUSTER_SCHEMES[scheme]}://{credentials}{at}{host}:{port}"
    return first + (f"?{options}" if options else ""), nodes[1:]


def _redis_client(url: str, max_connections: int) -> redis.Redis | redis.RedisCluster:
    timeouts: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": 5,  # waiting for a free pooled connection
        "socket_timeout": 5,
        "socket_connect_timeout": 2,
    }
    if url.partition("://")[0] not in CLUSTER_SCHEMES:
        pool = redis.BlockingConnectionPool.from_url(url, health_check_interval=30, **timeouts)
        return redis.Redis(connection_pool=pool)
    first, others = cluster_nodes(url)
    startup_nodes = [ClusterNode(host, port) for host, port in others]  # type: ignore[no-untyped-call]
    return redis.RedisCluster(
        url=first,
        startup_nodes=startup_nodes,
        connection_pool_class=redis.BlockingConnectionPool,
        # A few quick retries ride out a MOVED slot or a node that just went away (each
        # refreshes the slot table); a failover takes the cluster's node timeout, which
        # callers wait out as UNAVAILABLE rather than with a blocked worker.
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), retries=3),
        **timeouts,
    )


def _observed(
    op: str,
) -> Callable[[Callable[Concatenate[S, P], T]], Callable[Concatenate[S, P], T]]:
    """A Redis call's latency and errors (etax_store_*), and its span when tracing is on.
    The histogram child is bound once, when the class is defined."""
    seconds = metrics.STORE_SECONDS.labels("redis", op)

    def decorate(function: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
        @functools.wraps(function)
        def observed(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
            if not metrics.ENABLED and not tracing.ENABLED:
                return function(self, *args, **kwargs)
            started = time.perf_counter()
            try:
                if tracing.ENABLED:
                    with tracing.span(f"redis {op}", attributes={"db.system": "redis"}):
                        return function(self, *args, **kwargs)
                return function(self, *args, **kwargs)
            except Exception as error:
                metrics.STORE_ERRORS.labels("redis", op, type(error).__name__).inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        return observed

    return decorate


class RedisStore(_CompareAndSet):
    """Standalone Redis or Redis Cluster (by URL scheme); one Lua script per write.

    A write whose reply is lost (a primary dying mid-call) may have happened: the client
    retries, and `update` then applies its change to the value it wrote itself, so a
    counter can count one event twice (the safe side for throttles and lockouts). Redis
    replicates asynchronously, so a failover can also lose the last writes a dying
    primary acknowledged (Redis Cluster's documented trade-off).
    """

    def __init__(self, url: str, *, prefix: str = "etax:", max_connections: int = 128) -> None:
        self._redis = _redis_client(url, max_connections)
        metrics.REDIS_POOLS.add(self._redis)
        self._prefix = check_prefix(prefix)
        self._create = self._redis.register_script(_CREATE)
        self._replace = self._redis.register_script(_REPLACE)
        self._delete_at = self._redis.register_script(_DELETE_AT)

    def _key(self, key: str) -> str:
        # Untagged keys are tagged whole; a tagged key keeps its tag (module docstring).
        # No caller's key starts with a brace, so two keys never map to one Redis key.
        if key.startswith("{"):
            raise ValueError("a store key starts with its kind, not a brace")
        return self._prefix + (key if "{" in key else f"{{{key}}}")

    @_observed("get")
    def get(self, key: str) -> Versioned | None:
        value, version = self._redis.hmget(self._key(key), ["v", "n"])
        if value is None or version is None:
            return None
        return Versioned(value if isinstance(value, bytes) else value.encode(), int(version))

    @_observed("create")
    def create(self, key: str, value: bytes, ttl: timedelta) -> Versioned | None:
        created: Any = self._create(keys=[self._key(key)], args=[value, _millis(ttl)])
        return Versioned(value, 1) if created else None

    @_observed("replace")
    def replace(
        self, key: str, expected_version: int, value: bytes, ttl: timedelta
    ) -> Versioned | None:
        version: Any = self._replace(
            keys=[self._key(key)], args=[expected_version, value, _millis(ttl)]
        )
        return Versioned(value, int(version)) if version else None

    @_observed("delete")
    def delete(self, key: str, expected_version: int | None = None) -> bool:
        if expected_version is None:
            return bool(self._redis.delete(self._key(key)))
        return bool(self._delete_at(keys=[self._key(key)], args=[expected_version]))

    def ping(self) -> bool:
        return bool(self._redis.ping())

    def check_persistence(self, *, required: bool) -> Persistence:
        if isinstance(self._redis, redis.RedisCluster):
            found = [
                check_persistence(
                    node.redis_connection, f"{node.host}:{node.port}", required=required
                )
                for node in self._redis.get_primaries()  # type: ignore[no-untyped-call]
            ]
            return min(found, key=lambda p: p.durable is True)
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
    """memory://, redis://host:port/db or redis+cluster://host:port,... (the URL scheme
    picks the implementation). A Redis store is checked for persistence when opened
    (`check_persistence`; on a cluster, every primary)."""
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
