"""SQLite databases at a service's newest migration, copied from one migrated once per
test session, so that a test's service starts on a schema already at head instead of
running every migration (PostgreSQL's counterpart: `PostgresServer.migrated_database`).
Tests of the migrations themselves start from an empty file."""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
import threading
from contextlib import closing
from pathlib import Path

from etax_platform.db import Database

_templates: dict[Path, Path] = {}
_lock = threading.Lock()
_directory = Path(tempfile.mkdtemp(prefix="etax-schemas-"))
atexit.register(shutil.rmtree, _directory, ignore_errors=True)


def migrate(url: str, migrations: Path) -> None:
    """Brings the database at `url` to the newest revision of `migrations`, as a service
    does at start, and leaves no connection open (a template is copied only then)."""
    database = Database(url)
    try:
        database.migrate(migrations)
    finally:
        database.dispose()


def migrated_sqlite_url(path: Path, migrations: Path) -> str:
    """The URL of a new SQLite file at `path`, at the newest revision of `migrations`."""
    with _lock:
        template = _templates.get(migrations)
        if template is None:
            template = _directory / f"{len(_templates)}.sqlite3"
            migrate(f"sqlite:///{template}", migrations)
            _templates[migrations] = template
    # The backup API copies a consistent image whatever the template's journal holds.
    with closing(sqlite3.connect(template)) as source, closing(sqlite3.connect(path)) as copy:
        source.backup(copy)
    return f"sqlite:///{path}"
