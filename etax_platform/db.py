"""SQLAlchemy engine and transactions, and Alembic migrations per service.

The embedded default is one SQLite file per service; production and tests use
PostgreSQL by URL. Races are settled by the database: unique constraints, upserts, row
locks. On SQLite every writing transaction starts with BEGIN IMMEDIATE, so two writers
queue on the file lock instead of failing when a read lock cannot be upgraded.

PostgreSQL pools are sized by setting (`PoolSettings`, from each service's settings).
The services keep no session state on a connection (no SET, no LISTEN, no session
advisory locks, no temporary tables), so they work through PgBouncer in transaction
mode, given `prepared_statements=False` where the pooler cannot carry psycopg's named
prepared statements (PgBouncer before 1.21, or without `max_prepared_statements`).

Hot statements (`Statement`, `Database.run`) are built once and, on PostgreSQL, run
straight on a psycopg connection from a pool of their own (psycopg_pool), as prepared
statements: SQLAlchemy's execution layer and pool checkout cost several times what the
statement itself costs the client (bench/analysis.md). Tables, migrations and every other
statement stay with SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import sqlalchemy.exc
from alembic import command, context
from alembic.config import Config
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    Table,
    create_engine,
    event,
    make_url,
    pool,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeDecorator

from etax_platform import journal, metrics, tracing

log = logging.getLogger("etax.db")
# psycopg_pool logs every checkout at INFO.
logging.getLogger("psycopg.pool").setLevel(logging.WARNING)

_READ_ONLY = "etax_read_only"


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=pool.QueuePool,
        pool_size=8,
        max_overflow=24,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, start transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Reads run without a transaction (each statement is its own snapshot in WAL mode).
        if not connection.get_execution_options().get(_READ_ONLY, False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@dataclass(frozen=True)
class PoolSettings:
    """A PostgreSQL connection pool (`ServiceSettings.database_pool()` fills it in)."""

    size: int = 16
    max_overflow: int = 56
    timeout_seconds: float = 10.0
    recycle_seconds: int = 1800
    # 0: none sent (the server's or the pooler's own setting applies).
    statement_timeout_ms: int = 10_000
    # False: psycopg never prepares (prepare_threshold=None), for transaction poolers.
    prepared_statements: bool = True


def _connect_args(url: str, settings: PoolSettings) -> dict[str, Any]:
    """psycopg connection parameters from the settings (both pools use them)."""
    connect_args: dict[str, Any] = {}
    if settings.statement_timeout_ms:
        # A startup parameter, not a SET: it holds for the connection's whole life and
        # costs no round trip. PgBouncer 1.18 refuses it (statement_timeout_ms=0 there).
        given = make_url(url).query.get("options", "")
        options = " ".join(given) if isinstance(given, tuple) else given
        connect_args["options"] = (
            f"{options} -c statement_timeout={settings.statement_timeout_ms}".strip()
        )
    if not settings.prepared_statements:
        connect_args["prepare_threshold"] = None
    return connect_args


def make_engine(url: str, settings: PoolSettings | None = None) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    settings = settings or PoolSettings()
    connect_args = _connect_args(url, settings)
    # No pre-ping: it costs a round trip on every checkout; a connection the server
    # dropped fails its statement, which the call interceptor answers as UNAVAILABLE.
    return create_engine(
        url,
        pool_size=settings.size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.timeout_seconds,
        pool_recycle=settings.recycle_seconds,
        connect_args=connect_args,
    )


class Statement:
    """A hot statement, built once: a SQLAlchemy construct (run on every database) and/or
    the PostgreSQL text of it (psycopg's `%(name)s` placeholders), for statements SQLAlchemy
    cannot express or that only PostgreSQL runs (a data-modifying CTE).

    Parameters go to the driver as they are: no type processing (pass aware datetimes,
    ints, strings), and no expanding IN lists. Rows come back as tuples, in the order of
    the statement's columns.
    """

    def __init__(
        self,
        construct: Executable | None = None,
        *,
        postgresql: str | None = None,
        build: Callable[[str], Executable] | None = None,
        writes: bool = False,
    ) -> None:
        if construct is None and postgresql is None and build is None:
            raise ValueError("a statement needs a construct or its PostgreSQL text")
        self._construct = construct
        self._build = build
        self.writes = writes
        self._postgresql = postgresql
        self._compiled: tuple[str, dict[str, Any]] | None = None
        self._built: dict[str, Executable] = {}

    def construct_for(self, dialect_name: str) -> Executable | None:
        """The construct for a dialect: `build(dialect_name)` (made once) where a clause
        differs by database (PostgreSQL's `= ANY(array)` for SQLite's expanding IN)."""
        if self._build is None:
            return self._construct
        if dialect_name not in self._built:
            self._built[dialect_name] = self._build(dialect_name)
        return self._built[dialect_name]

    def for_psycopg(self, dialect: Dialect) -> tuple[str, dict[str, Any]]:
        """The SQL text and the parameters the construct fixes (compiled once)."""
        if self._postgresql is not None:
            return self._postgresql, {}
        if self._compiled is None:
            construct = self.construct_for(dialect.name)
            assert construct is not None
            compiled = construct.compile(dialect=dialect)  # type: ignore[attr-defined]
            self._compiled = (str(compiled), dict(compiled.params))
        return self._compiled


def _translated(error: psycopg.Error, sql: str) -> sqlalchemy.exc.DBAPIError:
    """A driver error as SQLAlchemy raises it, so callers and the call interceptor (a
    database that is away: UNAVAILABLE) treat both paths alike."""
    translated = sqlalchemy.exc.DBAPIError.instance(
        sql, None, error, psycopg.Error, hide_parameters=True
    )
    assert isinstance(translated, sqlalchemy.exc.DBAPIError)
    return translated


class Database:
    """An engine and units of work: a transaction commits only if its block succeeds.

    Units of work are SQLAlchemy Core connections: the services speak SQL through Table
    objects and need none of the ORM's identity map, whose bookkeeping cost more CPU than
    the statements on the hot paths (bench/). Hot statements run through `run`.
    """

    def __init__(self, url: str, pool_settings: PoolSettings | None = None) -> None:
        self.url = url
        self.engine = make_engine(url, pool_settings)
        self._pool_settings = pool_settings or PoolSettings()
        self._statements: psycopg_pool.ConnectionPool[Any] | None = None
        self._statements_lock = threading.Lock()
        # Reads need no BEGIN/COMMIT round trips: in READ COMMITTED (PostgreSQL) and in
        # SQLite's WAL mode every statement sees its own snapshot either way.
        readers = self.engine.execution_options(**{_READ_ONLY: True})
        if self.engine.dialect.name != "sqlite":
            readers = readers.execution_options(isolation_level="AUTOCOMMIT")
        self._readers = readers
        # Metrics by the database's name (the SQLite file's stem, or PostgreSQL's database).
        self.name = _database_name(url)
        metrics.POOLS.add(self.name, self.engine.pool)
        self._waiting = metrics.DB_POOL_WAITING.labels(self.name)
        self._write_seconds = metrics.DB_SECONDS.labels(self.name, "transaction")
        self._read_seconds = metrics.DB_SECONDS.labels(self.name, "read")
        self._statement_seconds = metrics.DB_SECONDS.labels(self.name, "statement")
        tracing.instrument_engine(self.engine, self.name)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A writing unit of work: commits when the block ends, rolls back if it raises."""
        with (
            self._observed("transaction", self._write_seconds),
            self._checkout(self.engine.begin()) as connection,
        ):
            yield connection

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """Reads, outside any transaction: each statement sees the latest committed data
        (never blocks writers on SQLite). Use transaction() where reads must agree."""
        with (
            self._observed("read", self._read_seconds),
            self._checkout(self._readers.connect()) as connection,
        ):
            yield connection

    def run(self, statement: Statement, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Runs a hot statement (one round trip, its own transaction) and returns its rows.

        PostgreSQL: on a psycopg connection in autocommit mode from the statement pool,
        prepared on its first run on each connection unless `prepared_statements` is off
        (PgBouncer before 1.21). SQLite: through SQLAlchemy, in a writing transaction if
        the statement writes."""
        if self.engine.dialect.name != "postgresql":
            construct = statement.construct_for(self.engine.dialect.name)
            if construct is None:
                raise RuntimeError("this statement runs on PostgreSQL only")
            unit = self.transaction() if statement.writes else self.reading()
            with unit as connection:
                result = connection.execute(construct, dict(params))
                return [tuple(row) for row in result] if result.returns_rows else []
        with self._observed("statement", self._statement_seconds):
            return self._run_on_psycopg(statement, params)

    def _run_on_psycopg(
        self, statement: Statement, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        sql, fixed = statement.for_psycopg(self.engine.dialect)
        pool = self._statement_pool()
        try:
            connection = pool.getconn()
        except psycopg_pool.PoolTimeout:
            raise sqlalchemy.exc.TimeoutError("no free connection for a statement") from None
        try:
            cursor = connection.execute(
                sql,
                {**fixed, **params} if fixed else params,
                prepare=self._pool_settings.prepared_statements,
            )
            # Not cursor.description: it builds a Column object per column on every call.
            result = cursor.pgresult
            returned = result is not None and result.status == psycopg.pq.ExecStatus.TUPLES_OK
            return cursor.fetchall() if returned else []
        except psycopg.Error as error:
            raise _translated(error, sql) from error
        finally:
            pool.putconn(connection)  # a broken connection is closed, not kept

    def _statement_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        """Opened at the first hot statement, so a database that runs none opens nothing."""
        pool = self._statements
        if pool is not None:
            return pool
        with self._statements_lock:
            if self._statements is None:
                settings = self._pool_settings
                conninfo = make_url(self.url).set(drivername="postgresql")
                self._statements = psycopg_pool.ConnectionPool(
                    conninfo.render_as_string(hide_password=False),
                    kwargs={"autocommit": True, **_connect_args(self.url, settings)},
                    min_size=0,
                    max_size=max(1, settings.size + settings.max_overflow),
                    timeout=settings.timeout_seconds,
                    max_lifetime=max(60.0, float(settings.recycle_seconds)),
                    name="statements",
                    open=True,
                )
            return self._statements

    @contextmanager
    def _checkout(self, opening: Any) -> Iterator[Connection]:
        """Enters `opening` (a pooled connection), counted as waiting until it is had."""
        if not metrics.ENABLED:
            with opening as connection:
                yield connection
            return
        self._waiting.inc()
        waiting = True
        try:
            with opening as connection:
                self._waiting.dec()
                waiting = False
                yield connection
        finally:
            if waiting:
                self._waiting.dec()

    @contextmanager
    def _observed(self, kind: str, seconds: Any) -> Iterator[None]:
        """A unit of work's time (checkout and commit included) and database errors;
        a domain refusal raised inside the block is not a database error."""
        if not metrics.ENABLED:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        except sqlalchemy.exc.SQLAlchemyError as error:
            metrics.DB_ERRORS.labels(self.name, kind, type(error).__name__).inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - started)

    def migrate(self, script_location: Path) -> None:
        """Brings the schema to the newest migration; safe when replicas start together."""
        config = Config()
        config.set_main_option("script_location", str(script_location))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # A migration may take longer than any request should.
                connection.execute(text("SET LOCAL statement_timeout = 0"))
                lock_id = int.from_bytes(
                    hashlib.sha256(str(script_location).encode()).digest()[:8], "big", signed=True
                )
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        with self._statements_lock:
            if self._statements is not None:
                self._statements.close()
                self._statements = None
        self.engine.dispose()


def _database_name(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return Path(parsed.database or "memory").stem or "memory"
    return parsed.database or parsed.get_backend_name()


def dialect_insert(connection: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with ON CONFLICT (upserts, "insert if absent") on PostgreSQL and SQLite."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def run_migrations(target_metadata: MetaData) -> None:
    """The body of every service's migrations/env.py."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through Database.migrate()")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _is_datetime(column: Column[Any]) -> bool:
    """A column whose values the journal writes as ISO 8601 text and reads back."""
    kind: Any = column.type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    try:
        return kind.python_type is datetime
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


class BatchWriter:
    """Rows of one table written off the request path, in batches, and never dropped.

    For records a request must not wait for but that must not be lost (audit events no
    transaction carries, the SMS delivery log): the request pays for a queue append, not a
    database round trip. A writer thread takes what is queued, appends it to this process's
    journal file (etax_platform/journal.py) and inserts it. While the database is away the
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
        batch_seconds: float = 0.2,
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
                if len(self._queue) == 1:
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
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

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
        text = json.dumps(row, default=_json_value, ensure_ascii=False, separators=(",", ":"))
        return text.encode() + b"\n"

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
