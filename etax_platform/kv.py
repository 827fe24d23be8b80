"""A key-value store for counters, throttles and short-lived tickets.

One atomic primitive carries every check-and-update in the platform: a versioned record
with compare-and-set. Domain code reads a record, decides in plain Python, and writes back
only if nobody wrote in between (`KeyValueStore.update` retries until it does). On Redis
each write is one Lua script, so the decision is exact across replicas; the in-process
store gives the same semantics to one replica.

Hot decisions take one step instead of a read and a compare-and-set: a `Script` is a Lua
script that Redis runs atomically, with a Python twin that the in-process store runs
under its lock, doing what the Lua does with the same hash commands on the same record
layout (`Records`). `store.run(script, keys, args)` runs either; the service tests run
every script on both (and on a cluster). The versioned records of `update` are hashes
{v: value, n: version} on both stores, so a script may read or consume one as well.

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

On standalone Redis the store's calls go straight to a redis-py connection from a stack of
its own (`_Connections`): redis-py's pool, retry wrapper, observability hooks and
response callbacks cost more client CPU than the round trip itself (bench/analysis.md).
Redis Cluster keeps redis-py's cluster client, which routes each call to its slot's node.

Lockout counters, throttles and revocation markers must survive a Redis restart, so
`open_store` asks the server how it persists (append-only file) and says what it found;
production refuses a Redis without it (`check_persistence`).
"""

from __future__ import annotations

import abc
import functools
import hashlib
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

import hiredis
import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode
from redis.driver_info import DriverInfo
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


class Records(Protocol):
    """The hash commands a script's Python twin uses, as its Lua uses redis.call: values
    are bytes (numbers as their decimal digits), a hash without fields does not exist."""

    def hget(self, key: str, name: str) -> bytes | None: ...

    def hmget(self, key: str, *names: str) -> list[bytes | None]: ...

    def hset(self, key: str, values: Mapping[str, bytes | str | int]) -> None: ...

    def hincrby(self, key: str, name: str, amount: int) -> int: ...

    def hdel(self, key: str, *names: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> bool: ...

    def pexpire(self, key: str, milliseconds: int) -> None: ...


# A script's reply as redis-py gives it: None (nil, false), int, bytes, or a list of them.
Reply = Any
Twin = Callable[[Records, Sequence[str], Sequence[bytes]], Reply]


@dataclass(frozen=True)
class Script:
    """One decision in one step: `lua` on Redis (KEYS, ARGV), `twin` in memory.

    The twin gets the same keys and the arguments as Redis would (bytes: an int as its
    decimal digits) and returns what the Lua returns as redis-py decodes it (false and nil
    as None, numbers as int, strings as bytes, tables as lists). Keys of one call must
    share a hash tag (owned keys of one owner), so they work on Redis Cluster."""

    name: str
    lua: str
    twin: Twin = field(repr=False)

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.lua.encode()).hexdigest()  # noqa: S324 - Redis's script id


def _arg(value: bytes | str | int) -> bytes:
    """An argument as Redis receives it."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


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

    def run(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Reply:
        """Runs a script atomically on `keys` (store keys, as the other methods take)."""
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


class _MemoryRecords:
    """`Records` over the in-process store's hashes (its lock held by the caller)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def hget(self, key: str, name: str) -> bytes | None:
        entry = self._store._live(key)
        return None if entry is None else entry[0].get(name)

    def hmget(self, key: str, *names: str) -> list[bytes | None]:
        entry = self._store._live(key)
        return [None if entry is None else entry[0].get(name) for name in names]

    def hset(self, key: str, values: Mapping[str, bytes | str | int]) -> None:
        entry = self._store._live(key)
        fields, deadline = (dict(entry[0]), entry[1]) if entry else ({}, _NO_DEADLINE)
        fields.update({name: _arg(value) for name, value in values.items()})
        self._store._data[key] = (fields, deadline)

    def hincrby(self, key: str, name: str, amount: int) -> int:
        current = self.hget(key, name)
        value = int(current or b"0") + amount
        self.hset(key, {name: value})
        return value

    def hdel(self, key: str, *names: str) -> int:
        entry = self._store._live(key)
        if entry is None:
            return 0
        fields = {k: v for k, v in entry[0].items() if k not in names}
        removed = len(entry[0]) - len(fields)
        if fields:
            self._store._data[key] = (fields, entry[1])
        else:
            del self._store._data[key]
        return removed

    def exists(self, key: str) -> bool:
        return self._store._live(key) is not None

    def delete(self, key: str) -> bool:
        if self._store._live(key) is None:
            return False
        del self._store._data[key]
        return True

    def pexpire(self, key: str, milliseconds: int) -> None:
        entry = self._store._live(key)
        if entry is not None:
            self._store._data[key] = (entry[0], time.monotonic() + milliseconds / 1000)


