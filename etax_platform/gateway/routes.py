"""The route tables, generated from the contract's policies (etax_platform.policy).

Public listener: one route per public RPC (its own jwt requirement, flood guard, timeout
and access-log name); nothing else is routed there, so an internal RPC answers 404 /
UNIMPLEMENTED. Internal listener: every etax service, gRPC only (the hall may call
anything). A server-streaming RPC goes to a cluster of its own, whose circuit breaker caps
its open streams, so watchers cannot take the connections unary calls use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from etax_platform import topology
from etax_platform.apidocs import DOCUMENT_NAME, PAGE_NAME
from etax_platform.apidocs.page import content_security_policy
from etax_platform.gateway.settings import GatewaySettings
from etax_platform.policy import Access, FloodGuard, RpcPolicy

# Header an APP backend names itself with; its requests also share one bucket per APP.
APP_ID_HEADER = "x-etax-app-id"

_JWT_REQUIREMENTS = {
    Access.SESSION: "session",
    Access.TRUSTED_APP_SESSION: "trusted_app_session",
}


def _type(name: str) -> str:
    """The "@type" of an Envoy extension's typed_config."""
    return f"type.googleapis.com/envoy.extensions.{name}"


def seconds(value: float) -> str:
    return f"{value:g}s"


def cluster_of(service: str) -> str:
    """etax.auth.v1.InternalAuthService -> auth (its service in the topology)."""
    return topology.service_of(service)


def stream_cluster(policy: RpcPolicy) -> str:
    """The cluster of one streaming route: face.WatchTicket."""
    return f"{cluster_of(policy.service)}.{policy.method}"


def _bucket(tokens: int, per_second: int) -> dict[str, Any]:
    return {"max_tokens": tokens, "tokens_per_fill": per_second, "fill_interval": "1s"}


def _flood_guard(settings: GatewaySettings, guard: FloodGuard) -> dict[str, Any]:
    """A local rate limit with a bucket per client address and per APP id (wildcard
    descriptors: Envoy keeps one bucket per value it sees, up to flood_guard_clients)."""
    rate, burst = {
        FloodGuard.LOGIN: (settings.login_rate_per_second, settings.login_burst),
        FloodGuard.CODE: (settings.code_rate_per_second, settings.code_burst),
    }[guard]
    group = guard.name.lower()
    percent = {"numerator": 100, "denominator": "HUNDRED"}
    return {
        "envoy.filters.http.local_ratelimit": {
            "@type": _type("filters.http.local_ratelimit.v3.LocalRateLimit"),
            "stat_prefix": f"flood_guard_{group}",
            # Used only by a request no descriptor matched (every request has an address).
            "token_bucket": _bucket(burst * 1000, rate * 1000),
            "descriptors": [
                {
                    "entries": [{"key": "remote_address", "value": ""}],
                    "token_bucket": _bucket(burst, rate),
                },
                {
                    "entries": [{"key": "app", "value": ""}],
                    "token_bucket": _bucket(settings.app_burst, settings.app_rate_per_second),
                },
            ],
            "rate_limits": [
                {"actions": [{"remote_address": {}}]},
                {
                    "actions": [
                        {"request_headers": {"header_name": APP_ID_HEADER, "descriptor_key": "app"}}
                    ]
                },
            ],
            "max_dynamic_descriptors": settings.flood_guard_clients,
            "always_consume_default_token_bucket": False,
            "filter_enabled": {
                "runtime_key": f"flood_guard_{group}_enabled",
                "default_value": percent,
            },
            "filter_enforced": {
                "runtime_key": f"flood_guard_{group}_enforced",
                "default_value": percent,
            },
            "rate_limited_as_resource_exhausted": True,
        }
    }


def _route_action(settings: GatewaySettings, cluster: str, streaming: bool) -> dict[str, Any]:
    action: dict[str, Any] = {
        "cluster": cluster,
        # Retry only what never reached a service (safe for logins and code sends).
        "retry_policy": {
            "retry_on": "connect-failure,refused-stream",
            "num_retries": 2,
            # A retry goes to another replica: least-request balancing would pick a dead
            # one (no requests on it) again until its health check fails.
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": _type("retry.host.previous_hosts.v3.PreviousHostsPredicate")
                    },
                }
            ],
            "host_selection_retry_max_attempts": 3,
        },
    }
    if streaming:
        # A watch lasts as long as its ticket: no route timeout, only an idle limit, and
        # the client's own grpc-timeout if it sends one.
        action["timeout"] = "0s"
        action["idle_timeout"] = seconds(settings.stream_idle_timeout_seconds)
        action["max_stream_duration"] = {"grpc_timeout_header_max": "0s"}
    else:
        timeout = seconds(settings.route_timeout_seconds)
        action["timeout"] = timeout
        action["max_stream_duration"] = {"grpc_timeout_header_max": timeout}
    return action


