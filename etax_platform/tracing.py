"""OpenTelemetry traces (W3C `traceparent`): the gateway starts or continues a trace,
every service continues it in its server interceptor, through its gRPC clients, its Redis
and database calls and its provider calls.

Off unless `ETAX_OTEL_ENDPOINT` names an OTLP/gRPC collector: then `configure` builds this
process's tracer (resource `service.name` = the service) with a batching exporter. While
off, `ENABLED` is False and every helper here returns before touching OpenTelemetry, so
the request path pays one attribute check (the bench shows the figure).

The tracer provider is this module's own, not OpenTelemetry's global one (which can be
set once per process): tests configure and shut down tracing in one interpreter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("etax.tracing")

ENABLED = False
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_propagator = TraceContextTextMapPropagator()

# gRPC status names to numbers, for the rpc.grpc.status_code attribute.
_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


def configure(service: str, endpoint: str = "", *, exporter: SpanExporter | None = None) -> bool:
    """Turns tracing on for this process: OTLP/gRPC to `endpoint`, or (tests) spans to
    `exporter` as each ends. Neither: stays off. Returns whether it is on."""
    global ENABLED, _provider, _tracer
    if not endpoint and exporter is None:
        return False
    # Imported here: a process without tracing never loads the SDK's exporters.
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        insecure = not endpoint.startswith("https://")
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint, insecure=insecure),
                schedule_delay_millis=500,
            )
        )
        log.info("traces of %s go to %s (OTLP/gRPC)", service, endpoint)
    _provider, _tracer, ENABLED = provider, provider.get_tracer("etax"), True
    return True


def shutdown() -> None:
    """Exports what is buffered and turns tracing off."""
    global ENABLED, _provider, _tracer  # noqa: PLW0603 - the process's one tracer
    provider, ENABLED = _provider, False
    _provider = _tracer = None
    if provider is not None:
        provider.shutdown()


def flush(timeout_millis: int = 5000) -> None:
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, for log lines; None when off."""
    if not ENABLED:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# --- the server side (etax_platform/server.py) --------------------------------------------


def start_server_span(method: str, traceparent: str, tracestate: str) -> tuple[Span, object]:
    """A SERVER span for an RPC, child of the caller's `traceparent` (if any), made the
    current span; end it with `end_server_span`."""
    service, _, name = method.lstrip("/").rpartition("/")
    return start_span(
        f"{service}/{name}",
        traceparent,
        tracestate,
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )


def start_span(
    name: str, traceparent: str, tracestate: str, attributes: dict[str, Any]
) -> tuple[Span, object]:
    """A SERVER span continuing `traceparent` (or a new trace), made the current span."""
    assert _tracer is not None
    parent = None
    if traceparent:
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        parent = _propagator.extract(carrier)
    span = _tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_span(span: Span, token: object, failed: bool = False) -> None:
    if failed:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    otel_context.detach(token)  # type: ignore[arg-type]


def end_server_span(span: Span, token: object, code: str, reason: str) -> None:
    span.set_attribute("rpc.grpc.status_code", _CODES.get(code, 2))
    if code != "OK":
        span.set_status(Status(StatusCode.ERROR, reason or code))
        if reason:
            span.set_attribute("etax.reason", reason)
    span.end()
    otel_context.detach(token)  # type: ignore[arg-type]


# --- outgoing calls ---------------------------------------------------------------------------


@contextmanager
def client_span(
    name: str, metadata: list[tuple[str, str]], attributes: dict[str, Any]
) -> Iterator[Span]:
    """A CLIENT span around an outgoing gRPC call; its traceparent goes into metadata."""
    assert _tracer is not None
    span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    context = trace.set_span_in_context(span)
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=context)
    metadata.extend(carrier.items())
    token = otel_context.attach(context)
    try:
        yield span
    except Exception as error:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        raise
    finally:
        span.end()
        otel_context.detach(token)


@contextmanager
def span(
    name: str, kind: SpanKind = SpanKind.CLIENT, attributes: dict[str, Any] | None = None
) -> Iterator[Span]:
    """A span around a store, database or provider call (current while it runs)."""
    assert _tracer is not None
    with _tracer.start_as_current_span(
        name, kind=kind, attributes=attributes, record_exception=False
    ) as current:
        try:
            yield current
        except Exception as error:
            current.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise


def inject(headers: MutableMapping[str, str]) -> None:
    """The current span's traceparent into outgoing HTTP headers (providers)."""
    _propagator.inject(headers)


def instrument_engine(engine: Any, database: str) -> None:
    """A CLIENT span per SQL statement of this engine (SQLAlchemy cursor events). Called
    only while tracing is on, so an engine without tracing has no listener at all."""
    if not ENABLED:
        return
    from sqlalchemy import event  # noqa: PLC0415

    system = engine.dialect.name

    @event.listens_for(engine, "before_cursor_execute")
    def _before(
        _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        if not ENABLED or _tracer is None:
            return
        operation = statement.lstrip().split(" ", 1)[0].upper()
        context._etax_span = _tracer.start_span(
            f"{operation} {database}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": system,
                "db.name": database,
                # Statements carry placeholders, never values (bound parameters).
                "db.statement": statement[:512],
            },
        )

    @event.listens_for(engine, "after_cursor_execute")
    def _after(
        _conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        started = getattr(context, "_etax_span", None)
        if started is not None:
            started.end()
            context._etax_span = None

    @event.listens_for(engine, "handle_error")
    def _error(exception_context: Any) -> None:
        context = exception_context.execution_context
        started = getattr(context, "_etax_span", None) if context is not None else None
        if started is not None:
            started.set_status(
                Status(StatusCode.ERROR, type(exception_context.original_exception).__name__)
            )
            started.end()
            context._etax_span = None
