"""The gRPC host every service runs on: health, reflection, errors, request ids, shutdown."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta

import grpc
import pytest
import redis
from etax.auth.v1 import auth_pb2
from etax.binding.v1 import binding_pb2, binding_pb2_grpc
from etax.face.v1 import face_pb2
from etax.sms.v1 import sms_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from etax_platform.errors import DomainError, Reason, from_rpc_error
from etax_platform.policy import service_policies, undeclared
from etax_platform.server import GrpcHost, Registration, _StreamSlots

SERVICE = "etax.test.v1.ProbeService"

# What redis-py raises while a Redis Cluster fails over or moves slots (one of each).
CLUSTER_FAILURES: dict[bytes, Exception] = {
    b"cluster-down": redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
    b"master-down": redis.exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"),
    b"try-again": redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request"),
    b"slot-not-covered": redis.exceptions.SlotNotCoveredError("Slot 42 is not covered"),
    b"max-connections": redis.exceptions.MaxConnectionsError("Too many connections"),
    b"ttl-exhausted": redis.exceptions.ClusterError("TTL exhausted."),
    b"moved": redis.exceptions.MovedError("3999 127.0.0.1:6381"),
    b"read-only": redis.exceptions.ReadOnlyError("READONLY You can't write against a replica"),
    b"timeout": redis.exceptions.TimeoutError("Timeout reading from socket"),
}


def _probe(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"domain":
        raise DomainError(Reason.SMS_RATE_LIMITED, retry_after=timedelta(seconds=42))
    if request == b"store-down":
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1")
    if request == b"bug":
        raise RuntimeError("secret detail 11010519491231002X")
    if request in CLUSTER_FAILURES:
        raise CLUSTER_FAILURES[request]
    if request == b"cross-slot":
        raise redis.exceptions.RedisClusterException("Keys don't hash to the same slot")
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


@pytest.fixture
def channel(host: GrpcHost) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(host.address) as channel:
        yield channel


def _echo(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/Echo")


def test_health_is_serving_per_service_name(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_turns_not_serving_on_shutdown(host: GrpcHost, channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    host.health.enter_graceful_shutdown()
    response = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
def test_reflection_lists_services_on_both_protocol_versions(
    channel: grpc.Channel, version: str
) -> None:
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= names


def test_reflection_v1_describes_itself(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection"
    )
    (response,) = list(stub.ServerReflectionInfo(iter([request])))
    assert response.file_descriptor_response.file_descriptor_proto


def test_domain_error_carries_reason_user_text_and_retry_info(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _echo(channel)(b"domain", timeout=5)
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(error)
    kinds = {d.type_url.rsplit("/", 1)[-1] for d in status.details}
    assert kinds == {"google.rpc.ErrorInfo", "google.rpc.LocalizedMessage", "google.rpc.RetryInfo"}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert (info.domain, info.reason) == ("etax", "SMS_RATE_LIMITED")
    domain_error = from_rpc_error(error)
    assert domain_error is not None
    assert domain_error.reason is Reason.SMS_RATE_LIMITED
    assert domain_error.user_text == "短信验证码获取频繁，请稍后重试"
    assert domain_error.retry_after == timedelta(seconds=42)


def test_unexpected_failure_is_internal_without_its_text(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _echo(channel)(b"bug", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    assert from_rpc_error(caught.value) is None


def test_request_id_is_echoed_in_trailing_metadata(channel: grpc.Channel) -> None:
    _, call = _echo(channel).with_call(b"hello", metadata=(("x-request-id", "req-123"),), timeout=5)
    assert ("x-request-id", "req-123") in tuple(call.trailing_metadata())
    with pytest.raises(grpc.RpcError) as caught:
        _echo(channel)(b"domain", metadata=(("x-request-id", "req-456"),), timeout=5)
    assert ("x-request-id", "req-456") in tuple(caught.value.trailing_metadata())


def test_stopped_host_refuses_new_calls(host: GrpcHost) -> None:
    channel = grpc.insecure_channel(host.address)
    assert _echo(channel)(b"before", timeout=5) == b"before"
    host.stop(grace=1)
    with pytest.raises(grpc.RpcError) as caught:
        _echo(channel)(b"after", timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_a_store_that_is_down_is_unavailable_not_internal(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _echo(channel)(b"store-down", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    error = from_rpc_error(caught.value)
    assert error is not None and error.reason is Reason.PROVIDER_UNAVAILABLE
    assert error.metadata == {"dependency": "store"}


# --- requests the interceptor refuses before any servicer runs (issue 11) -----------------


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff", b"\x0a\x02\xc3\x28", b"\x0a\x10ab"],
    ids=["not-protobuf", "invalid-utf8", "truncated"],
)
def test_bytes_that_do_not_decode_are_malformed_request_without_a_traceback(
    channel: grpc.Channel, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """The server parses the request itself: INVALID_ARGUMENT / MALFORMED_REQUEST, never
    gRPC's INTERNAL "Exception deserializing request!" with an ERROR traceback."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as caught:
        check(body, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = from_rpc_error(caught.value)
    assert error is not None and error.reason is Reason.MALFORMED_REQUEST
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_malformed_requests_are_warned_about_at_most_once_per_window(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    with caplog.at_level(logging.WARNING, logger="etax.rpc"):
        for _ in range(20):
            with pytest.raises(grpc.RpcError):
                check(b"\xff\xff", timeout=5)
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) <= 1


def test_an_unclaimed_stream_slot_comes_back_by_itself() -> None:
    """A stream cancelled before gRPC ran its handler must not keep its slot for good."""
    slots = _StreamSlots(1, claim_seconds=0.05)
    first = slots.take()
    assert first is not None and slots.take() is None
    time.sleep(0.1)
    second = slots.take()
    assert second is not None
    with slots.held(second):
        assert slots.take() is None
    assert slots.take() is not None


def test_a_session_bearing_service_needs_an_authenticator() -> None:
    def add(server: grpc.Server) -> None:
        binding_pb2_grpc.add_BindingServiceServicer_to_server(
            binding_pb2_grpc.BindingServiceServicer(), server
        )

    with pytest.raises(ValueError, match="authenticator"):
        GrpcHost([Registration("etax.binding.v1.BindingService", add)], port=0)


def test_every_rpc_of_every_service_declares_a_policy() -> None:
    """DESIGN.md, Policy in the contract: a new RPC without an option fails here (and its
    service refuses to start)."""
    names = [
        service.full_name
        for module in (auth_pb2, binding_pb2, face_pb2, sms_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    ]
    policies = [p for name in names for p in service_policies(name)]
    assert len(policies) > 60
    assert undeclared(policies) == []


@pytest.mark.parametrize("failure", sorted(CLUSTER_FAILURES))
def test_a_cluster_failing_over_is_unavailable_not_internal(
    channel: grpc.Channel, failure: bytes
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _echo(channel)(failure, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    error = from_rpc_error(caught.value)
    assert error is not None and error.reason is Reason.PROVIDER_UNAVAILABLE
    assert error.metadata == {"dependency": "store"}


def test_a_cross_slot_script_is_a_bug_not_an_outage(channel: grpc.Channel) -> None:
    """Keys of two owners in one script never work on a cluster: INTERNAL, so it is fixed
    rather than retried."""
    with pytest.raises(grpc.RpcError) as caught:
        _echo(channel)(b"cross-slot", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
