"""`python -m etax_platform.gateway run`: what `make run` starts beside the services."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from etax_platform.certs import CertificatePaths
from etax_platform.settings import REPO_ROOT
from tests.gateway.upstreams import Upstreams
from tests.harness.gateway import wait_until
from tests.harness.servers import free_port


def _ready(admin_port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_run_serves_until_sigterm_then_stops_envoy(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    public, internal, admin = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "ETAX_GATEWAY_PUBLIC_PORT": str(public),
        "ETAX_GATEWAY_INTERNAL_PORT": str(internal),
        "ETAX_GATEWAY_ADMIN_PORT": str(admin),
        "ETAX_GATEWAY_BASE_ID": str(admin),  # unique on this machine while the port is ours
        "ETAX_GATEWAY_CERTS_DIR": str(gateway_certs.directory),
        "ETAX_GATEWAY_OUTPUT_DIR": str(tmp_path),
        "ETAX_GATEWAY_ACCESS_LOG": str(tmp_path / "access.log"),
        **{f"ETAX_GATEWAY_{n.upper()}_ADDRESS": a for n, a in upstreams.addresses.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "etax_platform.gateway", "run"], cwd=REPO_ROOT, env=env
    )
    try:
        wait_until(lambda: _ready(admin), "gateway ready", timeout=30)
        response = httpx.get(f"http://127.0.0.1:{public}/v1/auth/keys", timeout=5)
        assert response.status_code == 200
        assert (tmp_path / f"gateway-37-{public}" / "envoy.yaml").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        # Envoy went with it: its ports are closed.
        for port in (public, internal, admin):
            assert _port_free(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
