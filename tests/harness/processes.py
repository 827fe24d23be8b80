"""Services as real processes (`python -m services.<name>`), as `make run` starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from etax_platform import topology
from tests.harness.servers import free_port

REPO = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One replica: started at once, on `port` (chosen beforehand, so services that call
    each other know their targets) or a free one; it can be killed and started again on
    the same port, its output appended to the same log."""

    def __init__(
        self, service: str, env: dict[str, str], log_path: Path, port: int | None = None
    ) -> None:
        self.service = service
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Its Prometheus exporter: a port of its own, never make run's default.
        self.metrics_port = free_port()
        self.log_path = log_path
        self._env = {
            **os.environ,
            **env,
            topology.service(service).port_variable: str(self.port),
            topology.service(service).metrics_port_variable: str(self.metrics_port),
            "PYTHONPATH": str(REPO),
        }
        self._log = log_path.open("ab")
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", topology.service(self.service).module],
            env=self._env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def kill(self) -> None:
        """SIGKILL, as a crash: no drain, calls in flight are cut."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def start_again(self) -> None:
        """A new process on the same port and environment, after kill() or terminate()."""
        if self.process.poll() is None:
            raise RuntimeError(f"{self.service} on {self.address} is still running")
        if self._log.closed:
            self._log = self.log_path.open("ab")
        self.process = self._spawn()

    def wait_serving(self, service_name: str | None = None, timeout: float = 30) -> None:
        """Until the health service answers SERVING for `service_name` (default: the name
        the topology health-checks)."""
        if service_name is None:
            service_name = topology.service(self.service).health
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.service} exited: {self.log()}")
                try:
                    response = stub.Check(
                        health_pb2.HealthCheckRequest(service=service_name), timeout=1
                    )
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"{self.service} did not become SERVING: {self.log()}")

    def terminate(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")
