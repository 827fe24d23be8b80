"""The web service's request metrics (docs/operations.md): one counter and one latency
histogram per route template, so a path never becomes a label."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from etax_platform import tracing
from etax_platform.metrics import LATENCY_BUCKETS

REQUESTS = Counter(
    "etax_web_requests_total",
    "HTTP requests to the web pages, by route template, method and status.",
    ["route", "method", "status"],
)
SECONDS = Histogram(
    "etax_web_request_seconds",
    "Time to answer a web request (its platform calls included), by route template.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
_METHODS = frozenset({"GET", "POST", "HEAD"})


class RequestMetrics:
    """ASGI middleware: counts each request under the route Starlette matched (and, when
    tracing is on, serves it in a span continuing the gateway's traceparent)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        method = scope["method"] if scope["method"] in _METHODS else "other"
        traced = None
        if tracing.ENABLED:
            headers = dict(scope.get("headers") or [])
            traced = tracing.start_span(
                f"{method} page",
                headers.get(b"traceparent", b"").decode("latin-1"),
                headers.get(b"tracestate", b"").decode("latin-1"),
                {"http.request.method": method},
            )
        try:
            await self.app(scope, receive, recording)
        finally:
            # The router leaves the matched route in the scope; its template, not the path.
            route = str(getattr(scope.get("route"), "path", "unmatched"))
            REQUESTS.labels(route, method, str(status)).inc()
            SECONDS.labels(route).observe(time.perf_counter() - started)
            if traced is not None:
                traced[0].update_name(f"{method} {route}")
                tracing.end_span(*traced, failed=status >= 500)
