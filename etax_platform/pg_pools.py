"""PostgreSQL connection pools: psycopg_pool, opened at the first checkout, that tell a
database that cannot be reached from one that is busy.

Both pools of a `Database` are of this kind: the units of work (SQLAlchemy takes its
connections from it: `NullPool`, `creator=pool.getconn`, `close_returns=True`, as
psycopg's documentation describes) and the hot statements (`Database.run`). The units
of work had SQLAlchemy's own QueuePool before: it opens a connection in the caller's
thread whenever none is free, and closes every connection beyond its size as soon as it
is returned. Under a burst above the size (a cold binding's first access checks ask auth
for 50 persons at once) every call paid a new PostgreSQL backend, 24 threads connected
at once, and calls waited up to 3.3 s for their connection (bench/analysis.md).
psycopg_pool keeps the connections it opened until they idle for `max_idle` (ten
minutes), hands a returned connection to the caller waiting longest, and opens new ones
in background workers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import psycopg_pool
import sqlalchemy.exc
from psycopg import pq

# A connection is had in milliseconds when the database is there.
UNREACHABLE_AFTER_SECONDS = 0.5
# After one caller found the database unreachable, how long the others do not wait.
_QUICK_FAILURE_SECONDS = 1.0


class UnitConnection(psycopg.Connection[Any]):
    """A connection SQLAlchemy gives back by closing it (the pool's `close_returns`).

    psycopg's close() returns at once on a connection that is already broken (the server
    went away), before it would give it back, so the pool would count it as in use for
    ever: one connection fewer after every break, until none is left. Given back, the
    pool discards it and opens another."""

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if self.closed and pool is not None:
            pool.putconn(self)
            return
        super().close()


class Pool(psycopg_pool.ConnectionPool[Any]):
    """A psycopg_pool of at most `max_size` connections, `min_size` of them kept open.

    While the database is away psycopg_pool keeps trying to connect in the background,
    and a caller would wait the pool's whole timeout: a worker thread held for every
    call. So no connection had after a short wait while no caller holds one means the
    database is unreachable now (OperationalError: UNAVAILABLE), not busy; and for a
    second after that, callers do not wait at all unless a connection is free. A pool
    whose every connection is in use makes a caller wait its timeout, then
    sqlalchemy's TimeoutError (UNAVAILABLE too).

    `checkedout`, `size` and `overflow` are what the pool metrics read
    (`etax_platform.metrics.PoolCollector`), as they read SQLAlchemy's pools."""

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        super().__init__(conninfo, open=False, **kwargs)
        self._state_lock = threading.Lock()
        self._held = 0
        self._unreachable_until = 0.0
        # Why the last attempt to connect failed, if it did: a refused password or
        # startup option says more than "no connection".
        self._connect_error: Exception | None = None

    def getconn(self, timeout: float | None = None) -> Any:
        if self.closed:
            with self._state_lock:
                if self.closed:
                    self.open()
        timeout = self.timeout if timeout is None else timeout
        first = min(timeout, UNREACHABLE_AFTER_SECONDS)
        if time.monotonic() < self._unreachable_until:
            first = min(first, 0.01)
        try:
            connection = super().getconn(timeout=first)
        except psycopg_pool.PoolTimeout:
            connection = self._after_first_wait(timeout - first)
        with self._state_lock:
            self._held += 1
        return connection

    def _after_first_wait(self, remaining: float) -> Any:
        if self._held == 0:
            self._unreachable_until = time.monotonic() + _QUICK_FAILURE_SECONDS
            cause = self._connect_error
            reason = f": {cause}" if cause is not None else ""
            raise psycopg.OperationalError(f"no connection to the database{reason}") from None
        if remaining > 0:
            try:
                return super().getconn(timeout=remaining)
            except psycopg_pool.PoolTimeout:
                pass
        raise sqlalchemy.exc.TimeoutError("no free database connection") from None

    def _connect(self, timeout: float | None = None) -> Any:
        # psycopg_pool's one place that opens a connection (pinned: psycopg-pool 3.3.3).
        try:
            connection = super()._connect(timeout)
        except Exception as error:
            self._connect_error = error
            raise
        self._connect_error = None
        return connection

    def putconn(self, conn: Any) -> None:
        # Also what a connection's close() calls, with close_returns (SQLAlchemy's way).
        with self._state_lock:
            self._held -= 1
        super().putconn(conn)

    # --- what the metrics read -------------------------------------------------------

    def checkedout(self) -> int:
        return self._held

    def size(self) -> int:
        return self.min_size

    def overflow(self) -> int:
        """Connections open beyond the size (negative: the size is not reached yet)."""
        return int(self.get_stats().get("pool_size", 0)) - self.min_size


class StatementPool(Pool):
    """The hot statements' pool (autocommit connections), with the connections given
    back last kept at hand.

    psycopg_pool's getconn and putconn (its lock, condition, checks and log calls) cost
    about a tenth of a hot RPC's CPU in a busy server (bench/analysis.md). A connection
    given back idle and unexpired while the pool is open goes on a stack instead, and
    the next statement takes it from there; only when none is at hand does a caller ask
    psycopg_pool. Connections at hand stay checked out of psycopg_pool (no one else can
    have them), so the pool never counts them twice; they are not closed for idling
    (there are at most `max_size`), but for age as psycopg_pool would. A broken one
    fails its statement and goes back to psycopg_pool, which discards it."""

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        super().__init__(conninfo, **kwargs)
        # list.append and list.pop are atomic: no lock on the hot path.
        self._at_hand: list[Any] = []

    def getconn(self, timeout: float | None = None) -> Any:
        try:
            return self._at_hand.pop()
        except IndexError:
            return super().getconn(timeout)

    def putconn(self, conn: Any) -> None:
        idle = conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        # _expire_at: psycopg_pool's own deadline for the connection (pinned 3.3.3).
        if idle and not self.closed and conn._expire_at > time.monotonic():
            self._at_hand.append(conn)
            return
        super().putconn(conn)

    def close(self, timeout: float = 5.0) -> None:
        # Closed first, so a connection given back meanwhile is closed, not kept at hand;
        # psycopg_pool closes those given back to it once it is closed.
        super().close(timeout)
        while self._at_hand:
            super().putconn(self._at_hand.pop())

    def checkedout(self) -> int:
        return max(self._held - len(self._at_hand), 0)
