"""Prometheus metrics: one exporter per process on a port of its own (DESIGN.md,
Observability; docs/operations.md lists every metric).

Metrics live in prometheus-client's default registry, defined once at import (a service's
own counters in `services/<name>/metrics.py`); `serve(settings, service)` starts the
process's exporter (`/metrics` on `ETAX_<SERVICE>_METRICS_PORT`). In-process tests share
one registry for every service they start, as one process does.

Labels are bounded by construction: RPC and route names, enum names, reason codes, outcome
words, provider names. None ever holds a person, phone, document, enterprise code or token
(tests/platform/test_metrics_labels.py scrapes every exporter after a full FAQ run).

Cheap on the request path: the per-RPC children are bound once per method (`RpcStats`),
and `ETAX_METRICS_ENABLED=false` takes them off the path altogether (the bench compares).
"""

from __future__ import annotations

import bisect
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from etax_platform.settings import ServiceSettings

log = logging.getLogger("etax.metrics")

# False in a process started with ETAX_METRICS_ENABLED=false (`serve`): the store and
# database timers step aside too, so the bench's run without metrics has none at all.
ENABLED = True

# No `*_created` series beside every counter: half the scrape, nothing a rule here reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets in seconds: cheap RPCs take 0.2-2 ms, logins tens of ms (Argon2id),
# provider calls up to their deadline (5 s).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Store and database calls: tens of microseconds to a pool timeout.
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0)


class FastHistogram(Histogram):
    """prometheus_client's Histogram (pinned 0.26.0), its observe finding the bucket by
    bisection in C instead of a Python loop over the bounds: it runs on every RPC and
    every store and database call. The same buckets, sum and exposition; exemplars, which
    nothing here records, go through the library's own observe."""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar:
            super().observe(amount, exemplar)
            return
        self._sum.inc(amount)
        # The first bound >= amount, as the library's loop finds it (the last is +Inf).
        self._buckets[bisect.bisect_left(self._upper_bounds, amount)].inc(1)


# --- per RPC (the server interceptor, etax_platform/server.py) ----------------------------
# The names grpc-ecosystem's go-grpc-prometheus uses, so existing dashboards read them.
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
RPC_SECONDS = FastHistogram(
    "grpc_server_handling_seconds",
    "Time from the request's arrival in the interceptor to its answer.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=LATENCY_BUCKETS,
)
RPC_ERRORS = Counter(
    "etax_rpc_errors_total",
    "RPCs that ended with a status other than OK, by code and the error's reason.",
    ["grpc_service", "grpc_method", "grpc_code", "reason"],
)
RPC_IN_FLIGHT = Gauge(
    "etax_rpc_in_flight",
    "RPCs being served now.",
    ["grpc_service", "grpc_method"],
)


# The calls of each method being served now, by (service, method): what etax_rpc_in_flight
# reads when scraped. A set's add and discard are atomic, so a call pays two C calls, not a
# locked gauge's inc and dec; shared by every host of the process (tests start many).
_SERVING: dict[tuple[str, str], set[object]] = {}


