"""PostgreSQL pools by setting, the statement timeout, and PgBouncer in transaction mode
(the Debian package, 1.18 here) in front of the tests' PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Dialect,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError, TimeoutError

from etax_platform.db import Database, PoolSettings, Statement
from services.sms.settings import SmsSettings
from tests.harness.servers import PgBouncer, PostgresServer, postgres_server

# What a service behind PgBouncer 1.18 in transaction mode sets (README, "Shared stores").
BEHIND_PGBOUNCER = PoolSettings(statement_timeout_ms=0, prepared_statements=False)

metadata = MetaData()
counters = Table(
    "counters",
    metadata,
    Column("name", String(20), primary_key=True),
    Column("value", Integer, nullable=False),
)


@pytest.fixture
def database_name(postgres: PostgresServer) -> Iterator[str]:
    name = postgres.create_database()
    setup = Database(postgres.url(name))
    metadata.create_all(setup.engine)
    setup.dispose()
    yield name
    with postgres.admin() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _workload(database: Database, callers: int, rounds: int) -> list[str]:
    """Concurrent callers, each running the same few statements many times (psycopg
    prepares a statement on its fifth run on a connection); the errors they met."""
    errors: list[str] = []
    lock = threading.Lock()

    def caller(n: int) -> None:
        name = f"c{n}"
        try:
            with database.transaction() as session:
                session.execute(counters.insert().values(name=name, value=0))
            for _ in range(rounds):
                with database.transaction() as session:
                    session.execute(
                        update(counters)
                        .where(counters.c.name == name)
                        .values(value=counters.c.value + 1)
                    )
                with database.reading() as session:
                    session.scalar(select(counters.c.value).where(counters.c.name == name))
        except DBAPIError as error:
            with lock:
                errors.append(type(error.orig).__name__)

    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(caller, range(callers)))
    return errors


# --- pools by setting ------------------------------------------------------------------


def test_default_pool_holds_every_rpc_worker() -> None:
    for workers in (2, 16, 64, 256):
        pool = SmsSettings(port=0, max_workers=workers).database_pool()
        assert pool.size + pool.max_overflow >= workers + 8


def test_pool_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "POOL_SIZE": "4",
        "MAX_OVERFLOW": "2",
        "POOL_TIMEOUT_SECONDS": "1.5",
        "POOL_RECYCLE_SECONDS": "60",
        "STATEMENT_TIMEOUT_MS": "0",
        "PREPARED_STATEMENTS": "false",
    }.items():
        monkeypatch.setenv(f"ETAX_SMS_DB_{name}", value)
    assert SmsSettings(port=0).database_pool() == PoolSettings(
        size=4,
        max_overflow=2,
        timeout_seconds=1.5,
        recycle_seconds=60,
        statement_timeout_ms=0,
        prepared_statements=False,
    )


def test_a_full_pool_makes_a_caller_wait_then_fail_unavailable(
    postgres: PostgresServer, database_name: str
) -> None:
    """size + overflow connections at most; the next caller waits timeout_seconds and
    gets sqlalchemy's TimeoutError, which the call interceptor answers UNAVAILABLE."""
    database = Database(
        postgres.url(database_name), PoolSettings(size=2, max_overflow=1, timeout_seconds=0.3)
    )
    try:
        with ExitStack() as held:
            for _ in range(3):
                held.enter_context(database.reading())
            started = time.monotonic()
            with pytest.raises(TimeoutError), database.reading():
                pass
            assert time.monotonic() - started >= 0.3
        with database.reading() as session:  # returned connections serve again
            assert session.scalar(text("SELECT 1")) == 1
    finally:
        database.dispose()


_BACKEND = text("SELECT pg_backend_pid()")


def _backends_at_once(database: Database, callers: int) -> set[int]:
    """The server processes of `callers` units of work held at the same time."""
    barrier = threading.Barrier(callers)

    def one(_: int) -> int:
        with database.reading() as session:
            pid = session.scalar(_BACKEND)
            barrier.wait(timeout=10)
        assert isinstance(pid, int)
        return pid

    with ThreadPoolExecutor(callers) as pool:
        return set(pool.map(one, range(callers)))


