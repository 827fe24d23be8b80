"""The gateway's settings: environment variables ETAX_GATEWAY_* (defaults of DESIGN.md)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from etax_platform import topology
from etax_platform.certs import CertificatePaths
from etax_platform.settings import REPO_ROOT


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ETAX_GATEWAY_", extra="ignore", frozen=True)

    # The bureau this gateway belongs to (GB/T 2260 two digits); sent to the services as
    # x-etax-province. Two provinces on one machine need distinct ports and base ids.
    province: str = Field(default=topology.PROVINCE, pattern=r"^\d{2}$")
    listen_host: str = topology.LOOPBACK
    public_port: int = Field(default=topology.GATEWAY_PORTS.public, ge=0, le=65535)
    internal_port: int = Field(default=topology.GATEWAY_PORTS.internal, ge=0, le=65535)
    admin_port: int = Field(default=topology.GATEWAY_PORTS.admin, ge=0, le=65535)
    # Envoy's --base-id (shared memory and hot-restart socket); None: the province number.
    base_id: int | None = Field(default=None, ge=0)
    concurrency: int = Field(default=2, ge=1, le=64)
    # host:port of each service (topology.GRPC_SERVICES); several, comma-separated, for
    # replicas.
    auth_address: str = topology.default_address("auth")
    binding_address: str = topology.default_address("binding")
    sms_address: str = topology.default_address("sms")
    face_address: str = topology.default_address("face")
    # The web login pages (services.web, HTTP/1.1): every public path that is not an API
    # route. Several, comma-separated, for replicas.
    web_address: str = topology.default_address("web")
    web_health_path: str = topology.service("web").health
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

    # Flood guards (the contract's FLOOD_GUARD_* of each public RPC), per client: the
    # client address, or the address a trusted proxy forwards in X-Forwarded-For.
    # Sustained requests per second and burst, per client and route.
    login_rate_per_second: int = Field(default=10, ge=1)
    login_burst: int = Field(default=30, ge=1)
    code_rate_per_second: int = Field(default=5, ge=1)
    code_burst: int = Field(default=10, ge=1)
    # Requests naming an APP (x-etax-app-id: an APP backend calling for its users) also
    # share one bucket per APP id and route.
    app_rate_per_second: int = Field(default=500, ge=1)
    app_burst: int = Field(default=1000, ge=1)
    # How many clients' buckets a route keeps (least recently used ones are dropped).
    flood_guard_clients: int = Field(default=20000, ge=1)
    # Proxies whose X-Forwarded-For names the client (the web service, APP backends, a
    # load balancer): comma-separated CIDRs. Empty: the connection's address decides.
    trusted_proxies: str = ""

    # Unary routes; server-streaming routes (WatchTicket) have no route timeout.
    route_timeout_seconds: float = Field(default=15.0, gt=0)
    stream_idle_timeout_seconds: float = Field(default=600.0, gt=0)
    # At most this many open streams per streaming route (one cluster each).
    max_streams_per_route: int = Field(default=1024, ge=1)
    health_check_interval_seconds: float = Field(default=5.0, gt=0)
    # Empty: JSON lines on Envoy's stdout; otherwise a file (both listeners).
    access_log: str = ""
    # OpenTelemetry traces: Envoy starts or continues each request's W3C traceparent and
    # exports its spans over OTLP/gRPC to this collector (http://host:port). Empty:
    # ETAX_OTEL_ENDPOINT, the services' setting; both empty: no tracing.
    otel_endpoint: str = Field(default_factory=lambda: os.environ.get("ETAX_OTEL_ENDPOINT", ""))
    output_dir: Path = REPO_ROOT / "build" / "envoy"
    # The OpenAPI document and its reference page that `make protos` writes; the public
    # listener serves them (GET /openapi.json, GET /api/).
    openapi_dir: Path = REPO_ROOT / "gen" / "openapi"
    # Web origins whose pages may call the public API from a browser (CORS): exact
    # origins, comma-separated ("https://etax.example.gov.cn"). Empty: no CORS headers,
    # and preflights are refused.
    cors_origins: str = ""
    cors_max_age_seconds: int = Field(default=600, ge=0, le=86400)

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
            split_address(address)
        return value

    @field_validator("otel_endpoint")
    @classmethod
    def _collector(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("the OTLP endpoint is http://host:port (gRPC)")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in _items(value):
            parts = urlsplit(origin)
            exact = f"{parts.scheme}://{parts.netloc}"
            if parts.scheme not in ("http", "https") or not parts.hostname or origin != exact:
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        for cidr in _items(value):
            ipaddress.ip_network(cidr, strict=False)
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
        return _items(self.internal_clients)

    def trusted_proxy_cidrs(self) -> list[str]:
        return _items(self.trusted_proxies)

    def cors_origin_list(self) -> list[str]:
        return _items(self.cors_origins)


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {address!r}")
    return host.strip("[]"), int(port)


PROFILES = REPO_ROOT / "deploy" / "envoy"


def load_settings(env_file: Path | None = None) -> GatewaySettings:
    """Settings from the environment, and from a profile file (dotenv) when given."""
    if env_file is None:
        return GatewaySettings()
    return GatewaySettings(_env_file=env_file)  # type: ignore[call-arg]


def profiles() -> list[Path]:
    """The committed gateway profiles (deploy/envoy/*.env), e.g. a second province."""
    return sorted(PROFILES.glob("*.env"))
