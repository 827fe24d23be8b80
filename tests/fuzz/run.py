"""Sends fuzz cases to a running platform, concurrently, and judges the answers.

A case fails when a gRPC call ends INTERNAL, UNKNOWN, DATA_LOSS or UNAVAILABLE (Envoy's
503; no dependency is really down here) or an HTTP answer is 5xx. Everything else is
counted by status in the summary. The platform's logs are judged apart (`LogWatch`): no
ERROR and no traceback caused by the fuzz.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fuzz import schema
from tests.fuzz.generate import FORGED_TOKENS, Case, Pool, case, category_of
from tests.harness.gateway import RunningGateway

FAILING_GRPC = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNAVAILABLE,
    }
)
OK_STATUSES = frozenset(
    {
        "grpc OK",
        "grpc OK (stream open)",
        "http 200",
        "http stream open",
        "grpc-web OK",
        "grpc-web stream open",
    }
)
_CODES = {str(code.value[0]): code for code in grpc.StatusCode}
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
# A watch lasts as long as its ticket: the fuzzer reads for a moment only.
STREAM_SECONDS = 1.0


@dataclass(frozen=True)
class Outcome:
    case: Case
    status: str  # "grpc INVALID_ARGUMENT", "http 400"
    failed: bool
    detail: str = ""


@dataclass
class Summary:
    seed: int
    statuses: Counter[str] = field(default_factory=Counter)
    by_category: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    log_errors: list[str] = field(default_factory=list)
    log_warnings: int = 0
    not_serving: list[str] = field(default_factory=list)
    # Coverage: the RPCs some case reached and the ones that also answered OK.
    reached: set[str] = field(default_factory=set)
    answered_ok: set[str] = field(default_factory=set)

    def add(self, outcome: Outcome) -> None:
        self.statuses[outcome.status] += 1
        if outcome.case.rpc is not None:
            name = str(outcome.case.rpc)
            self.reached.add(name)
            if outcome.status in OK_STATUSES:
                self.answered_ok.add(name)
        self.by_category.setdefault(outcome.case.category, Counter())[outcome.status] += 1
        if outcome.failed:
            self.failures.append(outcome)

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> bool:
        return not self.failures and not self.log_errors and not self.not_serving

    def report(self, failures_shown: int = 20) -> str:
        rate = self.count / self.seconds if self.seconds else 0.0
        lines = [
            f"fuzz: seed {self.seed}, {self.count} requests in {self.seconds:.0f}s ({rate:.0f}/s)"
        ]
        lines.append("by status:")
        for status, number in sorted(self.statuses.items()):
            lines.append(f"  {status:<32} {number:>8}")
        lines.append("by category:")
        for category, counts in sorted(self.by_category.items()):
            shown = ", ".join(f"{s} {n}" for s, n in counts.most_common(6))
            lines.append(f"  {category:<20} {sum(counts.values()):>7}  {shown}")
        never_ok = sorted(self.reached - self.answered_ok)
        lines.append(f"RPCs reached: {len(self.reached)}, never answered OK: {len(never_ok)}")
        if never_ok:
            lines.append("  " + ", ".join(name.rsplit(".", 1)[-1] for name in never_ok))
        # gRPC directly or through the gateway, and gRPC-Web (whose HTTP 5xx count as 5xx).
        internal = sum(
            n
            for s, n in self.statuses.items()
            if re.fullmatch(r"grpc(-web)? (INTERNAL|UNKNOWN)", s)
        )
        http_5xx = sum(
            n for s, n in self.statuses.items() if re.fullmatch(r"(grpc-web )?http 5\d\d", s)
        )
        lines.append(
            f"INTERNAL/UNKNOWN: {internal}, HTTP 5xx: {http_5xx}, failures: {len(self.failures)}, "
            f"log errors: {len(self.log_errors)}, log warnings: {self.log_warnings}, "
            f"not serving: {self.not_serving or 'none'}"
        )
        failed = Counter(outcome.case.category for outcome in self.failures)
        if failed:
            lines.append(
                "failures by category: " + ", ".join(f"{c} {n}" for c, n in sorted(failed.items()))
            )
        for outcome in self.failures[:failures_shown]:
            lines.append(
                f"FAILED {outcome.status} {outcome.detail[:300]}\n  {outcome.case.describe()}"
            )
            lines.append(
                f"  replay: make fuzz FUZZ_ARGS='--seed {outcome.case.seed} "
                f"--case {outcome.case.index} --category {outcome.case.category}'"
            )
        for line in self.log_errors[:failures_shown]:
            lines.append(f"LOG {line[:1500]}")
        return "\n".join(lines)


@dataclass
class Targets:
    """Where the platform listens: each service process directly, and the gateway."""

    direct: dict[str, str]  # cluster -> host:port
    gateway: RunningGateway


class Sender:
    """One channel per destination, one HTTP client; safe to use from many threads."""

    def __init__(self, targets: Targets, pool: Pool, timeout: float = 30.0) -> None:
        self._pool = pool
        self._timeout = timeout
        self._channels: dict[str, grpc.Channel] = {
            cluster: grpc.insecure_channel(address, options=_UNLIMITED)
            for cluster, address in targets.direct.items()
        }
        gateway = targets.gateway
        self._public = grpc.insecure_channel(gateway.public_address, options=_UNLIMITED)
        certs = gateway.certificates
        credentials = grpc.ssl_channel_credentials(
            root_certificates=certs.ca_cert.read_bytes(),
            private_key=certs.client_key("hall").read_bytes(),
            certificate_chain=certs.client_cert("hall").read_bytes(),
        )
        self._internal = grpc.secure_channel(
            gateway.internal_address, credentials, options=_UNLIMITED
        )
        host, port = gateway.public_address.rsplit(":", 1)
        self._http_address = (host, int(port))
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []

    def close(self) -> None:
        for channel in (*self._channels.values(), self._public, self._internal):
            channel.close()
        for connection in self._opened:
            connection.close()

    def _token(self, case: Case) -> str | None:
        if case.token.startswith("forged:"):
            return FORGED_TOKENS[int(case.token.removeprefix("forged:"))]
        return self._pool.tokens.get(case.token)

    def send(self, case: Case) -> Outcome:
        if case.target == "http":
            return self._send_http(case)
        if case.target == "grpc-web":
            return self._send_grpc_web(case)
        return self._send_grpc(case)

    def _send_grpc(self, case: Case) -> Outcome:
        assert case.rpc is not None
        channel = {"public": self._public, "internal": self._internal}.get(case.target)
        channel = channel or self._channels[case.rpc.cluster]
        token = self._token(case)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            if case.rpc.server_streaming:
                # Cancelled by the client after a moment, not by a deadline: with a deadline
                # Envoy resets the open stream itself, which the client may see first.
                call = channel.unary_stream(case.rpc.path)(
                    case.body, metadata=metadata, timeout=self._timeout
                )
                timer = threading.Timer(STREAM_SECONDS, call.cancel)
                timer.start()
                try:
                    for _ in call:
                        pass
                finally:
                    timer.cancel()
            else:
                channel.unary_unary(case.rpc.path)(
                    case.body, metadata=metadata, timeout=self._timeout
                )
        except grpc.RpcError as error:
            code = error.code()
            if case.rpc.server_streaming and code == grpc.StatusCode.CANCELLED:
                return Outcome(case, "grpc OK (stream open)", False)
            return Outcome(case, f"grpc {code.name}", code in FAILING_GRPC, str(error.details()))
        return Outcome(case, "grpc OK", False)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        """This thread's keep-alive connection to the public listener. http.client sends
        the path and method exactly as given (httpx refuses URLs over 64 KiB)."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "http", None)
        if connection is None:
            connection = http.client.HTTPConnection(*self._http_address, timeout=timeout)
            self._local.http = connection
            self._opened.append(connection)
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "http", None)
        if connection is not None:
            connection.close()
            self._local.http = None

    def _exchange(
        self, case: Case, verb: str, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, http.client.HTTPMessage, bytes] | Outcome:
        """One HTTP request on this thread's connection: (status, headers, body), or the
        outcome when the connection failed. A watch is read for STREAM_SECONDS only."""
        token = self._token(case)
        if token:
            headers = {**headers, "authorization": f"Bearer {token}"}
        streaming = case.rpc is not None and case.rpc.server_streaming
        timeout = STREAM_SECONDS if streaming else self._timeout
        for attempt in (1, 2):
            connection = self._connection(timeout)
            try:
                connection.request(verb, url, body=body or None, headers=headers)
                response = connection.getresponse()
                try:
                    content = response.read()
                except TimeoutError:
                    if not streaming:
                        raise
                    self._drop_connection()  # a watch still open: the connection is busy
                    return Outcome(case, f"{case.target} stream open", False)
                if response.will_close:
                    self._drop_connection()
                return response.status, response.headers, content
            except TimeoutError as error:
                self._drop_connection()
                if streaming:  # no first message yet: the watch is open
                    return Outcome(case, f"{case.target} stream open", False)
                return Outcome(case, f"{case.target} timeout", False, repr(error))
            except (http.client.HTTPException, OSError) as error:
                self._drop_connection()
                stale = http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError
                # A kept-alive connection the gateway had closed: once more on a new one.
                if attempt == 1 and isinstance(error, stale) and not body:
                    continue
                # The gateway closed the connection (e.g. after an oversized body): no 5xx.
                return Outcome(case, f"{case.target} {type(error).__name__}", False, repr(error))
        raise AssertionError("unreachable")

    def _send_http(self, case: Case) -> Outcome:
        answer = self._exchange(case, case.verb, case.url, case.body, dict(case.headers))
        if isinstance(answer, Outcome):
            return answer
        status, _, content = answer
        return Outcome(
            case, f"http {status}", status >= 500, content[:300].decode(errors="replace")
        )

    def _send_grpc_web(self, case: Case) -> Outcome:
        """A binary gRPC-Web call, as the web page's client makes it."""
        assert case.rpc is not None
        frame = b"\x00" + len(case.body).to_bytes(4, "big") + case.body
        headers = {
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "accept": "application/grpc-web+proto",
        }
        answer = self._exchange(case, "POST", case.rpc.path, frame, headers)
        if isinstance(answer, Outcome):
            return answer
        status, response_headers, content = answer
        if status != 200:
            return Outcome(case, f"grpc-web http {status}", status >= 500)
        grpc_status = response_headers.get("grpc-status")
        while content and grpc_status is None:
            flags, length = content[0], int.from_bytes(content[1:5], "big")
            payload, content = content[5 : 5 + length], content[5 + length :]
            if flags & 0x80:
                for line in payload.decode(errors="replace").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "grpc-status":
                        grpc_status = value.strip()
        if grpc_status is None:
            return Outcome(case, "grpc-web no status", True, "an answer without grpc-status")
        code = _CODES.get(grpc_status)
        if code is None:
            return Outcome(case, f"grpc-web status {grpc_status}", True, "not a gRPC status")
        return Outcome(case, f"grpc-web {code.name}", code in FAILING_GRPC)


