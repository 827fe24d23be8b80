"""The real Envoy gateway for tests: free loopback ports, given upstreams, real binary.

    certs = gateway_certificates(tmp_path_factory.mktemp("certs"))
    with running_gateway({"auth": auth.address, ...}, workdir=tmp_path, certificates=certs) as gw:
        stub = SmsServiceStub(gw.public_channel())
        httpx.post(gw.url("/v1/sms/codes"), json={...})
        SmsOutboxServiceStub(gw.internal_channel("hall"))

Upstreams not given point at a closed port (their routes answer UNAVAILABLE). The JWKS
comes from auth's GetPublicKeys through the gateway itself ("remote", the default) or from
a file (`jwks_file=`); `wait_for_jwks()` waits until Envoy has fetched the remote set.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from etax_platform import topology
from etax_platform.certs import CertificatePaths, ensure_certificates
from etax_platform.gateway import EnvoyProcess, GatewaySettings, write_config
from tests.harness.servers import free_port

UPSTREAM_NAMES = topology.GRPC_SERVICES


def gateway_certificates(directory: Path) -> CertificatePaths:
    """A private CA, the server certificate and the hall / core-tax client certificates."""
    return ensure_certificates(directory)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Polls a condition of a real process (not logical time) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not after {timeout}s")


@dataclass
class RunningGateway:
    settings: GatewaySettings
    envoy: EnvoyProcess
    certificates: CertificatePaths
    access_log: Path
    envoy_log: Path

    @property
    def public_address(self) -> str:
        return f"127.0.0.1:{self.settings.public_port}"

    @property
    def internal_address(self) -> str:
        return f"127.0.0.1:{self.settings.internal_port}"

    @property
    def admin_url(self) -> str:
        return self.envoy.admin_url

    def url(self, path: str) -> str:
        """A URL on the public listener (JSON, gRPC-Web)."""
        return f"http://{self.public_address}{path}"

    def public_channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.public_address)

    def internal_channel(self, system: str | None = "hall") -> grpc.Channel:
        """mTLS to the internal listener as a client system; None: no client certificate."""
        certs = self.certificates
        credentials = grpc.ssl_channel_credentials(
            root_certificates=certs.ca_cert.read_bytes(),
            private_key=certs.client_key(system).read_bytes() if system else None,
            certificate_chain=certs.client_cert(system).read_bytes() if system else None,
        )
        return grpc.secure_channel(self.internal_address, credentials)

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges by name."""
        response = httpx.get(f"{self.admin_url}/stats?format=json", timeout=5)
        return {
            s["name"]: s["value"]
            for s in response.json()["stats"]
            if isinstance(s.get("value"), int)
        }

    def cluster_health(self, cluster: str) -> list[str]:
        """health_flags of every host of a cluster ("healthy", "/failed_active_hc", ...)."""
        text = httpx.get(f"{self.admin_url}/clusters", timeout=5).text
        return [
            line.rsplit("::", 1)[1]
            for line in text.splitlines()
            if line.startswith(f"{cluster}::") and "::health_flags::" in line
        ]

    def wait_for_jwks(self, timeout: float = 15.0) -> None:
        """Until Envoy fetched the remote JWKS at least once (no-op for a JWKS file)."""
        if self.settings.jwks_source != "remote":
            return
        wait_until(
            lambda: any(
                name.endswith("jwks_fetch_success") and value > 0
                for name, value in self.stats().items()
            ),
            "remote JWKS fetched",
            timeout,
        )

    def wait_healthy(self, *clusters: str, timeout: float = 15.0) -> None:
        for cluster in clusters:
            wait_until(
                lambda c=cluster: self.cluster_health(c) == ["healthy"],  # type: ignore[misc]
                f"cluster {cluster} healthy",
                timeout,
            )

    def access_log_entries(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]


_GENEROUS_FLOOD_GUARDS = {
    "login_rate_per_second": 5000,
    "login_burst": 10000,
    "code_rate_per_second": 5000,
    "code_burst": 10000,
}


@contextlib.contextmanager
def running_gateway(
    upstreams: Mapping[str, str],
    *,
    workdir: Path,
    certificates: CertificatePaths,
    province: str = "37",
    base_id: int | None = None,
    concurrency: int = 1,
    **overrides: Any,
) -> Iterator[RunningGateway]:
    """Renders a config for free loopback ports and the given upstreams (name -> host:port,
    comma-separated for replicas), starts the real envoy and waits for /ready.

    overrides: any other GatewaySettings field (jwks_source, jwks_file, login_burst, ...).
    base_id None: Envoy picks a free one (--use-dynamic-base-id).
    """
    unknown = set(upstreams) - set(UPSTREAM_NAMES)
    if unknown:
        raise ValueError(f"unknown upstreams {unknown}")
    closed = f"127.0.0.1:{free_port()}"
    # Tests drive many logins from one loopback address: the flood guards stand aside
    # unless a test sets them (the flood-guard tests do).
    overrides = {**_GENEROUS_FLOOD_GUARDS, **overrides}
    workdir.mkdir(parents=True, exist_ok=True)
    access_log = workdir / "access.log"
    settings = GatewaySettings(
        province=province,
        public_port=free_port(),
        internal_port=free_port(),
        admin_port=free_port(),
        concurrency=concurrency,
        certs_dir=certificates.directory,
        access_log=str(access_log),
        output_dir=workdir,
        health_check_interval_seconds=0.5,
        **{f"{name}_address": upstreams.get(name, closed) for name in UPSTREAM_NAMES},
        **overrides,
    )
    config = write_config(settings, workdir / "config")
    envoy_log = workdir / "envoy.log"
    envoy = EnvoyProcess(
        config,
        admin_port=settings.admin_port,
        base_id=base_id,
        concurrency=concurrency,
        log_path=envoy_log,
        log_level="info",
        drain_seconds=0.0,
        log_flush_ms=50,
    ).start()
    try:
        envoy.wait_ready()
        yield RunningGateway(settings, envoy, certificates, access_log, envoy_log)
    finally:
        envoy.stop()


@dataclass(frozen=True)
class GrpcWebReply:
    http_status: int
    headers: httpx.Headers
    messages: list[bytes]
    trailers: dict[str, str]

    @property
    def grpc_status(self) -> int:
        """From the trailer frame, or from the headers for a trailers-only reply."""
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        if value is None:
            raise AssertionError(f"no grpc-status in a gRPC-Web reply: {self}")
        return int(value)


def grpc_web_call(
    url: str,
    message: bytes,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    client: httpx.Client | None = None,
) -> GrpcWebReply:
    """One gRPC-Web call (binary, as a browser's grpc-web client sends it).

    url: http://host:port/package.Service/Method; message: the serialized request.
    client: a client whose connections are kept (a browser's); default: a new connection.
    """
    frame = b"\x00" + len(message).to_bytes(4, "big") + message
    response = (client or httpx).post(
        url,
        content=frame,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "accept": "application/grpc-web+proto",
            **(headers or {}),
        },
        timeout=timeout,
    )
    body, messages, trailers = response.content, [], {}
    while body:
        flags, length = body[0], int.from_bytes(body[1:5], "big")
        payload, body = body[5 : 5 + length], body[5 + length :]
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return GrpcWebReply(response.status_code, response.headers, messages, trailers)
