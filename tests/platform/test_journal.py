"""BatchWriter never drops a row: while the database refuses writes the rows wait in a
local durable journal, and they are written in order, exactly once, when it is back; a
full queue spills there too, and the journal of a killed process is replayed by the next
writer to start. On SQLite and PostgreSQL (`database_url`)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, text

from etax_platform.db import Database
from tests.platform.journal_rows import (
    SERVICE,
    bring_back,
    metadata,
    row,
    rows,
    take_away,
    writer,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    metadata.create_all(database.engine)
    yield database
    database.dispose()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def written(db: Database) -> list[tuple[int, str, object]]:
    with db.reading() as connection:
        return [
            (r.seq, r.label, r.at)
            for r in connection.execute(
                select(rows.c.seq, rows.c.label, rows.c.at).order_by(rows.c.id)
            )
        ]


def journal_lines(directory: Path) -> int:
    return sum(
        path.read_bytes().count(b"\n") for path in directory.glob(f"{SERVICE}-*-journal_rows.jsonl")
    )


def test_rows_wait_in_the_journal_while_the_database_is_away_then_go_in_order_once(
    db: Database, tmp_path: Path
) -> None:
    journaled = writer(db, tmp_path)
    for seq in range(10):
        journaled.add(row(seq))
    assert journaled.flush()
    assert journal_lines(tmp_path) == 0  # cut back to empty once written

    take_away(db)
    for seq in range(10, 30):
        journaled.add(row(seq))
        time.sleep(0.005)  # several batches, several failed attempts
    wait_until(lambda: journal_lines(tmp_path) == 20, "20 journaled rows")
    assert journaled.backlog() == 20
    assert not journaled.flush(timeout=0.3)
    (journal,) = tmp_path.glob(f"{SERVICE}-{os.getpid()}-journal_rows.jsonl")
    first = json.loads(journal.read_bytes().splitlines()[0])
    assert first["seq"] == 10 and first["at"] == "2026-11-27T09:30:10+08:00"

    bring_back(db)
    assert journaled.flush()
    assert journaled.backlog() == 0
    got = written(db)
    assert [r[0] for r in got] == list(range(30))
    assert got == [(r["seq"], r["label"], r["at"]) for r in map(row, range(30))]
    assert journal_lines(tmp_path) == 0
    journaled.close()
    assert list(tmp_path.glob("*.jsonl")) == []  # an empty journal goes with its writer


def test_a_replay_after_a_partial_write_inserts_nothing_twice(db: Database, tmp_path: Path) -> None:
    """The first five rows reached the database although the writer saw a failure (a
    commit whose acknowledgement was lost): the replay skips them by their keys."""
    journaled = writer(db, tmp_path)
    take_away(db)
    keyed = [row(seq, row_key=f"key{seq:028d}") for seq in range(10)]
    for values in keyed:
        journaled.add(values)
    wait_until(lambda: journal_lines(tmp_path) == 10, "10 journaled rows")
    bring_back(db)
    with db.transaction() as connection:
        connection.execute(rows.insert(), keyed[:5])
    assert journaled.flush()
    assert [r[0] for r in written(db)] == list(range(10))
    journaled.close()


def test_a_full_queue_spills_to_the_journal_in_order(db: Database, tmp_path: Path) -> None:
    """The writer is held up by the database (a lock); the queue of 5 fills and spills
    to the journal instead of dropping, and every row arrives in order."""
    journaled = writer(db, tmp_path, max_queued=5)
    blocker = db.engine.connect()
    transaction = blocker.begin()  # on SQLite: BEGIN IMMEDIATE, the write lock
    if not db.is_sqlite:
        blocker.execute(text("LOCK TABLE journal_rows IN ACCESS EXCLUSIVE MODE"))
    try:
        journaled.add(row(0))
        wait_until(lambda: not journaled._queue, "the writer to take row 0")
        for seq in range(1, 9):
            journaled.add(row(seq))  # 1-5 queue up, 6 spills 1-6, 7-8 queue again
        assert journaled.backlog() == 9
        assert journal_lines(tmp_path) == 7  # row 0 (journaled before its insert), 1-6
    finally:
        transaction.rollback()
        blocker.close()
    assert journaled.flush()
    assert [r[0] for r in written(db)] == list(range(9))
    journaled.close()


def _inserts(db: Database) -> float:
    """Units of work that wrote on `db` so far (a batch is one on either database)."""
    kind = "transaction" if db.is_sqlite else "statement"
    labels = {"database": db.name, "kind": kind}
    return REGISTRY.get_sample_value("etax_db_unit_seconds_count", labels) or 0.0


def test_rows_added_together_go_in_as_one_batch(db: Database, tmp_path: Path) -> None:
    """The writer lets a batch fill for `batch_seconds` after its first row, so the rows of
    many requests take one insert, not one each; and a flush does not wait for that."""
    journaled = writer(db, tmp_path, batch_seconds=0.5)
    before = _inserts(db)
    for seq in range(30):
        journaled.add(row(seq))
        time.sleep(0.002)  # requests a little apart, as under load
    wait_until(lambda: len(written(db)) == 30, "30 rows written")
    assert _inserts(db) - before == 1
    journaled.add(row(30))
    started = time.monotonic()
    assert journaled.flush(timeout=5)
    assert time.monotonic() - started < 0.4  # not the 0.5 s a batch may wait
    assert [r[0] for r in written(db)] == list(range(31))
    journaled.close()


def test_without_batching_a_failed_write_is_journaled_on_the_callers_thread(
    db: Database, tmp_path: Path
) -> None:
    journaled = writer(db, tmp_path, batch_seconds=0)
    journaled.add(row(0))
    assert written(db)[0][0] == 0  # written at once
    take_away(db)
    for seq in range(1, 4):
        journaled.add(row(seq))
    assert journal_lines(tmp_path) == 3 and journaled.backlog() == 3
    bring_back(db)
    assert journaled.flush()
    journaled.add(row(4))
    assert [r[0] for r in written(db)] == list(range(5))
    journaled.close()


def test_rows_the_database_refuses_are_kept_aside_and_do_not_block_the_rest(
    db: Database, tmp_path: Path
) -> None:
    journaled = writer(db, tmp_path)
    for seq in range(6):
        journaled.add(row(seq) if seq != 2 else {**row(seq), "label": None})  # NOT NULL
    assert journaled.flush()
    assert [r[0] for r in written(db)] == [0, 1, 3, 4, 5]
    (rejected,) = tmp_path.glob("*.rejected.jsonl")
    kept = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert [(r["seq"], r["label"]) for r in kept] == [(2, None)]
    journaled.close()


def test_a_row_the_journal_cannot_write_is_kept_aside_and_the_rest_go_in(
    db: Database, tmp_path: Path
) -> None:
    """Every batch is journaled before its INSERT; a row with a value JSON cannot hold
    (a bug upstream) is set aside with its text, never raised into the writer's thread."""
    journaled = writer(db, tmp_path)
    for seq in range(4):
        journaled.add(row(seq) if seq != 1 else {**row(seq), "label": object()})
    assert journaled.flush()
    assert [r[0] for r in written(db)] == [0, 2, 3]
    (rejected,) = tmp_path.glob("*.rejected.jsonl")
    assert [json.loads(line)["seq"] for line in rejected.read_text().splitlines()] == [1]
    journaled.close()


