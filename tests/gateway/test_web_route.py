"""The public listener's catch-all route to the web pages (services.web), with a plain
HTTP/1.1 server standing in for them: every path that is not an API route reaches it,
unknown API and gRPC method paths stay 404, and it is health-checked by GET."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from etax_platform.certs import CertificatePaths
from tests.harness.gateway import RunningGateway, running_gateway, wait_until


@dataclass
class WebUpstream:
    server: ThreadingHTTPServer
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]


@pytest.fixture(scope="module")
def web() -> Iterator[WebUpstream]:
    upstream: WebUpstream

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            upstream.requests.append(("GET", self.path, dict(self.headers.items())))
            body = b"ok" if self.path == "/healthz" else "登录".encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *_: object) -> None:
            pass

    upstream = WebUpstream(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    thread = threading.Thread(target=upstream.server.serve_forever, daemon=True)
    thread.start()
    yield upstream
    upstream.server.shutdown()
    upstream.server.server_close()


@pytest.fixture(scope="module")
def gateway(
    web: WebUpstream, gateway_certs: CertificatePaths, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    workdir: Path = tmp_path_factory.mktemp("web-gateway")
    with running_gateway(
        {}, workdir=workdir, certificates=gateway_certs, web_address=web.address
    ) as running:
        running.wait_healthy("web")
        yield running


def test_every_page_path_reaches_the_web_service_with_the_gateways_province(
    gateway: RunningGateway, web: WebUpstream
) -> None:
    for path in ("/", "/account", "/static/css/site.css", "/dev/app/"):
        response = httpx.get(
            gateway.url(path),
            headers={"x-etax-province": "11", "x-forwarded-for": "203.0.113.9"},
            timeout=5,
        )
        assert (response.status_code, response.text) == (200, "登录")
        _, seen, headers = web.requests[-1]
        assert seen == path
        lowered = {k.lower(): v for k, v in headers.items()}
        # The province is the gateway's own (a client cannot choose it) ...
        assert lowered["x-etax-province"] == "37"
        # ... and the browser's address is the last X-Forwarded-For entry, the one Envoy
        # appended (for a loopback peer Envoy appends its own local address instead).
        *forged, appended = lowered["x-forwarded-for"].split(",")
        assert [f.strip() for f in forged] == ["203.0.113.9"]
        assert appended.strip() != "203.0.113.9"


def test_unknown_api_and_method_paths_never_reach_the_web_service(
    gateway: RunningGateway, web: WebUpstream
) -> None:
    before = len(web.requests)
    assert httpx.get(gateway.url("/v1/sms/outbox"), timeout=5).status_code == 404
    method = "/etax.sms.v1.SmsOutboxService/ListMessages"
    assert httpx.post(gateway.url(method), json={}, timeout=5).status_code == 404
    assert httpx.post(gateway.url("/grpc.health.v1.Health/Check"), timeout=5).status_code == 404
    assert [p for p in web.paths()[before:] if p != "/healthz"] == []


def test_the_web_cluster_is_health_checked_by_http_get(
    gateway: RunningGateway, web: WebUpstream
) -> None:
    wait_until(lambda: "/healthz" in web.paths(), "health check by GET /healthz")
    assert gateway.cluster_health("web") == ["healthy"]
