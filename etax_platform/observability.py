"""Service logs: JSON lines (or text for a person at a terminal) with masked personal
numbers, the request id of the current call and its trace and span ids.

One JSON object per line: time, level, service, logger, message, request_id, trace_id and
span_id (when tracing is on), and for the interceptor's one line per RPC: rpc, status,
reason, duration_ms; a traceback goes in `error`. `ETAX_LOG_FORMAT` chooses json, text or
auto (text when stderr is a terminal, as under `make run`).
"""

from __future__ import annotations

import contextvars
import io
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Literal

import orjson

from etax_platform import tracing
from etax_platform.pii import redact

if TYPE_CHECKING:
    from etax_platform.settings import ServiceSettings

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

RPC_LOGGER = "etax.rpc"
# Fields of the interceptor's RPC lines (`extra=`), in the order they are written.
RPC_FIELDS = ("rpc", "status", "reason", "duration_ms")
# A record whose message and fields come from our own code only (method names, status
# and reason codes) skips the masking pass over the whole line; its request id, which a
# caller sends, is still masked.
PLAIN = "etax_plain"


class MaskingFormatter(logging.Formatter):
    """Formats as usual, then masks ID numbers, phones and emails in the whole line,
    tracebacks included, so nothing personal reaches a log by accident."""

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id.get()
        return redact(super().format(record))


class _Clock:
    """ISO 8601 with milliseconds and the offset, in local time (as the bureau reads it);
    the seconds part is formatted once per second, not per line. Threads share it without
    a lock (RPC lines are written outside the logging module's): the cached second is one
    tuple, replaced whole, so a line never pairs one second's prefix with another's."""

    def __init__(self) -> None:
        self._cached: tuple[int, str, str] = (-1, "", "")

    def stamp(self, created: float) -> str:
        second = int(created)
        cached = self._cached
        if cached[0] != second:
            local = time.localtime(second)
            offset = time.strftime("%z", local)
            cached = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", local),
                f"{offset[:3]}:{offset[3:]}",
            )
            self._cached = cached
        return f"{cached[1]}.{int((created - second) * 1000):03d}{cached[2]}"


# A request id worth masking has a long run of digits or an @ (a caller's own header).
_MAYBE_PERSONAL = re.compile(r"\d{11}|@")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (module docstring)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        entry = self._entry(record.created, record.levelname, record.name, record.getMessage())
        for name in RPC_FIELDS:
            if name in fields:
                entry[name] = fields[name]
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        if fields.get(PLAIN):
            return _plain_json(entry).decode()
        return redact(orjson.dumps(entry, default=str).decode())

    def rpc_line(self, method: str, code: str, reason: str, millis: float) -> bytes:
        """The interceptor's line for one RPC, as `format` writes its record (with PLAIN)."""
        entry = self._entry(
            time.time(), "INFO", RPC_LOGGER, rpc_message(method, code, reason, millis)
        )
        entry.update(zip(RPC_FIELDS, (method, code, reason, millis), strict=True))
        return _plain_json(entry) + b"\n"

    def _entry(self, created: float, level: str, logger: str, message: str) -> dict[str, object]:
        entry: dict[str, object] = {
            "time": self._clock.stamp(created),
            "level": level,
            "service": self._service,
            "logger": logger,
            "message": message,
            "request_id": request_id.get(),
        }
        ids = tracing.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        return entry


def _plain_json(entry: dict[str, object]) -> bytes:
    """A line of our own code's text (PLAIN): only the caller's request id is masked, and
    only if it may hold something personal."""
    rid = str(entry["request_id"])
    if _MAYBE_PERSONAL.search(rid):
        entry["request_id"] = redact(rid)
    # Compact, non-ASCII text as it is; orjson: the stdlib's encoder was 7.5 µs of the
    # RPC line's 37 on the AMD EPYC, orjson 0.6 (bench/analysis.md).
    return orjson.dumps(entry, default=str)


def rpc_message(method: str, code: str, reason: str, millis: float) -> str:
    return f"rpc {method} -> {code}{f' {reason}' if reason else ''} {millis:.1f}ms"


class RpcLines:
    """The interceptor's one line per RPC, written straight to the JSON handler's stream.

    Inside a busy server the logging module's record, handler and formatter cost 30-35 µs
    per RPC line on the Intel Xeon (8 µs in a loop), the same line built here about 5
    (bench/analysis.md). Each line is one write of whole bytes to the stream's buffer,
    which holds its own lock, and is flushed at once, as the handler would."""

    def __init__(self, formatter: JsonFormatter, stream: BinaryIO) -> None:
        self._formatter = formatter
        self._stream = stream

    def write(self, method: str, code: str, reason: str, millis: float) -> None:
        line = self._formatter.rpc_line(method, code, reason, millis)
        try:
            self._stream.write(line)
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or broken stderr never fails the call it logs (the logging module's
            # handlers swallow such errors too); the line is lost.
            pass


# Set by configure_logging when it writes JSON lines; None: the RPC line goes through the
# logging module (text at a terminal, or a test's own handler).
rpc_lines: RpcLines | None = None


def text_formatter(service: str) -> logging.Formatter:
    return MaskingFormatter(
        f"%(asctime)s %(levelname)s {service} [%(request_id)s] %(name)s: %(message)s"
    )


def resolve_format(chosen: Literal["json", "text", "auto"]) -> Literal["json", "text"]:
    if chosen != "auto":
        return chosen
    return "text" if sys.stderr.isatty() else "json"


def configure_logging(
    level: str = "INFO",
    service: str = "etax",
    log_format: Literal["json", "text", "auto"] = "auto",
) -> None:
    global rpc_lines  # noqa: PLW0603 - one process, one log stream
    handler = logging.StreamHandler(sys.stderr)
    rpc_lines = None
    if resolve_format(log_format) == "json":
        formatter = JsonFormatter(service)
        handler.setFormatter(formatter)
        if isinstance(sys.stderr, io.TextIOWrapper):
            rpc_lines = RpcLines(formatter, sys.stderr.buffer)
    else:
        handler.setFormatter(text_formatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Neither format shows the source line, thread or process: the logging module's
    # documented switches skip finding them for every record (a stack walk per RPC line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def start_process(settings: ServiceSettings, service: str) -> Callable[[], None]:
    """What every service process sets up first: its logs, its tracer (before anything
    opens a database or a channel) and its metrics exporter. Returns what stops them."""
    from etax_platform import metrics  # noqa: PLC0415 - prometheus-client only in processes

    platform = settings.platform
    configure_logging(platform.log_level, service, platform.log_format)
    tracing.configure(service, platform.otel_endpoint)
    exporter = metrics.serve(settings, service)

    def stop() -> None:
        if exporter is not None:
            exporter.close()
        tracing.shutdown()

    return stop
