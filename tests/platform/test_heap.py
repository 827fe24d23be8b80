"""The collector's settings of a service process (etax_platform.heap)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from etax_platform.heap import YOUNG_THRESHOLD, settle_after_start
from etax_platform.settings import REPO_ROOT

# A server in its own process: once serving, it prints its collector's state and
# signals itself to stop, as a service's main does on SIGTERM.
_SERVE_AND_REPORT = """
import gc, os, signal, threading
from etax_platform.server import GrpcHost

def report():
    print(gc.get_freeze_count(), *gc.get_threshold(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

host = GrpcHost([], port=0)
original = host.start
def start():
    original()
    threading.Timer(0.2, report).start()
    return host
host.start = start
host.serve_until_signalled()
print("stopped", flush=True)
"""


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_settling_freezes_the_start_up_heap_and_widens_only_the_young_generation() -> None:
    _, middle, oldest = gc.get_threshold()
    gc.unfreeze()
    built_at_start = [{"held": n} for n in range(1000)]
    settle_after_start()
    assert gc.get_freeze_count() >= len(built_at_start)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, oldest)


def test_a_service_process_settles_its_heap_once_serving_and_still_stops_on_sigterm() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_AND_REPORT],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    frozen, young, middle, oldest = (int(v) for v in result.stdout.split()[:4])
    assert frozen > 10_000  # modules, descriptors, the server: everything built at start
    assert (young, middle, oldest) == (YOUNG_THRESHOLD, 10, 10)
    assert result.stdout.split()[-1] == "stopped"
