"""Rows of one table written off the request path, in batches, never dropped
(`BatchWriter`): the audit events no transaction carries, the SMS delivery log. While the
database is away they wait in the process's journal (etax_platform/journal.py)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy.exc
from sqlalchemy import Column, String, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from etax_platform import journal, metrics
from etax_platform.db import Database, Statement, dialect_insert

log = logging.getLogger("etax.db")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _stored_type(column: Column[Any]) -> Any:
    """The type a column's values are stored as (a TypeDecorator's implementation)."""
    kind: Any = column.type
    return kind.impl_instance if isinstance(kind, TypeDecorator) else kind


def _is_datetime(column: Column[Any]) -> bool:
    """A column whose values the journal writes as ISO 8601 text and reads back."""
    try:
        return _stored_type(column).python_type is datetime
    except NotImplementedError:
        return False


def _refused_for_content(error: Exception) -> bool:
    """The database refused these values (a constraint, a type, a length): writing them
    again later cannot help, unlike an absent or overloaded database."""
    if isinstance(error, sqlalchemy.exc.DataError | sqlalchemy.exc.IntegrityError):
        return True
    # Refused before reaching the database (a bind parameter's own check).
    return isinstance(error, sqlalchemy.exc.StatementError) and not isinstance(
        error, sqlalchemy.exc.DBAPIError
    )


# Seconds a batch waits for a statement connection before it counts the database as away.
_CONNECTION_WAIT = 0.5


def _array_type(column: Column[Any], dialect: Dialect) -> str:
    """The array a column's values travel in: strings as text[], so the INSERT's own
    assignment to varchar(n) refuses a value too long (a cast to varchar(n)[] would cut
    it short silently)."""
    kind = _stored_type(column)
    if isinstance(kind, String):
        return "text[]"
    return f"{kind.compile(dialect=dialect)}[]"


class _Unnest:
    """A batch as one statement on PostgreSQL: an array per column, unnested into rows,
    ON CONFLICT DO NOTHING, run as a hot statement (libpq, prepared; bench/analysis.md:
    SQLAlchemy's executemany cost more CPU per row than the request that queued it). The
    values pass through each column type's bind processing, as SQLAlchemy's would."""

    def __init__(self, table: Table, key: str, names: frozenset[str], dialect: Dialect) -> None:
        columns = [c for c in table.columns if c.name in names]
        self._names = [c.name for c in columns]
        self._processors = [c.type.bind_processor(dialect) for c in columns]
        arrays = ", ".join(f"%(c{n})s::{_array_type(c, dialect)}" for n, c in enumerate(columns))
        self._sql = (
            f'INSERT INTO "{table.name}" ({", ".join(self._names)}) '  # noqa: S608 - our own table and columns
            f"SELECT * FROM unnest({arrays}) ON CONFLICT ({key}) DO NOTHING"
        )
        self.statement = Statement(postgresql=self._sql, writes=True)

    def arrays(self, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        params: dict[str, list[Any]] = {}
        for n, (name, process) in enumerate(zip(self._names, self._processors, strict=True)):
            values = [row.get(name) for row in rows]
            if process is not None:
                try:
                    values = [process(value) for value in values]
                except (TypeError, ValueError) as error:
                    # Refused before reaching the database, as SQLAlchemy refuses it.
                    raise sqlalchemy.exc.StatementError(
                        str(error), self._sql, None, error
                    ) from error
            params[f"c{n}"] = values
        return params


class BatchWriter:
    """Rows of one table written off the request path, in batches, and never dropped.

    For records a request must not wait for but that must not be lost (audit events no
    transaction carries, the SMS delivery log): the request pays for a queue append, not a
    database round trip. A writer thread takes what is queued, letting a batch fill for up
    to `batch_seconds` after its first row (rows only in memory meanwhile, lost if the
    process is killed), appends it to this process's journal file
    (etax_platform/journal.py) and inserts it. While the database is away the
    rows stay in the journal (fsynced) and so do all rows after them, in order; the writer
    retries with a growing pause and replays the journal in order once it is back, then
    cuts it back to empty. A full queue spills to the journal too. Every row carries a
    unique key (`key`, made here if the row has none) and goes in with ON CONFLICT DO
    NOTHING, so a replay after a partial or unacknowledged write inserts nothing twice. A
    journal left by a process that is gone (a crash) is replayed by the next writer of the
    same service and table to start.

    Rows the database refuses for their content (a constraint, a length) would block
    everything behind them: they go, one by one, to `<journal>.rejected.jsonl` with an
    ERROR, for an operator. `batch_seconds=0` writes at once, on the caller's thread (and
    journals there when that fails). `backlog()` says how many rows wait (queue + journal).
    """

    def __init__(
        self,
        database: Database,
        table: Table,
        *,
        name: str,
        service: str,
        journal_dir: Path,
        key: str,
        batch_seconds: float = 0.05,
        batch_rows: int = 500,
        max_queued: int = 50_000,
        retry_seconds: tuple[float, float] = (0.25, 2.0),
    ) -> None:
        self._db = database
        self._table = table
        self._name = name
        self._key = key
        self._batch_seconds = batch_seconds
        self._batch_rows = batch_rows
        self._max_queued = max_queued
        self._retry_first, self._retry_most = retry_seconds
        self._datetimes = [c.name for c in table.columns if _is_datetime(c)]
        self._statement: Any = None
        self._unnests: dict[frozenset[str], _Unnest] = {}
        self._journal_dir = journal_dir
        self._orphans = journal.adopt_orphans(journal_dir, service, table.name)
        self._own = journal.create_own(journal_dir, service, table.name)
        self._stem = self._own.path.name.removesuffix(".jsonl")
        # Lock order: _lock (queue, counters, retry state) before _journal_lock (the
        # files); never _lock while holding _journal_lock. Rows leave the queue and enter
        # the journal under both, so the journal keeps their order.
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._queue: deque[dict[str, Any]] = deque()
        # Rows added (or adopted) and not yet in the database: the backlog.
        self._pending = sum(orphan.pending for orphan in self._orphans)
        self._stopping = False
        self._flushing = 0  # callers of flush(): no batch waits to fill meanwhile
        # While the database fails: when to try again, and the pause after that.
        self._retry_at = 0.0
        self._retry_pause = 0.0
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
        self._thread.start()
        metrics.watch_value(metrics.BACKLOG, (name,), self, lambda writer: writer.backlog())

    # --- the request side -------------------------------------------------------------------

    def add(self, row: dict[str, Any]) -> None:
        """Queues a row (never raises, never waits for the database)."""
        if row.get(self._key) is None:
            row = {**row, self._key: os.urandom(16).hex()}
        if self._batch_seconds == 0:
            self._add_now(row)
            return
        with self._lock:
            self._pending += 1
            if len(self._queue) < self._max_queued:
                self._queue.append(row)
                if len(self._queue) in (1, self._batch_rows):  # a batch begins or is full
                    self._wake.notify()
                return
            # Full (the writer is held up by the database): this row and all queued
            # before it go to the journal, in order.
            spilled = [*self._queue, row]
            self._queue.clear()
            self._journal_lock.acquire()
        try:
            outcome = self._journal(spilled, sync=True)
        finally:
            self._journal_lock.release()
        self._settle(outcome)
        log.warning("%s: queue full, %d rows spilled to the journal", self._name, len(spilled))

    def _add_now(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._pending += 1
            failing = time.monotonic() < self._retry_at
        with self._journal_lock:
            behind = failing or self._own.pending > 0
        if not behind:
            try:
                self._write([row])
            except Exception as error:
                self._failed(error)
            else:
                self._done(1)
                return
        with self._journal_lock:
            outcome = self._journal([row], sync=True)
        self._settle(outcome)
        with self._lock:
            self._wake.notify()

    def backlog(self) -> int:
        """Rows waiting for the database: queued, in flight or in a journal file."""
        with self._lock:
            return self._pending

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every row is in the database; False if some still wait."""
        with self._lock:
            self._flushing += 1
            self._wake.notify()
            try:
                return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float = 10.0) -> None:
        """Writes what it can (not waiting while the database is known to be away), then
        leaves the rest in the journal for the next start."""
        with self._lock:
            failing = time.monotonic() < self._retry_at
        if not failing:
            self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():  # held up by the database: its files stay open
            log.warning("%s: writer still busy at close; the journal stays", self._name)
            return
        with self._journal_lock:
            left = self._own.pending + sum(orphan.pending for orphan in self._orphans)
            for orphan in self._orphans:
                orphan.close(remove=False)
            self._own.close(remove=self._own.pending == 0)
        if left:
            log.warning(
                "%s: %d rows left in the journal (%s): replayed at the next start",
                self._name,
                left,
                self._journal_dir,
            )

    # --- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._queue or self._stopping or self._replay_due()):
                    self._wake.wait(self._wait_seconds())
                self._fill()
                count = min(self._batch_rows, len(self._queue))
                batch = [self._queue.popleft() for _ in range(count)]
                stopping = self._stopping and not self._queue
                if batch:
                    self._journal_lock.acquire()
            try:
                if batch:
                    self._take(batch)  # releases the journal lock
                with self._lock:
                    due = self._replay_due()
                if due:
                    self._replay()
            except Exception as error:  # a bug or the disk: keep the thread alive
                log.exception("%s: writer failed", self._name)
                self._failed(error)
            if stopping:
                return

    def _fill(self) -> None:
        """Lets a batch fill for up to `batch_seconds` after the writer found its first row
        (called with _lock held): under load one insert then carries the rows of many
        requests, where it carried one or two (bench/analysis.md). Not while a caller
        flushes or the writer stops; a full batch goes at once."""
        if not self._queue:
            return
        until = time.monotonic() + self._batch_seconds
        while len(self._queue) < self._batch_rows and not (self._stopping or self._flushing):
            left = until - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(left)

    def _take(self, batch: list[dict[str, Any]]) -> None:
        """Journals a batch (the journal lock is held on entry, released here) and writes
        it at once when nothing older waits."""
        try:
            behind = self._own.pending > 0 or time.monotonic() < self._retry_at
            # Not fsynced on the way to an insert (the page cache outlives the process);
            # fsynced as soon as the rows are to stay: below, or appended behind others.
            outcome = self._journal(batch, sync=behind)
        finally:
            self._journal_lock.release()
        self._settle(outcome)
        kept, end = outcome.kept, outcome.end
        if behind or not kept:
            return
        try:
            self._write(kept)
        except Exception as error:
            self._failed(error)
            with self._journal_lock:
                self._own.sync()
            return
        with self._journal_lock:
            self._own.written(end, len(kept))
        self._done(len(kept))

    def _replay_due(self) -> bool:
        """Journaled rows wait and it is time to try (called with _lock held)."""
        if time.monotonic() < self._retry_at:
            return False
        with self._journal_lock:
            return self._own.pending > 0 or any(o.pending for o in self._orphans)

    def _wait_seconds(self) -> float:
        """Until the next attempt while one is due later; otherwise until woken (a second
        at most, to look again)."""
        remaining = self._retry_at - time.monotonic()
        return min(remaining, 1.0) if remaining > 0 else 1.0

    def _replay(self) -> None:
        """Writes journaled rows in order (the stopped processes' first, then this one's),
        a batch at a time, until none wait or the database fails again."""
        while not self._stopping:
            with self._journal_lock:
                source = next((o for o in self._orphans if o.pending), None)
                if source is None and self._own.pending:
                    source = self._own
                if source is None:
                    return
                lines, end = source.read(self._batch_rows)
            try:
                self._write(self._decode(lines, source.path.name))
            except Exception as error:
                self._failed(error)
                return
            with self._journal_lock:
                source.written(end, len(lines))
                if source is not self._own and not source.pending:
                    source.close(remove=True)
                    self._orphans.remove(source)
            self._done(len(lines))

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """Inserts rows, each at most once; rows refused for their content are set aside
        one by one. Raises when the database is away (the rows stay journaled)."""
        if rows:
            try:
                self._insert(rows)
            except Exception as error:
                if not _refused_for_content(error):
                    raise
                for row in rows:
                    try:
                        self._insert([row])
                    except Exception as single:
                        if not _refused_for_content(single):
                            raise
                        self._reject([row], single)
        self._recovered()

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        if self._db.engine.dialect.name == "postgresql":
            columns = frozenset(rows[0])
            unnest = self._unnests.get(columns)
            if unnest is None:
                unnest = _Unnest(self._table, self._key, columns, self._db.engine.dialect)
                self._unnests[columns] = unnest
            # Not the pool's whole timeout while the database is away: the rows wait in the
            # journal instead, and the ones queued behind them are journaled too.
            self._db.run(unnest.statement, unnest.arrays(rows), wait_seconds=_CONNECTION_WAIT)
            return
        with self._db.transaction() as connection:
            if self._statement is None:  # built once: the writer runs in every request's process
                self._statement = dialect_insert(connection, self._table).on_conflict_do_nothing(
                    index_elements=[self._key]
                )
            connection.execute(self._statement, rows)

    # --- the journal ------------------------------------------------------------------------

    def _journal(self, rows: list[dict[str, Any]], *, sync: bool) -> _Journaled:
        """Appends rows to this process's journal (the journal lock is held). A row that
        cannot be encoded is set aside; rows the disk refuses go back to the queue."""
        kept: list[dict[str, Any]] = []
        lines: list[bytes] = []
        aside = 0
        for row in rows:
            try:
                lines.append(self._encode(row))
            except (TypeError, ValueError) as error:
                self._reject([row], error)
                aside += 1
            else:
                kept.append(row)
        try:
            end = self._own.append(lines, sync=sync)
        except OSError as error:
            log.error("%s: journal not written (%s): %d rows wait", self._name, error, len(kept))
            return _Journaled([], self._own.size, aside, kept)
        return _Journaled(kept, end, aside, [])

    def _settle(self, outcome: _Journaled) -> None:
        """What _journal could not keep (called without the journal lock)."""
        if outcome.aside:
            self._done(outcome.aside)
        if outcome.unwritten:
            with self._lock:
                self._queue.extendleft(reversed(outcome.unwritten))
            self._failed(OSError("journal"))

    def _encode(self, row: dict[str, Any]) -> bytes:
        # orjson writes what json.dumps(separators=(",", ":"), ensure_ascii=False) would,
        # datetimes as isoformat() does, at a fifteenth of its CPU (every row is journaled).
        return orjson.dumps(row, default=_json_value, option=orjson.OPT_APPEND_NEWLINE)

    def _decode(self, lines: list[bytes], source: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for line in lines:
            try:
                row = json.loads(line)
                for name in self._datetimes:
                    if isinstance(row.get(name), str):
                        row[name] = datetime.fromisoformat(row[name])
            except ValueError:
                # Not a row this writer wrote (a damaged file): kept as it is.
                path = journal.append_rejected(self._journal_dir, self._stem, [line])
                log.error("%s: an unreadable line of %s kept in %s", self._name, source, path)
                continue
            rows.append(row)
        return rows

    def _reject(self, rows: list[dict[str, Any]], error: Exception) -> None:
        lines = [json.dumps(r, default=str, ensure_ascii=False).encode() + b"\n" for r in rows]
        path = journal.append_rejected(self._journal_dir, self._stem, lines)
        log.error(
            "%s: %d rows refused (%s), kept in %s",
            self._name,
            len(rows),
            type(getattr(error, "orig", None) or error).__name__,
            path,
        )

    # --- bookkeeping ------------------------------------------------------------------------

    def _done(self, rows: int) -> None:
        with self._lock:
            self._pending -= rows
            if self._pending == 0:
                self._idle.notify_all()

    def _failed(self, error: Exception) -> None:
        with self._lock:
            first = self._retry_pause == 0
            self._retry_pause = min(self._retry_most, max(self._retry_first, self._retry_pause * 2))
            self._retry_at = time.monotonic() + self._retry_pause
        if first:
            log.warning(
                "%s: database unavailable (%s): rows wait in the journal %s",
                self._name,
                type(error).__name__,
                self._own.path,
            )

    def _recovered(self) -> None:
        with self._lock:
            if not self._retry_pause:
                return
            self._retry_pause = 0.0
            self._retry_at = 0.0
        log.info("%s: database back: the journal is replayed", self._name)


@dataclass(frozen=True)
class _Journaled:
    kept: list[dict[str, Any]]
    end: int
    # Rows that could not be encoded (set aside), rows the disk refused (queued again).
    aside: int
    unwritten: list[dict[str, Any]]
