"""Real Redis, Redis Cluster, PostgreSQL and PgBouncer servers for tests, on free
loopback ports.

Redis persists as production does (append-only file, fsync every second) and can be
stopped and started again on the same port and data (fault tests). PostgreSQL and
PgBouncer refuse to run as root, so as root they run as the `postgres` user (runuser,
pgbouncer's own -u) in directories handed to that user; the tests themselves stay root.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from tests.harness.schemas import migrate

# Ports handed out by free_port in this process, never handed out again.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
# Not the global `random`, which a test may seed: two runs side by side must not pick alike.
_choice = random.Random(os.urandom(16))


def _below_ephemeral_range() -> range:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default start of the range
    return range(max(1024, low // 2), low)


def free_port() -> int:
    """A loopback port that is free now, for a server to bind soon after.

    Below the kernel's ephemeral range, so no socket bound to port 0 (a metrics server, a
    browser's driver) and no outgoing connection on this busy machine can be given it
    before its server binds it, or while a stopped server is down before it starts again
    on it. Never handed out twice in one process, so the ports picked for one test's
    servers never coincide (a port picked but not yet bound is still free)."""
    return free_ports_apart(1, 1)


def free_ports_apart(count: int, step: int) -> int:
    """The first of `count` free ports `step` apart (a service's replicas listen on its
    port + step * i), all handed out as free_port hands out one."""
    ports = _below_ephemeral_range()
    for _ in range(1000):
        first = _choice.choice(ports)
        run = [first + step * i for i in range(count)]
        with _handed_out_lock:
            if run[-1] in ports and _handed_out.isdisjoint(run) and all(map(port_is_free, run)):
                _handed_out.update(run)
                return run[0]
    what = "port" if count == 1 else f"{count} ports {step} apart"
    raise RuntimeError(f"no free loopback {what} in {ports.start}-{ports.stop - 1}")


def port_is_free(port: int) -> bool:
    """Whether a server could bind this loopback port now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def _redis_binary(name: str = "redis-server") -> str:
    binary = shutil.which(name)
    if binary is None:
        raise RuntimeError(f"{name} is missing: run `make system-deps`")
    return binary


def _start_redis(port: int, workdir: str | Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            _redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class RedisServer:
    """A redis-server on a free loopback port, persisting as production does: an
    append-only file fsynced every second, in a working directory of its own. It can be
    killed (SIGKILL: no shutdown save) and started again on the same port and directory."""

    def __init__(self, *, appendonly: bool = True, appendfsync: str = "everysec") -> None:
        self.binary = _redis_binary()
        self.port = free_port()
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


@dataclass
class RedisCluster:
    """A Redis Cluster on loopback: its nodes by port, and ways to hurt it."""

    processes: dict[int, subprocess.Popen[bytes]]
    node_timeout_ms: int
    stopped: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        """Every node as a startup node (any one would do: the client finds the rest)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.processes)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def info(self, port: int, section: str) -> dict[str, str]:
        """CLUSTER INFO or INFO <section> of one node, values as text."""
        with self.node(port) as client:
            parsed = client.cluster("info") if section == "cluster" else client.info(section)
        return {str(key): str(value) for key, value in parsed.items()}

    def primary_of(self, redis_key: str) -> int:
        """The port of the live primary that serves redis_key's slot now."""
        for port in self.live():
            with self.node(port) as client:
                slot = int(client.execute_command("CLUSTER KEYSLOT", redis_key))
                for start, end, primary, *_replicas in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return int(primary[1])
        raise RuntimeError("no live node answers")

    def live(self) -> list[int]:
        return [port for port in self.processes if port not in self.stopped]

    def kill(self, port: int) -> None:
        """The node dies at once (SIGKILL: no goodbye to its replicas or clients)."""
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(timeout=10)
        self.stopped.add(port)

    def healthy(self) -> bool:
        """Every live node sees a whole cluster and every live replica is in sync."""
        for port in self.live():
            if self.info(port, "cluster").get("cluster_state") != "ok":
                return False
            replication = self.info(port, "replication")
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
                or replication.get("master_sync_in_progress") != "0"
            ):
                return False
        return True

    def wait_healthy(self, timeout: float = 30.0) -> None:
        _wait(self.healthy, "redis cluster", timeout)

    def replicated(self) -> bool:
        """Every live replica has every write its primary had when asked."""
        for port in self.live():
            with self.node(port) as client:
                info = client.info("replication")
            if info.get("role") != "master":
                continue
            offset = int(info["master_repl_offset"])
            replicas = [info[f"slave{n}"] for n in range(int(info["connected_slaves"]))]
            if any(int(replica["offset"]) < offset for replica in replicas):
                return False
        return True

    def wait_replicated(self, timeout: float = 10.0) -> None:
        _wait(self.replicated, "redis cluster replication", timeout)


