"""Calling another etax service: channels, deadlines, and errors that keep their reason.

A domain error raised by the called service comes back as the same `DomainError`, so the
end user sees the original reason and text. A dependency that is down or too slow becomes
UNAVAILABLE / PROVIDER_UNAVAILABLE, never INTERNAL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
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


# How long a call waits for a channel whose last connection attempt failed: the next
# attempt starts within the reconnect backoff (at most 1 s, plus gRPC's 20 % jitter).
RECONNECT_WAIT_SECONDS = 1.5


class Dependency:
    """Another etax service as its caller sees it: the deadline of each call, the name a
    failure reports (`metadata["dependency"]`), and whether its channel can reach it.

    Calls are fail-fast: a call on a channel that is connecting (its first call, or a
    service that came back) waits for the connection, but one on a channel whose last
    attempt failed fails UNAVAILABLE at once instead of waiting out its deadline. An
    outage would otherwise hold a worker of the caller for the whole deadline per call
    (with 64 workers and a 5 s deadline, 13 calls a second stall every other RPC of the
    caller). After a call fails UNAVAILABLE the dependency follows the channel's state
    until it is connected again, and each call waits at most `RECONNECT_WAIT_SECONDS` for
    the next attempt to begin, so a service that just started is called once that
    attempt connects. Only then: following a channel's state costs a thread that wakes
    five times a second, and a closed channel waits for it.
    """

    def __init__(self, name: str, channel: grpc.Channel, timeout: float) -> None:
        self.name = name
        self._channel = channel
        self._timeout = timeout
        # Set unless the channel's last attempt failed.
        self._reachable = threading.Event()
        self._reachable.set()
        self._following = False
        self._lock = threading.Lock()

    def _follow(self) -> None:
        with self._lock:
            if self._following:
                return
            self._following = True
            self._reachable.clear()
        self._channel.subscribe(self._connectivity_changed, try_to_connect=True)

    def _connectivity_changed(self, state: grpc.ChannelConnectivity) -> None:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            self._reachable.clear()
            return
        self._reachable.set()
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.SHUTDOWN):
            with self._lock:
                self._following = False
            self._channel.unsubscribe(self._connectivity_changed)

    def call(self, method: Callable[..., Response], request: Any) -> Response:
        """Calls a stub method of this dependency with its deadline and the current request
        id (and, when tracing is on, in a CLIENT span whose traceparent the called service
        continues)."""
        timeout = self._timeout
        if not self._reachable.is_set():
            began = time.monotonic()
            if not self._reachable.wait(min(timeout, RECONNECT_WAIT_SECONDS)):
                log.warning("%s unreachable: its last connection attempt failed", self.name)
                raise self._unavailable()
            timeout -= time.monotonic() - began
        metadata = [(REQUEST_ID_HEADER, request_id.get())]
        try:
            if tracing.ENABLED:
                name = _method_name(method)
                service, _, rpc = name.rpartition("/")
                attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
                with tracing.client_span(name, metadata, attributes):
                    return method(request, timeout=timeout, metadata=metadata)
            return method(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            domain_error = from_rpc_error(error)
            if domain_error is not None:
                raise domain_error from None
            code = error.code() if hasattr(error, "code") else None
            log.warning("%s call failed: %s", self.name, code)
            if code is grpc.StatusCode.UNAVAILABLE:
                self._follow()
            raise self._unavailable() from None

    def _unavailable(self) -> DomainError:
        return DomainError(Reason.PROVIDER_UNAVAILABLE, metadata={"dependency": self.name})


def _method_name(method: Callable[..., Any]) -> str:
    """package.Service/Method of a stub's multicallable (grpcio keeps its path)."""
    path = getattr(method, "_method", b"")
    if isinstance(path, bytes):
        path = path.decode("ascii", "replace")
    return str(path).lstrip("/") or "grpc"