def test_connections_opened_under_a_burst_are_kept_for_the_next(
    postgres: PostgresServer, database_name: str
) -> None:
    """Beyond the pool's size, connections stay open once returned (psycopg_pool closes
    them after ten idle minutes): a second burst opens no new PostgreSQL backend.
    SQLAlchemy's QueuePool closed each at once, so every call of a sustained burst above
    the size paid a new backend, and 50 at once waited seconds for their connections."""
    database = Database(postgres.url(database_name), PoolSettings(size=2, max_overflow=10))
    try:
        first = _backends_at_once(database, 12)
        assert len(first) == 12
        assert _backends_at_once(database, 12) == first
    finally:
        database.dispose()


def test_a_unit_of_work_stays_one_transaction_on_a_connection_reads_used(
    postgres: PostgresServer, database_name: str
) -> None:
    """Reads run in autocommit mode; the same connection, back in the pool, carries a
    writing unit of work as one transaction again, rolled back when its block raises."""
    database = Database(postgres.url(database_name), PoolSettings(size=1, max_overflow=0))
    try:
        with database.reading() as session:
            reader = session.scalar(_BACKEND)
        with database.transaction() as session:
            assert session.scalar(_BACKEND) == reader
            first = session.scalar(text("SELECT txid_current()"))
            assert session.scalar(text("SELECT txid_current()")) == first
        with pytest.raises(RuntimeError), database.transaction() as session:
            session.execute(counters.insert().values(name="rolled back", value=1))
            raise RuntimeError
        with database.reading() as session:
            assert session.scalar(select(counters.c.name)) is None
    finally:
        database.dispose()


def test_statement_timeout_is_a_startup_option_on_postgresql(
    postgres: PostgresServer, database_name: str
) -> None:
    database = Database(postgres.url(database_name), PoolSettings(statement_timeout_ms=300))
    try:
        with database.reading() as session:
            assert session.scalar(text("SHOW statement_timeout")) == "300ms"
        # OperationalError: the call interceptor answers UNAVAILABLE, as for a dead server.
        with (
            pytest.raises(OperationalError, match="statement timeout"),
            database.transaction() as session,
        ):
            session.execute(text("SELECT pg_sleep(2)"))
        with database.transaction() as session:  # the pooled connection is still good
            assert session.scalar(text("SELECT 1")) == 1
    finally:
        database.dispose()


_SLOW_MIGRATION = """
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("SELECT pg_sleep(0.6)")
"""


def test_migrations_are_not_cut_by_the_statement_timeout(
    postgres: PostgresServer, database_name: str, tmp_path: Path
) -> None:
    """A migration may run longer than any request should (an index on a big table)."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(
        "from sqlalchemy import MetaData\n"
        "from etax_platform.db import run_migrations\n"
        "run_migrations(MetaData())\n"
    )
    (tmp_path / "versions" / "0001_slow.py").write_text(_SLOW_MIGRATION)
    database = Database(postgres.url(database_name), PoolSettings(statement_timeout_ms=300))
    try:
        database.migrate(tmp_path)
        with database.reading() as session:
            assert session.scalar(text("SELECT version_num FROM alembic_version")) == "0001"
    finally:
        database.dispose()


# --- PgBouncer in transaction mode -------------------------------------------------------


def test_pgbouncer_refuses_the_statement_timeout_as_a_startup_option(
    pgbouncer_server: PgBouncer, database_name: str
) -> None:
    """Why statement_timeout_ms=0 behind PgBouncer 1.18: it refuses `options`, and with
    ignore_startup_parameters=options it would drop it silently."""
    database = Database(
        pgbouncer_server.url(database_name), PoolSettings(prepared_statements=False)
    )
    try:
        with (
            pytest.raises(OperationalError, match="unsupported startup parameter"),
            database.reading(),
        ):
            pass
    finally:
        database.dispose()


def test_behind_pgbouncer_its_statement_timeout_applies(
    pgbouncer_server: PgBouncer, database_name: str
) -> None:
    database = Database(pgbouncer_server.url(database_name), BEHIND_PGBOUNCER)
    try:
        with database.reading() as session:
            shown = session.scalar(text("SHOW statement_timeout"))
        assert shown == f"{pgbouncer_server.statement_timeout_ms // 1000}s"
    finally:
        database.dispose()


def test_psycopg_prepared_statements_break_behind_pgbouncer_in_transaction_mode(
    pgbouncer_server: PgBouncer, database_name: str
) -> None:
    """Why the setting exists: psycopg's automatic prepares are per server connection,
    and PgBouncer < 1.21 hands a client's next transaction to any of them."""
    database = Database(pgbouncer_server.url(database_name), PoolSettings(statement_timeout_ms=0))
    try:
        errors = _workload(database, callers=8, rounds=40)
    finally:
        database.dispose()
    assert errors, "prepared statements survived transaction pooling"
    # A prepare meeting another client's statement on the same server connection, an
    # execute finding none, or PgBouncer seeing the protocol out of step.
    broken = {"DuplicatePreparedStatement", "InvalidSqlStatementName", "ProtocolViolation"}
    assert set(errors) <= broken, errors


