"""Calling another etax service: channels, deadlines, and errors that keep their reason.

A domain error raised by the called service comes back as the same `DomainError`, so the
end user sees the original reason and text. A dependency that is down or too slow becomes
UNAVAILABLE / PROVIDER_UNAVAILABLE, never INTERNAL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from etax_platform import tracing
from etax_platform.errors import DomainError, Reason, from_rpc_error
from etax_platform.observability import request_id
from etax_platform.server import REQUEST_ID_HEADER
from etax_platform.topology import grpc_target

log = logging.getLogger("etax.clients")

Response = TypeVar("Response")


# Every channel balances its calls over all the addresses its target resolves to (the
# replicas of a comma-separated list, or the records of a DNS name), not only the first.
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def open_channel(target: str) -> grpc.Channel:
    """A channel to another etax service (one address or a comma-separated list of its
    replicas, see `grpc_target`), balancing round robin, without a retry policy.

    gRPC itself retries what never reached the server application (a call that never left
    the client, or one the server's transport refused before any handler saw it: gRFC A6,
    "transparent retries", on while `grpc.enable_retries` is, as by default). Any status a
    server answered, UNAVAILABLE included (FACE_SERVICE_BUSY, PROVIDER_UNAVAILABLE), is
    that service's decision after its own provider retries, so it is not asked again: a
    channel retry policy would multiply the provider calls of one request. Round robin
    picks only connected replicas: a stopped one gets no new calls once its connection is
    gone, and calls that were on it fail UNAVAILABLE.

    A service that was down (or started after its caller) is connected again within a
    second: gRPC's reconnect backoff grows to two minutes by default.
    """
    return grpc.insecure_channel(
        grpc_target(target),
        options=[
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.service_config", _ROUND_ROBIN),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
        ],
    )


def call(
    method: Callable[..., Response], request: Any, *, timeout: float, dependency: str
) -> Response:
    """Calls a stub method with a deadline and the current request id (and, when tracing
    is on, in a CLIENT span whose traceparent the called service continues). The call
    waits (within its deadline) for a channel that is still connecting, instead of failing
    at once while gRPC backs off between attempts to reach a service that just came up."""
    metadata = [(REQUEST_ID_HEADER, request_id.get())]
    try:
        if tracing.ENABLED:
            name = _method_name(method)
            service, _, rpc = name.rpartition("/")
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
            with tracing.client_span(name, metadata, attributes):
                return method(request, timeout=timeout, metadata=metadata, wait_for_ready=True)
        return method(request, timeout=timeout, metadata=metadata, wait_for_ready=True)
    except grpc.RpcError as error:
        domain_error = from_rpc_error(error)
        if domain_error is not None:
            raise domain_error from None
        code = error.code() if hasattr(error, "code") else None
        log.warning("%s call failed: %s", dependency, code)
        raise DomainError(
            Reason.PROVIDER_UNAVAILABLE, metadata={"dependency": dependency}
        ) from None


def _method_name(method: Callable[..., Any]) -> str:
    """package.Service/Method of a stub's multicallable (grpcio keeps its path)."""
    path = getattr(method, "_method", b"")
    if isinstance(path, bytes):
        path = path.decode("ascii", "replace")
    return str(path).lstrip("/") or "grpc"