# A method's path takes gRPC and gRPC-Web only (application/grpc, application/grpc-web...;
# a JSON call reaches it transcoded, as application/grpc). Anything else on it, a JSON body
# say, would reach the service as a request it resets, which Envoy answers 503: it falls
# to method-not-found instead (404, "请求的接口不存在").
_GRPC_CONTENT = {"name": "content-type", "string_match": {"prefix": "application/grpc"}}


def public_routes(settings: GatewaySettings, policies: list[RpcPolicy]) -> list[Any]:
    routes: list[Any] = []
    for policy in policies:
        if not policy.public:
            continue
        per_filter: dict[str, Any] = {}
        requirement = _JWT_REQUIREMENTS.get(policy.access)
        if requirement is not None:
            per_filter["envoy.filters.http.jwt_authn"] = {
                "@type": _type("filters.http.jwt_authn.v3.PerRouteConfig"),
                "requirement_name": requirement,
            }
        if policy.flood_guard is not FloodGuard.NONE:
            per_filter.update(_flood_guard(settings, policy.flood_guard))
        cluster = stream_cluster(policy) if policy.server_streaming else cluster_of(policy.service)
        route: dict[str, Any] = {
            "name": policy.full_name,
            "match": {"path": policy.path, "headers": [_GRPC_CONTENT]},
            "route": _route_action(settings, cluster, policy.server_streaming),
        }
        if per_filter:
            route["typed_per_filter_config"] = per_filter
        routes.append(route)
    return routes


OPENAPI_PATH = "/openapi.json"
API_REFERENCE_PATH = "/api/"


def _file(settings: GatewaySettings, name: str) -> Path:
    path = settings.openapi_dir / name
    if not path.is_file():
        raise ValueError(f"{path} is missing: `make protos` writes it")
    return path


# A header no request keeps (the gateway removes it first): the preflight route names its
# cluster by it, so the route has a route action (the cors filter needs one) and yet no
# preflight ever reaches a service.
NO_UPSTREAM_HEADER = "x-etax-no-upstream"


def gateway_answered_routes(settings: GatewaySettings) -> list[Any]:
    """What the public listener answers itself, before the API routes (and before any
    catch-all route after them): CORS preflights, the OpenAPI document, the reference page.

    Preflights: the cors filter answers one from an allowed origin (with the allow-*
    headers) and one from any other origin (without them); with no origin configured
    there is no policy and the route answers 404. The document and the page are direct
    responses, read when Envoy loads the config.
    """
    read_only = [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}]
    page = _file(settings, PAGE_NAME)
    common = [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        # Regenerated with the protos: a client revalidates instead of keeping an old one.
        ("cache-control", "no-cache"),
    ]

    def headers(*pairs: tuple[str, str]) -> list[Any]:
        return [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in [*pairs, *common]
        ]

    return [
        {
            "name": "cors_preflight",
            "match": {
                "prefix": "/",
                "headers": [
                    {"name": ":method", "string_match": {"exact": "OPTIONS"}},
                    {"name": "access-control-request-method", "present_match": True},
                ],
            },
            "route": {
                "cluster_header": NO_UPSTREAM_HEADER,
                "cluster_not_found_response_code": "NOT_FOUND",
            },
        },
        {
            "name": "openapi_document",
            "match": {"path": OPENAPI_PATH, "headers": read_only},
            "direct_response": {
                "status": 200,
                "body": {"filename": str(_file(settings, DOCUMENT_NAME))},
            },
            "response_headers_to_add": headers(("content-type", "application/json")),
        },
        {
            "name": "api_reference",
            "match": {"safe_regex": {"regex": "/api/?"}, "headers": read_only},
            "direct_response": {"status": 200, "body": {"filename": str(page)}},
            "response_headers_to_add": headers(
                ("content-type", "text/html; charset=utf-8"),
                ("content-security-policy", content_security_policy(page.read_text("utf-8"))),
            ),
        },
    ]


def direct_response_limit(settings: GatewaySettings) -> int:
    """Bytes Envoy may load for a direct response: the larger file, rounded up to 64 KiB."""
    largest = max(_file(settings, name).stat().st_size for name in (DOCUMENT_NAME, PAGE_NAME))
    return (largest // 65536 + 1) * 65536


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


def internal_routes(settings: GatewaySettings, policies: list[RpcPolicy]) -> list[Any]:
    """Every etax service (public and Internal*), gRPC only: the hall may call anything."""
    routes: list[Any] = []
    services: dict[str, list[RpcPolicy]] = {}
    for policy in policies:
        services.setdefault(policy.service, []).append(policy)
    for service, methods in sorted(services.items()):
        cluster = cluster_of(service)
        for method in methods:
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


def public_services(policies: list[RpcPolicy]) -> list[str]:
    """The services the transcoder serves: those with a public RPC."""
    return list(dict.fromkeys(p.service for p in policies if p.public))