@contextlib.contextmanager
def redis_cluster(
    primaries: int = 3, replicas_per_primary: int = 0, node_timeout_ms: int = 5000
) -> Iterator[RedisCluster]:
    """`redis-server --cluster-enabled yes` per node, joined by `redis-cli --cluster
    create`. With replicas, a replica takes over a primary that stayed unreachable for
    node_timeout_ms (plus an election: well under a second on loopback)."""
    workdir = Path(tempfile.mkdtemp(prefix="etax-redis-cluster-"))
    processes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for _ in range(primaries * (1 + replicas_per_primary)):
            port = free_port()
            node_dir = workdir / str(port)
            node_dir.mkdir()
            processes[port] = _start_redis(
                port,
                node_dir,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # The bus port defaults to port + 10000, which a free port may exceed.
                "--cluster-port",
                str(free_port()),
            )
        cluster = RedisCluster(processes, node_timeout_ms)
        for port in processes:
            _wait(cluster.node(port).ping, f"redis cluster node {port}")
        subprocess.run(
            [
                _redis_binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in processes),
                "--cluster-replicas",
                str(replicas_per_primary),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        cluster.wait_healthy()
        yield cluster
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not candidates:
        raise RuntimeError("PostgreSQL is missing: run `make system-deps`")
    return candidates[-1].parent


_LETTERS_FOR_DIGITS = str.maketrans("0123456789", "ghijklmnop")


class PostgresServer:
    def __init__(self, port: int, workdir: Path, control: list[str] | None = None) -> None:
        self.port = port
        self.workdir = workdir
        # pg_ctl with its data directory (as the postgres user when running as root).
        self._control = control or []
        # A database at each migrations directory's newest revision, copied by
        # migrated_database (a template must have no connections while it is copied).
        self._templates: dict[Path, str] = {}
        self._templates_lock = threading.Lock()
        # Copies of a template made ahead, by the copier thread, for the next test.
        self._spares: dict[str, list[str]] = {}
        self._copies_wanted: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._copier: threading.Thread | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create_database(self, template: str | None = None) -> str:
        # Letters only: the name is a metric label (etax_db_*{database=...}), and hex digits
        # can run into something that looks like a phone (t_f13949727472 failed
        # test_zz_metric_labels once).
        name = "t_" + uuid.uuid4().hex[:12].translate(_LETTERS_FOR_DIGITS)
        with self.admin() as conn:
            suffix = f" TEMPLATE {template}" if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}')
        return name

    def migrated_database(self, migrations: Path) -> str:
        """A new database at the newest revision of a service's migrations: a copy of one
        this server migrated once (CREATE DATABASE ... TEMPLATE), so that every test's
        service starts on a schema already at head instead of running every migration.
        Tests of the migrations themselves start from `create_database()`.

        A copy takes about 0.1 s of PostgreSQL's time, so the next one is made in the
        background while the test that asked for this one runs."""
        with self._templates_lock:
            template = self._templates.get(migrations)
            if template is None:
                template = self.create_database()
                migrate(self.url(template), migrations)
                self._templates[migrations] = template
                self._spares[template] = []
            spare = self._spares[template].pop() if self._spares[template] else None
            if self._copier is None:
                self._copier = threading.Thread(target=self._copy_templates, daemon=True)
                self._copier.start()
        self._copies_wanted.put(template)
        return spare or self.create_database(template)

    def _copy_templates(self) -> None:
        while True:
            template = self._copies_wanted.get()
            try:
                copy = self.create_database(template)
            except psycopg.Error:
                continue  # the server is stopping: the test asking next makes its own
            with self._templates_lock:
                self._spares[template].append(copy)

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
def postgres_server(settings: Mapping[str, str] | None = None) -> Iterator[PostgresServer]:
    """A PostgreSQL of its own on a free port; `settings`: more server settings (`-c`)."""
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
    port = free_port()
    options = (
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    ) + "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
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


class PgBouncer:
    """PgBouncer in transaction mode in front of a PostgresServer (any database name)."""

    def __init__(self, port: int, workdir: Path, statement_timeout_ms: int) -> None:
        self.port = port
        self.workdir = workdir
        self.statement_timeout_ms = statement_timeout_ms

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        return (self.workdir / "pgbouncer.log").read_text(errors="replace")


@contextlib.contextmanager
def pgbouncer(
    postgres: PostgresServer, pool_size: int = 4, statement_timeout_ms: int = 10_000
) -> Iterator[PgBouncer]:
    """Debian's pgbouncer (1.18 here), as the `postgres` user when we are root (it
    refuses root). Startup parameters it cannot track make it refuse the connection
    ("unsupported startup parameter: options"), so the statement timeout is set the way
    an operator would behind it: a connect_query on every server connection."""
    binary = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        raise RuntimeError("pgbouncer is missing: run `make system-deps`")
    workdir = Path(tempfile.mkdtemp(prefix="etax-pgbouncer-"))
    port = free_port()
    (workdir / "users.txt").write_text('"postgres" ""\n')
    server = f"host=127.0.0.1 port={postgres.port}"
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
* = {server} connect_query='SET statement_timeout = {statement_timeout_ms}'

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "users.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
logfile = {workdir / "pgbouncer.log"}
log_connections = 0
log_disconnections = 0
"""
    )
    as_root = os.geteuid() == 0
    if as_root:
        for path in (workdir, *workdir.iterdir()):
            shutil.chown(path, "postgres", "postgres")
    process = subprocess.Popen(
        [binary, *(["-u", "postgres"] if as_root else []), str(workdir / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bouncer = PgBouncer(port, workdir, statement_timeout_ms)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {bouncer.log()[-2000:]}")
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres"):
            return True

    try:
        _wait(answers, "pgbouncer")
        yield bouncer
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
