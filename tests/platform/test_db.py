"""Units of work on SQLite and PostgreSQL: commit on success, roll back on failure,
and concurrent writers settled by the database."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from etax_platform.db import Database, Statement

metadata = MetaData()
counters = Table(
    "counters",
    metadata,
    Column("name", String(20), primary_key=True),
    Column("value", Integer, nullable=False),
)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    metadata.create_all(database.engine)
    yield database
    database.dispose()


def _value(db: Database, name: str) -> int | None:
    with db.reading() as session:
        return session.scalar(select(counters.c.value).where(counters.c.name == name))


def test_transaction_commits_when_the_block_succeeds(db: Database) -> None:
    with db.transaction() as session:
        session.execute(insert(counters).values(name="a", value=1))
    assert _value(db, "a") == 1


def test_transaction_rolls_back_everything_when_the_block_raises(db: Database) -> None:
    with pytest.raises(RuntimeError), db.transaction() as session:
        session.execute(insert(counters).values(name="a", value=1))
        session.execute(insert(counters).values(name="b", value=2))
        raise RuntimeError("dependency failed")
    assert _value(db, "a") is None
    assert _value(db, "b") is None


def test_unique_constraint_decides_between_writers(db: Database) -> None:
    with db.transaction() as session:
        session.execute(insert(counters).values(name="a", value=1))
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.execute(insert(counters).values(name="a", value=2))
    assert _value(db, "a") == 1


def test_concurrent_read_modify_write_loses_nothing(db: Database) -> None:
    """Writers queue (BEGIN IMMEDIATE on SQLite, row lock on PostgreSQL)."""
    with db.transaction() as session:
        session.execute(insert(counters).values(name="n", value=0))

    def bump(_: int) -> None:
        with db.transaction() as session:
            query = select(counters.c.value).where(counters.c.name == "n")
            if not db.is_sqlite:
                query = query.with_for_update()
            current = session.scalar(query)
            assert current is not None
            session.execute(
                update(counters).where(counters.c.name == "n").values(value=current + 1)
            )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(bump, range(200)))
    assert _value(db, "n") == 200


# --- hot statements (Database.run) -----------------------------------------------------

_VALUE_OF = Statement(select(counters.c.value).where(counters.c.name == bindparam("name")))
_BUMP = Statement(
    update(counters)
    .where(counters.c.name == bindparam("counter"))
    .values(value=counters.c.value + 1)
    .returning(counters.c.value),
    writes=True,
)


def test_a_hot_statement_reads_and_writes_on_both_databases(db: Database) -> None:
    with db.transaction() as session:
        session.execute(insert(counters).values(name="a", value=1))
    assert db.run(_VALUE_OF, {"name": "a"}) == [(1,)]
    assert db.run(_BUMP, {"counter": "a"}) == [(2,)]
    assert db.run(_BUMP, {"counter": "nobody"}) == []
    assert _value(db, "a") == 2


def test_hot_statements_count_exactly_under_concurrency(db: Database) -> None:
    with db.transaction() as session:
        session.execute(insert(counters).values(name="a", value=0))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _n: db.run(_BUMP, {"counter": "a"}), range(200)))
    assert _value(db, "a") == 200
