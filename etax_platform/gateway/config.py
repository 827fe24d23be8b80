"""The Envoy configuration: `deploy/envoy/envoy.yaml.tmpl` filled in from the settings.

The template holds the listeners and filters; this module fills in the ports, upstream
clusters, certificates, the JWKS source, the province, the route tables generated from
the contract (`routes`) and the JSON error replies (`replies`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import descriptor_pb2

from etax_platform import topology
from etax_platform.certs import client_uri
from etax_platform.gateway import routes
from etax_platform.gateway.replies import local_reply_config
from etax_platform.gateway.routes import seconds
from etax_platform.gateway.settings import GatewaySettings, split_address
from etax_platform.policy import PROVINCE_HEADER, RpcPolicy, contract_policies, undeclared
from etax_platform.settings import REPO_ROOT

TEMPLATE = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml.tmpl"
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")

# Upstream clusters: one per gRPC service, health-checked by the name the topology gives.
UPSTREAMS = {name: topology.SERVICES[name].health for name in topology.GRPC_SERVICES}

# Headers only the gateway sets; removed from every request before any filter runs.
JWT_PAYLOAD_HEADER = "x-etax-jwt-payload"
GATEWAY_HEADERS = (
    JWT_PAYLOAD_HEADER,
    "x-etax-person-id",
    "x-etax-session-id",
    PROVINCE_HEADER,
    "x-etax-gateway",
    routes.NO_UPSTREAM_HEADER,
)


def _type(name: str) -> str:
    return f"type.googleapis.com/envoy.extensions.{name}"


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


def _jwt_providers(settings: GatewaySettings) -> dict[str, Any]:
    key, source = _jwks_source(settings)
    providers: dict[str, Any] = {
        "etax_auth": {
            "issuer": "etax-auth",
            "audiences": ["etax"],
            key: source,
            "forward": True,
            "forward_payload_header": JWT_PAYLOAD_HEADER,
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


def _upstream_cluster(
    settings: GatewaySettings, service: str, name: str | None = None, max_requests: int = 4096
) -> dict[str, Any]:
    """A service's cluster (every replica a host); `name` for a streaming route's own."""
    name = name or service
    addresses = [split_address(a) for a in settings.upstream(service).split(",")]
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
        # A replica that refuses connections (killed, restarting) leaves the rotation at
        # its first refusal, not at its next failed health check; a passing health check
        # brings it back. Answers (gRPC errors included) never eject a replica.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "enforcing_success_rate": 0,
            "enforcing_local_origin_success_rate": 0,
            "interval": "1s",
            "base_ejection_time": "2s",
            "max_ejection_time": "10s",
            "max_ejection_percent": 100,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 1024,
                    "max_pending_requests": 4096,
                    "max_requests": max_requests,
                    "max_retries": 64,
                }
            ]
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": seconds(interval),
                # Default 60 s: a service that came up late would stay out for a minute.
                "no_traffic_interval": seconds(interval),
                "unhealthy_interval": seconds(min(interval, 1.0)),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": UPSTREAMS[service]},
            }
        ],
    }


def _web_cluster(settings: GatewaySettings) -> dict[str, Any]:
    """The web pages over HTTP/1.1 (no http2_protocol_options), health-checked by GET."""
    addresses = [split_address(a) for a in settings.web_address.split(",")]
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
                "interval": seconds(interval),
                "no_traffic_interval": seconds(interval),
                "unhealthy_interval": seconds(min(interval, 1.0)),
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


def _otel_cluster(endpoint: str) -> dict[str, Any]:
    parts = urlsplit(endpoint)
    assert parts.hostname is not None  # checked by GatewaySettings
    host, port = parts.hostname, parts.port or 4317
    return {
        "name": "otel_collector",
        **_discovery_type([host]),
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "otel_collector",
            "endpoints": [{"lb_endpoints": _endpoints([(host, port)])}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _type("upstreams.http.v3.HttpProtocolOptions"),
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }


def _tracing(settings: GatewaySettings) -> dict[str, Any] | None:
    """Envoy's OpenTelemetry tracer: every request continues the client's traceparent or
    starts a trace; the upstream call gets a span of its own, whose id the service's
    server span takes as parent. None: no tracing (the default)."""
    if not settings.otel_endpoint:
        return None
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "otel_collector"},
                    "timeout": "1s",
                },
                "service_name": "gateway",
            },
        },
        "random_sampling": {"value": 100},
        "spawn_upstream_span": True,
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


# What a browser page may send and read across origins: the JSON API's headers and
# gRPC-Web's. The methods are those of the public google.api.http bindings (a test checks
# them against the OpenAPI document).
CORS_METHODS = ("GET", "POST", "PUT", "DELETE")
CORS_REQUEST_HEADERS = (
    "authorization",
    "content-type",
    "x-request-id",
    routes.APP_ID_HEADER,
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
)
CORS_EXPOSED_HEADERS = ("x-request-id", "grpc-status", "grpc-message")


def _cors(settings: GatewaySettings) -> dict[str, Any]:
    """The public virtual host's CORS policy for the configured origins (none: no policy,
    so no CORS headers, and the preflight route refuses every preflight). A preflight from
    another origin is answered without allow-origin, never forwarded."""
    origins = settings.cors_origin_list()
    if not origins:
        return {}
    return {
        "envoy.filters.http.cors": {
            "@type": _type("filters.http.cors.v3.CorsPolicy"),
            "allow_origin_string_match": [{"exact": origin} for origin in origins],
            "allow_methods": ", ".join(CORS_METHODS),
            "allow_headers": ", ".join(CORS_REQUEST_HEADERS),
            "expose_headers": ", ".join(CORS_EXPOSED_HEADERS),
            "max_age": str(settings.cors_max_age_seconds),
            # Tokens travel in Authorization, never in cookies.
            "allow_credentials": False,
            "forward_not_matching_preflights": False,
        }
    }


def _clusters(settings: GatewaySettings, policies: list[RpcPolicy]) -> list[Any]:
    clusters = [_upstream_cluster(settings, name) for name in UPSTREAMS]
    clusters.append(_web_cluster(settings))
    # Each public streaming route gets a cluster of its own: its circuit breaker caps
    # the open streams of that route, and they never queue the unary calls' requests.
    for policy in policies:
        if policy.public and policy.server_streaming:
            clusters.append(
                _upstream_cluster(
                    settings,
                    routes.cluster_of(policy.service),
                    routes.stream_cluster(policy),
                    max_requests=settings.max_streams_per_route,
                )
            )
    if settings.jwks_source == "remote":
        clusters.append(_jwks_cluster(settings.effective_jwks_url))
    if settings.otel_endpoint:
        clusters.append(_otel_cluster(settings.otel_endpoint))
    return clusters


def _original_ip_detection(settings: GatewaySettings) -> list[Any]:
    """The client of a request is the connection's address, unless a trusted proxy (the
    web service, an APP backend) connects: then the address it forwards in XFF."""
    cidrs = settings.trusted_proxy_cidrs()
    if not cidrs:
        return []
    ranges = []
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        ranges.append(
            {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}
        )
    return [
        {
            "name": "envoy.extensions.http.original_ip_detection.xff",
            "typed_config": {
                "@type": _type("http.original_ip_detection.xff.v3.XffConfig"),
                "xff_trusted_cidrs": {"cidrs": ranges},
            },
        }
    ]


def policies_of(files: descriptor_pb2.FileDescriptorSet) -> list[RpcPolicy]:
    """The contract's policies; an RPC without one stops the gateway from rendering."""
    policies = contract_policies(files)
    missing = undeclared(policies)
    if missing:
        raise ValueError(f"RPCs without a policy in the contract: {', '.join(missing)}")
    return policies


