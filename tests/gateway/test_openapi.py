"""The real gateway serves the OpenAPI document and the reference page, answers every
error as the document says (the transcoder's HTTP status per gRPC code on Envoy 1.40), and
speaks CORS to the configured web origins only (issue 12, items 7 and 9)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from etax.face.v1 import face_pb2, face_pb2_grpc
from pydantic import ValidationError

from etax_platform.apidocs import DOCUMENT_NAME, PAGE_NAME, document, page
from etax_platform.certs import CertificatePaths
from etax_platform.errors import MEANINGS, DomainError, Reason
from etax_platform.gateway import GatewaySettings
from etax_platform.server import GrpcHost, Registration
from etax_platform.tokens import SigningKey
from tests.gateway.conftest import mint
from tests.gateway.upstreams import Upstreams
from tests.harness.gateway import RunningGateway, grpc_web_call, running_gateway

WEB = "https://etax.example.gov.cn"


def _reason(body: dict[str, Any]) -> str:
    for detail in body.get("details", []):
        if detail["@type"].endswith("google.rpc.ErrorInfo"):
            return str(detail["reason"])
    return ""


# --- the document and the page ----------------------------------------------------------


def test_gateway_serves_the_document_regenerated_from_the_protos(gateway: RunningGateway) -> None:
    response = httpx.get(gateway.url("/openapi.json"), timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    served = (document.GEN_DIR / DOCUMENT_NAME).read_bytes()
    assert response.content == served
    fresh, _ = document.generate()
    assert response.json() == fresh
    assert httpx.head(gateway.url("/openapi.json"), timeout=5).status_code == 200


def test_gateway_serves_the_reference_page_with_a_strict_policy(gateway: RunningGateway) -> None:
    for path in ("/api/", "/api"):
        response = httpx.get(gateway.url(path), timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.text == (document.GEN_DIR / PAGE_NAME).read_text(encoding="utf-8")
        policy = response.headers["content-security-policy"]
        assert policy == page.content_security_policy(response.text)
        assert policy.startswith("default-src 'none'")


def test_only_get_reads_them_and_the_api_routes_still_work(gateway: RunningGateway) -> None:
    # Anything else goes on to the later routes (the web pages' catch-all; not running here).
    assert httpx.post(gateway.url("/openapi.json"), json={}, timeout=5).status_code != 200
    assert httpx.get(gateway.url("/openapi.json/x"), timeout=5).status_code != 200
    unknown_api = httpx.get(gateway.url("/v1/openapi.json"), timeout=5)
    assert (unknown_api.status_code, _reason(unknown_api.json())) == (404, "NOT_FOUND")
    assert httpx.get(gateway.url("/v1/auth/keys"), timeout=5).status_code == 200
    keys = httpx.post(
        gateway.url("/v1/sms/codes"),
        json={"phone": "13812345678", "purpose": "VERIFICATION_PURPOSE_REGISTRATION"},
        timeout=5,
    )
    assert keys.status_code == 200


# --- the HTTP status of every error -----------------------------------------------------


class _Failing(face_pb2_grpc.FaceServiceServicer):
    """GetTicket fails with the reason named by the ticket id (INTERNAL: a bug)."""

    def GetTicket(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.ticket_id == "INTERNAL":
            raise RuntimeError("a bug")
        raise DomainError(Reason(request.ticket_id))


@pytest.fixture(scope="module")
def failing_gateway(
    gateway_certs: CertificatePaths, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    host = GrpcHost(
        [
            Registration(
                "etax.face.v1.FaceService",
                lambda server: face_pb2_grpc.add_FaceServiceServicer_to_server(_Failing(), server),
            )
        ]
    ).start()
    try:
        with running_gateway(
            {"face": host.address},
            workdir=tmp_path_factory.mktemp("failing"),
            certificates=gateway_certs,
        ) as running:
            running.wait_healthy("face")
            yield running
    finally:
        host.stop(grace=0)


def test_the_transcoder_answers_each_grpc_code_with_the_documented_http_status(
    failing_gateway: RunningGateway,
) -> None:
    """Envoy 1.40's mapping, checked for every code a reason maps to, and INTERNAL."""
    served = json.loads((document.GEN_DIR / DOCUMENT_NAME).read_text(encoding="utf-8"))
    documented = {r["x-etax-http-status"]: r for r in served["responses"].values()}
    client = httpx.Client(timeout=10)
    with client:
        for reason, meaning in MEANINGS.items():
            response = client.get(failing_gateway.url(f"/v1/face/tickets/{reason.value}"))
            status = document.HTTP_STATUS[meaning.code]
            assert response.status_code == status, reason
            body = response.json()
            assert body["code"] == meaning.code.value[0]
            assert _reason(body) == reason.value
            assert reason.value in documented[status]["x-etax-reasons"]
        internal = client.get(failing_gateway.url("/v1/face/tickets/INTERNAL"))
        assert internal.status_code == document.HTTP_STATUS[grpc.StatusCode.INTERNAL] == 500
        assert internal.json() == {"code": 13, "message": "internal error", "details": []}
    # The same over gRPC-Web: the status, not an HTTP error.
    reply = grpc_web_call(
        failing_gateway.url("/etax.face.v1.FaceService/GetTicket"),
        face_pb2.GetTicketRequest(ticket_id="CODE_EXPIRED").SerializeToString(),
    )
    expired = grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert (reply.http_status, reply.grpc_status) == (200, expired)


