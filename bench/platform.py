"""The platform as the benchmark runs it: real processes, pinned to cores.

PostgreSQL and Redis (the production configuration) or the embedded default (SQLite files
and each service's in-process store, as `make run`), the four services as
`python -m services.<name>` processes, and Envoy in front of them.

Placement on this 2-core machine: the service under test gets core 0 (`SERVICE_CPUS`),
everything else (the load generator, Envoy, PostgreSQL, Redis, the other services) core 1
(`OTHER_CPUS`). Pinning is per thread (/proc/<pid>/task), so a process can be moved between
scenarios without a restart, and threads it starts later inherit the placement.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from etax_platform import topology
from etax_platform.certs import ensure_certificates
from etax_platform.pii import Keyring
from tests.harness.gateway import RunningGateway, running_gateway
from tests.harness.processes import ServiceProcess
from tests.harness.servers import PostgresServer, free_port, postgres_server, redis_server

SERVICES = topology.GRPC_SERVICES
Configuration = Literal["production", "embedded"]

_ALL = frozenset(os.sched_getaffinity(0))
SERVICE_CPUS = frozenset({min(_ALL)})
OTHER_CPUS = frozenset(_ALL - SERVICE_CPUS) or _ALL
ALL_CPUS = _ALL


def _threads(pid: int) -> list[int]:
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except FileNotFoundError:
        return []


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def pin(pid: int, cpus: frozenset[int], *, tree: bool = False) -> None:
    """Every thread of the process (and of its descendants with tree=True) onto cpus."""
    for tid in _threads(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)
    if tree:
        for child in _children(pid):
            pin(child, cpus, tree=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids_of(name: str) -> list[int]:
    """Processes whose command is `name` (PostgreSQL and Redis started by the harness)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
    return pids


@dataclass
class Platform:
    configuration: Configuration
    workdir: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    gateway: RunningGateway | None = None
    database_pids: list[int] = field(default_factory=list)
    # The environment every service process got (a profiled replica gets the same).
    env: dict[str, str] = field(default_factory=dict)
    # Replicas started after the platform (scaling scenarios): separate processes
    # sharing the stores, each on a port of its own.
    replicas: list[ServiceProcess] = field(default_factory=list)
    postgres: PostgresServer | None = None

    def address(self, service: str) -> str:
        return self.services[service].address

    def pid(self, service: str) -> int:
        return self.services[service].process.pid

    def replica(self, service: str) -> ServiceProcess:
        """Another process of `service` (stopped with the platform)."""
        process = ServiceProcess(
            service,
            self.env,
            self.workdir / f"{service}-replica-{len(self.replicas) + 1}.log",
        )
        self.replicas.append(process)
        process.wait_serving()
        return process

    def stop_replicas(self) -> None:
        for process in self.replicas:
            process.terminate()
        self.replicas.clear()

    def place(self, under_test: str | None) -> None:
        """The service under test onto the service core and every other process of the
        platform onto the other cores; None: every process on every core."""
        rest = ALL_CPUS if under_test is None else OTHER_CPUS
        for name, process in self.services.items():
            pin(process.process.pid, SERVICE_CPUS if name == under_test else rest)
        for process in self.replicas:
            pin(process.process.pid, rest)
        if self.gateway is not None and self.gateway.envoy.process is not None:
            pin(self.gateway.envoy.process.pid, rest)
        for pid in self.database_pids:
            pin(pid, rest, tree=True)

    def set_aside(self) -> None:
        """Every process onto the other cores, while something else is measured on the
        service core."""
        self.place("")

    def place_beside(self, running: Iterable[Platform], under_test: str | None) -> None:
        """As `place`, with the other platforms running at the same time set aside."""
        for other in running:
            if other is not self:
                other.set_aside()
        self.place(under_test)

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.log()[-3000:]}" for name, p in self.services.items())


@contextlib.contextmanager
def running_platform(
    workdir: Path,
    configuration: Configuration = "production",
    *,
    gateway_overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    postgres_settings: dict[str, str] | None = None,
) -> Iterator[Platform]:
    """Starts the stores, the four services and Envoy; stops them all on the way out.

    env: more environment for every service process (ETAX_METRICS_ENABLED, ETAX_OTEL_...);
    postgres_settings: more PostgreSQL server settings (bench-size's shared_buffers)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        platform = Platform(configuration, workdir)
        keys = Keyring.generate().dump()
        extra_env = env or {}
        env = {
            **extra_env,
            "ETAX_DATA_DIR": str(workdir / "data"),
            "ETAX_PII_KEYS": keys["keys"],
            "ETAX_PII_ACTIVE_KEY_ID": keys["active_key_id"],
            "ETAX_PII_INDEX_KEY": keys["index_key"],
            # Binding's own blind-index keys, named so the bulk loader (bench/bulk.py) can
            # compute binding's indexes too.
            "ETAX_BINDING_INDEX_KEYS": f"b1:{base64.b64encode(os.urandom(32)).decode()}",
            "ETAX_BINDING_INDEX_ACTIVE_KEY_ID": "b1",
            # The development outbox stands in for the phone (login codes are read there).
            "ETAX_SMS_OUTBOX_ENABLED": "true",
        }
        if configuration == "production":
            env["ETAX_KV_URL"] = redis_url = stack.enter_context(redis_server())
            postgres = stack.enter_context(postgres_server(postgres_settings))
            platform.postgres = postgres
            for service in (s for s in topology.SERVICES.values() if s.database):
                env[f"{service.env_prefix}DATABASE_URL"] = postgres.url(postgres.create_database())
            redis_port = f":{urlsplit(redis_url).port}"
            platform.database_pids = [
                pid for pid in _pids_of("redis-server") if redis_port in _cmdline(pid)
            ] + [pid for pid in _pids_of("postgres") if str(postgres.workdir) in _cmdline(pid)]
        ports = {service: free_port() for service in SERVICES}
        targets = {service: f"127.0.0.1:{port}" for service, port in ports.items()}
        env |= topology.target_env({name: [target] for name, target in targets.items()})
        platform.env = env
        stack.callback(platform.stop_replicas)
        for service in SERVICES:
            process = ServiceProcess(service, env, workdir / f"{service}.log", port=ports[service])
            stack.callback(process.terminate)
            platform.services[service] = process
        for process in platform.services.values():
            process.wait_serving()
        certificates = ensure_certificates(workdir / "certs")
        platform.gateway = stack.enter_context(
            running_gateway(
                targets,
                workdir=workdir / "gateway",
                certificates=certificates,
                **(gateway_overrides or {}),
            )
        )
        yield platform


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
