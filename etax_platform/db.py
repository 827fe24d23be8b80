"""SQLAlchemy engine and transactions, and Alembic migrations per service.

The embedded default is one SQLite file per service; production and tests use
PostgreSQL by URL. Races are settled by the database: unique constraints, upserts, row
locks. On SQLite every writing transaction starts with BEGIN IMMEDIATE, so two writers
queue on the file lock instead of failing when a read lock cannot be upgraded.

PostgreSQL pools are sized by setting (`PoolSettings`, from each service's settings) and
are psycopg_pool's (`etax_platform.pg_pools`), SQLAlchemy's included.
The services keep no session state on a connection (no SET, no LISTEN, no session
advisory locks, no temporary tables), so they work through PgBouncer in transaction
mode, given `prepared_statements=False` where the pooler cannot carry psycopg's named
prepared statements (PgBouncer before 1.21, or without `max_prepared_statements`).

Hot statements (`Statement`, `Database.run`) are built once and, on PostgreSQL, run
straight on libpq (psycopg's `pq` layer, its adapters for the values) on a connection from
a pool of their own (psycopg_pool), as named prepared statements: SQLAlchemy's execution
layer cost several times what the statement itself costs the client, and psycopg's cursor
(query conversion, prepare bookkeeping, its wait loop) still four times (bench/analysis.md).
Tables, migrations and every other statement stay with SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy.exc
from alembic import command, context
from alembic.config import Config
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
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
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import Executable

from etax_platform import metrics, tracing
from etax_platform.pg_pools import Pool, StatementPool, UnitConnection

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


def _pool_options(
    url: str, settings: PoolSettings, *, keep: int, autocommit: bool
) -> dict[str, Any]:
    """A pool's options: size + overflow connections at most, `keep` of them kept open."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    recycle = settings.recycle_seconds
    return {
        "conninfo": conninfo,
        "kwargs": {**_connect_args(url, settings), "autocommit": autocommit},
        "min_size": keep,
        "max_size": max(1, settings.size + settings.max_overflow),
        "timeout": settings.timeout_seconds,
        # -1: never replaced for age (SQLAlchemy's meaning of pool_recycle=-1).
        "max_lifetime": float("inf") if recycle < 0 else max(60.0, float(recycle)),
    }


def _postgresql_engine(url: str, units: Pool) -> Engine:
    """SQLAlchemy on connections of `units`: NullPool, so SQLAlchemy keeps none itself,
    and a connection's close() puts it back (close_returns). No pre-ping: it costs a
    round trip on every checkout; a connection the server dropped fails its statement,
    which the call interceptor answers as UNAVAILABLE, and the pool replaces it."""
    return create_engine(url, poolclass=pool.NullPool, creator=units.getconn)


class Statement:
    """A hot statement, built once: a SQLAlchemy construct (run on every database) and/or
    the PostgreSQL text of it (psycopg's `%(name)s` placeholders), for statements SQLAlchemy
    cannot express or that only PostgreSQL runs (a data-modifying CTE).

    Parameters go to the driver as they are: no type processing (pass aware datetimes,
    ints, strings), and no expanding IN lists. Rows come back as tuples, in the order of
    the statement's columns, as the driver loads them; `typed`: each column through its
    SQLAlchemy type's result processing on PostgreSQL too (a TypeDecorator's
    `process_result_value`), as the construct's execution does on SQLite.
    """

    def __init__(
        self,
        construct: Executable | None = None,
        *,
        postgresql: str | None = None,
        writes: bool = False,
        typed: bool = False,
    ) -> None:
        if construct is None and postgresql is None:
            raise ValueError("a statement needs a construct or its PostgreSQL text")
        if typed and (construct is None or postgresql is not None):
            raise ValueError("typed results need the construct's columns, and no other text")
        self.construct = construct
        self.writes = writes
        self.typed = typed
        self._postgresql = postgresql
        self._prepared: _Prepared | None = None

    def for_psycopg(self, dialect: Dialect) -> _Prepared:
        """The statement as libpq runs it (built once)."""
        if self._prepared is None:
            if self._postgresql is not None:
                sql, fixed = self._postgresql, {}
            else:
                construct = self.construct
                assert construct is not None
                compiled = construct.compile(dialect=dialect)  # type: ignore[attr-defined]
                sql, fixed = str(compiled), dict(compiled.params)
            self._prepared = _Prepared.of(sql, fixed, self._processors(dialect))
        return self._prepared

    def _processors(self, dialect: Dialect) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        """(column, its type's result processor) for the columns that have one."""
        if not self.typed:
            return ()
        columns = self.construct.selected_columns  # type: ignore[union-attr]
        found = ((n, c.type.result_processor(dialect, None)) for n, c in enumerate(columns))
        return tuple((n, process) for n, process in found if process is not None)


