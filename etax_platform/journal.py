"""A local durable journal: rows on their way to the database, one JSON object a line.

`BatchWriter` (etax_platform/batches.py) appends every batch here before it inserts it, and
keeps the rows while the database is away; the file is cut back to empty once all of it
is in the database. One file per process and table,
`<dir>/<service>-<pid>-<table>.jsonl`, held under an exclusive `flock` for the life of the
process. The kernel drops that lock when the process ends, however it ends, so a file
nobody holds belongs to a process that is gone: the next writer of the same service and
table to start takes the lock, replays the file and deletes it (`adopt_orphans`). Two
replicas on one machine hold two files; a second writer in one process gets a name of its
own (`<pid>.1`), since each open file has its own lock.

The directory must be on a local disk (flock) and is created private (0700): the rows
carry masked values and blind indexes only, but they are still the audit trail.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
from pathlib import Path

log = logging.getLogger("etax.journal")

_READ_BYTES = 1 << 20


class JournalFile:
    """An open, locked journal file. Not thread-safe: the caller serialises calls.

    Only whole lines count: `size` is the end of the last complete line, `done` the end of
    the lines already in the database, so `pending` rows wait between them.
    """

    def __init__(self, path: Path, fd: int, size: int = 0, rows: int = 0) -> None:
        self.path = path
        self._fd = fd
        self.size = size
        self.rows = rows
        self.done = 0
        self.done_rows = 0

    @property
    def pending(self) -> int:
        return self.rows - self.done_rows

    def append(self, lines: list[bytes], *, sync: bool) -> int:
        """Appends whole lines (each ending in a newline); returns the new end. `sync`:
        fsync before returning, so the lines survive a crash of the machine too."""
        joined = b"".join(lines)
        data = memoryview(joined)
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
        self.size += len(joined)
        self.rows += len(lines)
        if sync:
            self.sync()
        return self.size

    def sync(self) -> None:
        os.fsync(self._fd)

    def read(self, limit: int) -> tuple[list[bytes], int]:
        """Up to `limit` pending lines from `done` on, and the offset after the last one."""
        lines: list[bytes] = []
        offset = self.done
        while len(lines) < limit and offset < self.size:
            chunk = os.pread(self._fd, min(_READ_BYTES, self.size - offset), offset)
            end = chunk.rfind(b"\n")
            if end < 0:  # a line longer than a read: read it whole
                end = os.pread(self._fd, self.size - offset, offset).index(b"\n")
                chunk = os.pread(self._fd, end + 1, offset)
            for line in chunk[:end].split(b"\n"):
                lines.append(line + b"\n")
                offset += len(line) + 1
                if len(lines) == limit:
                    break
        return lines, offset

    def written(self, offset: int, rows: int) -> None:
        """The lines up to `offset` are in the database. Once everything is, the file is
        cut back to empty (not fsynced: if a crash undoes the cut, the replay inserts
        nothing twice, since every row carries its unique key)."""
        self.done = offset
        self.done_rows += rows
        if self.done >= self.size:
            os.ftruncate(self._fd, 0)
            self.size = self.rows = self.done = self.done_rows = 0

    def close(self, *, remove: bool) -> None:
        """Closes (and so unlocks) the file; `remove` deletes it first, under the lock."""
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)


def _pattern(service: str, table: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(service)}-\d+(?:\.\d+)?-{re.escape(table)}\.jsonl$")


def _prepare(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def create_own(directory: Path, service: str, table: str) -> JournalFile:
    """This process's journal file, locked before it appears under its name (so no other
    process can take it for an orphan while it is still empty)."""
    _prepare(directory)
    pid = os.getpid()
    temporary = directory / f".{service}-{pid}-{table}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        serial = 0
        while True:
            suffix = "" if serial == 0 else f".{serial}"
            path = directory / f"{service}-{pid}{suffix}-{table}.jsonl"
            try:
                os.link(temporary, path)
                break
            except FileExistsError:
                serial += 1
    except BaseException:
        os.close(fd)
        raise
    finally:
        temporary.unlink(missing_ok=True)
    return JournalFile(path, fd)


def _complete_lines(fd: int) -> tuple[int, int, int]:
    """(end of the last complete line, complete lines, bytes after it)."""
    total = os.fstat(fd).st_size
    size = rows = offset = 0
    while offset < total:
        chunk = os.pread(fd, min(_READ_BYTES, total - offset), offset)
        rows += chunk.count(b"\n")
        last = chunk.rfind(b"\n")
        if last >= 0:
            size = offset + last + 1
        offset += len(chunk)
    return size, rows, total - size


def adopt_orphans(directory: Path, service: str, table: str) -> list[JournalFile]:
    """The journal files of `service` and `table` whose process is gone, locked, oldest
    first. Empty ones are deleted on the way. A torn last line (the process died in the
    middle of writing it) was never a complete row: it is left out and logged."""
    _prepare(directory)
    pattern = _pattern(service, table)
    candidates: list[tuple[float, Path]] = []
    for path in directory.iterdir():
        if pattern.match(path.name):
            try:
                candidates.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
    adopted: list[JournalFile] = []
    for _mtime, path in sorted(candidates):
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Another adopter may have replayed and deleted it before we got the lock.
            if os.fstat(fd).st_ino != path.stat().st_ino:
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)  # alive (locked by its process) or already gone
            continue
        size, rows, torn = _complete_lines(fd)
        if torn:
            log.warning("journal %s: a torn last line (%d bytes) left out", path.name, torn)
            os.ftruncate(fd, size)
        orphan = JournalFile(path, fd, size, rows)
        if rows == 0:
            orphan.close(remove=True)
            continue
        log.info("journal %s: %d rows of a stopped process to replay", path.name, rows)
        adopted.append(orphan)
    return adopted


def append_rejected(directory: Path, stem: str, lines: list[bytes]) -> Path:
    """Rows the database refuses for what they hold (not for being away) are kept here,
    for an operator, instead of blocking every row behind them."""
    _prepare(directory)
    path = directory / f"{stem}.rejected.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)
    return path
