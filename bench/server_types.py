"""Which gRPC server type costs less CPU per unary call on this machine?

Starts an echo server of each type pinned to core 0, drives it from client processes
pinned to core 1, and reports the server's CPU time per call (from /proc), so the answer
does not depend on how fast the client is. Usage: python -m bench.server_types [calls]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import grpc

from bench.echo_server import METHOD
from tests.harness.servers import free_port

CLIENT_PROCESSES = 4
IN_FLIGHT_PER_PROCESS = 16


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: PTH123, SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drive(address: str, calls: int) -> int:
    with grpc.insecure_channel(address) as channel:
        echo = channel.unary_unary(METHOD)
        pending = []
        for _ in range(calls):
            pending.append(echo.future(b"x" * 32))
            if len(pending) >= IN_FLIGHT_PER_PROCESS:
                pending.pop(0).result()
        for future in pending:
            future.result()
    return calls


def measure(kind: str, calls: int) -> tuple[float, float]:
    """(server CPU microseconds per call, calls per second) for one server type."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen(  # noqa: S603 - fixed command, taskset from PATH
        ["taskset", "-c", "0", sys.executable, "-m", "bench.echo_server", kind, str(port)],  # noqa: S607
    )
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        _drive(address, 500)  # warm up
        cpu_before, started = _cpu_seconds(server.pid), time.perf_counter()
        with ProcessPoolExecutor(
            CLIENT_PROCESSES, initializer=os.sched_setaffinity, initargs=(0, {1})
        ) as pool:
            share = calls // CLIENT_PROCESSES
            total = sum(pool.map(_drive, [address] * CLIENT_PROCESSES, [share] * CLIENT_PROCESSES))
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(server.pid) - cpu_before
        return cpu / total * 1e6, total / elapsed
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    print(f"{'server':10} {'CPU µs/call':>12} {'calls/s':>10}")
    for kind in ("sync", "aio", "platform"):
        cpu_per_call, rate = measure(kind, calls)
        print(f"{kind:10} {cpu_per_call:12.0f} {rate:10.0f}")


if __name__ == "__main__":
    main()
