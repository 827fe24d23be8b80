"""Metrics, logs and traces of one host (issue 15): what the interceptor counts and logs
per RPC, the exporter, the log formats, and spans continuing a caller's traceparent.
The whole platform with a real Prometheus: tests/observability."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from etax_platform import metrics, observability, topology, tracing
from etax_platform.clients import Dependency
from etax_platform.clock import CST
from etax_platform.errors import DomainError, Reason
from etax_platform.kv import RedisStore
from etax_platform.observability import (
    JsonFormatter,
    _Clock,
    configure_logging,
    request_id,
    resolve_format,
    text_formatter,
)
from etax_platform.observe import DEFAULT_CONFIG
from etax_platform.observe import main as observe_main
from etax_platform.server import GrpcHost, Registration
from etax_platform.settings import PlatformSettings
from services.sms.settings import SmsSettings

SERVICE = "etax.test.v1.MetricsProbe"


def _probe(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"refuse":
        raise DomainError(Reason.SMS_RATE_LIMITED, retry_after=timedelta(seconds=1))
    if request.startswith(b"phone "):
        logging.getLogger("etax.probe").info("code for %s", request[6:].decode())
    if request == b"in flight":
        return str(_value("etax_rpc_in_flight", **RPC)).encode()
    return request


def _add_probe(server: grpc.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(_probe)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),)
    )


@pytest.fixture
def host() -> Iterator[GrpcHost]:
    host = GrpcHost([Registration(SERVICE, _add_probe)], port=0).start()
    yield host
    host.stop(grace=0)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _echo(host: GrpcHost, payload: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    with grpc.insecure_channel(host.address) as channel:
        result: bytes = channel.unary_unary(f"/{SERVICE}/Echo")(
            payload, metadata=metadata, timeout=5
        )
        return result


RPC = {"grpc_service": SERVICE, "grpc_method": "Echo"}


def test_each_rpc_is_counted_by_code_and_reason_timed_and_leaves_in_flight(
    host: GrpcHost,
) -> None:
    ok, refused = (
        _value("grpc_server_handled_total", **RPC, grpc_type="unary", grpc_code=code)
        for code in ("OK", "RESOURCE_EXHAUSTED")
    )
    reason = _value(
        "etax_rpc_errors_total", **RPC, grpc_code="RESOURCE_EXHAUSTED", reason="SMS_RATE_LIMITED"
    )
    timed = _value("grpc_server_handling_seconds_count", **RPC, grpc_type="unary")
    _echo(host, b"hello")
    _echo(host, b"hello")
    with pytest.raises(grpc.RpcError):
        _echo(host, b"refuse")
    assert _value("grpc_server_handled_total", **RPC, grpc_type="unary", grpc_code="OK") == ok + 2
    assert (
        _value(
            "grpc_server_handled_total", **RPC, grpc_type="unary", grpc_code="RESOURCE_EXHAUSTED"
        )
        == refused + 1
    )
    assert (
        _value(
            "etax_rpc_errors_total",
            **RPC,
            grpc_code="RESOURCE_EXHAUSTED",
            reason="SMS_RATE_LIMITED",
        )
        == reason + 1
    )
    assert _value("grpc_server_handling_seconds_count", **RPC, grpc_type="unary") == timed + 3
    assert _echo(host, b"in flight") == b"1.0"  # the call asking, while it is served
    assert _value("etax_rpc_in_flight", **RPC) == 0


def test_the_fast_histogram_fills_the_buckets_the_library_would() -> None:
    registry = CollectorRegistry()
    bounds = metrics.STORE_BUCKETS
    ours = metrics.FastHistogram("ours", "", buckets=bounds, registry=registry)
    theirs = Histogram("theirs", "", buckets=bounds, registry=registry)
    amounts = [0.0, *bounds, *(b * 1.01 for b in bounds), *(b * 0.99 for b in bounds), 1e9]
    for amount in amounts:
        ours.observe(amount)
        theirs.observe(amount)
    (our_family,) = [m for m in registry.collect() if m.name == "ours"]
    (their_family,) = [m for m in registry.collect() if m.name == "theirs"]
    assert [(s.name[4:], s.labels, s.value) for s in our_family.samples] == [
        (s.name[6:], s.labels, s.value) for s in their_family.samples
    ]


def test_a_host_without_metrics_counts_nothing() -> None:
    host = GrpcHost([Registration(SERVICE, _add_probe)], port=0, metrics=False).start()
    try:
        before = _value("grpc_server_handling_seconds_count", **RPC, grpc_type="unary")
        _echo(host, b"hello")
        assert _value("grpc_server_handling_seconds_count", **RPC, grpc_type="unary") == before
    finally:
        host.stop(grace=0)


def test_one_json_line_per_rpc_with_its_fields_and_personal_numbers_masked(
    host: GrpcHost,
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("probe"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        _echo(host, b"phone 13812345678", (("x-request-id", "rid-13912345678"),))
        with pytest.raises(grpc.RpcError):
            _echo(host, b"refuse", (("x-request-id", "rid-2"),))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    rpc_lines = [line for line in lines if line["logger"] == "etax.rpc"]
    assert [(line["status"], line["reason"]) for line in rpc_lines] == [
        ("OK", ""),
        ("RESOURCE_EXHAUSTED", "SMS_RATE_LIMITED"),
    ]
    first = rpc_lines[0]
    assert first["rpc"] == f"/{SERVICE}/Echo" and first["level"] == "INFO"
    assert first["service"] == "probe" and first["duration_ms"] >= 0
    assert first["request_id"] == "rid-139****5678"  # a caller's header is masked too
    assert first["time"][4] == "-" and first["time"][-6] in "+-"
    (probe,) = [line for line in lines if line["logger"] == "etax.probe"]
    assert probe["message"] == "code for 138****5678"
    assert probe["request_id"] == "rid-139****5678"


@pytest.fixture
def service_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """configure_logging as a service process calls it, its stderr a file."""
    path = tmp_path / "stderr.log"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with path.open("w", encoding="utf-8") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        configure_logging("INFO", "probe", "json")
        try:
            yield path
        finally:
            root.handlers[:], root.level = handlers, level
            observability.rpc_lines = None


def test_a_service_writes_its_rpc_lines_itself_in_the_shape_of_the_json_formatter(
    host: GrpcHost, service_logs: Path
) -> None:
    """The interceptor's lines skip the logging module in a service (RpcLines), and each
    is the line JsonFormatter writes for the same call, the request id masked alike."""
    assert observability.rpc_lines is not None
    root = logging.getLogger()
    handlers = root.handlers[:]
    calls = ((b"phone 13812345678", "rid-13912345678"), (b"refuse", "rid-2"))

    def call_both() -> None:
        for payload, rid in calls:
            with contextlib.suppress(grpc.RpcError):
                _echo(host, payload, (("x-request-id", rid),))

    root.handlers[:] = []  # the first two lines can come only from RpcLines
    call_both()
    root.handlers[:] = handlers
    observability.rpc_lines = None  # the same calls through the logging module
    call_both()
    logged = [json.loads(line) for line in service_logs.read_text("utf-8").splitlines()]
    rpc = [line for line in logged if line["logger"] == "etax.rpc"]
    assert len(rpc) == 4
    for written, formatted in zip(rpc[:2], rpc[2:], strict=True):
        assert list(written) == list(formatted)  # the same keys in the same order
        for entry in (written, formatted):
            entry["time"] = entry["time"][:4]  # the year: both are stamped now
            entry["message"] = entry["message"].rsplit(" ", 1)[0]  # without the duration
            assert entry.pop("duration_ms") >= 0
        assert written == formatted
    assert rpc[0]["request_id"] == "rid-139****5678" and rpc[0]["status"] == "OK"
    assert (rpc[1]["status"], rpc[1]["reason"]) == ("RESOURCE_EXHAUSTED", "SMS_RATE_LIMITED")
    assert rpc[1]["message"] == f"rpc /{SERVICE}/Echo -> RESOURCE_EXHAUSTED SMS_RATE_LIMITED"


def test_an_rpc_line_that_cannot_be_written_does_not_fail_the_call(host: GrpcHost) -> None:
    class Broken(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, _data: Any) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    observability.rpc_lines = observability.RpcLines(JsonFormatter("probe"), Broken())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        assert _echo(host, b"hello") == b"hello"
    finally:
        observability.rpc_lines = None
        root.setLevel(level)


def test_the_log_clock_stamps_local_time_to_the_millisecond() -> None:
    stamp = _Clock().stamp
    created = datetime(2026, 12, 4, 9, 30, 5, 678_900, tzinfo=CST).timestamp()
    local = time.localtime(int(created))
    offset = time.strftime("%z", local)
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", local) + ".678" + offset[:3] + ":" + offset[3:]
    assert stamp(created) == expected
    assert stamp(created + 1).startswith(time.strftime("%Y-%m-%dT%H:%M:", local))
    assert stamp(created) == expected  # an earlier second after a later one


def test_a_json_line_keeps_chinese_text_and_carries_a_traceback_masked() -> None:
    try:
        raise ValueError("手机 13812345678 无效")
    except ValueError:
        record = logging.LogRecord(
            "etax.x", logging.ERROR, __file__, 1, "发送失败 %s", ("13912345678",), sys.exc_info()
        )
    line = JsonFormatter("sms").format(record)
    assert "\n" not in line and "发送失败" in line  # one line, not \\u-escaped
    entry = json.loads(line)
    assert entry["message"] == "发送失败 139****5678"
    assert "ValueError: 手机 138****5678 无效" in entry["error"]


def test_text_at_a_terminal_json_otherwise() -> None:
    assert resolve_format("json") == "json" and resolve_format("text") == "text"
    assert resolve_format("auto") in ("json", "text")
    record = logging.LogRecord("etax.x", logging.INFO, __file__, 1, "to %s", ("13812345678",), None)
    token = request_id.set("abc")
    try:
        line = text_formatter("sms").format(record)
    finally:
        request_id.reset(token)
    assert " INFO sms [abc] etax.x: to 138****5678" in line
    assert PlatformSettings().log_format == "auto"


def test_the_exporter_serves_the_registry_on_its_port() -> None:
    exporter = metrics.Exporter("127.0.0.1", 0)
    try:
        text = httpx.get(exporter.url, timeout=5).text
        assert "# TYPE grpc_server_handled_total counter" in text
        assert "etax_db_pool_in_use" in text
    finally:
        exporter.close()


def test_redis_pools_and_calls_are_measured(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="metrics-test:")
    try:
        calls = _value("etax_store_call_seconds_count", store="redis", op="get")
        assert store.get("nothing") is None
        assert _value("etax_store_call_seconds_count", store="redis", op="get") == calls + 1
        assert _value("etax_store_pool_size", store="redis") >= 128
        assert _value("etax_store_pool_in_use", store="redis") == 0
    finally:
        store.close()


def test_a_busy_metrics_port_stops_the_service_with_a_clear_message() -> None:
    exporter = metrics.Exporter("127.0.0.1", 0)
    try:
        settings = SmsSettings(metrics_port=exporter.port)
        with pytest.raises(SystemExit, match="ETAX_SMS_METRICS_PORT"):
            metrics.serve(settings, "sms")
    finally:
        exporter.close()


def test_services_have_distinct_default_metrics_ports() -> None:
    from services.auth.settings import AuthSettings  # noqa: PLC0415
    from services.binding.settings import BindingSettings  # noqa: PLC0415
    from services.face.settings import FaceSettings  # noqa: PLC0415
    from services.web.settings import WebSettings  # noqa: PLC0415

    ports = [
        cls().metrics_port
        for cls in (AuthSettings, BindingSettings, SmsSettings, FaceSettings, WebSettings)
    ]
    expected = [topology.service(n).metrics_port for n in ("auth", "binding", "sms", "face", "web")]
    assert ports == expected and len(set(ports)) == 5


def test_deploy_prometheus_config_is_the_generated_default() -> None:
    before = DEFAULT_CONFIG.read_text()
    try:
        observe_main(["--write-default"])
        assert DEFAULT_CONFIG.read_text() == before, (
            "run python -m etax_platform.observe --write-default"
        )
    finally:
        DEFAULT_CONFIG.write_text(before)


# --- traces ---------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure("probe", exporter=exporter)
    yield exporter
    tracing.shutdown()


def test_tracing_is_off_unless_configured() -> None:
    assert not tracing.ENABLED
    assert tracing.current_ids() is None
    assert not tracing.configure("probe", "")


def test_the_server_span_continues_the_callers_traceparent_and_the_log_names_it(
    host: GrpcHost, spans: InMemorySpanExporter
) -> None:
    trace_id, parent = os.urandom(16).hex(), os.urandom(8).hex()
    _echo(host, b"hello", (("traceparent", f"00-{trace_id}-{parent}-01"),))
    (span,) = [s for s in spans.get_finished_spans() if s.name == f"{SERVICE}/Echo"]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 0


def test_a_client_call_carries_its_span_to_the_called_service(
    host: GrpcHost, spans: InMemorySpanExporter
) -> None:
    with grpc.insecure_channel(host.address) as channel:
        echo = channel.unary_unary(f"/{SERVICE}/Echo")
        assert Dependency("probe", channel, timeout=5).call(echo, b"hello") == b"hello"
    servers = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    clients = [s for s in spans.get_finished_spans() if s.kind.name == "CLIENT"]
    assert len(servers) == 1 and len(clients) == 1
    server, client = servers[0], clients[0]
    assert client.name == f"{SERVICE}/Echo"
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