def test_without_prepared_statements_concurrent_callers_work_behind_pgbouncer(
    pgbouncer_server: PgBouncer, postgres: PostgresServer, database_name: str
) -> None:
    database = Database(pgbouncer_server.url(database_name), BEHIND_PGBOUNCER)
    try:
        assert _workload(database, callers=12, rounds=40) == []
    finally:
        database.dispose()
    direct = Database(postgres.url(database_name))
    try:
        with direct.reading() as session:
            values = session.scalars(select(counters.c.value)).all()
    finally:
        direct.dispose()
    assert values == [40] * 12


# --- hot statements on their own pool (Database.run) -------------------------------------

_PREPARED_HERE = Statement(postgresql="SELECT count(*) FROM pg_prepared_statements")
_SLEEP = Statement(postgresql="SELECT pg_sleep(%(seconds)s)")


def test_hot_statements_are_prepared_on_their_connection(
    postgres: PostgresServer, database_name: str
) -> None:
    database = Database(postgres.url(database_name), PoolSettings(size=1, max_overflow=0))
    try:
        database.run(_PREPARED_HERE, {})
        # The one connection of the pool prepared it on its first run.
        assert database.run(_PREPARED_HERE, {}) == [(1,)]
    finally:
        database.dispose()


class _Shouting(TypeDecorator[str]):
    """A type whose results SQLAlchemy processes (as auth's Instant turns them to CST)."""

    impl = String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value).upper()


def test_a_typed_hot_statement_gets_its_columns_as_sqlalchemy_would(
    postgres: PostgresServer, database_name: str
) -> None:
    """On PostgreSQL a hot statement's rows are the driver's; `typed` runs each column's
    result processing too, as executing the construct does on SQLite."""
    word = select(literal("calm", _Shouting()).label("word"), literal(7).label("n"))
    database = Database(postgres.url(database_name))
    try:
        assert database.run(Statement(word), {}) == [("calm", 7)]
        assert database.run(Statement(word, typed=True), {}) == [("CALM", 7)]
    finally:
        database.dispose()


def test_a_hot_statement_gone_from_its_connection_is_prepared_again(
    postgres: PostgresServer, database_name: str
) -> None:
    """A DISCARD ALL or DEALLOCATE (a pooler's reset) drops the server's prepared
    statements behind the connection's back: the next run prepares it again."""
    database = Database(postgres.url(database_name), PoolSettings(size=1, max_overflow=0))
    try:
        assert database.run(_PREPARED_HERE, {}) == [(1,)]
        pool = database._statement_pool()
        connection = pool.getconn()
        try:
            connection.pgconn.exec_(b"DEALLOCATE ALL")
        finally:
            pool.putconn(connection)
        assert database.run(_PREPARED_HERE, {}) == [(1,)]
    finally:
        database.dispose()


def test_hot_statements_keep_the_statement_timeout_and_answer_unavailable_errors(
    postgres: PostgresServer, database_name: str
) -> None:
    database = Database(
        postgres.url(database_name),
        PoolSettings(size=1, max_overflow=0, statement_timeout_ms=300, timeout_seconds=0.3),
    )
    try:
        # What SQLAlchemy raises, so the call interceptor answers UNAVAILABLE for both.
        with pytest.raises(OperationalError, match="statement timeout"):
            database.run(_SLEEP, {"seconds": 2})
        assert database.run(_PREPARED_HERE, {})  # the connection still serves
    finally:
        database.dispose()
    busy = Database(
        postgres.url(database_name),
        PoolSettings(size=1, max_overflow=0, timeout_seconds=0.3),
    )
    try:
        # The pool's one connection busy with another caller's statement: a timeout
        # (UNAVAILABLE too), after the pool's wait, not "unreachable".
        sleeper = threading.Thread(target=busy.run, args=(_SLEEP, {"seconds": 1.5}))
        sleeper.start()
        time.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            busy.run(_PREPARED_HERE, {})
        assert time.monotonic() - started >= 0.3
        sleeper.join()
        assert busy.run(_PREPARED_HERE, {})
    finally:
        busy.dispose()


