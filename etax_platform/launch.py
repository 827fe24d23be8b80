"""`make run`: every service on the embedded default and the Envoy gateway in front of
them (the web pages at http://localhost:8080/), until Ctrl-C or SIGTERM. Each process
serves its Prometheus metrics on its own port (`make observe` shows them).

Each service runs in its own process (`python -m services.<name>`), the gateway in one
more (`python -m etax_platform.gateway run`); a process that dies brings the others down,
so a broken start is obvious instead of half-working. The gateway stops first, so it
drains before its upstreams go away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

SERVICES = ("sms", "face", "binding", "auth", "web")
REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    # The development outbox lets a local user read the codes "sent" to their phone, and
    # the web pages' APP simulator (/dev/app/) stands in for the tax APP. The web service
    # calls the gateway from loopback for every browser: the gateway believes the client
    # address it forwards (flood guards count per browser, not per web service).
    # The gateway's access log goes to a file, so the console shows the services' own
    # lines (text at a terminal, JSON otherwise: ETAX_LOG_FORMAT); ETAX_GATEWAY_ACCESS_LOG
    # set to a path moves it, set empty puts it back on the console.
    access_log = REPO / "var" / "gateway-access.log"
    access_log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "ETAX_SMS_OUTBOX_ENABLED": "true",
        "ETAX_WEB_APP_SIMULATOR_ENABLED": "true",
        "ETAX_GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
        "ETAX_GATEWAY_ACCESS_LOG": str(access_log),
        **os.environ,
    }
    if env["ETAX_GATEWAY_ACCESS_LOG"]:
        print(
            f"gateway access log: {env['ETAX_GATEWAY_ACCESS_LOG']}; metrics: `make observe`",
            file=sys.stderr,
        )
    commands = {
        name: [sys.executable, "-m", f"services.{name}"]
        for name in SERVICES
        if (REPO / "services" / name / "__main__.py").exists()
    }
    commands["gateway"] = [sys.executable, "-m", "etax_platform.gateway", "run"]
    processes = {
        name: subprocess.Popen(command, env=env)  # noqa: S603 - our own modules
        for name, command in commands.items()
    }
    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"{name} exited with {process.returncode}; stopping", file=sys.stderr)
                exit_code = process.returncode or 1
                stopping = True
        time.sleep(0.2)
    _terminate([processes.pop("gateway")])
    _terminate(list(processes.values()))
    return exit_code


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    sys.exit(main())
