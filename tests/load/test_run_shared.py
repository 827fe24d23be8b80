"""`make run-shared` as a person starts it (`python -m etax_platform.launch --shared`), with
every port moved by its variable: a local Redis with an append-only file and PostgreSQL
under the shared directory, two replicas of each service behind both provinces' gateways;
SIGTERM stops everything it started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from etax_platform import topology
from etax_platform.settings import REPO_ROOT
from tests.harness.gateway import wait_until
from tests.harness.servers import free_port, free_ports_apart

# A dozen Python processes start on a machine that may be busy: generous waits.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def moved_ports() -> dict[str, str]:
    env = {
        service.port_variable: str(free_ports_apart(2, topology.REPLICA_PORT_STEP))
        for service in topology.SERVICES.values()
        if service.name != "web"
    }
    env["ETAX_WEB_PORT"] = str(free_ports_apart(2, 1))
    for name in ("PUBLIC", "INTERNAL", "ADMIN"):
        env[f"ETAX_GATEWAY_{name}_PORT"] = str(free_ports_apart(2, 1))
    env["ETAX_SHARED_REDIS_PORT"] = str(free_port())
    env["ETAX_SHARED_POSTGRES_PORT"] = str(free_port())
    # Envoy's shared memory: distinct from a developer's `make run-shared` (37, 11).
    env["ETAX_GATEWAY_BASE_ID"] = str(free_ports_apart(2, 1) % 60000)
    return env


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """Where the stores keep their data: a directory the `postgres` user can reach (as
    var/shared/ is; pytest's own directories are private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="etax-shared-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def shared(
    tmp_path: Path, shared_dir: Path, moved_ports: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ETAX_")},
        **moved_ports,
        "ETAX_SHARED_DIR": str(shared_dir),
        "ETAX_GATEWAY_OUTPUT_DIR": str(tmp_path / "envoy"),
    }
    log = (tmp_path / "launch.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "etax_platform.launch", "--shared", "--replicas", "2"],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _keys(public_port: str) -> bool:
    try:
        response = httpx.get(f"http://127.0.0.1:{public_port}/v1/auth/keys", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and bool(response.json().get("keys"))


def _healthy_hosts(admin_port: int, cluster: str) -> int:
    text = httpx.get(f"http://127.0.0.1:{admin_port}/clusters", timeout=2).text
    return sum(
        1
        for line in text.splitlines()
        if line.startswith(f"{cluster}::") and line.endswith("::health_flags::healthy")
    )


def test_make_run_shared_starts_replicas_behind_two_provinces_and_stops_them(
    shared: subprocess.Popen[bytes], moved_ports: dict[str, str], shared_dir: Path
) -> None:
    public = int(moved_ports["ETAX_GATEWAY_PUBLIC_PORT"])
    admin = int(moved_ports["ETAX_GATEWAY_ADMIN_PORT"])
    for index in (0, 1):  # province 37, then 11
        wait_until(lambda i=index: _keys(str(public + i)), "auth's keys", 180)  # type: ignore[misc]
        for name in topology.GRPC_SERVICES:
            wait_until(
                lambda i=index, n=name: _healthy_hosts(admin + i, n) == 2,  # type: ignore[misc]
                f"two healthy {name} replicas behind gateway {index}",
                90,
            )
        # The web service starts beside the others; its cluster is health-checked by GET.
        wait_until(
            lambda i=index: _healthy_hosts(admin + i, "web") >= 1,  # type: ignore[misc]
            f"a healthy web service behind gateway {index}",
            90,
        )
        page = httpx.get(f"http://127.0.0.1:{public + index}/", timeout=5)
        assert page.status_code == 200  # the web pages of that province
    assert shared.poll() is None
    # Redis keeps an append-only file under the shared directory; PostgreSQL its data.
    assert list((shared_dir / "redis").glob("appendonly*"))
    assert (shared_dir / "postgres" / "data" / "PG_VERSION").exists()
    shared.send_signal(signal.SIGTERM)
    assert shared.wait(timeout=60) == 0
    # Nothing it started still listens.
    ports = [int(v) for k, v in moved_ports.items() if k.endswith("_PORT")]
    assert not [p for p in ports if _listening(p)]
