"""`make run`: every service on the embedded default, until Ctrl-C or SIGTERM.

Each service runs in its own process (`python -m services.<name>`); a process that dies
brings the others down, so a broken start is obvious instead of half-working.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

SERVICES = ("sms", "face", "binding", "auth")
REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    # The development outbox lets a local user read the codes "sent" to their phone.
    env = {"ETAX_SMS_OUTBOX_ENABLED": "true", **os.environ}
    processes = {
        name: subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env)  # noqa: S603
        for name in SERVICES
        if (REPO / "services" / name / "__main__.py").exists()
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
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for process in processes.values():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