def render(settings: GatewaySettings, descriptor: Path | None = None) -> str:
    """The Envoy configuration (YAML) for these settings.

    descriptor: the transcoder's descriptor set (default: settings.descriptor, which
    should be the merged set `write_config` writes beside the config).
    """
    policies = policies_of(_load_descriptor_set(settings.descriptor))
    certs = settings.certificates
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
        "public_services": routes.public_services(policies),
        "jwt_providers": _jwt_providers(settings),
        "jwt_requirements": _jwt_requirements(settings),
        "early_header_mutation": _early_header_mutation(),
        "original_ip_detection": _original_ip_detection(settings),
        "use_remote_address": not settings.trusted_proxy_cidrs(),
        "local_reply_config": local_reply_config(),
        "tracing": _tracing(settings),
        "public_access_log": _access_log(settings, "public"),
        "internal_access_log": _access_log(settings, "internal"),
        "public_cors": _cors(settings),
        "max_direct_response_body_size": routes.direct_response_limit(settings),
        # The gateway's own routes first, then the API's, then the web pages' catch-all.
        "public_routes": routes.gateway_answered_routes(settings)
        + routes.public_routes(settings, policies)
        + routes.web_routes(),
        "internal_routes": routes.internal_routes(settings, policies),
        "server_cert": str(certs.server_cert),
        "server_key": str(certs.server_key),
        "ca_cert": str(certs.ca_cert),
        "internal_client_matchers": matchers,
        "clusters": _clusters(settings, policies),
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
