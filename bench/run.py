"""`make bench`: one fixed scenario set on this machine, each figure beside its ceilings
measured in the same run; writes bench/report.md, bench/charts/*.png and
bench/results.json.

    python -m bench.run [--config production|embedded] [--seconds 8] [--note TEXT]
    python -m bench.run --report-only      # the report again from bench/results.json
    python -m bench.run --persons 1000000  # the size comparison instead (bench/size.py):
                                           # bench/size-report.md, bench/size-results.json

Ceilings: the bare and the platform echo server; the fair ceilings of RPCs that must
reach a store or another service, the platform echo plus exactly one Redis script, one
prepared PostgreSQL statement or one gRPC call through the services' own clients
(bench/echo_server.py); the raw Argon2id rate for login step 1.

Every scenario must succeed completely (every call OK), or the run stops with an error
and writes no report: a partial report would look like a complete one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as host
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from etax.auth.v1 import auth_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import bulk, ghz
from bench.dataset import (
    PASSWORD,
    Channels,
    LoadData,
    as_json,
    face_tickets,
    legacy_password_hash,
    login_challenges,
    set_up,
)
from bench.platform import (
    ALL_CPUS,
    OTHER_CPUS,
    SERVICE_CPUS,
    Configuration,
    Platform,
    cpu_seconds,
    pin,
    running_platform,
)
from etax_platform import topology
from etax_platform.clock import CST
from etax_platform.settings import REPO_ROOT
from tests.harness.servers import free_port

T = TypeVar("T")

BENCH = REPO_ROOT / "bench"
RESULTS = BENCH / "results.json"
GHZ = REPO_ROOT / "build" / "bin" / "ghz"
# Targets of issue 14: per RPC, the ratio to the platform echo and the fair ceiling it
# is also held to (>= FAIR_RATIO of it), both in CPU per call and in throughput.
TARGETS = {
    "token-refresh": (0.45, "echo-postgres"),
    "identities-list": (0.5, "echo-postgres"),
    "access-check": (0.6, "echo-postgres"),
    "sms-send": (0.5, "echo-redis"),
    "face-get-ticket": (0.6, "echo-redis"),
    "login-complete-sms": (0.2, "echo-grpc"),
}
FAIR_RATIO = 0.8
LOGIN_RATIO = 0.85
LOGIN_ROUNDS = 2  # login-start and the raw rate beside it: raw, login, login, raw
JUDGED_ROUNDS = 2  # a judged RPC and its two ceilings: echo, fair, RPC, RPC, fair, echo
ROUNDS = "rounds"  # the group of the rounds whose sums are compared
SCALING_RATIO = 1.7
GATEWAY_P50_MS = 1.0
# More persons than this: the size comparison (bench/size.py) instead of the main run.
SIZE_THRESHOLD = 10_000
FAIR_CEILINGS = (
    ("echo-redis", "platform-redis", "+ one Redis script (RedisStore.run)"),
    ("echo-postgres", "platform-postgres", "+ one prepared statement (Database.run)"),
    ("echo-grpc", "platform-grpc", "+ one unary gRPC call (clients.Dependency)"),
)
IN_FLIGHT = 50
OVERHEAD_CALLS = 2000
# RefreshSession's single-use tokens per path on PostgreSQL: about as many seconds of calls
# as the other hot RPCs get on this kind of machine (1,500-1,800 refreshes/s).
REFRESH_CALLS = 12_000
# Issue 15: metrics and (disabled) tracing add at most this much CPU per cheap call.
OBSERVABILITY_OVERHEAD = 0.05
OBSERVABILITY_LOADS = ("sms-send direct", "face-get-ticket direct", "access-check direct")
# Rate limits high enough never to refuse a measured call (ETAX_GATEWAY_* defaults 200/100).
UNLIMITED = {
    "login_rate_per_second": 1_000_000,
    "login_burst": 1_000_000,
    "code_rate_per_second": 1_000_000,
    "code_burst": 1_000_000,
}
LOGIN_PENDING = "pending: AuthService (login) is not served on this branch yet"
EMBEDDED_PENDING = "production configuration only (shared PostgreSQL and Redis)"

SERVICE_OF = {
    "etax.sms.v1.SmsService.SendCode": "sms",
    "etax.face.v1.FaceService.GetTicket": "face",
    "etax.binding.v1.InternalBindingService.CheckAccess": "binding",
    "etax.binding.v1.BindingService.ListMyIdentities": "binding",
    "etax.auth.v1.AuthService.RefreshSession": "auth",
    "etax.auth.v1.AuthService.StartLogin": "auth",
    "etax.auth.v1.AuthService.CompleteLoginWithCode": "auth",
}


@dataclass
class Row:
    """One measured figure and what it is compared with."""

    group: str  # ceiling, cheap, login, overhead
    name: str
    rpc: str
    path: str  # direct, gateway public, gateway internal (mTLS), in-process
    placement: str
    count: float = 0
    rps: float = 0
    p50_ms: float = 0
    p90_ms: float = 0
    p99_ms: float = 0
    average_ms: float = 0
    server_cpu_us: float | None = None  # CPU of the process under test per call
    ceiling: str = ""
    ratio: float | None = None  # throughput over the ceiling's
    cpu_ratio: float | None = None  # the ceiling's CPU per call over this one's
    fair: str = ""  # the fair ceiling (echo + the one store call or hop it must make)
    fair_ratio: float | None = None
    fair_cpu_ratio: float | None = None
    target: str = ""
    met: bool | None = None
    pending: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    seconds: float
    workdir: Path
    log: Callable[[str], None]
    rows: list[Row] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    @property
    def duration(self) -> str:
        return f"{self.seconds:g}s"

    def measure(
        self,
        load: ghz.Load,
        *,
        group: str,
        path: str,
        placement: str,
        pid: int | None,
        client_cpus: frozenset[int],
    ) -> Row:
        """Runs a ghz load and records it, with the CPU the process `pid` spent per call."""
        warm_up(load, self.workdir, client_cpus)
        self.log(f"{load.name}: {path}, {load.concurrency} in flight")
        before = cpu_seconds(pid) if pid else 0.0
        report = ghz.run(GHZ, load, self.workdir / "ghz", client_cpus)
        row = Row(group, load.name, load.call, path, placement)
        for key, value in ghz.summarize(report).items():
            setattr(row, key, value)
        if pid:
            # skipFirst calls are served but not counted: count them for the CPU too.
            row.server_cpu_us = (cpu_seconds(pid) - before) / (row.count + load.skip_first) * 1e6
        self.rows.append(row)
        self.log(
            f"  {row.rps:,.0f}/s p50 {row.p50_ms:.2f} p90 {row.p90_ms:.2f} "
            f"p99 {row.p99_ms:.2f} ms"
            + (f", server {row.server_cpu_us:.0f} µs CPU/call" if row.server_cpu_us else "")
        )
        return row

    def pending(self, group: str, name: str, rpc: str, path: str, reason: str) -> None:
        self.rows.append(Row(group, name, rpc, path, "", pending=reason))
        self.log(f"{name}: {reason}")


def warm_up(load: ghz.Load, workdir: Path, client_cpus: frozenset[int]) -> None:
    """The load's unmeasured pass (`warm_up_calls`), if it has one: what a long-running
    process holds in memory (binding's document indexes)."""
    if load.warm_up_calls:
        warm = replace(load, duration=None, total=load.warm_up_calls, skip_first=0)
        ghz.run(GHZ, warm, workdir / "ghz-warm-up", client_cpus)


# --- ceilings -----------------------------------------------------------------------------


def argon2_rate(seconds: float, threads: int) -> tuple[float, float, float]:
    """Argon2id verifications per second with `threads` threads (it releases the GIL),
    the mean seconds per hash per thread, and the CPU seconds per hash."""
    encoded = legacy_password_hash()
    stop = threading.Event()
    counts = [0] * threads

    def work(slot: int) -> None:
        while not stop.is_set():
            Argon2id.verify_phc_encoded(PASSWORD.encode(), encoded)
            counts[slot] += 1

    with ThreadPoolExecutor(threads) as pool:
        cpu_before = time.process_time()
        started = time.perf_counter()
        futures = [pool.submit(work, n) for n in range(threads)]
        time.sleep(seconds)
        stop.set()
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
    total = sum(counts)
    return total / elapsed, elapsed * threads / total, cpu / total


@contextlib.contextmanager
def echo_server(
    kind: str,
    workdir: Path,
    *,
    cpus: frozenset[int] = SERVICE_CPUS,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, int]]:
    """bench/echo_server.py of a server type, on the service core by default."""
    port = free_port()
    log = (workdir / f"echo-{kind}-{port}.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our module
        [sys.executable, "-m", "bench.echo_server", kind, str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO_ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # noqa: PLW1509
    )
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        yield address, process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _echo_load(bench: Bench, name: str, address: str) -> ghz.Load:
    return ghz.Load(
        name,
        "bench.Echo.Echo",
        address,
        data={"payload": "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eA=="},
        protoset=ghz.echo_protoset(bench.workdir / "echo.protoset"),
        duration=bench.duration,
        skip_first=200,
    )


def ceilings(bench: Bench) -> None:
    for kind in ("sync", "platform"):
        with echo_server(kind, bench.workdir) as (address, pid):
            bench.measure(
                _echo_load(bench, f"echo-{kind}", address),
                group="ceiling",
                path="direct",
                placement="server core 0, ghz core 1",
                pid=pid,
                client_cpus=OTHER_CPUS,
            )
    raw_hash_rate(bench, "argon2id-raw")


def fair_ceilings(bench: Bench, platform: Platform) -> None:
    """The platform echo plus one store call or hop, against the platform's own Redis and
    PostgreSQL (on the other core, as in the RPC scenarios): what an RPC that must make
    that call could reach at best."""
    if platform.configuration != "production":
        for name, _kind, what in FAIR_CEILINGS:
            bench.pending("fair", name, f"bench.Echo.Echo {what}", "direct", EMBEDDED_PENDING)
        return
    measure_ceilings(bench, platform, [name for name, _kind, _what in FAIR_CEILINGS])


def measure_ceilings(
    bench: Bench, platform: Platform, names: list[str], *, beside: str = ""
) -> list[Row]:
    """Ceilings by name (echo-platform or a fair ceiling), the echo server on the service
    core and every platform process on the other; `beside` names the scenario round they
    are measured with (a row "echo-platform beside sms-send direct (round 1)")."""
    kinds = {name: (kind, what) for name, kind, what in FAIR_CEILINGS}
    kinds["echo-platform"] = ("platform", "(the platform echo)")
    rows = []
    with contextlib.ExitStack() as stack:
        env = {
            "ETAX_BENCH_REDIS_URL": platform.env["ETAX_KV_URL"],
            "ETAX_BENCH_DATABASE_URL": platform.env["ETAX_BINDING_DATABASE_URL"],
        }
        if any(kinds[name][0] == "platform-grpc" for name in names):
            # The hop's far end runs on the other core, as sms, face and binding do for auth.
            far_end = echo_server("sync", bench.workdir, cpus=OTHER_CPUS)
            env["ETAX_BENCH_DOWNSTREAM"], _pid = stack.enter_context(far_end)
        platform.set_aside()
        for name in names:
            kind, what = kinds[name]
            label = f"{name} beside {beside}" if beside else name
            with echo_server(kind, bench.workdir, env=env) as (address, pid):
                row = bench.measure(
                    _echo_load(bench, label, address),
                    group="fair",
                    path="direct",
                    placement="server core 0; ghz, stores, the hop's far end core 1",
                    pid=pid,
                    client_cpus=OTHER_CPUS,
                )
            row.rpc = f"bench.Echo.Echo {what}"
            rows.append(row)
    return rows


def measured_against_ceilings(
    bench: Bench,
    platform: Platform,
    load: ghz.Load,
    measure: Callable[[ghz.Load], Row],
    *,
    judged: bool,
) -> Row:
    """A scenario and its ratios. A judged one (direct) in rounds alternating with the
    platform echo and its fair ceiling (echo, fair, RPC, RPC, fair, echo; each half as
    long), each side's rounds then summed: this machine's speed drifts by a third within
    one run and changes within a minute (bench/analysis.md), so a ceiling measured minutes
    earlier, or even once just before, is no ceiling for it. The others against the
    ceilings of the run's start."""
    if not (judged and platform.configuration == "production"):
        row = measure(load)
        _rpc_targets(bench, row, judged=judged)
        return row
    fair = TARGETS[load.name.split()[0]][1]
    sides = ["echo-platform", fair, load.name]
    rounds: dict[str, list[Row]] = {side: [] for side in sides}
    groups: dict[str, str] = {}
    seconds = max(1.0, bench.seconds / JUDGED_ROUNDS)  # single-use loads: each its share
    for number, side in alternating(sides, JUDGED_ROUNDS):
        scenario = f"{load.name} (round {number + 1})"
        if side == load.name:
            share = round_load(load, scenario, number, JUDGED_ROUNDS, seconds)
            # What the warm-up pass put in memory (binding's document indexes) stays there.
            row = measure(replace(share, warm_up_calls=0) if number else share)
        else:
            (row,) = measure_ceilings(bench, platform, [side], beside=scenario)
        groups[side] = row.group
        row.group = ROUNDS
        rounds[side].append(row)
    echo, fair_row, row = (
        rounds_together(
            groups[side], side if side == load.name else f"{side} beside {load.name}", rounds[side]
        )
        for side in sides
    )
    bench.rows += [echo, fair_row, row]
    _rpc_targets(bench, row, judged=True, ceilings=[echo, fair_row])
    return row


def raw_hash_rate(bench: Bench, name: str, *, group: str = "ceiling") -> Row:
    """The raw Argon2id rate of every core, one hashing thread per core as auth's pool."""
    threads = len(ALL_CPUS)
    bench.log(f"{name}: {threads} threads")
    rate, seconds_per_hash, cpu_per_hash = argon2_rate(min(bench.seconds, 6.0), threads)
    row = Row(
        group,
        name,
        "cryptography Argon2id.verify_phc_encoded (m=19456 KiB, t=2, p=1)",
        "in-process",
        f"{threads} threads, all cores",
        rps=rate,
        server_cpu_us=cpu_per_hash * 1e6,
        extra={"ms_per_hash_per_core": seconds_per_hash * 1e3},
    )
    bench.rows.append(row)
    bench.log(f"  {rate:.1f} hashes/s ({seconds_per_hash * 1e3:.1f} ms per hash per core)")
    return row


# --- the platform's RPCs ------------------------------------------------------------------


def _tls(platform: Platform) -> dict[str, str]:
    assert platform.gateway is not None
    certs = platform.gateway.certificates
    return {
        "cacert": str(certs.ca_cert),
        "cert": str(certs.client_cert("hall")),
        "key": str(certs.client_key("hall")),
        "cname": "localhost",
    }


def _ratio(row: Row, ceiling: Row, target: float) -> None:
    row.ceiling = ceiling.name
    row.ratio = row.rps / ceiling.rps if ceiling.rps else None
    row.target = f">= {target:g} x {ceiling.name}"
    row.met = row.ratio is not None and row.ratio >= target


def _both(throughput: float | None, cpu: float | None) -> float | None:
    """The lower of a throughput ratio and a CPU ratio: a target holds for both."""
    found = [r for r in (throughput, cpu) if r is not None]
    return min(found) if len(found) == 2 else None


def _rpc_targets(
    bench: Bench, row: Row, *, judged: bool, ceilings: list[Row] | None = None
) -> None:
    """Ratios to the platform echo and to the RPC's fair ceiling (those measured just
    before it when given, else those of the run's start), in throughput and in CPU per
    call; the verdict (direct rows) needs every one of them at its target."""
    base = row.name.split()[0]
    target, fair_name = TARGETS[base]
    if ceilings is not None:
        echo, fair = ceilings
    else:
        echo = bench.row("echo-platform")
        fair = next((r for r in bench.rows if r.name == fair_name and not r.pending), None)
    row.ceiling = echo.name
    row.ratio = row.rps / echo.rps if echo.rps else None
    if row.server_cpu_us and echo.server_cpu_us:
        row.cpu_ratio = echo.server_cpu_us / row.server_cpu_us
    row.extra["vs_echo_sync"] = row.rps / bench.row("echo-sync").rps
    row.fair = fair_name if fair is None else fair.name
    if fair is not None:
        row.fair_ratio = row.rps / fair.rps if fair.rps else None
        if row.server_cpu_us and fair.server_cpu_us:
            row.fair_cpu_ratio = fair.server_cpu_us / row.server_cpu_us
    if not judged:
        return
    row.target = f">= {target:g} x {row.ceiling}, >= {FAIR_RATIO:g} x {row.fair}"
    to_echo, to_fair = _both(row.ratio, row.cpu_ratio), _both(row.fair_ratio, row.fair_cpu_ratio)
    row.met = (
        to_echo is not None and to_fair is not None and to_echo >= target and to_fair >= FAIR_RATIO
    )


def cheap_loads(
    bench: Bench, platform: Platform, data: LoadData, where: str
) -> list[tuple[ghz.Load | None, str]]:
    """The cheap RPCs at 50 in flight, direct to the service or through the gateway."""
    gateway = platform.gateway
    assert gateway is not None
    direct = where == "direct"

    def public(service: str) -> str:
        return platform.address(service) if direct else gateway.public_address

    def internal(service: str) -> str:
        return platform.address(service) if direct else gateway.internal_address

    tls = None if direct else _tls(platform)
    prefix = "135" if direct else "136"  # distinct phones for each run (E2: 5 per phone)
    channels = Channels.direct(platform.address)
    tickets = [as_json(t) for t in face_tickets(channels, 500)]
    channels.close()
    loads: list[tuple[ghz.Load | None, str]] = [
        (
            ghz.Load(
                f"sms-send {where}",
                "etax.sms.v1.SmsService.SendCode",
                public("sms"),
                base="sms-send",
                data={
                    "phone": prefix + "{{printf `%08d` .RequestNumber}}",
                    "purpose": "VERIFICATION_PURPOSE_REGISTRATION",
                },
                duration=bench.duration,
                skip_first=200,
            ),
            "",
        ),
        (
            ghz.Load(
                f"face-get-ticket {where}",
                "etax.face.v1.FaceService.GetTicket",
                public("face"),
                data=tickets,
                duration=bench.duration,
                skip_first=200,
            ),
            "",
        ),
        (
            ghz.Load(
                f"access-check {where}",
                "etax.binding.v1.InternalBindingService.CheckAccess",
                internal("binding"),
                base="access-check",
                data=[as_json(t) for t in data.access_targets],
                tls=tls,
                duration=bench.duration,
                skip_first=200,
                # Binding keeps each person's document index in memory (it never changes),
                # as a long-running process has them all: one pass over the targets first.
                warm_up_calls=len(data.access_targets),
            ),
            "",
        ),
    ]
    if not data.login_available:
        return [
            *loads,
            (None, f"identities-list {where}|etax.binding.v1.BindingService.ListMyIdentities"),
            (None, f"token-refresh {where}|etax.auth.v1.AuthService.RefreshSession"),
        ]
    half = len(data.refresh_tokens) // 2
    tokens = data.refresh_tokens[:half] if direct else data.refresh_tokens[half:]
    return [
        *loads,
        (
            ghz.Load(
                f"identities-list {where}",
                "etax.binding.v1.BindingService.ListMyIdentities",
                public("binding"),
                base="identities-list",
                data={"province": "11"},
                # One person's token: ghz 0.121 takes no list of metadata.
                metadata={"authorization": f"Bearer {data.access_token}"},
                duration=bench.duration,
                skip_first=200,
            ),
            "",
        ),
        (
            ghz.Load(
                f"token-refresh {where}",
                "etax.auth.v1.AuthService.RefreshSession",
                public("auth"),
                base="token-refresh",
                data=[as_json(t) for t in tokens],
                total=len(tokens),
                skip_first=min(200, len(tokens) // 10),
            ),
            "",
        ),
    ]


def refresh_tokens_in_bulk(
    platform: Platform, data: LoadData, count: int
) -> list[auth_pb2.RefreshSessionRequest]:
    """`count` open sessions of the imported persons written into auth's database, each
    with its refresh token (bench/bulk.py): logins would cost a hash and an SMS code each."""
    auth = bulk.Databases.of(platform.env).auth
    tokens = bulk.open_sessions(auth, [p.person_id for p in data.persons], count)
    return [auth_pb2.RefreshSessionRequest(refresh_token=t) for t in tokens]


def cheap(bench: Bench, platform: Platform, data: LoadData) -> None:
    for where in ("direct", "gateway"):
        for load, pending in cheap_loads(bench, platform, data, where):
            if load is None:
                name, rpc = pending.split("|")
                bench.pending("cheap", name, rpc, where, LOGIN_PENDING)
                continue
            service = SERVICE_OF[load.call]
            listener = "internal (mTLS)" if "Internal" in load.call else "public"
            path = "direct" if where == "direct" else f"gateway {listener}"

            def measure(load: ghz.Load = load, service: str = service, path: str = path) -> Row:
                platform.place(service)
                return bench.measure(
                    load,
                    group="cheap",
                    path=path,
                    placement=f"{service} core 0; ghz, Envoy, stores, other services core 1",
                    pid=platform.pid(service),
                    client_cpus=OTHER_CPUS,
                )

            measured_against_ceilings(bench, platform, load, measure, judged=where == "direct")


def overhead(bench: Bench, platform: Platform, data: LoadData) -> None:
    """Gateway overhead: one call at a time, so the p50 difference is Envoy's own latency,
    not queueing."""
    assert platform.gateway is not None
    channels = Channels.direct(platform.address)
    tickets = [as_json(t) for t in face_tickets(channels, 200)]
    channels.close()
    cases = [
        (
            "face-get-ticket",
            "etax.face.v1.FaceService.GetTicket",
            "face",
            tickets,
            platform.gateway.public_address,
            None,
            "gateway public",
        ),
        (
            "access-check",
            "etax.binding.v1.InternalBindingService.CheckAccess",
            "binding",
            [as_json(t) for t in data.access_targets],
            platform.gateway.internal_address,
            _tls(platform),
            "gateway internal (mTLS)",
        ),
    ]
    for name, call, service, requests, gateway_address, tls, path in cases:
        platform.place(service)
        rows = []
        for address, row_path, row_tls in (
            (platform.address(service), "direct", None),
            (gateway_address, path, tls),
        ):
            rows.append(
                bench.measure(
                    ghz.Load(
                        f"{name} 1 in flight {row_path}",
                        call,
                        address,
                        data=requests,
                        tls=row_tls,
                        concurrency=1,
                        connections=1,
                        total=OVERHEAD_CALLS,
                        skip_first=100,
                    ),
                    group="overhead",
                    path=row_path,
                    placement=f"{service} core 0; ghz, Envoy core 1",
                    pid=platform.pid(service),
                    client_cpus=OTHER_CPUS,
                )
            )
        direct, through = rows
        added = through.p50_ms - direct.p50_ms
        through.ceiling = direct.name
        through.target = f"p50 - direct p50 <= {GATEWAY_P50_MS:g} ms"
        through.met = added <= GATEWAY_P50_MS
        through.extra["added_p50_ms"] = added
        through.extra["added_p99_ms"] = through.p99_ms - direct.p99_ms


OBSERVABILITY_ROUNDS = 8  # per state, on two pairs of platforms; the verdict their median
# New phones for each round of sms-send (E2: at most 5 codes per phone in 10 minutes).
_ROUND_PHONE_PREFIXES = ("135", "137", "138", "139", "150", "151", "152", "153")
_METRICS_STATES = {"true": "on", "false": "off"}  # ETAX_METRICS_ENABLED, as named
# The start order of the two platforms of each pair (observability_cost).
_METRICS_ORDERS = (("true", "false"), ("false", "true"))


def alternating(sides: Sequence[T], rounds: int) -> Iterator[tuple[int, T]]:
    """(round, side) in the order a, b, b, a, a, b, ...: a drift that runs steadily through
    the rounds falls on every side alike."""
    for number in range(rounds):
        for side in sides if number % 2 == 0 else reversed(sides):
            yield number, side


def round_load(
    load: ghz.Load, name: str, number: int, rounds: int, seconds: float | None = None
) -> ghz.Load:
    """Round `number` of `rounds` of a load: new phones in each round of SendCode (E2), its
    share of single-use requests (a load of a `total`), `seconds` long if given."""
    changes: dict[str, Any] = {"name": name}
    data = load.data
    if isinstance(data, dict) and "phone" in data:
        changes["data"] = {**data, "phone": _ROUND_PHONE_PREFIXES[number] + data["phone"][3:]}
    if load.total is not None and isinstance(data, list):
        share = data[number::rounds]
        changes |= {"data": share, "total": len(share)}
    if seconds is not None:
        changes["duration"] = f"{seconds:g}s"
    return replace(load, **changes)


def rounds_together(group: str, name: str, rounds: list[Row]) -> Row:
    """One figure of several rounds: calls and CPU summed, the rate of the time they took,
    percentiles the calls-weighted mean of the rounds'."""
    first = rounds[0]
    count = sum(r.count for r in rounds)
    row = Row(group, name, first.rpc, first.path, first.placement, count=count)
    row.rps = count / sum(r.count / r.rps for r in rounds if r.rps)
    for key in ("p50_ms", "p90_ms", "p99_ms", "average_ms"):
        setattr(row, key, sum(getattr(r, key) * r.count for r in rounds) / count)
    if all(r.server_cpu_us for r in rounds):
        row.server_cpu_us = sum((r.server_cpu_us or 0) * r.count for r in rounds) / count
    row.extra["rounds"] = len(rounds)
    return row


def ratios_side_by_side(
    over: list[Row], under: list[Row], value: Callable[[Row], float | None]
) -> list[float]:
    """Round k of `over` over round k of `under`, for every k: rounds that `alternating`
    ran one just after the other (a, b, b, a: a0 beside b0, b1 beside a1), so each ratio
    compares the two sides at one moment of the machine."""
    found = []
    for a, b in zip(over, under, strict=True):
        top, bottom = value(a), value(b)
        if top and bottom:
            found.append(top / bottom)
    return found


def median_ratio(ratios: list[float]) -> float | None:
    """The median of side-by-side ratios. On this machine one round in four or five runs
    a third faster or slower than the one beside it (bench/analysis.md), and summed rounds
    carry such a round into the figure; the median of six or eight pairs does not."""
    return statistics.median(ratios) if ratios else None


def observability_cost(bench: Bench, configuration: Configuration, persons: int) -> None:
    """The cheap RPCs direct to their service, on a platform with metrics on (the default,
    tracing off as by default) and on one started with ETAX_METRICS_ENABLED=false: the
    service's CPU per call with and without (issue 15: at most 5 % more).

    Two platforms run at once (the idle one waits on the other core) and each RPC is
    measured in short rounds on each, in the order a, b, b, a, so the machine's drift
    within a run (a third, bench/analysis.md) falls on both alike. Of two platforms the one
    started first measured up to a tenth more CPU per call (bench/analysis.md), so half
    the rounds run on a pair started on, off and half on a new pair started off, on. The
    verdict is the median of the rounds' side-by-side ratios (on over off, round k beside
    round k), the rows the rounds summed."""
    # The same time in all as two full scenarios per state.
    seconds = max(1.0, 2 * bench.seconds / OBSERVABILITY_ROUNDS)
    half = OBSERVABILITY_ROUNDS // 2
    rounds: dict[str, dict[str, list[Row]]] = {}  # the RPC -> metrics on or off -> rounds
    for pair, order in enumerate(_METRICS_ORDERS):
        with contextlib.ExitStack() as stack:
            platforms = {
                enabled: _metrics_platform(
                    bench, stack, configuration, persons=persons, enabled=enabled, pair=pair
                )
                for enabled in order
            }
            for name in OBSERVABILITY_LOADS:
                base = name.removesuffix(" direct")
                for within, enabled in alternating(order, half):
                    number = pair * half + within
                    platform, loads = platforms[enabled]
                    label = f"{_metrics_label(base, enabled)} (round {number + 1})"
                    load = round_load(loads[name], label, number, OBSERVABILITY_ROUNDS, seconds)
                    service = SERVICE_OF[load.call]
                    platform.place_beside([other for other, _ in platforms.values()], service)
                    rounds.setdefault(base, {}).setdefault(enabled, []).append(
                        bench.measure(
                            load,
                            group=ROUNDS,
                            path="direct",
                            placement=f"{service} core 0; ghz, stores, other services core 1",
                            pid=platform.pid(service),
                            client_cpus=OTHER_CPUS,
                        )
                    )
    for base, states in rounds.items():
        on, off = (
            rounds_together("observability", _metrics_label(base, enabled), states[enabled])
            for enabled in ("true", "false")
        )
        bench.rows += [on, off]
        on.ceiling = off.name
        on.target = f"CPU/call <= {1 + OBSERVABILITY_OVERHEAD:g} x metrics off"
        ratios = ratios_side_by_side(states["true"], states["false"], lambda row: row.server_cpu_us)
        on.extra["cpu_ratios"] = ratios
        on.ratio = median_ratio(ratios)
        if on.ratio is not None:
            on.met = on.ratio <= 1 + OBSERVABILITY_OVERHEAD
        if on.server_cpu_us and off.server_cpu_us:
            on.extra["added_cpu_us"] = on.server_cpu_us - off.server_cpu_us
        bench.log(f"{base}: metrics on/off CPU per call {on.ratio}")


def _metrics_label(base: str, enabled: str) -> str:
    return f"{base} metrics {_METRICS_STATES[enabled]}"


def _metrics_platform(
    bench: Bench,
    stack: contextlib.ExitStack,
    configuration: Configuration,
    *,
    persons: int,
    enabled: str,
    pair: int,
) -> tuple[Platform, dict[str, ghz.Load]]:
    """A platform of the metrics comparison, with ETAX_METRICS_ENABLED=`enabled`, its
    persons set up, and its loads of the RPCs compared."""
    platform = stack.enter_context(
        running_platform(
            bench.workdir / f"platform-metrics-{enabled}-{pair + 1}",
            configuration,
            gateway_overrides=UNLIMITED,
            env={"ETAX_METRICS_ENABLED": enabled},
        )
    )
    channels = Channels.direct(platform.address)
    platform.place(None)
    data = set_up(channels, persons=persons, challenges=0, sessions=0, log=bench.log)
    channels.close()
    loads = {
        load.name: load
        for load, _ in cheap_loads(bench, platform, data, "direct")
        if load is not None and load.name in OBSERVABILITY_LOADS
    }
    return platform, loads


def observability_table(rows: list[Row]) -> str:
    lines = [
        "| scenario | CPU µs/call | calls/s | vs metrics off | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.3f}"
        verdict = "" if row.met is None else ("met" if row.met else "MISSED")
        lines.append(
            f"| {row.name} | {row.server_cpu_us or 0:.0f} | {row.rps:,.0f} | {ratio} | {verdict} |"
        )
    return "\n".join(lines)


def _hash_rates_together(name: str, rounds: list[Row]) -> Row:
    """The raw rate of rounds of the same length: their mean."""
    row = replace(rounds[0], group="ceiling", name=name, extra=dict(rounds[0].extra))
    row.rps = sum(r.rps for r in rounds) / len(rounds)
    row.server_cpu_us = sum(r.server_cpu_us or 0 for r in rounds) / len(rounds)
    row.extra["ms_per_hash_per_core"] = sum(r.extra["ms_per_hash_per_core"] for r in rounds) / len(
        rounds
    )
    row.extra["rounds"] = len(rounds)
    return row


def login_start_load(bench: Bench, data: LoadData, name: str, address: str) -> ghz.Load:
    """Login step 1 by phone and password, round the imported persons."""
    return ghz.Load(
        name,
        "etax.auth.v1.AuthService.StartLogin",
        address,
        base="login-start",
        data={
            "entry": "ENTRY_NATURAL_PERSON",
            "account": "1390000{{printf `%04d` (mod .RequestNumber "
            + str(len(data.persons))
            + ")}}",
            "password": PASSWORD,
            "province": "37",
        },
        duration=bench.duration,
        skip_first=50,
    )


def login(
    bench: Bench, platform: Platform, data: LoadData, challenges: int, *, codes_sent: int
) -> None:
    """codes_sent: login codes the data set-up sent, round the persons (E2: 5 per phone)."""
    assert platform.gateway is not None
    if not data.login_available:
        for name, rpc in (
            ("login-start direct", "etax.auth.v1.AuthService.StartLogin"),
            ("login-start gateway", "etax.auth.v1.AuthService.StartLogin"),
            ("login-complete-sms gateway", "etax.auth.v1.AuthService.CompleteLoginWithCode"),
        ):
            bench.pending("login", name, rpc, "", LOGIN_PENDING)
        return
    # Hashing uses every core, as the raw rate does: nothing is pinned.
    platform.place(None)
    for where, address in (
        ("direct", platform.address("auth")),
        ("gateway", platform.gateway.public_address),
    ):
        # The raw rate beside it, in the order raw, login, login, raw: on a shared machine
        # the rate of the start of the run is no ceiling for a scenario minutes later, and
        # even one measured just before differs by a quarter (bench/analysis.md).
        raws, logins = [], []
        for number, step in alternating(("raw", "login"), LOGIN_ROUNDS):
            suffix = f"login-start {where} (round {number + 1})"
            if step == "raw":
                raws.append(raw_hash_rate(bench, f"argon2id-raw beside {suffix}", group=ROUNDS))
                continue
            logins.append(
                bench.measure(
                    login_start_load(bench, data, suffix, address),
                    group=ROUNDS,
                    path="direct" if where == "direct" else "gateway public",
                    placement="every process on every core (as the raw hash rate)",
                    pid=platform.pid("auth"),
                    client_cpus=ALL_CPUS,
                )
            )
        raw = _hash_rates_together(f"argon2id-raw beside login-start {where}", raws)
        row = rounds_together("login", f"login-start {where}", logins)
        bench.rows += [raw, row]
        _ratio(row, raw, LOGIN_RATIO)
        if row.server_cpu_us and raw.server_cpu_us:
            row.cpu_ratio = raw.server_cpu_us / row.server_cpu_us
    # Challenges expire after 5 minutes: made now, after the sessions' persons. A third
    # more than the measured ones: single-use, they cannot be warmed up on.
    channels = Channels.direct(platform.address)
    platform.place(None)
    data.challenges = login_challenges(channels, data.persons, 3 * challenges, first=codes_sent)
    channels.close()
    bench.log(f"login challenges: {len(data.challenges)}")
    warm, direct, gateway = (
        data.challenges[n * challenges : (n + 1) * challenges] for n in range(3)
    )
    _warm_logins(bench, platform, warm)
    for where, address, half in (
        ("direct", platform.address("auth"), direct),
        ("gateway", platform.gateway.public_address, gateway),
    ):
        load = login_complete_load(f"login-complete-sms {where}", address, half)

        def measure(load: ghz.Load = load, where: str = where) -> Row:
            platform.place("auth")
            return bench.measure(
                load,
                group="login",
                path="direct" if where == "direct" else "gateway public",
                placement="auth core 0; ghz, Envoy, stores, other services core 1",
                pid=platform.pid("auth"),
                client_cpus=OTHER_CPUS,
            )

        measured_against_ceilings(bench, platform, load, measure, judged=where == "direct")


def login_complete_load(
    name: str, address: str, challenges: Sequence[auth_pb2.CompleteLoginWithCodeRequest]
) -> ghz.Load:
    """Login step 2 of started logins, each once (single-use)."""
    return ghz.Load(
        name,
        "etax.auth.v1.AuthService.CompleteLoginWithCode",
        address,
        base="login-complete-sms",
        data=[as_json(c) for c in challenges],
        total=len(challenges),
    )


def _warm_logins(
    bench: Bench, platform: Platform, challenges: list[auth_pb2.CompleteLoginWithCodeRequest]
) -> None:
    """Completes logins of other persons first, unmeasured, at the measured concurrency:
    auth opens its statement and store connections (and prepares its statements on each)
    as calls need them, and a first round paid for opening them all: 930-1,030 µs per
    call against 720-820 for the round after it, in development runs on the Intel Xeon
    (bench/analysis.md). A service at a filing peak has them open."""
    load = login_complete_load("login-complete-sms warm-up", platform.address("auth"), challenges)
    platform.place("auth")
    ghz.run(GHZ, load, bench.workdir / "ghz-warm-up", OTHER_CPUS)


# --- scaling: processes per service ---------------------------------------------------------


def scaling(bench: Bench, platform: Platform, data: LoadData) -> None:
    """Two processes of one service on two cores beside one process on one core, for
    FaceService.GetTicket and InternalBindingService.CheckAccess. One process: pinned to
    core 0, everything else on core 1 (as the cheap scenarios). Two: a second process
    (bench/platform.py `replica`, sharing the stores) on core 1, the first on core 0, the
    rest unpinned; the same 50 calls in flight split over two ghz runs at once, 25 each."""
    if platform.configuration != "production":
        for base, rpc, _service in _SCALED:
            bench.pending("scaling", f"{base} 2 processes", rpc, "direct", EMBEDDED_PENDING)
        return
    for base, rpc, service in _SCALED:
        load = next(
            candidate
            for candidate, _ in cheap_loads(bench, platform, data, "direct")
            if candidate is not None and candidate.name == f"{base} direct"
        )
        platform.place(service)
        one = bench.measure(
            replace(load, name=f"{base} 1 process"),
            group="scaling",
            path="direct",
            placement=f"{service} core 0; ghz, stores, other services core 1",
            pid=platform.pid(service),
            client_cpus=OTHER_CPUS,
        )
        second = platform.replica(service)
        platform.place(None)
        pin(platform.pid(service), SERVICE_CPUS)
        pin(second.process.pid, OTHER_CPUS)
        halves = [
            replace(
                load,
                name=f"{base} 2 processes ({n + 1})",
                address=address,
                concurrency=IN_FLIGHT // 2,
                connections=2,
            )
            for n, address in enumerate((platform.address(service), second.address))
        ]
        for half in halves:  # the new process learns what the first one has in memory
            warm_up(half, bench.workdir, ALL_CPUS)
        pids = (platform.pid(service), second.process.pid)
        bench.log(f"{base}: 2 processes, {IN_FLIGHT} in flight")
        before = [cpu_seconds(pid) for pid in pids]
        with ThreadPoolExecutor(2) as pool:
            reports = list(
                pool.map(
                    lambda half: ghz.run(GHZ, half, bench.workdir / f"ghz-{half.name}", ALL_CPUS),
                    halves,
                )
            )
        cpu = sum(cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True))
        summaries = [ghz.summarize(report) for report in reports]
        row = Row(
            "scaling",
            f"{base} 2 processes",
            rpc,
            "direct",
            f"{service} on core 0 and on core 1; ghz, stores, the rest unpinned",
            count=sum(x["count"] for x in summaries),
            rps=sum(x["rps"] for x in summaries),
            p50_ms=max(x["p50_ms"] for x in summaries),
            p90_ms=max(x["p90_ms"] for x in summaries),
            p99_ms=max(x["p99_ms"] for x in summaries),
            average_ms=sum(x["average_ms"] for x in summaries) / len(summaries),
        )
        skipped = sum(half.skip_first for half in halves)
        row.server_cpu_us = cpu / (row.count + skipped) * 1e6
        row.extra["per_process_rps"] = [x["rps"] for x in summaries]
        _ratio(row, one, SCALING_RATIO)
        if row.server_cpu_us and one.server_cpu_us:
            row.cpu_ratio = one.server_cpu_us / row.server_cpu_us
        bench.rows.append(row)
        bench.log(f"  {row.rps:,.0f}/s: {row.ratio:.2f} x one process")
        platform.stop_replicas()


_SCALED = (
    ("face-get-ticket", "etax.face.v1.FaceService.GetTicket", "face"),
    ("access-check", "etax.binding.v1.InternalBindingService.CheckAccess", "binding"),
)


# --- profiles of missed targets -----------------------------------------------------------


def profile_missed(bench: Bench, platform: Platform, data: LoadData) -> None:
    """A replica of the service of each missed target measured direct, under yappi, driven
    by the same load for a few seconds: where its CPU goes (yappi slows it down; only the
    shares count). Scenarios of single-use requests (refresh tokens, login challenges)
    cannot be repeated and are not profiled."""
    missed = [
        r
        for r in bench.rows
        if r.group in ("cheap", "login") and r.path == "direct" and r.met is False
    ]
    for row in missed:
        service = SERVICE_OF[row.rpc]
        if row.name.startswith("login-start"):
            load: ghz.Load | None = login_start_load(bench, data, row.name, "")
            cpus = ALL_CPUS
        else:
            loads = {
                candidate.name: candidate
                for candidate, _ in cheap_loads(bench, platform, data, "direct")
                if candidate is not None
            }
            load, cpus = loads.get(row.name), SERVICE_CPUS
        if load is None or load.total is not None:
            bench.log(f"{row.name}: single-use requests, not profiled")
            continue
        out = bench.workdir / f"profile-{row.name.replace(' ', '-')}.json"
        client_cpus = OTHER_CPUS if cpus == SERVICE_CPUS else ALL_CPUS

        # The measured run's warm-up pass, before the profile starts, so the profile shows
        # the steady state the figures were measured in, not a cold cache.
        def warm_replica(
            address: str, load: ghz.Load = load, cpus: frozenset[int] = client_cpus
        ) -> None:
            warm_up(replace(load, address=address), bench.workdir, cpus)

        with profiled_replica(
            platform, service, out, bench.workdir, cpus, warm_up=warm_replica
        ) as address:
            load.address = address
            load.name = f"{row.name} (profiled)"
            load.duration = "4s"
            load.skip_first = 0  # yappi slows it down: every call counts
            ghz.run(GHZ, load, bench.workdir / "ghz", client_cpus)
        bench.profiles[row.name] = json.loads(out.read_text())
        bench.log(f"profiled {row.name}: {out}")


@contextlib.contextmanager
def profiled_replica(
    platform: Platform,
    service: str,
    out: Path,
    workdir: Path,
    cpus: frozenset[int],
    *,
    warm_up: Callable[[str], None] | None = None,
) -> Iterator[str]:
    port = free_port()
    log = (workdir / f"profiled-{service}.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our modules
        [sys.executable, "-m", "bench.profiled", topology.service(service).module, str(out)],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            **platform.env,
            topology.service(service).port_variable: str(port),
            topology.service(service).metrics_port_variable: "0",
            "PYTHONPATH": str(REPO_ROOT),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # noqa: PLW1509
    )
    address = f"127.0.0.1:{port}"
    try:
        _wait_serving(address, process)
        if warm_up is not None:
            warm_up(address)
        process.send_signal(signal.SIGUSR1)  # profile the load, not start-up or shutdown
        time.sleep(0.5)
        yield address
        process.send_signal(signal.SIGUSR2)
        _wait_for(out, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    if not out.exists():
        raise ghz.ScenarioFailed(f"profiled {service} wrote no profile (see {log.name})")


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)


def _wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"profiled service exited with {process.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise TimeoutError("profiled service did not become SERVING")


# --- the run ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": len(ALL_CPUS),
        "cpu_model": model,
        "python": host.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not GHZ.exists():
        raise SystemExit(f"ghz not found at {GHZ}: `make bench` installs it")
    started = datetime.now(CST)
    workdir = Path(tempfile.mkdtemp(prefix="etax-bench-"))
    bench = Bench(args.seconds, workdir, lambda line: print(line, flush=True))
    meta = machine()
    bench.log(f"work directory {workdir}; {meta}")
    ceilings(bench)
    configuration: Configuration = args.config
    with running_platform(
        workdir / "platform", configuration, gateway_overrides=UNLIMITED
    ) as platform:
        channels = Channels.direct(platform.address)
        platform.place(None)
        # On PostgreSQL RefreshSession's single-use tokens come in bulk (many seconds of
        # calls); logging in makes only what the embedded default measures with.
        bulk_sessions = configuration == "production"
        data = set_up(
            channels,
            persons=args.persons,
            challenges=0,
            sessions=1 if bulk_sessions else 2 * args.logins,
            log=bench.log,
        )
        channels.close()
        logins, in_bulk = len(data.refresh_tokens), 0
        if bulk_sessions and data.login_available:
            data.refresh_tokens = refresh_tokens_in_bulk(platform, data, 2 * REFRESH_CALLS)
            in_bulk = len(data.refresh_tokens)
            bench.log(f"refresh tokens: {in_bulk:,} in bulk")
        try:
            fair_ceilings(bench, platform)
            cheap(bench, platform, data)
            overhead(bench, platform, data)
            scaling(bench, platform, data)
            login(bench, platform, data, args.logins, codes_sent=logins)
            if not args.no_profile:
                profile_missed(bench, platform, data)
        except Exception:
            print(platform.logs(), file=sys.stderr)
            raise
    if not args.no_observability:
        observability_cost(bench, configuration, args.persons)
    return {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(CST).isoformat(timespec="seconds"),
        "configuration": configuration,
        "seconds_per_scenario": args.seconds,
        "in_flight": IN_FLIGHT,
        "note": args.note,
        "machine": meta,
        "login_available": data.login_available,
        "refresh_tokens_in_bulk": in_bulk,
        "rows": [asdict(r) for r in bench.rows],
        "profiles": bench.profiles,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["production", "embedded"], default="production")
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput scenario")
    parser.add_argument(
        "--persons",
        type=int,
        default=1000,
        help=f"over {10_000:,}: the size comparison instead (bench/size.py)",
    )
    parser.add_argument("--logins", type=int, default=600, help="challenges; sessions x2")
    parser.add_argument("--note", default="", help="a line for the report's header")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--no-observability", action="store_true", help="skip the metrics on/off comparison"
    )
    parser.add_argument(
        "--observability-only",
        action="store_true",
        help="only the metrics on/off comparison, printed (no report written)",
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH)
    args = parser.parse_args(argv)
    if args.persons > SIZE_THRESHOLD:
        from bench import size  # noqa: PLC0415 - it imports this module

        return size.main(args)

    if args.observability_only:
        workdir = Path(tempfile.mkdtemp(prefix="etax-bench-"))
        bench = Bench(args.seconds, workdir, lambda line: print(line, flush=True))
        observability_cost(bench, args.config, args.persons)
        print(observability_table(bench.rows))
        return 0

    from bench import report  # noqa: PLC0415 - matplotlib only when writing

    if args.report_only:
        results = json.loads(RESULTS.read_text())
    else:
        results = run(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    written = report.write(results, args.out)
    for path in written:
        print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
