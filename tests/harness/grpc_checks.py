"""What every server promises: health per service name and reflection (v1 and v1alpha)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    return status


def reflected_services(channel: grpc.Channel, version: str = "v1") -> set[str]:
    """The service names the server's reflection lists (grpcurl's and ghz's view)."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (response,) = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    return {s.name for s in response.list_services_response.service}