def test_the_gateways_own_errors_are_a_status_for_json_clients(
    gateway: RunningGateway,
) -> None:
    """A GET has no content-type and a transcoded request looks like gRPC: both still get
    the JSON Status (DESIGN.md, Errors), and gRPC clients their grpc-status."""
    no_token = httpx.get(gateway.url("/v1/me/profile"), timeout=5)
    assert (no_token.status_code, no_token.headers["content-type"]) == (401, "application/json")
    assert _reason(no_token.json()) == "UNAUTHENTICATED"
    posted = httpx.post(gateway.url("/v1/me/phones"), json={"phone": "13812345678"}, timeout=5)
    assert (posted.status_code, _reason(posted.json())) == (401, "UNAUTHENTICATED")
    unknown = httpx.get(gateway.url("/v1/no-such-route"), timeout=5)
    assert (unknown.status_code, _reason(unknown.json())) == (404, "NOT_FOUND")
    web = grpc_web_call(gateway.url("/etax.auth.v1.AccountService/GetProfile"), b"")
    assert web.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]


# --- CORS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors_gateway(
    upstreams: Upstreams,
    gateway_certs: CertificatePaths,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    with running_gateway(
        upstreams.addresses,
        workdir=tmp_path_factory.mktemp("cors"),
        certificates=gateway_certs,
        cors_origins=f"{WEB},http://localhost:3000",
        cors_max_age_seconds=900,
    ) as running:
        running.wait_for_jwks()
        running.wait_healthy("auth", "binding", "sms", "face")
        yield running


def _preflight(gateway: RunningGateway, path: str, origin: str) -> httpx.Response:
    return httpx.options(
        gateway.url(path),
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-request-id",
        },
        timeout=5,
    )


def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def test_cors_a_preflight_from_an_allowed_origin_gets_the_allow_headers(
    cors_gateway: RunningGateway, upstreams: Upstreams
) -> None:
    before = len(upstreams.recorder.calls)
    for path in ("/v1/auth/logins", "/etax.sms.v1.SmsService/SendCode"):
        response = _preflight(cors_gateway, path, WEB)
        assert response.status_code == 200
        headers = _cors_headers(response)
        assert headers["access-control-allow-origin"] == WEB
        assert set(headers["access-control-allow-methods"].split(", ")) >= {"GET", "POST"}
        allowed = set(headers["access-control-allow-headers"].split(", "))
        assert {"authorization", "content-type", "x-request-id", "x-etax-app-id"} <= allowed
        assert headers["access-control-max-age"] == "900"
        assert "access-control-allow-credentials" not in headers
    assert (
        _preflight(cors_gateway, "/v1/me/profile", "http://localhost:3000").headers[
            "access-control-allow-origin"
        ]
        == "http://localhost:3000"
    )
    # Answered by the gateway: no preflight reaches a service.
    assert len(upstreams.recorder.calls) == before


def test_cors_a_preflight_from_another_origin_gets_no_allow_origin(
    cors_gateway: RunningGateway, upstreams: Upstreams
) -> None:
    before = len(upstreams.recorder.calls)
    for origin in ("https://evil.example", f"{WEB}.evil.example", "http://etax.example.gov.cn"):
        response = _preflight(cors_gateway, "/v1/auth/logins", origin)
        assert "access-control-allow-origin" not in response.headers, origin
    # Even a client naming an upstream in the preflight route's cluster header.
    sneaky = httpx.options(
        cors_gateway.url("/v1/auth/logins"),
        headers={"access-control-request-method": "POST", "x-etax-no-upstream": "auth"},
        timeout=5,
    )
    assert sneaky.status_code == 404
    assert len(upstreams.recorder.calls) == before


def test_cors_a_cors_get_and_its_errors_carry_allow_origin_and_expose_the_request_id(
    cors_gateway: RunningGateway, signing_key: SigningKey
) -> None:
    token = mint(signing_key)
    response = httpx.get(
        cors_gateway.url("/v1/me/identities"),
        headers={"origin": WEB, "authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == WEB
    assert "x-request-id" in response.headers["access-control-expose-headers"].split(", ")
    assert response.headers["x-request-id"]
    # A page must read the gateway's errors too (401: refresh, then log in again).
    denied = httpx.get(cors_gateway.url("/v1/me/identities"), headers={"origin": WEB}, timeout=5)
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == WEB
    assert _reason(denied.json()) == "UNAUTHENTICATED"
    other = httpx.get(
        cors_gateway.url("/v1/me/identities"),
        headers={"origin": "https://evil.example", "authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert other.status_code == 200
    assert _cors_headers(other) == {}


def test_cors_no_origin_configured_means_no_cors_headers_and_refused_preflights(
    gateway: RunningGateway, upstreams: Upstreams, signing_key: SigningKey
) -> None:
    assert gateway.settings.cors_origins == ""
    before = len(upstreams.recorder.calls)
    preflight = _preflight(gateway, "/v1/auth/logins", WEB)
    assert preflight.status_code == 404
    assert _cors_headers(preflight) == {}
    assert len(upstreams.recorder.calls) == before
    response = httpx.get(
        gateway.url("/v1/me/identities"),
        headers={"origin": WEB, "authorization": f"Bearer {mint(signing_key)}"},
        timeout=5,
    )
    assert response.status_code == 200
    assert _cors_headers(response) == {}


def test_cors_origins_are_exact_scheme_host_port() -> None:
    assert GatewaySettings(cors_origins=f" {WEB} , http://localhost:3000").cors_origin_list() == [
        WEB,
        "http://localhost:3000",
    ]
    for bad in ("*", f"{WEB}/", f"{WEB}/login", "etax.example.gov.cn", "ftp://x.example"):
        with pytest.raises(ValidationError):
            GatewaySettings(cors_origins=bad)