_NO_DEADLINE = float("inf")


class MemoryStore(_CompareAndSet):
    """In-process store with the same semantics as RedisStore, valid for one replica: the
    same hashes, and each script's Python twin under one lock."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[dict[str, bytes], float]] = {}
        self._lock = threading.Lock()
        self._records = _MemoryRecords(self)

    def _live(self, key: str) -> tuple[dict[str, bytes], float] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] <= time.monotonic():
            del self._data[key]
            return None
        return entry

    def _versioned(self, key: str) -> Versioned | None:
        value, version = self._records.hmget(key, "v", "n")
        return None if value is None or version is None else Versioned(value, int(version))

    def get(self, key: str) -> Versioned | None:
        with self._lock:
            return self._versioned(key)

    def create(self, key: str, value: bytes, ttl: timedelta) -> Versioned | None:
        with self._lock:
            if self._live(key) is not None:
                return None
            self._data[key] = ({"v": value, "n": b"1"}, time.monotonic() + ttl.total_seconds())
            return Versioned(value, 1)

    def replace(
        self, key: str, expected_version: int, value: bytes, ttl: timedelta
    ) -> Versioned | None:
        with self._lock:
            current = self._versioned(key)
            if current is None or current.version != expected_version:
                return None
            version = expected_version + 1
            self._records.hset(key, {"v": value, "n": version})
            self._records.pexpire(key, _millis(ttl))
            return Versioned(value, version)

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        with self._lock:
            if expected_version is not None:
                current = self._versioned(key)
                if current is None or current.version != expected_version:
                    return False
            return self._records.delete(key)

    def run(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Reply:
        with self._lock:
            return script.twin(self._records, list(keys), [_arg(a) for a in args])

    def close(self) -> None:
        with self._lock:
            self._data.clear()


# The versioned records of `update` are hashes {v: value, n: version}; each of these
# scripts touches one key.
def _create_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    if records.exists(keys[0]):
        return None
    records.hset(keys[0], {"v": args[0], "n": 1})
    records.pexpire(keys[0], int(args[1]))
    return 1


def _replace_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    version = records.hget(keys[0], "n")
    if version is None or int(version) != int(args[0]):
        return None
    records.hset(keys[0], {"v": args[1], "n": int(version) + 1})
    records.pexpire(keys[0], int(args[2]))
    return int(version) + 1


def _delete_at_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    version = records.hget(keys[0], "n")
    if version is None or int(version) != int(args[0]):
        return 0
    records.delete(keys[0])
    return 1


_CREATE = Script(
    "create",
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""",
    _create_twin,
)
_REPLACE = Script(
    "replace",
    """
local n = redis.call('HGET', KEYS[1], 'n')
if n == false or tonumber(n) ~= tonumber(ARGV[1]) then return false end
local version = tonumber(n) + 1
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'n', version)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return version
""",
    _replace_twin,
)
_DELETE_AT = Script(
    "delete_at",
    """
local n = redis.call('HGET', KEYS[1], 'n')
if n == false or tonumber(n) ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
""",
    _delete_at_twin,
)


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


_TIMEOUTS: dict[str, Any] = {
    "timeout": 5,  # waiting for a free pooled connection
    "socket_timeout": 5,
    "socket_connect_timeout": 2,
}
# What CLIENT SETINFO tells Redis, given once: left to itself, redis-py reads its version
# from the installed packages' metadata for every new connection, 0.9 ms of CPU each
# (20 times the rest of making one), paid again by every reconnect after Redis is back.
_DRIVER = DriverInfo(lib_version=redis.__version__)


