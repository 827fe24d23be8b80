"""Calls between services (`etax_platform.clients.Dependency`): a called service that is
down costs its caller about a second per call, not the call's deadline; one that starts
after its caller, or comes back, gets its calls once connected; its refusals keep their
reason.

Real gRPC servers on loopback ports; the deadlines are long so that a call waiting them
out cannot pass for one that failed fast.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import grpc
import pytest

from etax_platform.clients import RECONNECT_WAIT_SECONDS, Dependency, open_channel
from etax_platform.errors import DomainError, Reason
from etax_platform.server import GrpcHost, Registration
from tests.harness.servers import free_port

SERVICE = "etax.test.v1.Downstream"
DEADLINE = 30.0
# Far below DEADLINE, above RECONNECT_WAIT_SECONDS and a refused connection's round trip.
FAIL_FAST = RECONNECT_WAIT_SECONDS + 3.0


def _answer(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"refuse":
        raise DomainError(Reason.SMS_RATE_LIMITED, retry_after=timedelta(seconds=1))
    return request


def _add(server: grpc.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(_answer)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler})]
    )


@contextmanager
def downstream(port: int) -> Iterator[GrpcHost]:
    host = GrpcHost([Registration(SERVICE, _add)], port=port).start()
    try:
        yield host
    finally:
        host.stop(grace=0)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def channel(port: int) -> Iterator[grpc.Channel]:
    channel = open_channel(f"127.0.0.1:{port}")
    yield channel
    channel.close()


def _echo(dependency: Dependency, channel: grpc.Channel, payload: bytes = b"hello") -> bytes:
    result: bytes = dependency.call(channel.unary_unary(f"/{SERVICE}/Echo"), payload)
    return result


def _unavailable_within(seconds: float, dependency: Dependency, channel: grpc.Channel) -> None:
    began = time.monotonic()
    with pytest.raises(DomainError) as failure:
        _echo(dependency, channel)
    assert time.monotonic() - began < seconds
    assert failure.value.reason is Reason.PROVIDER_UNAVAILABLE
    assert failure.value.metadata == {"dependency": "downstream"}


def _wait_for(state: grpc.ChannelConnectivity, channel: grpc.Channel) -> None:
    reached = threading.Event()

    def seen(current: grpc.ChannelConnectivity) -> None:
        if current is state:
            reached.set()

    channel.subscribe(seen, try_to_connect=True)
    try:
        assert reached.wait(10), f"the channel never reached {state}"
    finally:
        channel.unsubscribe(seen)


def test_a_service_that_is_down_fails_each_call_fast_not_at_its_deadline(
    channel: grpc.Channel,
) -> None:
    dependency = Dependency("downstream", channel, timeout=DEADLINE)
    for _ in range(3):
        _unavailable_within(FAIL_FAST, dependency, channel)


def test_many_callers_of_a_service_that_is_down_are_all_answered_fast(
    channel: grpc.Channel,
) -> None:
    """Twenty calls at once against a stopped service: none holds its thread for the
    deadline (a caller's workers stay free for its other RPCs)."""
    dependency = Dependency("downstream", channel, timeout=DEADLINE)
    _wait_for(grpc.ChannelConnectivity.TRANSIENT_FAILURE, channel)
    failures: list[Reason] = []

    def one() -> None:
        try:
            _echo(dependency, channel)
        except DomainError as error:
            failures.append(error.reason)

    began = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert time.monotonic() - began < FAIL_FAST
    assert failures == [Reason.PROVIDER_UNAVAILABLE] * 20


def test_a_service_started_after_its_caller_gets_the_callers_next_call(
    port: int, channel: grpc.Channel
) -> None:
    """The call that found it down left the channel backing off; the next one waits for
    the next attempt instead of failing at once."""
    dependency = Dependency("downstream", channel, timeout=DEADLINE)
    _unavailable_within(FAIL_FAST, dependency, channel)
    with downstream(port):
        assert _echo(dependency, channel) == b"hello"


def test_a_service_that_comes_back_is_called_again(port: int, channel: grpc.Channel) -> None:
    dependency = Dependency("downstream", channel, timeout=DEADLINE)
    with downstream(port):
        assert _echo(dependency, channel) == b"hello"
    _wait_for(grpc.ChannelConnectivity.TRANSIENT_FAILURE, channel)
    _unavailable_within(FAIL_FAST, dependency, channel)
    with downstream(port):
        assert _echo(dependency, channel, b"again") == b"again"


def test_a_refusal_of_the_called_service_keeps_its_reason(port: int, channel: grpc.Channel) -> None:
    dependency = Dependency("downstream", channel, timeout=DEADLINE)
    with downstream(port), pytest.raises(DomainError) as refusal:
        _echo(dependency, channel, b"refuse")
    assert refusal.value.reason is Reason.SMS_RATE_LIMITED