def run(
    targets: Targets,
    pool: Pool,
    seed: int,
    count: int,
    *,
    threads: int = 16,
    categories: Sequence[str] | None = None,
    start: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Sends cases start..start+count-1 of the seed, each of a category drawn by weight
    among `categories` (default: all)."""
    summary = Summary(seed)
    sender = Sender(targets, pool)
    lock = threading.Lock()
    started = time.monotonic()

    def one(index: int) -> None:
        category = categories[0] if categories and len(categories) == 1 else None
        fuzz_case = case(seed, index, pool, category or category_of(seed, index, categories))
        outcome = sender.send(fuzz_case)
        with lock:
            summary.add(outcome)
            if progress is not None:
                progress(summary.count)

    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="fuzz") as executor:
            for future in [executor.submit(one, i) for i in range(start, start + count)]:
                future.result()
    finally:
        sender.close()
    summary.seconds = time.monotonic() - started
    return summary


def not_serving(targets: Targets) -> list[str]:
    """Every service name each process registers, and the gateway: what is not SERVING."""
    down = []
    for cluster, address in targets.direct.items():
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", *schema.services_of(cluster)):
                try:
                    status = stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=10
                    ).status
                except grpc.RpcError as error:
                    down.append(f"{cluster} {service or '(server)'}: {error.code().name}")
                    continue
                if status != health_pb2.HealthCheckResponse.SERVING:
                    down.append(f"{cluster} {service or '(server)'}: {status}")
    try:
        ready = httpx.get(f"{targets.gateway.admin_url}/ready", timeout=10)
        if ready.status_code != 200:
            down.append(f"gateway: {ready.status_code}")
    except httpx.HTTPError as error:
        down.append(f"gateway: {error!r}")
    return down


# --- logs -------------------------------------------------------------------------------


class LogWatch(logging.Handler):
    """The services' log records while the fuzz runs in the same process: every ERROR (or
    record with a traceback) is kept, WARNINGs are counted."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []
        self.warnings = 0
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            if record.levelno >= logging.ERROR or record.exc_info:
                self.errors.append(f"{record.levelname} {record.name}: {self.format(record)}")
            else:
                self.warnings += 1

    @contextlib.contextmanager
    def watching(self) -> Iterator[LogWatch]:
        root = logging.getLogger()
        root.addHandler(self)
        try:
            yield self
        finally:
            root.removeHandler(self)


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \S+ (?P<level>[A-Z]+) ")


def log_file_findings(paths: Iterable[Path], offsets: dict[Path, int]) -> tuple[list[str], int]:
    """ERROR records and tracebacks written to the services' log files after the offsets
    (`python -m services.<name>` lines: date time LEVEL service [rid] logger: message, a
    traceback on the lines after), each as its first line and its last."""
    errors: list[str] = []
    warnings = 0
    for path in paths:
        with path.open("rb") as log:
            log.seek(offsets.get(path, 0))
            text = log.read().decode(errors="replace")
        records: list[list[str]] = []
        for line in text.splitlines():
            if _LOG_LINE.match(line) or not records:
                records.append([line])
            else:
                records[-1].append(line)
        for record in records:
            match = _LOG_LINE.match(record[0])
            level = match["level"] if match else ""
            if level in ("ERROR", "CRITICAL") or any(r.startswith("Traceback") for r in record):
                last = f" ... {record[-1].strip()}" if len(record) > 1 else ""
                errors.append(f"{path.name}: {record[0]}{last}")
            elif level == "WARNING":
                warnings += 1
    return errors, warnings
