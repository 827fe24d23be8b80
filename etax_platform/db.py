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
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import (
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

log = logging.getLogger("etax.db")

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


def make_engine(url: str, settings: PoolSettings | None = None) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    settings = settings or PoolSettings()
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


class Database:
    """An engine and units of work: a transaction commits only if its block succeeds.

    Units of work are SQLAlchemy Core connections: the services speak SQL through Table
    objects and need none of the ORM's identity map, whose bookkeeping cost more CPU than
    the statements on the hot paths (bench/).
    """

    def __init__(self, url: str, pool_settings: PoolSettings | None = None) -> None:
        self.url = url
        self.engine = make_engine(url, pool_settings)
        # Reads need no BEGIN/COMMIT round trips: in READ COMMITTED (PostgreSQL) and in
        # SQLite's WAL mode every statement sees its own snapshot either way.
        readers = self.engine.execution_options(**{_READ_ONLY: True})
        if self.engine.dialect.name != "sqlite":
            readers = readers.execution_options(isolation_level="AUTOCOMMIT")
        self._readers = readers

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A writing unit of work: commits when the block ends, rolls back if it raises."""
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """Reads, outside any transaction: each statement sees the latest committed data
        (never blocks writers on SQLite). Use transaction() where reads must agree."""
        with self._readers.connect() as connection:
            yield connection

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
        self.engine.dispose()


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


class BatchWriter:
    """Rows of one table written off the request path, in batches.

    For records a caller must not wait for and can afford to lose in a crash (a delivery
    log, audit events no transaction carries): the request pays for a queue append, not a
    database round trip. A full queue or a failed batch is logged (counts only) and
    dropped, never raised. `batch_seconds=0` writes at once, on the caller's thread.
    """

    def __init__(
        self,
        database: Database,
        table: Table,
        *,
        name: str,
        batch_seconds: float = 0.2,
        batch_rows: int = 500,
        max_queued: int = 50_000,
    ) -> None:
        self._db = database
        self._table = table
        self._name = name
        self._batch_seconds = batch_seconds
        self._batch_rows = batch_rows
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queued)
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None
        if batch_seconds > 0:
            self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
            self._thread.start()

    def add(self, row: dict[str, Any]) -> None:
        if self._thread is None:
            self._write([row])
            return
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            with self._idle:
                self._pending -= 1
            log.warning("%s queue full: a row was dropped", self._name)

    def flush(self, timeout: float = 10.0) -> None:
        """Waits until every queued row was written (or given up on)."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self) -> None:
        if self._thread is not None:
            self.flush()
            self._stopping.set()
            self._thread.join(timeout=5)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        try:
            with self._db.transaction() as session:
                session.execute(self._table.insert(), rows)
        except Exception as error:
            log.warning("%s: %d rows not written: %s", self._name, len(rows), type(error).__name__)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._batch_seconds)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            rows = [first]
            while len(rows) < self._batch_rows:
                try:
                    rows.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(rows)
            with self._idle:
                self._pending -= len(rows)
                self._idle.notify_all()
