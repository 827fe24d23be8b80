"""The platform's topology, written once: every service's name, default port, metrics
port, health-checked name and what it calls; the gateway's ports.

Settings defaults (each service's `settings.py`, the gateway's), the gateway's upstream
clusters, the launcher (`make run`, `make run-shared`), the benchmark and the test
harnesses read this table. Every port and address stays overridable by its environment
variable (`ETAX_AUTH_PORT`, `ETAX_AUTH_SMS_TARGET`, `ETAX_GATEWAY_AUTH_ADDRESS`, ...):
outside tools start the platform with every port moved.

Replicas: replica i (0, 1, ...) of a service listens on its port + 100 * i (50051, 50151,
...) in the configurations the launcher starts; a target or gateway address lists them
comma-separated (`127.0.0.1:50051,127.0.0.1:50151`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

LOOPBACK = "127.0.0.1"
# Replica i of a service listens on port + REPLICA_PORT_STEP * i.
REPLICA_PORT_STEP = 100
# What a target may name besides a service: the gateway's public listener.
GATEWAY = "gateway"


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    # Prometheus /metrics (ETAX_<NAME>_METRICS_PORT): reserved here for every service.
    metrics_port: int
    # gRPC: the health service name Envoy checks (and the harness waits for). HTTP: a path.
    health: str
    protocol: Literal["grpc", "http"] = "grpc"
    # Settings field -> what it calls (a service name or GATEWAY).
    targets: Mapping[str, str] = field(default_factory=dict)
    # Keeps tables (ETAX_<NAME>_DATABASE_URL); the others keep only key-value state.
    database: bool = False

    @property
    def env_prefix(self) -> str:
        return f"ETAX_{self.name.upper()}_"

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    @property
    def package(self) -> str:
        """The contract's proto package (etax.auth.v1): gRPC services only."""
        return f"etax.{self.name}.v1"

    @property
    def port_variable(self) -> str:
        return f"{self.env_prefix}PORT"

    @property
    def metrics_port_variable(self) -> str:
        return f"{self.env_prefix}METRICS_PORT"

    def target_variable(self, target_field: str) -> str:
        return f"{self.env_prefix}{target_field.upper()}"

    def replica_port(self, replica: int, base: int | None = None) -> int:
        return (self.port if base is None else base) + REPLICA_PORT_STEP * replica

    def replica_metrics_port(self, replica: int, base: int | None = None) -> int:
        return (self.metrics_port if base is None else base) + REPLICA_PORT_STEP * replica


SERVICES: Mapping[str, Service] = {
    service.name: service
    for service in (
        Service(
            "auth",
            port=50051,
            metrics_port=9451,
            health="etax.auth.v1.AuthService",
            targets={"sms_target": "sms", "face_target": "face", "binding_target": "binding"},
            database=True,
        ),
        Service(
            "binding",
            port=50052,
            metrics_port=9452,
            health="etax.binding.v1.BindingService",
            targets={"auth_target": "auth"},
            database=True,
        ),
        Service(
            "sms", port=50053, metrics_port=9453, health="etax.sms.v1.SmsService", database=True
        ),
        Service("face", port=50054, metrics_port=9454, health="etax.face.v1.FaceService"),
        Service(
            "web",
            port=50060,
            metrics_port=9460,
            health="/healthz",
            protocol="http",
            targets={"gateway_target": GATEWAY, "sms_outbox_target": "sms"},
        ),
    )
}
# The gRPC services behind the gateway (one upstream cluster each), in start order:
# a service before the ones that call it.
GRPC_SERVICES: tuple[str, ...] = ("sms", "face", "binding", "auth")


@dataclass(frozen=True)
class GatewayPorts:
    public: int
    internal: int
    admin: int


# The gateway (ETAX_GATEWAY_PUBLIC_PORT, _INTERNAL_PORT, _ADMIN_PORT); the n-th extra
# province's gateway on the same machine takes each port + n (deploy/envoy/province-11.env),
# and its web service the web port + n.
GATEWAY_PORTS = GatewayPorts(public=8080, internal=8443, admin=9901)
PROVINCE = "37"

# The shared configuration's local stores (`make run-shared`; ETAX_SHARED_REDIS_PORT,
# ETAX_SHARED_POSTGRES_PORT).
REDIS_PORT = 6379
POSTGRES_PORT = 5432


def service(name: str) -> Service:
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"no service {name!r} in the topology") from None


def address(port: int, host: str = LOOPBACK) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_address(name: str) -> str:
    """Where a service listens by default: 127.0.0.1:<port>; GATEWAY: the public listener."""
    if name == GATEWAY:
        return address(GATEWAY_PORTS.public)
    return address(service(name).port)


def default_target(caller: str, target_field: str) -> str:
    """A settings field's default: the default address of what it names."""
    return default_address(service(caller).targets[target_field])


def gateway_ports(index: int = 0) -> GatewayPorts:
    """The ports of the index-th gateway on one machine (0: the default one)."""
    return GatewayPorts(
        GATEWAY_PORTS.public + index, GATEWAY_PORTS.internal + index, GATEWAY_PORTS.admin + index
    )


def gateway_address_variable(name: str) -> str:
    """The gateway's setting for a service's addresses: ETAX_GATEWAY_AUTH_ADDRESS."""
    return f"ETAX_GATEWAY_{service(name).name.upper()}_ADDRESS"


def service_of(grpc_service: str) -> str:
    """etax.auth.v1.InternalAuthService -> auth (the service that serves it)."""
    package = grpc_service.rpartition(".")[0]
    for name in GRPC_SERVICES:
        if SERVICES[name].package == package:
            return name
    raise ValueError(f"no service of the topology serves {grpc_service!r}")


def target_env(
    addresses: Mapping[str, Sequence[str]], *, gateway: str | None = None
) -> dict[str, str]:
    """Every caller's target variables (ETAX_AUTH_SMS_TARGET=...), from the addresses of
    the replicas of each service; a target whose service is not in `addresses` (or the
    gateway, when `gateway` is None) is left to its default."""
    env: dict[str, str] = {}
    for caller in SERVICES.values():
        for target_field, callee in caller.targets.items():
            if callee == GATEWAY:
                if gateway is not None:
                    env[caller.target_variable(target_field)] = gateway
            elif addresses.get(callee):
                env[caller.target_variable(target_field)] = ",".join(addresses[callee])
    return env


def gateway_env(addresses: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The gateway's address variables (ETAX_GATEWAY_AUTH_ADDRESS=...) for these replicas."""
    return {
        gateway_address_variable(name): ",".join(replicas)
        for name, replicas in addresses.items()
        if replicas
    }


def grpc_target(target: str) -> str:
    """A gRPC target for a setting: `host:port` as it is (DNS); several comma-separated
    IP literals (`127.0.0.1:50051,127.0.0.1:50151`, replicas) as gRPC's static
    `ipv4:`/`ipv6:` list. Several DNS names cannot share one target (give one name whose
    records list the replicas); ValueError says so."""
    items = [item.strip() for item in target.split(",") if item.strip()]
    if not items:
        raise ValueError("empty gRPC target")
    if len(items) == 1:
        return items[0]
    families = set()
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"not host:port: {item!r}")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            raise ValueError(
                f"a list of replicas must give IP addresses, not {host!r}: use one DNS name"
                " whose records list them"
            ) from None
    if len(families) != 1:
        raise ValueError("a list of replicas must be all IPv4 or all IPv6")
    return f"ipv{families.pop()}:{','.join(items)}"