class RpcStats:
    """The metric children of one method, bound once (no label lookup per call)."""

    __slots__ = ("_errors", "_handled", "_kind", "_labels", "_ok", "seconds", "serving")

    def __init__(self, method: str, kind: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self._labels = (service, name)
        self._handled: dict[str, Any] = {}
        self._errors: dict[tuple[str, str], Any] = {}
        self._ok = RPC_HANDLED.labels(service, name, kind, "OK")
        self.seconds = RPC_SECONDS.labels(service, name, kind)
        serving = _SERVING.get(self._labels)
        if serving is None:
            serving = _SERVING[self._labels] = set()
            RPC_IN_FLIGHT.labels(service, name).set_function(serving.__len__)
        # Add a call's record when it starts, discard it when it ends (the interceptor).
        self.serving = serving
        self._kind = kind

    def ok(self, seconds: float) -> None:
        self._ok.inc()
        self.seconds.observe(seconds)

    def failed(self, code: str, reason: str, seconds: float) -> None:
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = RPC_HANDLED.labels(*self._labels, self._kind, code)
        handled.inc()
        error = self._errors.get((code, reason))
        if error is None:
            error = self._errors[code, reason] = RPC_ERRORS.labels(*self._labels, code, reason)
        error.inc()
        self.seconds.observe(seconds)


# --- stores, databases, providers ----------------------------------------------------------

STORE_SECONDS = FastHistogram(
    "etax_store_call_seconds",
    "Key-value store (Redis) calls, by operation.",
    ["store", "op"],
    buckets=STORE_BUCKETS,
)
STORE_ERRORS = Counter(
    "etax_store_errors_total",
    "Key-value store calls that raised, by operation and exception class.",
    ["store", "op", "error"],
)
DB_SECONDS = FastHistogram(
    "etax_db_unit_seconds",
    "Database units of work (a transaction, a read, or a hot statement on PostgreSQL), "
    "connection checkout included.",
    ["database", "kind"],
    buckets=STORE_BUCKETS,
)
DB_ERRORS = Counter(
    "etax_db_errors_total",
    "Database units of work that raised, by exception class.",
    ["database", "kind", "error"],
)
DB_POOL_WAITING = Gauge(
    "etax_db_pool_waiting",
    "Callers waiting for a pooled database connection now.",
    ["database"],
)
PROVIDER_ATTEMPTS = Counter(
    "etax_provider_attempts_total",
    "Attempts at an external provider (SMS gateway, real-name authority), by outcome.",
    ["provider", "path", "outcome"],
)
PROVIDER_SECONDS = FastHistogram(
    "etax_provider_attempt_seconds",
    "Time of one attempt at an external provider.",
    ["provider", "path"],
    buckets=LATENCY_BUCKETS,
)
PROVIDER_RETRIES = Counter(
    "etax_provider_retries_total",
    "Attempts at an external provider that are followed by another (a retry).",
    ["provider", "path"],
)
BREAKER_STATE = Gauge(
    "etax_provider_breaker_state",
    "A provider's circuit breaker: 0 closed, 1 half-open (probing), 2 open (failing fast).",
    ["provider"],
)
BACKLOG = Gauge(
    "etax_journal_backlog_rows",
    "Rows (audit events, delivery records) not yet in the database: queued or journaled.",
    ["writer"],
)
REVOCATION_AGE = Gauge(
    "etax_revocation_feed_age_seconds",
    "Seconds since this process last refreshed its set of revoked sessions "
    "(past its stale limit, session checks fail closed: UNAVAILABLE).",
    ["feed"],
)
BUILD_INFO = Gauge(
    "etax_service_info",
    "1 for every running service process; its labels say which.",
    ["service", "version"],
)


def watch_value(
    gauge: Gauge, labels: tuple[str, ...], owner: object, read: Callable[[Any], float]
) -> None:
    """`read(owner)` as the gauge's value at scrape time, without keeping owner alive."""
    ref = weakref.ref(owner)

    def value() -> float:
        current = ref()
        return 0.0 if current is None else float(read(current))

    gauge.labels(*labels).set_function(value)


class PoolCollector(Collector):
    """Connections of each SQLAlchemy pool in this process, read at scrape time."""

    def __init__(self) -> None:
        self._pools: dict[str, weakref.ref[Any]] = {}
        self._lock = threading.Lock()

    def add(self, database: str, pool: Any) -> None:
        with self._lock:
            self._pools[database] = weakref.ref(pool)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_use = GaugeMetricFamily(
            "etax_db_pool_in_use",
            "Pooled database connections checked out now.",
            labels=["database"],
        )
        size = GaugeMetricFamily(
            "etax_db_pool_size",
            "Connections the pool keeps open (its configured size).",
            labels=["database"],
        )
        overflow = GaugeMetricFamily(
            "etax_db_pool_overflow",
            "Connections opened beyond the pool's size (negative: size not yet reached).",
            labels=["database"],
        )
        with self._lock:
            pools = list(self._pools.items())
        for database, ref in pools:
            pool = ref()
            if pool is None or not hasattr(pool, "checkedout"):
                continue
            in_use.add_metric([database], pool.checkedout())
            size.add_metric([database], pool.size())
            overflow.add_metric([database], pool.overflow())
        yield in_use
        yield size
        yield overflow


POOLS = PoolCollector()
REGISTRY.register(POOLS)


class RedisPoolCollector(Collector):
    """Connections of this process's Redis stores, read at scrape time from each store's
    `pool_usage()` (etax_platform.kv.RedisStore)."""

    def __init__(self) -> None:
        self._stores: weakref.WeakSet[Any] = weakref.WeakSet()

    def add(self, store: Any) -> None:
        self._stores.add(store)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_use = GaugeMetricFamily(
            "etax_store_pool_in_use", "Redis connections checked out now.", labels=["store"]
        )
        size = GaugeMetricFamily(
            "etax_store_pool_size",
            "Redis connections the pools may open (max_connections, per node on a cluster).",
            labels=["store"],
        )
        busy = limit = 0
        for store in list(self._stores):
            store_busy, store_limit = store.pool_usage()
            busy += store_busy
            limit += store_limit
        in_use.add_metric(["redis"], busy)
        size.add_metric(["redis"], limit)
        yield in_use
        yield size


def redis_pool_usage(client: Any) -> tuple[int, int]:
    """A redis-py client's connections in use and its pools' limit (every node's, on a
    cluster), counted the way redis-py does: opened minus idle in the queue."""
    busy = limit = 0
    for pool in _redis_pools(client):
        opened = list(getattr(pool, "_connections", ()))
        idle = [c for c in list(getattr(getattr(pool, "pool", None), "queue", ())) if c]
        busy += max(0, len(opened) - len(idle))
        limit += int(getattr(pool, "max_connections", 0) or 0)
    return busy, limit


def _redis_pools(client: Any) -> list[Any]:
    if hasattr(client, "connection_pool"):
        return [client.connection_pool]
    nodes = client.get_nodes() if hasattr(client, "get_nodes") else []
    return [n.redis_connection.connection_pool for n in nodes if n.redis_connection is not None]


REDIS_POOLS = RedisPoolCollector()
REGISTRY.register(REDIS_POOLS)


# --- the exporter ----------------------------------------------------------------------------


class Exporter:
    """The process's /metrics server (prometheus-client's, on a thread of its own)."""

    def __init__(self, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host)
        self._server: WSGIServer = server
        self._thread = thread
        self.host = host
        self.port = int(server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(settings: ServiceSettings, service: str) -> Exporter | None:
    """Starts this process's exporter, unless `ETAX_METRICS_ENABLED=false`."""
    global ENABLED  # noqa: PLW0603 - one switch per process, set at start
    platform = settings.platform
    if not platform.metrics_enabled:
        ENABLED = False
        return None
    version = _version()
    BUILD_INFO.labels(service, version).set(1)
    try:
        exporter = Exporter(settings.metrics_host, settings.metrics_port)
    except OSError as error:
        raise SystemExit(
            f"{service}: cannot serve metrics on {settings.metrics_host}:"
            f"{settings.metrics_port} ({error.strerror}); set "
            f"ETAX_{service.upper()}_METRICS_PORT (0: any free port)"
        ) from None
    log.info("metrics of %s on %s", service, exporter.url)
    return exporter


def _version() -> str:
    from importlib import metadata  # noqa: PLC0415 - once, at start

    try:
        return metadata.version("etax-identity")
    except metadata.PackageNotFoundError:
        return "dev"
