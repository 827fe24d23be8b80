"""Redis and PostgreSQL on this machine for `make run-shared`, kept under a directory
(var/shared/ by default) so their data outlives a restart.

Redis persists as production must (append-only file, fsync every second; the services
check it at start). PostgreSQL refuses to run as root: as root, initdb and pg_ctl run as
the `postgres` user, in a data directory handed to that user. Both listen on loopback only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class StoreError(RuntimeError):
    """A store that could not be started; the message says what to do."""


def _wait(ready: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if ready():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise StoreError(f"{what} did not start within {timeout:g}s")


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free(port: int, what: str) -> None:
    if _accepts(port):
        raise StoreError(f"port {port} for {what} is taken; choose another (see `make help`)")


@contextlib.contextmanager
def redis(directory: Path, port: int) -> Iterator[str]:
    """redis-server with `appendonly yes`, `appendfsync everysec` in `directory`; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StoreError("redis-server is missing: run `make system-deps`")
    _free(port, "Redis")
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(  # noqa: S603 - a fixed command line
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            # What survives is what the append-only file kept (no RDB snapshots besides).
            "--save",
            "",
            "--logfile",
            str(directory / "redis.log"),
        ]
    )
    try:
        _wait(lambda: process.poll() is None and _accepts(port), f"redis on port {port}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass(frozen=True)
class Postgres:
    port: int
    control: list[str]

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def ensure_database(self, name: str) -> None:
        import psycopg  # noqa: PLC0415 - only the shared configuration needs it

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as connection:
            found = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if found is None:
                connection.execute(f'CREATE DATABASE "{name}"')


def _pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not candidates:
        found = shutil.which("pg_ctl")
        if found is None:
            raise StoreError("PostgreSQL is missing: run `make system-deps`")
        return Path(found).parent
    return candidates[-1].parent


@contextlib.contextmanager
def postgres(directory: Path, port: int, max_connections: int) -> Iterator[Postgres]:
    """PostgreSQL on loopback with its data in `directory/data` (created on first use,
    trust authentication for the local user `postgres`); stopped (fast) on the way out."""
    bin_dir = _pg_bin()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    data, sockets = directory / "data", directory / "sock"
    _free(port, "PostgreSQL")
    sockets.mkdir(parents=True, exist_ok=True)
    if as_root:
        for path in (directory, sockets):
            shutil.chown(path, "postgres", "postgres")
        directory.chmod(0o755)
    if not (data / "PG_VERSION").exists():
        subprocess.run(  # noqa: S603 - a fixed command line
            [
                *prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    options = (
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections={max_connections}"
    )
    control = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(directory / "log")]
    started = subprocess.run(  # noqa: S603 - a fixed command line
        [*control, "-o", options, "-w", "start"], stdout=subprocess.DEVNULL, check=False
    )
    if started.returncode != 0:
        log = (directory / "log").read_text(errors="replace")[-2000:]
        raise StoreError(f"PostgreSQL did not start on port {port}:\n{log}")
    server = Postgres(port, control)
    try:
        yield server
    finally:
        subprocess.run(  # noqa: S603 - a fixed command line
            [*control, "-m", "fast", "-w", "stop"], stdout=subprocess.DEVNULL, check=False
        )
