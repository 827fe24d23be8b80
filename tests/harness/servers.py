"""Real Redis and PostgreSQL servers for tests, on free loopback ports.

Redis persists as production does (append-only file, fsync every second); both can be
stopped and started again on the same port and data (fault tests).

PostgreSQL refuses to run as root, so as root its server runs as the `postgres` user
(runuser) in a data directory handed to that user; the tests themselves stay root.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def restart_safe_port() -> int:
    """A free port below the kernel's ephemeral range, for a server that is stopped and
    started again on the same port: while it is down no outgoing connection on this
    busy machine can take its port as a local one (free_port's range is that one)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port()
    for _ in range(200):
        port = random.randrange(20000, max(20001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def _wait(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as error:
            last = error
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start: {last}")


class RedisServer:
    """A redis-server on a free loopback port, persisting as production does: an
    append-only file fsynced every second, in a working directory of its own. It can be
    killed (SIGKILL: no shutdown save) and started again on the same port and directory."""

    def __init__(self, *, appendonly: bool = True, appendfsync: str = "everysec") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: run `make system-deps`")
        self.binary = binary
        self.port = restart_safe_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="etax-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = [
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            appendfsync,
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                # No RDB snapshots: what survives a restart is what the AOF kept.
                "--save",
                "",
                *self.options,
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        try:
            # PING answers LOADING (an error) until the append-only file is read back.
            _wait(client.ping, "redis-server")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: nothing is saved on the way out."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def restartable_redis(
    *, appendonly: bool = True, appendfsync: str = "everysec"
) -> Iterator[RedisServer]:
    server = RedisServer(appendonly=appendonly, appendfsync=appendfsync)
    try:
        server.start()
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def redis_server(*, appendonly: bool = True) -> Iterator[str]:
    with restartable_redis(appendonly=appendonly) as server:
        yield server.url


def _pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not candidates:
        raise RuntimeError("PostgreSQL is missing: run `make system-deps`")
    return candidates[-1].parent


class PostgresServer:
    def __init__(self, port: int, workdir: Path, control: list[str] | None = None) -> None:
        self.port = port
        self.workdir = workdir
        # pg_ctl with its data directory (as the postgres user when running as root).
        self._control = control or []

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create_database(self, template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            suffix = f" TEMPLATE {template}" if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}')
        return name

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (fast: clients are disconnected, nothing is lost)."""
        subprocess.run(
            [*self._control, "-m", mode, "-w", "stop"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """Starts it (again) on the same data directory and port."""
        started = subprocess.run(
            [*self._control, "-w", "start"], stdout=subprocess.DEVNULL, check=False
        )
        if started.returncode != 0:
            log = (self.workdir / "log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"postgres did not start on port {self.port}:\n{log}")
        _wait(lambda: self.admin().close() is None, "postgres")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _pg_bin()
    as_root = os.geteuid() == 0
    workdir = Path(tempfile.mkdtemp(prefix="etax-pg-"))
    data, sockets = workdir / "data", workdir / "sock"
    sockets.mkdir()
    if as_root:
        shutil.chown(workdir, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
        workdir.chmod(0o755)
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port = restart_safe_port()
    options = (
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    control = [
        *prefix,
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(workdir / "log"),
    ]
    server = PostgresServer(port, workdir, control)
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(workdir, ignore_errors=True)