def test_a_hot_statement_on_a_lost_connection_is_unavailable_and_the_next_one_works(
    postgres: PostgresServer, database_name: str
) -> None:
    """A server that drops the connection (a restart, a failover): OperationalError, which
    the call interceptor answers UNAVAILABLE, never a bare DatabaseError (INTERNAL); the
    pool closes that connection and the next statement gets a new one."""
    database = Database(postgres.url(database_name), PoolSettings(size=1, max_overflow=0))
    pid = Statement(postgresql="SELECT pg_backend_pid()")
    try:
        [(backend,)] = database.run(pid, {})
        with postgres.admin() as other:
            other.execute("SELECT pg_terminate_backend(%s)", (backend,))
        with pytest.raises(OperationalError):
            database.run(pid, {})
        [(again,)] = database.run(pid, {})
        assert again != backend
    finally:
        database.dispose()


def test_hot_statements_keep_the_connections_given_back_at_hand_while_idle_and_young(
    postgres: PostgresServer, database_name: str
) -> None:
    """The statement pool keeps a connection given back on a stack, past psycopg_pool's
    getconn/putconn; not one left in a transaction or past its age, and none once the
    database is disposed of. Those at hand are not counted as checked out."""
    database = Database(postgres.url(database_name), PoolSettings(size=1, max_overflow=1))
    pid = Statement(postgresql="SELECT pg_backend_pid()")
    try:
        [(first,)] = database.run(pid, {})
        pool = database._statement_pool()
        assert len(pool._at_hand) == 1 and pool.checkedout() == 0
        assert database.run(pid, {}) == [(first,)]
        in_transaction = pool.getconn()
        assert pool.checkedout() == 1
        in_transaction.pgconn.exec_(b"BEGIN")
        pool.putconn(in_transaction)  # to psycopg_pool, which rolls it back
        assert not pool._at_hand and pool.checkedout() == 0
        old = pool.getconn()
        old._expire_at = time.monotonic() - 1
        pool.putconn(old)  # to psycopg_pool, which closes it for its age
        assert not pool._at_hand and old.closed
        [(second,)] = database.run(pid, {})
        assert second != first
        [kept] = pool._at_hand
    finally:
        database.dispose()
    assert kept.closed and not pool._at_hand


def _select_one_in_a_unit_of_work(database: Database) -> object:
    with database.reading() as session:
        return session.scalar(text("SELECT 1"))


@pytest.mark.parametrize(
    "call",
    [lambda database: database.run(_PREPARED_HERE, {}), _select_one_in_a_unit_of_work],
    ids=["hot statement", "unit of work"],
)
def test_calls_while_the_database_is_away_fail_at_once_then_recover(
    call: Callable[[Database], object],
) -> None:
    """Not the pool's whole timeout per call while it cannot connect (a worker thread held
    for 10 s each): UNAVAILABLE at once (OperationalError), saying why the last attempt to
    connect failed, and calls work again once the database is back."""
    with postgres_server() as server:
        database = Database(server.url(), PoolSettings(size=2, timeout_seconds=10))
        try:
            assert call(database)
            server.stop()
            for _ in range(5):  # the first meet their broken connections; the rest, none
                started = time.monotonic()
                with pytest.raises(OperationalError) as refused:
                    call(database)
                assert time.monotonic() - started < 2
            assert "connection refused" in str(refused.value).lower()
            server.start()
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert call(database)
                    break
                except OperationalError:
                    assert time.monotonic() < deadline, "calls did not recover"
                    time.sleep(0.2)
        finally:
            database.dispose()


def test_hot_statements_without_prepares_work_behind_pgbouncer(
    pgbouncer_server: PgBouncer, database_name: str
) -> None:
    database = Database(pgbouncer_server.url(database_name), BEHIND_PGBOUNCER)
    bump = Statement(
        postgresql="UPDATE counters SET value = value + 1 WHERE name = %(name)s RETURNING value",
        writes=True,
    )
    try:
        with database.transaction() as session:
            session.execute(counters.insert(), [{"name": f"h{n}", "value": 0} for n in range(8)])

        def caller(n: int) -> None:
            for _ in range(30):
                database.run(bump, {"name": f"h{n}"})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(caller, range(8)))
        rows = database.run(Statement(postgresql="SELECT value FROM counters ORDER BY name"), {})
    finally:
        database.dispose()
    assert rows == [(30,)] * 8
