"""A table for the BatchWriter tests, and a process that journals rows into it and then
waits to be killed (`python -m tests.platform.journal_rows URL JOURNAL_DIR FIRST COUNT`).

The database "is away" by having the table renamed: every insert fails, on SQLite and on
PostgreSQL alike, until it is renamed back.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, text

from etax_platform.batches import BatchWriter
from etax_platform.clock import CST
from etax_platform.db import Database
from services.auth.models import Instant

metadata = MetaData()
rows = Table(
    "journal_rows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("row_key", String(32), nullable=True, unique=True),
    Column("seq", Integer, nullable=False),
    Column("label", String(16), nullable=False),
    Column("at", Instant, nullable=False),
)
SERVICE = "test"
T0 = datetime(2026, 11, 27, 9, 30, tzinfo=CST)


def row(seq: int, **extra: object) -> dict[str, object]:
    return {"seq": seq, "label": f"r{seq}", "at": T0 + timedelta(seconds=seq), **extra}


def take_away(database: Database) -> None:
    with database.transaction() as connection:
        connection.execute(text("ALTER TABLE journal_rows RENAME TO journal_rows_away"))


def bring_back(database: Database) -> None:
    with database.transaction() as connection:
        connection.execute(text("ALTER TABLE journal_rows_away RENAME TO journal_rows"))


def writer(database: Database, journal_dir: Path, **options: object) -> BatchWriter:
    values: dict[str, object] = {"batch_seconds": 0.02, "retry_seconds": (0.05, 0.2)}
    values.update(options)
    return BatchWriter(
        database,
        rows,
        name="test-rows",
        service=SERVICE,
        journal_dir=journal_dir,
        key="row_key",
        **values,  # type: ignore[arg-type]
    )


def main() -> None:
    url, journal_dir, first, count = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:5])
    journaled = writer(Database(url), journal_dir)
    for seq in range(first, first + count):
        journaled.add(row(seq))
    own = journaled._own
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with journaled._journal_lock:
            if own.rows == count and journaled._retry_at:
                break
        time.sleep(0.01)
    print(own.path, flush=True)
    time.sleep(600)  # until killed


if __name__ == "__main__":
    main()