def _redis_client(url: str, max_connections: int) -> redis.Redis | redis.RedisCluster:
    timeouts = {"max_connections": max_connections, "driver_info": _DRIVER, **_TIMEOUTS}
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


_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# redis-py's Connection (untyped methods).
_Connection = Any


def _timeouts_in_the_kernel(sock: socket.socket, seconds: float | None) -> None:
    """A plain TCP or Unix socket's timeout moved from Python to the kernel (SO_RCVTIMEO,
    SO_SNDTIMEO) and the socket made blocking. With a Python timeout every recv and send
    is a poll and then the call, two syscalls and two releases of the GIL, each a thread
    switch in a busy server; blocking, it is one. A timeout still ends the call, as
    BlockingIOError (EAGAIN), which `_once` raises as redis-py's TimeoutError. TLS
    sockets keep Python's timeout (the ssl module reads on its own)."""
    if type(sock) is not socket.socket or not seconds:
        return
    whole = int(seconds)
    interval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
    sock.settimeout(None)


class _Connections:
    """Connections to one standalone Redis for the store's own calls: a stack under one
    lock, each call one send and one read on a redis-py `Connection` (its protocol
    encoder and hiredis parser). At most `limit` connections; a caller waits `timeout`
    for one, then gets ConnectionError (UNAVAILABLE). A call that finds its connection
    broken (a Redis restart breaks every idle one) drops the idle ones and is sent once
    more on a new connection, as redis-py's default retry would: a write whose reply
    was lost may thus happen twice (RedisStore's docstring)."""

    def __init__(self, pool: redis.ConnectionPool, limit: int, timeout: float) -> None:
        self._connection_class = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        self._limit = limit
        self._timeout = timeout
        self._idle: list[_Connection] = []
        self._open = 0
        self._lock = threading.Condition(threading.Lock())

    def _take(self) -> _Connection:
        with self._lock:
            free = lambda: bool(self._idle) or self._open < self._limit  # noqa: E731
            if not self._lock.wait_for(free, self._timeout):
                raise redis.exceptions.ConnectionError("no free store connection")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return self._connection_class(**self._kwargs)  # connects on first use
        except BaseException:
            self._lost(None)
            raise

    def _give(self, connection: _Connection) -> None:
        with self._lock:
            self._idle.append(connection)
            self._lock.notify()

    def _lost(self, connection: _Connection | None) -> None:
        if connection is not None:
            connection.disconnect()
        with self._lock:
            self._open -= 1
            self._lock.notify()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._lock.notify_all()
        for connection in idle:
            connection.disconnect()

    @staticmethod
    def _once(connection: _Connection, args: tuple[Any, ...]) -> Any:
        """One command: hiredis packs it in C, one sendall, then recv_into until the
        connection's hiredis reader has the reply. redis-py's Connection only connects
        (its handshake: TLS, AUTH, SELECT, CLIENT SETINFO), after which the socket's
        timeout moves into the kernel (`_timeouts_in_the_kernel`); its per-call wrappers
        (send_packed_command, read_response: health checks, push handling, error
        translation) cost twice this loop's CPU. The socket and reader are the ones
        redis-py keeps on the connection (`_sock`, `_parser._reader`, with its error
        replies as ResponseError subclasses; redis is pinned)."""
        try:
            sock = connection._sock
            if sock is None:
                connection.connect()
                sock = connection._sock
                _timeouts_in_the_kernel(sock, connection.socket_timeout)
            parser = connection._parser
            reader, buffer = parser._reader, parser._buffer
            sock.sendall(hiredis.pack_command(args))
            reply = reader.gets()
            while reply is _NOT_ENOUGH_DATA:
                received = sock.recv_into(buffer)
                if not received:
                    raise redis.exceptions.ConnectionError("Redis closed the connection")
                reader.feed(buffer, 0, received)
                reply = reader.gets()
        # As redis-py names them (its connect does too), so that callers see
        # STORE_UNAVAILABLE, not an OSError, and `execute` retries only these two.
        except (BlockingIOError, TimeoutError) as error:
            raise redis.exceptions.TimeoutError("Redis did not answer in time") from error
        except OSError as error:
            raise redis.exceptions.ConnectionError(f"Redis connection lost: {error}") from error
        if isinstance(reply, Exception):
            raise reply
        return reply

    def execute(self, *args: Any) -> Any:
        for attempt in (1, 2):
            connection = self._take()
            try:
                reply = self._once(connection, args)
            except redis.exceptions.ResponseError:
                self._give(connection)  # an error reply: the connection is fine
                raise
            except _DOWN:
                self._lost(connection)
                if attempt == 2:
                    raise
                self._drop_idle()
                continue
            except BaseException:
                self._lost(connection)  # interrupted mid-reply: its stream is unusable
                raise
            self._give(connection)
            return reply
        raise AssertionError("unreachable")

    def usage(self) -> tuple[int, int]:
        """Connections in use now, and the most it opens."""
        with self._lock:
            return self._open - len(self._idle), self._limit

    def close(self) -> None:
        self._drop_idle()


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
        self._prefix = check_prefix(prefix)
        self._connections: _Connections | None = None
        if isinstance(self._redis, redis.Redis):
            self._connections = _Connections(
                self._redis.connection_pool, max_connections, _TIMEOUTS["timeout"]
            )
        # Scripts by sha, as the cluster client runs them (it routes them by key).
        self._cluster_scripts: dict[str, Any] = {}
        metrics.REDIS_POOLS.add(self)

    def pool_usage(self) -> tuple[int, int]:
        """Connections in use now and the most the store opens (etax_store_pool_*): its
        own on a standalone Redis (redis-py's pool then only serves pings), redis-py's
        pools of every node on a cluster."""
        if self._connections is not None:
            return self._connections.usage()
        return metrics.redis_pool_usage(self._redis)

    def _key(self, key: str) -> str:
        # Untagged keys are tagged whole; a tagged key keeps its tag (module docstring).
        # No caller's key starts with a brace, so two keys never map to one Redis key.
        if key.startswith("{"):
            raise ValueError("a store key starts with its kind, not a brace")
        return self._prefix + (key if "{" in key else f"{{{key}}}")

    @_observed("script")
    def run(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Reply:
        return self._run(script, keys, args)

    def _run(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Reply:
        redis_keys = [self._key(key) for key in keys]
        if self._connections is None:
            registered = self._cluster_scripts.get(script.sha)
            if registered is None:
                registered = self._redis.register_script(script.lua)
                self._cluster_scripts[script.sha] = registered
            return registered(keys=redis_keys, args=list(args))
        evalsha = ("EVALSHA", script.sha, len(redis_keys), *redis_keys, *args)
        try:
            return self._connections.execute(*evalsha)
        except redis.exceptions.NoScriptError:
            # Not loaded yet (a new or restarted server): load it, once per server.
            self._connections.execute("SCRIPT", "LOAD", script.lua)
            return self._connections.execute(*evalsha)

    @_observed("get")
    def get(self, key: str) -> Versioned | None:
        if self._connections is None:
            value, version = self._redis.hmget(self._key(key), ["v", "n"])
        else:
            value, version = self._connections.execute("HMGET", self._key(key), "v", "n")
        if value is None or version is None:
            return None
        return Versioned(value if isinstance(value, bytes) else value.encode(), int(version))

    @_observed("create")
    def create(self, key: str, value: bytes, ttl: timedelta) -> Versioned | None:
        created = self._run(_CREATE, [key], [value, _millis(ttl)])
        return Versioned(value, 1) if created else None

    @_observed("replace")
    def replace(
        self, key: str, expected_version: int, value: bytes, ttl: timedelta
    ) -> Versioned | None:
        version = self._run(_REPLACE, [key], [expected_version, value, _millis(ttl)])
        return Versioned(value, int(version)) if version else None

    @_observed("delete")
    def delete(self, key: str, expected_version: int | None = None) -> bool:
        if expected_version is None:
            if self._connections is None:
                return bool(self._redis.delete(self._key(key)))
            return bool(self._connections.execute("DEL", self._key(key)))
        return bool(self._run(_DELETE_AT, [key], [expected_version]))

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
        if self._connections is not None:
            self._connections.close()
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