def test_a_value_too_long_for_its_column_is_refused_not_cut_short(
    db: Database, tmp_path: Path
) -> None:
    """PostgreSQL checks varchar lengths (SQLite keeps any length): the batch statement
    must leave that check to the INSERT, never cut a value to fit."""
    if db.is_sqlite:
        pytest.skip("SQLite keeps a string of any length")
    journaled = writer(db, tmp_path)
    journaled.add(row(0))
    journaled.add({**row(1), "label": "x" * 17})  # String(16)
    assert journaled.flush()
    assert [r[0] for r in written(db)] == [0]
    (rejected,) = tmp_path.glob("*.rejected.jsonl")
    assert [json.loads(line)["seq"] for line in rejected.read_text().splitlines()] == [1]
    journaled.close()


def test_two_writers_in_one_process_keep_separate_journals(db: Database, tmp_path: Path) -> None:
    """Two replicas of a service in one process (or on one machine): distinct files,
    and neither takes the other's for an orphan."""
    first, second = writer(db, tmp_path), writer(db, tmp_path)
    assert first._own.path != second._own.path
    assert first._orphans == [] and second._orphans == []
    take_away(db)
    first.add(row(0))
    second.add(row(1))
    wait_until(lambda: journal_lines(tmp_path) == 2, "both rows journaled")
    bring_back(db)
    assert first.flush() and second.flush()
    assert sorted(r[0] for r in written(db)) == [0, 1]
    first.close()
    second.close()


def _journaling_process(url: str, directory: Path, first: int, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.platform.journal_rows",
            url,
            str(directory),
            str(first),
            str(count),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_the_journal_of_a_killed_process_is_replayed_by_the_next_writer_to_start(
    db: Database, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes journal while the database is away; one is SIGKILLed. A writer that
    starts then replays the dead one's file (and deletes it) but leaves the live one's
    alone; once that one is killed too, the next writer replays it.

    The processes write to a database that never gets the table (their database stays
    away for them), so the live one cannot replay its own rows meanwhile; a journal file
    names no database, so the writers here replay them into `db`."""
    nowhere = f"sqlite:///{tmp_path / 'nowhere.sqlite3'}"
    journals = tmp_path / "journal"
    processes = [
        _journaling_process(nowhere, journals, 100, 7),
        _journaling_process(nowhere, journals, 200, 5),
    ]
    try:
        files = []
        for process in processes:
            assert process.stdout is not None
            files.append(Path(process.stdout.readline().strip()))
        assert all(f.exists() for f in files)
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)

        survivor = writer(db, journals)
        assert survivor.flush()
        assert [r[0] for r in written(db)] == list(range(100, 107))
        assert not files[0].exists() and files[1].exists()

        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait(timeout=10)
        survivor.close()
        caplog.set_level(logging.INFO, logger="etax.journal")
        successor = writer(db, journals)
        assert f"{files[1].name}: 5 rows of a stopped process to replay" in caplog.text
        assert successor.flush()
        assert [r[0] for r in written(db)] == [*range(100, 107), *range(200, 205)]
        assert not files[1].exists()
        successor.close()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_adopting_is_decided_by_the_lock_not_by_reading_first(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Writers starting at once over the same orphan: it is replayed once."""
    journaled = writer(db, tmp_path)
    take_away(db)
    for seq in range(50):
        journaled.add(row(seq))
    wait_until(lambda: journal_lines(tmp_path) == 50, "50 journaled rows")
    # The process "dies": its file stays, unlocked.
    journaled._stopping = True
    journaled._thread.join()
    journaled._own.close(remove=False)
    bring_back(db)
    caplog.set_level(logging.INFO, logger="etax.journal")
    started: list[object] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        started.append(writer(db, tmp_path))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One of them took it (whose thread may have replayed and dropped it already).
    assert caplog.text.count("50 rows of a stopped process to replay") == 1
    for each in started:
        assert each.flush()  # type: ignore[attr-defined]
        each.close()  # type: ignore[attr-defined]
    assert [r[0] for r in written(db)] == list(range(50))
