"""`make run` and `make run-shared`: the services, the Envoy gateway and the web pages as
processes on this machine, until Ctrl-C or SIGTERM.

- `make run` (`python -m etax_platform.launch`): the embedded default, one process per
  service (SQLite files under var/, each service's in-process store), one gateway (the
  web pages at http://localhost:8080/).
- `make run-shared` (`python -m etax_platform.launch --shared`): the shared-store
  configuration the replica tests run: a local Redis (append-only file, fsync every
  second) and PostgreSQL under var/shared/, N replicas of each service (default one per
  core) as separate upstream hosts of every gateway, and a gateway per province (37 and
  11 by default) with its own web service. A replica that exits is started again, as an
  orchestrator would; kill one to watch the others carry on.

Each process serves its Prometheus metrics on its own port (the topology's, + 100 per
replica; `make observe` scrapes them). `make run` writes the gateway's access log to
var/gateway-access.log (ETAX_GATEWAY_ACCESS_LOG; set empty: Envoy's stdout), so the
console shows the services' own lines (text at a terminal: ETAX_LOG_FORMAT).

Every name, port and target comes from the topology table (etax_platform.topology). A
variable set in the environment wins over what the launcher derives (ETAX_AUTH_PORT moves
auth and every target and gateway address that names it; replica i listens on that port
+ 100 * i); a process that dies at start brings the others down, so a broken start is
obvious instead of half-working. The gateways stop first, so they drain before their
upstreams go away.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from etax_platform import local_stores, topology

REPO = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO / "var" / "shared"
ACCESS_LOG = REPO / "var" / "gateway-access.log"
# A replica that exits sooner than this after its start stops everything (a broken start).
_BROKEN_START_SECONDS = 10.0

# The development outbox lets a local user read the codes "sent" to their phone, and the
# web pages' APP simulator (/dev/app/) stands in for the tax APP. The web service calls the
# gateway from loopback for every browser: the gateway believes the client address it
# forwards (flood guards count per browser, not per web service).
DEVELOPMENT = {
    "ETAX_SMS_OUTBOX_ENABLED": "true",
    "ETAX_WEB_APP_SIMULATOR_ENABLED": "true",
    "ETAX_GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
}


@dataclass
class Process:
    name: str
    command: list[str]
    env: dict[str, str]
    # Started again when it exits (the shared configuration's service replicas).
    restart: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0

    def start(self) -> None:
        self.popen = subprocess.Popen(self.command, env=self.env, cwd=REPO)  # noqa: S603
        self.started_at = time.monotonic()


def _int(environ: Mapping[str, str], variable: str, default: int) -> int:
    value = environ.get(variable, "").strip()
    return int(value) if value else default


def service_addresses(environ: Mapping[str, str], replicas: int) -> dict[str, list[str]]:
    """The replicas' addresses of each gRPC service: its port (ETAX_<NAME>_PORT or the
    topology's) + 100 * i, on loopback."""
    found = {}
    for name in topology.GRPC_SERVICES:
        service = topology.SERVICES[name]
        base = _int(environ, service.port_variable, service.port)
        found[name] = [
            topology.address(service.replica_port(i, base=base)) for i in range(replicas)
        ]
    return found