class ListStatement:
    """A hot statement with one list parameter (a person's document indexes: one, or more
    while a rotation's older keys are held), built once for each length of the list. Each
    value is a plain parameter (`{prefix}_0`, `{prefix}_1`, ...): PostgreSQL's generic
    plan for a prepared statement (what it runs after the fifth time) then looks every row
    up by index, where one array parameter (`= ANY`) for any length had it scan a table.

    `build` gets the values' parameter names and returns the construct."""

    def __init__(
        self, build: Callable[[list[str]], Executable], prefix: str, *, typed: bool = False
    ) -> None:
        self._build = build
        self._prefix = prefix
        self._typed = typed
        self._by_count: dict[int, tuple[Statement, list[str]]] = {}

    def bound(
        self, values: Sequence[Any], params: Mapping[str, Any]
    ) -> tuple[Statement, dict[str, Any]]:
        """The statement for this many values, and `params` with the values added."""
        shape = self._by_count.get(len(values))
        if shape is None:
            # Built at most a few times at once, the first time a rotation's persons come.
            names = [f"{self._prefix}_{n}" for n in range(len(values))]
            shape = self._by_count.setdefault(
                len(values), (Statement(self._build(names), typed=self._typed), names)
            )
        statement, names = shape
        bound = dict(params)
        bound.update(zip(names, values, strict=True))
        return statement, bound

    def run(
        self, db: Database, values: Sequence[Any], params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        return db.run(*self.bound(values, params))


# psycopg's named placeholders, and its escaped percent sign.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


@dataclass(frozen=True)
class _Prepared:
    """A statement in libpq's terms: `$n` placeholders, the parameter name of each, the
    values the construct fixes, and a name to prepare it under (the same in every process
    and on every connection)."""

    sql: str
    text: bytes
    name: bytes
    names: tuple[str, ...]
    fixed: Mapping[str, Any]
    formats: tuple[PyFormat, ...]
    processors: tuple[tuple[int, Callable[[Any], Any]], ...] = ()

    @classmethod
    def of(
        cls,
        sql: str,
        fixed: Mapping[str, Any],
        processors: tuple[tuple[int, Callable[[Any], Any]], ...] = (),
    ) -> _Prepared:
        names: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "%"
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        text = _PLACEHOLDER.sub(placeholder, sql)
        digest = hashlib.sha256(text.encode()).hexdigest()[:20]
        return cls(
            sql,
            text.encode(),
            f"etax_{digest}".encode(),
            tuple(names),
            fixed,
            (PyFormat.TEXT,) * len(names),
            processors,
        )

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        fixed = self.fixed
        return [params[n] if n in params else fixed[n] for n in self.names]

    def processed(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        if not self.processors:
            return rows
        done = []
        for row in rows:
            values = list(row)
            for n, process in self.processors:
                values[n] = process(values[n])
            done.append(tuple(values))
        return done


class _StatementConnection(psycopg.Connection[Any]):
    """A statement pool connection: the statements prepared on it and the adapters of its
    values, kept across checkouts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[bytes] = set()
        self.transformer = Transformer(self)


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
        settings = self._pool_settings = pool_settings or PoolSettings()
        self._units: Pool | None = None
        self._statements: StatementPool | None = None
        pools: Any  # what the pool metrics read
        if url.startswith("sqlite"):
            self.engine = _sqlite_engine(url)
            pools = self.engine.pool
        else:
            # The units of work keep `size` connections open. The hot statements' pool
            # opens its connections (autocommit, with their prepared statements) as they
            # are needed: a database that runs no hot statement holds none.
            pools = self._units = Pool(
                **_pool_options(url, settings, keep=settings.size, autocommit=False),
                name="units",
                connection_class=UnitConnection,
                close_returns=True,
            )
            self.engine = _postgresql_engine(url, self._units)
            self._statements = StatementPool(
                **_pool_options(url, settings, keep=0, autocommit=True),
                name="statements",
                connection_class=_StatementConnection,
            )
        # Reads need no BEGIN/COMMIT round trips: in READ COMMITTED (PostgreSQL) and in
        # SQLite's WAL mode every statement sees its own snapshot either way.
        readers = self.engine.execution_options(**{_READ_ONLY: True})
        if self.engine.dialect.name != "sqlite":
            readers = readers.execution_options(isolation_level="AUTOCOMMIT")
        self._readers = readers
        # Metrics by the database's name (the SQLite file's stem, or PostgreSQL's database).
        self.name = _database_name(url)
        metrics.POOLS.add(self.name, pools)
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

    def run(
        self,
        statement: Statement,
        params: Mapping[str, Any],
        *,
        wait_seconds: float | None = None,
    ) -> list[tuple[Any, ...]]:
        """Runs a hot statement (one round trip, its own transaction) and returns its rows.

        PostgreSQL: on libpq (`_execute`), on a psycopg connection in autocommit mode from
        the statement pool, as a named prepared statement made on its first run on each
        connection unless `prepared_statements` is off (PgBouncer before 1.21). SQLite:
        through SQLAlchemy, in a writing transaction if the statement writes.

        wait_seconds: how long to wait for a connection of the statement pool, if not the
        pool's timeout. While the database is away the pool keeps trying to connect in the
        background and a caller waits the whole timeout; a writer with a journal to fall
        back on wants to know at once."""
        if self.engine.dialect.name != "postgresql":
            construct = statement.construct
            if construct is None:
                raise RuntimeError("this statement runs on PostgreSQL only")
            unit = self.transaction() if statement.writes else self.reading()
            with unit as connection:
                result = connection.execute(construct, dict(params))
                return [tuple(row) for row in result] if result.returns_rows else []
        with self._observed("statement", self._statement_seconds):
            return self._run_on_psycopg(statement, params, wait_seconds)

    def _run_on_psycopg(
        self, statement: Statement, params: Mapping[str, Any], wait_seconds: float | None
    ) -> list[tuple[Any, ...]]:
        prepared = statement.for_psycopg(self.engine.dialect)
        pool = self._statement_pool()
        try:
            connection = pool.getconn(wait_seconds)
        except psycopg.Error as error:  # unreachable
            raise _translated(error, prepared.sql) from None
        try:
            rows = _execute(connection, prepared, params, self._pool_settings.prepared_statements)
        except psycopg.Error as error:
            raise _translated(error, prepared.sql) from error
        finally:
            pool.putconn(connection)  # a broken connection is closed, not kept
        return prepared.processed(rows)

    def _statement_pool(self) -> StatementPool:
        assert self._statements is not None  # PostgreSQL
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

    def _observed(self, kind: str, seconds: Any) -> _Observed | contextlib.nullcontext[None]:
        """A unit of work's time (checkout and commit included) and database errors;
        a domain refusal raised inside the block is not a database error."""
        if not metrics.ENABLED:
            return _UNOBSERVED
        return _Observed(self.name, kind, seconds)

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
        for pools in (self._units, self._statements):
            if pools is not None:
                pools.close()


class _Observed:
    """Database._observed's block (a class: it wraps every statement, and @contextmanager
    costs twice as much)."""

    __slots__ = ("_database", "_kind", "_seconds", "_started")

    def __init__(self, database: str, kind: str, seconds: Any) -> None:
        self._database, self._kind, self._seconds = database, kind, seconds

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _tb: object
    ) -> None:
        if isinstance(error, sqlalchemy.exc.SQLAlchemyError):
            metrics.DB_ERRORS.labels(self._database, self._kind, type(error).__name__).inc()
        self._seconds.observe(time.perf_counter() - self._started)


_UNOBSERVED = contextlib.nullcontext()


def _execute(
    connection: _StatementConnection,
    statement: _Prepared,
    params: Mapping[str, Any],
    prepare: bool,
) -> list[tuple[Any, ...]]:
    """One round trip on libpq (it releases the GIL while it waits). The parameters go as
    text without types, so the server infers each from where it stands, as it does for
    psycopg's strings; the rows come back as psycopg's cursor would load them."""
    adapters = connection.transformer
    values = adapters.dump_sequence(statement.values(params), statement.formats)
    pgconn = connection.pgconn
    if not prepare:
        result = pgconn.exec_params(statement.text, values)
    else:
        if statement.name not in connection.prepared:
            _prepare(connection, statement)
        # None is NULL, as for exec_params (the stub of exec_prepared omits it).
        result = pgconn.exec_prepared(statement.name, values)  # type: ignore[arg-type]
        if result.error_field(pq.DiagnosticField.SQLSTATE) == _NO_SUCH_STATEMENT:
            # Gone from the server connection (a DISCARD ALL, a pooler's reset): again once.
            _prepare(connection, statement)
            result = pgconn.exec_prepared(statement.name, values)  # type: ignore[arg-type]
    if _check(result, connection) != pq.ExecStatus.TUPLES_OK:
        return []
    adapters.set_pgresult(result)
    return adapters.load_rows(0, result.ntuples, tuple)


def _prepare(connection: _StatementConnection, statement: _Prepared) -> None:
    connection.prepared.discard(statement.name)
    _check(connection.pgconn.prepare(statement.name, statement.text), connection)
    connection.prepared.add(statement.name)


_NO_SUCH_STATEMENT = b"26000"  # invalid_sql_statement_name
_SUCCEEDED = frozenset((pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK))


def _check(result: pq.abc.PGresult, connection: _StatementConnection) -> int:
    status = result.status
    if status in _SUCCEEDED:
        return status
    encoding = connection.info.encoding
    if connection.pgconn.status != pq.ConnStatus.OK:
        # A lost connection has no SQLSTATE: OperationalError, as psycopg's cursor raises
        # (the call interceptor answers UNAVAILABLE; the pool drops the connection).
        raise psycopg.OperationalError(pq.error_message(result, encoding=encoding))
    raise psycopg.errors.error_from_result(result, encoding=encoding)


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