def _python(module: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", module, *arguments]


def plan(
    environ: Mapping[str, str],
    *,
    replicas: int = 1,
    provinces: Sequence[str] = (topology.PROVINCE,),
    restart_replicas: bool = False,
) -> list[Process]:
    """Every process of the configuration, with its environment: the replicas of each
    gRPC service, then per province a web service and a gateway in front of them all."""
    addresses = service_addresses(environ, replicas)
    derived = {**topology.target_env(addresses), **topology.gateway_env(addresses)}
    # Explicit variables win over derived ones; each process then gets its own port.
    common = {**DEVELOPMENT, **derived, **environ}
    processes = []
    for name in topology.GRPC_SERVICES:
        service = topology.SERVICES[name]
        for replica, target in enumerate(addresses[name]):
            port = target.rpartition(":")[2]
            env = {**common, service.port_variable: port}
            if service.metrics_port_variable in environ or replica:
                metrics = _int(environ, service.metrics_port_variable, service.metrics_port)
                env[service.metrics_port_variable] = str(
                    service.replica_metrics_port(replica, base=metrics)
                )
            label = name if replicas == 1 else f"{name}-{replica + 1}"
            processes.append(Process(label, _python(service.module), env, restart_replicas))
    web = topology.SERVICES["web"]
    web_base = _int(environ, web.port_variable, web.port)
    web_metrics = _int(environ, web.metrics_port_variable, web.metrics_port)
    ports = topology.GatewayPorts(
        _int(environ, "ETAX_GATEWAY_PUBLIC_PORT", topology.GATEWAY_PORTS.public),
        _int(environ, "ETAX_GATEWAY_INTERNAL_PORT", topology.GATEWAY_PORTS.internal),
        _int(environ, "ETAX_GATEWAY_ADMIN_PORT", topology.GATEWAY_PORTS.admin),
    )
    for index, province in enumerate(provinces):
        public = ports.public + index
        web_address = topology.address(web_base + index)

        def keep(variable: str, value: str, index: int = index) -> str:
            # The first gateway keeps an address set explicitly; the others derive theirs.
            return environ[variable] if index == 0 and variable in environ else value

        web_env = {
            **common,
            web.port_variable: str(web_base + index),
            # Each province's web service has an exporter of its own.
            web.metrics_port_variable: str(web_metrics + index),
            web.target_variable("gateway_target"): keep(
                web.target_variable("gateway_target"), topology.address(public)
            ),
        }
        gateway_env = {
            **common,
            "ETAX_GATEWAY_PROVINCE": province,
            "ETAX_GATEWAY_PUBLIC_PORT": str(public),
            "ETAX_GATEWAY_INTERNAL_PORT": str(ports.internal + index),
            "ETAX_GATEWAY_ADMIN_PORT": str(ports.admin + index),
            "ETAX_GATEWAY_WEB_ADDRESS": keep("ETAX_GATEWAY_WEB_ADDRESS", web_address),
        }
        if "ETAX_GATEWAY_BASE_ID" in environ:
            gateway_env["ETAX_GATEWAY_BASE_ID"] = str(int(environ["ETAX_GATEWAY_BASE_ID"]) + index)
        suffix = "" if len(provinces) == 1 else f"-{province}"
        processes.append(Process(f"web{suffix}", _python(web.module), web_env))
        processes.append(
            Process(f"gateway{suffix}", _python("etax_platform.gateway", "run"), gateway_env)
        )
    return processes


@contextlib.contextmanager
def shared_stores(environ: Mapping[str, str], replicas: int) -> Iterator[dict[str, str]]:
    """The variables of the shared configuration: a local Redis and PostgreSQL under
    var/shared/ (unless ETAX_KV_URL or the database URLs name others), the shared data
    directory, modest pools. Variables already set are left alone."""
    directory = Path(environ.get("ETAX_SHARED_DIR", "") or SHARED_DIR)
    env = {"ETAX_DATA_DIR": str(directory / "data")}
    databases = [s for s in topology.SERVICES.values() if s.database]
    # Argon2id: one hashing thread per core across the auth replicas.
    cores = len(os.sched_getaffinity(0))
    env["ETAX_AUTH_HASH_WORKERS"] = str(max(1, cores // replicas))
    for service in databases:
        env[f"{service.env_prefix}DB_POOL_SIZE"] = "4"
    with contextlib.ExitStack() as stack:
        if not environ.get("ETAX_KV_URL"):
            port = _int(environ, "ETAX_SHARED_REDIS_PORT", topology.REDIS_PORT)
            env["ETAX_KV_URL"] = stack.enter_context(local_stores.redis(directory / "redis", port))
        missing = [s for s in databases if not environ.get(f"{s.env_prefix}DATABASE_URL")]
        if missing:
            port = _int(environ, "ETAX_SHARED_POSTGRES_PORT", topology.POSTGRES_PORT)
            # Every replica may open max_workers + 8 connections (pool and overflow) in
            # each of its two pools (units of work, hot statements), and keeps them for ten
            # idle minutes.
            per_replica = _int(environ, "ETAX_SHARED_CONNECTIONS_PER_REPLICA", 2 * 72)
            server = stack.enter_context(
                local_stores.postgres(
                    directory / "postgres", port, len(databases) * replicas * per_replica + 10
                )
            )
            for service in missing:
                name = f"etax_{service.name}"
                server.ensure_database(name)
                env[f"{service.env_prefix}DATABASE_URL"] = server.url(name)
        yield env


def supervise(processes: list[Process]) -> int:
    """Runs the processes until a signal or a failure; the gateways stop first."""
    for process in processes:
        process.start()
    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 0
    while not stopping:
        for process in processes:
            assert process.popen is not None
            code = process.popen.poll()
            if code is None:
                continue
            early = time.monotonic() - process.started_at < _BROKEN_START_SECONDS
            if process.restart and not early:
                print(f"{process.name} exited with {code}; starting it again", file=sys.stderr)
                process.start()
                continue
            print(f"{process.name} exited with {code}; stopping", file=sys.stderr)
            exit_code = code or 1
            stopping = True
            break
        time.sleep(0.2)
    gateways = [p for p in processes if p.name.startswith("gateway")]
    _terminate(gateways)
    _terminate([p for p in processes if p not in gateways])
    return exit_code


def _terminate(processes: list[Process]) -> None:
    running = [p.popen for p in processes if p.popen is not None and p.popen.poll() is None]
    for popen in running:
        popen.terminate()
    for popen in running:
        try:
            popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            popen.kill()


def describe(processes: list[Process]) -> str:
    """What is where, for the person who started it."""
    lines = []
    for process in processes:
        env = process.env
        if process.name.startswith("gateway"):
            public = env["ETAX_GATEWAY_PUBLIC_PORT"]
            lines.append(
                f"  {process.name:<12} province {env['ETAX_GATEWAY_PROVINCE']}: "
                f"http://127.0.0.1:{public}/ (internal mTLS :{env['ETAX_GATEWAY_INTERNAL_PORT']}, "
                f"admin :{env['ETAX_GATEWAY_ADMIN_PORT']})"
            )
        else:
            service = topology.SERVICES[process.name.split("-")[0]]
            lines.append(f"  {process.name:<12} 127.0.0.1:{env[service.port_variable]}")
    return "\n".join(lines)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m etax_platform.launch")
    parser.add_argument(
        "--shared", action="store_true", help="shared Redis and PostgreSQL, replicas, provinces"
    )
    parser.add_argument(
        "--replicas", type=int, help="processes per service (--shared; default: one per core)"
    )
    parser.add_argument(
        "--provinces", help="comma-separated, a gateway each (--shared; default: 37,11)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    environ = dict(os.environ)
    if not args.shared:
        province = environ.get("ETAX_GATEWAY_PROVINCE", topology.PROVINCE)
        access_log = environ.setdefault("ETAX_GATEWAY_ACCESS_LOG", str(ACCESS_LOG))
        if access_log:
            Path(access_log).parent.mkdir(parents=True, exist_ok=True)
            print(f"gateway access log: {access_log}; metrics: `make observe`", file=sys.stderr)
        return supervise(plan(environ, provinces=[province]))
    replicas = args.replicas or len(os.sched_getaffinity(0))
    if replicas < 1:
        print("--replicas must be at least 1", file=sys.stderr)
        return 2
    provinces = [p.strip() for p in (args.provinces or "37,11").split(",") if p.strip()]
    try:
        with shared_stores(environ, replicas) as shared:
            processes = plan(
                {**shared, **environ},
                replicas=replicas,
                provinces=provinces,
                restart_replicas=True,
            )
            env = processes[0].env
            print(
                f"shared configuration: {replicas} replica(s) per service; key-value store "
                f"{env['ETAX_KV_URL']}; data under {env['ETAX_DATA_DIR']}\n" + describe(processes),
                flush=True,
            )
            return supervise(processes)
    except local_stores.StoreError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
