"""The gateway with the real envoy binary in front of real gRPC servers."""

from __future__ import annotations

import base64
import json
import os
import random
import ssl
import time
from pathlib import Path

import grpc
import httpx
import jwt
import pytest
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1 import binding_pb2, binding_pb2_grpc
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2, face_pb2_grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc
from grpc_health.v1 import health_pb2

from etax_platform.certs import CertificatePaths, issue_client_certificate
from etax_platform.tokens import SigningKey
from tests.gateway.conftest import bearer, mint
from tests.gateway.upstreams import THROTTLED_PHONE, Upstreams, start_upstreams
from tests.harness.gateway import (
    RunningGateway,
    gateway_certificates,
    grpc_web_call,
    running_gateway,
    wait_until,
)

PHONE = "13812345678"
DOCUMENT = "11010519491231002X"
REGISTRATION = types_pb2.VERIFICATION_PURPOSE_REGISTRATION


def _send_code(
    channel: grpc.Channel, phone: str = PHONE, **kwargs: object
) -> sms_pb2.SendCodeResponse:
    stub = sms_pb2_grpc.SmsServiceStub(channel)
    return stub.SendCode(
        sms_pb2.SendCodeRequest(phone=phone, purpose=REGISTRATION), timeout=5, **kwargs
    )


def _code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()


def _succeeds(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError:
        return False
    return True


# --- the three protocols on the public listener -----------------------------------------


def test_grpc_reaches_the_public_service(gateway: RunningGateway) -> None:
    response = _send_code(gateway.public_channel())
    assert response.masked_recipient == "138****5678"
    assert response.sends_left_in_window == 4


def test_json_transcoding_keeps_proto_field_names(gateway: RunningGateway) -> None:
    response = httpx.post(
        gateway.url("/v1/sms/codes"),
        json={"phone": PHONE, "purpose": "VERIFICATION_PURPOSE_REGISTRATION"},
        timeout=5,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "verification_id",
        "masked_recipient",
        "expires_at",
        "sends_left_in_window",
    }
    assert body["masked_recipient"] == "138****5678"
    assert body["expires_at"] == "2027-01-15T08:00:00Z"
    assert response.headers["x-request-id"]


def test_json_accepts_camel_case_input_and_ignores_unknown_query_parameters(
    gateway: RunningGateway, signing_key: SigningKey
) -> None:
    response = httpx.get(
        gateway.url("/v1/me/identities?province=37&utm_source=app"),
        headers={"authorization": f"Bearer {mint(signing_key)}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    (identity,) = response.json()["identities"]
    assert identity["enterprise_code"] == "91370100MA3C8XXXXX"
    assert identity["role"] == "ROLE_TAX_OFFICER"


def test_json_error_carries_reason_and_chinese_text(gateway: RunningGateway) -> None:
    """E2 through JSON: the status details the service attached survive transcoding."""
    response = httpx.post(
        gateway.url("/v1/sms/codes"),
        json={"phone": THROTTLED_PHONE, "purpose": "VERIFICATION_PURPOSE_REGISTRATION"},
        timeout=5,
    )
    assert response.status_code == 429
    details = {d["@type"].rsplit("/", 1)[1]: d for d in response.json()["details"]}
    assert details["google.rpc.ErrorInfo"]["reason"] == "SMS_RATE_LIMITED"
    assert details["google.rpc.LocalizedMessage"]["message"] == "短信验证码获取频繁，请稍后重试"
    assert details["google.rpc.RetryInfo"]["retry_delay"] == "300s"


def test_public_keys_are_served_as_jwks_json(
    gateway: RunningGateway, signing_key: SigningKey
) -> None:
    response = httpx.get(gateway.url("/v1/auth/keys"), timeout=5)
    assert response.status_code == 200
    assert response.json() == {"keys": [signing_key.public_jwk()]}


def test_grpc_web_reaches_the_public_service(gateway: RunningGateway) -> None:
    request = sms_pb2.SendCodeRequest(phone=PHONE, purpose=REGISTRATION).SerializeToString()
    reply = grpc_web_call(gateway.url("/etax.sms.v1.SmsService/SendCode"), request)
    assert reply.http_status == 200
    assert reply.headers["content-type"].startswith("application/grpc-web")
    assert reply.grpc_status == 0
    (message,) = reply.messages
    assert sms_pb2.SendCodeResponse.FromString(message).masked_recipient == "138****5678"


def test_json_carries_a_two_mebibyte_face_capture(gateway: RunningGateway) -> None:
    capture = os.urandom(2 * 1024 * 1024)
    response = httpx.post(
        gateway.url("/v1/face/tickets/t-1/captures"),
        json={"scan_token": "scan", "capture": base64.b64encode(capture).decode()},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    assert response.json()["ticket"]["proof"] == str(len(capture))


# --- what the public listener refuses -----------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "/etax.sms.v1.InternalSmsService/VerifyCode",
        "/etax.sms.v1.SmsOutboxService/ListMessages",
        "/etax.auth.v1.InternalAuthService/ResolvePerson",
        "/etax.binding.v1.InternalBindingService/CheckAccess",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Check",
    ],
)
def test_public_listener_does_not_route_internal_services(
    gateway: RunningGateway, upstreams: Upstreams, method: str
) -> None:
    before = len(upstreams.recorder.calls)
    call = gateway.public_channel().unary_unary(method)
    assert _code_of(lambda: call(b"", timeout=5)) == grpc.StatusCode.UNIMPLEMENTED
    # gRPC-Web clients read HTTP 404 as UNIMPLEMENTED.
    web = grpc_web_call(gateway.url(method), b"")
    assert (web.http_status, web.messages) == (404, [])
    assert httpx.post(gateway.url(method), json={}, timeout=5).status_code == 404
    assert len(upstreams.recorder.calls) == before


def test_unknown_json_path_is_not_found(gateway: RunningGateway) -> None:
    assert httpx.get(gateway.url("/v1/sms/outbox"), timeout=5).status_code == 404


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_a_method_path_called_without_grpc_is_not_found_not_unavailable(
    gateway: RunningGateway, upstreams: Upstreams, content_type: str | None
) -> None:
    """JSON clients use the /v1/ routes; a body of another kind on a gRPC method's path
    would be reset by the service (Envoy: 503). It is the gateway's 404, in JSON."""
    before = upstreams.recorder.count("SendCode")
    headers = {} if content_type is None else {"content-type": content_type}
    response = httpx.post(
        gateway.url("/etax.sms.v1.SmsService/SendCode"),
        content=b'{"phone":"13812345678"}',
        headers=headers,
        timeout=5,
    )
    assert response.status_code == 404
    assert response.json()["details"][0]["reason"] == "NOT_FOUND"
    assert upstreams.recorder.count("SendCode") == before


# --- jwt_authn -----------------------------------------------------------------------------


def test_session_route_refuses_a_missing_token(
    gateway: RunningGateway, upstreams: Upstreams
) -> None:
    stub = auth_pb2_grpc.AccountServiceStub(gateway.public_channel())
    before = upstreams.recorder.count("GetProfile")
    assert _code_of(lambda: stub.GetProfile(auth_pb2.GetProfileRequest(), timeout=5)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert httpx.get(gateway.url("/v1/me/profile"), timeout=5).status_code == 401
    assert upstreams.recorder.count("GetProfile") == before


@pytest.mark.parametrize("token_kind", ["forged", "expired", "garbage", "other-audience"])
def test_session_route_refuses_a_bad_token(
    gateway: RunningGateway, upstreams: Upstreams, signing_key: SigningKey, token_kind: str
) -> None:
    if token_kind == "forged":
        # Same key id, another private key: the signature does not verify.
        token = mint(SigningKey(signing_key.kid, SigningKey.generate().private_key))
    elif token_kind == "expired":
        token = mint(signing_key, expired=True)
    elif token_kind == "garbage":
        token = "not.a.jwt"
    else:
        claims = {"sub": "p-1", "sid": "s-1", "iss": "etax-auth", "aud": "somebody-else"}
        token = jwt.encode(
            {**claims, "exp": int(time.time()) + 600},
            signing_key.private_key,
            "EdDSA",
            headers={"kid": signing_key.kid},
        )
    stub = binding_pb2_grpc.BindingServiceStub(gateway.public_channel())
    before = upstreams.recorder.count("ListMyIdentities")
    call = lambda: stub.ListMyIdentities(  # noqa: E731
        binding_pb2.ListMyIdentitiesRequest(), metadata=bearer(token), timeout=5
    )
    # Envoy answers a token for another audience with 403 (PERMISSION_DENIED).
    expected = grpc.StatusCode.UNAUTHENTICATED
    if token_kind == "other-audience":
        expected = grpc.StatusCode.PERMISSION_DENIED
    assert _code_of(call) == expected
    assert upstreams.recorder.count("ListMyIdentities") == before


def test_valid_token_reaches_the_service_with_verified_claims(
    gateway: RunningGateway, upstreams: Upstreams, signing_key: SigningKey
) -> None:
    token = mint(signing_key, person_id="p-42")
    stub = auth_pb2_grpc.AccountServiceStub(gateway.public_channel())
    profile = stub.GetProfile(
        auth_pb2.GetProfileRequest(), metadata=bearer(token), timeout=5
    ).profile
    assert profile.person_id == "p-42"
    metadata, _ = upstreams.recorder.last("GetProfile")
    # forward: true, so the service verifies the token again ...
    assert metadata["authorization"] == f"Bearer {token}"
    # ... and the verified payload comes along.
    payload = json.loads(base64.urlsafe_b64decode(metadata["x-etax-jwt-payload"] + "=="))
    assert (payload["sub"], payload["sid"], payload["iss"]) == ("p-42", "s-1", "etax-auth")
    assert metadata["x-etax-session-id"] == "s-1"


@pytest.mark.parametrize(
    ("service", "method", "request_type"),
    [
        ("etax.auth.v1.AuthService", "SwitchIdentity", auth_pb2.SwitchIdentityRequest),
        ("etax.auth.v1.AuthService", "ConfirmQrLogin", auth_pb2.ConfirmQrLoginRequest),
        ("etax.auth.v1.AccountService", "AddPhone", auth_pb2.AddPhoneRequest),
        ("etax.binding.v1.BindingService", "ConfirmRelation", binding_pb2.ConfirmRelationRequest),
    ],
)
def test_session_rpcs_need_a_token(
    gateway: RunningGateway, service: str, method: str, request_type: type
) -> None:
    call = gateway.public_channel().unary_unary(f"/{service}/{method}")
    payload = request_type().SerializeToString()
    assert _code_of(lambda: call(payload, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED


def test_login_needs_no_token_and_forged_claim_headers_are_stripped(
    gateway: RunningGateway, upstreams: Upstreams
) -> None:
    stub = auth_pb2_grpc.AuthServiceStub(gateway.public_channel())
    forged = (
        ("x-etax-person-id", "p-victim"),
        ("x-etax-jwt-payload", "eyJzdWIiOiJwLXZpY3RpbSJ9"),
        ("x-etax-province", "99"),
    )
    response = stub.StartLogin(
        auth_pb2.StartLoginRequest(account=PHONE, password="secret"), metadata=forged, timeout=5
    )
    assert response.challenge_id == "challenge-1"
    metadata, _ = upstreams.recorder.last("StartLogin")
    assert "x-etax-person-id" not in metadata
    assert "x-etax-jwt-payload" not in metadata
    assert metadata["x-etax-province"] == "37"


# --- internal listener (mTLS) ------------------------------------------------------------


def test_internal_listener_serves_internal_and_public_services_to_the_hall(
    gateway: RunningGateway, upstreams: Upstreams
) -> None:
    channel = gateway.internal_channel("hall")
    stub = sms_pb2_grpc.InternalSmsServiceStub(channel)
    assert stub.VerifyCode(sms_pb2.VerifyCodeRequest(code="1"), timeout=5).recipient == PHONE
    metadata, _ = upstreams.recorder.last("VerifyCode")
    assert "URI=spiffe://etax.internal/hall" in metadata["x-forwarded-client-cert"]
    assert metadata["x-etax-gateway"] == "internal"
    access = binding_pb2_grpc.InternalBindingServiceStub(channel).CheckAccess(
        binding_pb2.CheckAccessRequest(
            person_id="p-1",
            target=binding_pb2.Target(entry=types_pb2.ENTRY_ENTERPRISE, enterprise_code="E1"),
        ),
        timeout=5,
    )
    assert access.identity.enterprise_code == "E1"
    assert _send_code(channel).masked_recipient == "138****5678"
    outbox = sms_pb2_grpc.SmsOutboxServiceStub(gateway.internal_channel("core-tax"))
    listed = outbox.ListMessages(sms_pb2.ListMessagesRequest(recipient=PHONE), timeout=5)
    assert listed.messages[0].code == "123456"


def test_internal_listener_refuses_a_client_without_certificate(
    gateway: RunningGateway, upstreams: Upstreams
) -> None:
    before = upstreams.recorder.count("VerifyCode")
    stub = sms_pb2_grpc.InternalSmsServiceStub(gateway.internal_channel(None))
    call = lambda: stub.VerifyCode(sms_pb2.VerifyCodeRequest(), timeout=5)  # noqa: E731
    assert _code_of(call) == grpc.StatusCode.UNAVAILABLE
    assert upstreams.recorder.count("VerifyCode") == before


def test_internal_listener_refuses_unknown_systems_and_foreign_cas(
    gateway: RunningGateway, upstreams: Upstreams, tmp_path: Path
) -> None:
    # Signed by our CA, but not a system the gateway knows.
    ours = CertificatePaths(gateway.certificates.directory)
    cert, key = issue_client_certificate(ours, "intruder")
    # A valid-looking hall certificate from another CA.
    foreign = gateway_certificates(tmp_path / "foreign")
    before = upstreams.recorder.count("VerifyCode")
    for cert_path, key_path in [
        (cert, key),
        (foreign.client_cert("hall"), foreign.client_key("hall")),
    ]:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ours.ca_cert.read_bytes(),
            private_key=key_path.read_bytes(),
            certificate_chain=cert_path.read_bytes(),
        )
        channel = grpc.secure_channel(gateway.internal_address, credentials)
        stub = sms_pb2_grpc.InternalSmsServiceStub(channel)
        call = lambda s=stub: s.VerifyCode(sms_pb2.VerifyCodeRequest(), timeout=5)  # noqa: E731
        assert _code_of(call) == grpc.StatusCode.UNAVAILABLE
        channel.close()
    assert upstreams.recorder.count("VerifyCode") == before


def test_internal_listener_speaks_grpc_only(gateway: RunningGateway) -> None:
    """JSON (HTTP/1.1) is not served on the internal listener, even with a client cert."""
    certs = gateway.certificates
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    context.load_cert_chain(str(certs.client_cert("hall")), str(certs.client_key("hall")))
    client = httpx.Client(verify=context, timeout=5)
    with client, pytest.raises(httpx.HTTPError):
        client.post(f"https://{gateway.internal_address}/v1/sms/codes", json={"phone": PHONE})


# --- health checks, timeouts and streaming ----------------------------------------------


def test_unhealthy_service_is_taken_out_and_comes_back(
    gateway: RunningGateway, upstreams: Upstreams
) -> None:
    """Active gRPC health checks per service name; no panic routing to an unhealthy host."""
    gateway.wait_healthy("auth", "binding", "sms", "face")
    sms = upstreams.hosts["sms"]
    before = upstreams.recorder.count("SendCode")
    sms.health.set("etax.sms.v1.SmsService", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        wait_until(lambda: "healthy" not in gateway.cluster_health("sms"), "sms marked unhealthy")
        assert _code_of(lambda: _send_code(gateway.public_channel())) == grpc.StatusCode.UNAVAILABLE
        assert upstreams.recorder.count("SendCode") == before
    finally:
        sms.health.set("etax.sms.v1.SmsService", health_pb2.HealthCheckResponse.SERVING)
    gateway.wait_healthy("sms")
    # The workers learn the new state just after the admin shows it.
    wait_until(lambda: _succeeds(lambda: _send_code(gateway.public_channel())), "sms back")
    assert gateway.stats()["cluster.sms.health_check.failure"] >= 1


def test_streaming_watch_outlives_the_unary_route_timeout(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    upstreams.face.watch_updates, upstreams.face.watch_interval = 4, 0.5
    upstreams.face.get_ticket_delay = 1.5
    try:
        with running_gateway(
            upstreams.addresses,
            workdir=tmp_path,
            certificates=gateway_certs,
            route_timeout_seconds=1.0,
        ) as gateway:
            stub = face_pb2_grpc.FaceServiceStub(gateway.public_channel())
            updates = list(stub.WatchTicket(face_pb2.WatchTicketRequest(ticket_id="t"), timeout=20))
            assert [u.ticket.state for u in updates][-1] == face_pb2.TICKET_STATE_PASSED
            assert len(updates) == 4
            lines = httpx.get(gateway.url("/v1/face/tickets/t:watch"), timeout=20).text.splitlines()
            assert json.loads(lines[-1])["ticket"]["state"] == "TICKET_STATE_PASSED"
            # A unary call is cut at the route timeout.
            call = lambda: stub.GetTicket(face_pb2.GetTicketRequest(ticket_id="t"), timeout=20)  # noqa: E731
            assert _code_of(call) == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        upstreams.face.watch_updates, upstreams.face.watch_interval = 3, 0.0
        upstreams.face.get_ticket_delay = 0.0


# --- rate limits -----------------------------------------------------------------------------


def test_code_sending_route_is_rate_limited_with_resource_exhausted(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path, signing_key: SigningKey
) -> None:
    with running_gateway(
        upstreams.addresses,
        workdir=tmp_path,
        certificates=gateway_certs,
        code_rate_per_second=1,
        code_burst=2,
        login_rate_per_second=1,
        login_burst=1,
    ) as gateway:
        channel = gateway.public_channel()
        assert _send_code(channel).sends_left_in_window == 4
        assert _send_code(channel).sends_left_in_window == 4
        codes = []
        for _ in range(3):
            try:
                _send_code(channel)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
        # The bucket refills one token a second: at most one of three may slip through.
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 2
        response = httpx.post(
            gateway.url("/v1/sms/codes"), json={"phone": PHONE, "purpose": 1}, timeout=5
        )
        assert response.status_code == 429
        # Per route: login has its own bucket, and unlimited routes are not affected.
        login = auth_pb2_grpc.AuthServiceStub(channel)
        assert login.StartLogin(auth_pb2.StartLoginRequest(), timeout=5).challenge_id
        assert _code_of(lambda: login.StartLogin(auth_pb2.StartLoginRequest(), timeout=5)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        for _ in range(5):
            assert login.GetPublicKeys(auth_pb2.GetPublicKeysRequest(), timeout=5).keys


def _client_at(address: str) -> httpx.Client:
    """An HTTP client whose connections come from `address` (all of 127/8 is loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=5)


def _logins(client: httpx.Client, gateway: RunningGateway, count: int, **headers: str) -> list[int]:
    return [
        client.post(
            gateway.url("/v1/auth/logins"), json={"account": "x"}, headers=headers
        ).status_code
        for _ in range(count)
    ]


def test_flood_guards_are_per_client(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    """Issue 11.6: one client far over its login limit is refused while another client's
    logins succeed (the buckets are per client address, not per route)."""
    with (
        running_gateway(
            upstreams.addresses,
            workdir=tmp_path,
            certificates=gateway_certs,
            login_rate_per_second=1,
            login_burst=3,
        ) as gateway,
        _client_at("127.0.0.2") as flooding,
        _client_at("127.0.0.3") as other,
    ):
        refused = _logins(flooding, gateway, 30)
        assert refused.count(429) >= 25
        assert _logins(other, gateway, 3) == [200, 200, 200]


def test_a_trusted_proxy_names_its_client_and_others_cannot(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    """The web service and APP backends call for many people: X-Forwarded-For names the
    client, but only from ETAX_GATEWAY_TRUSTED_PROXIES; a request naming an APP also counts
    against that APP's bucket."""
    with (
        running_gateway(
            upstreams.addresses,
            workdir=tmp_path,
            certificates=gateway_certs,
            login_rate_per_second=1,
            login_burst=2,
            app_rate_per_second=1,
            app_burst=5,
            trusted_proxies="127.0.0.4/32",
        ) as gateway,
        _client_at("127.0.0.4") as proxy,
        _client_at("127.0.0.5") as stranger,
    ):
        # Behind the proxy, two people have buckets of their own.
        assert _logins(proxy, gateway, 2, **{"x-forwarded-for": "203.0.113.1"}) == [200] * 2
        assert _logins(proxy, gateway, 1, **{"x-forwarded-for": "203.0.113.1"}) == [429]
        assert _logins(proxy, gateway, 2, **{"x-forwarded-for": "203.0.113.2"}) == [200] * 2
        # Anyone else's X-Forwarded-For is not believed: their own address counts.
        spoofed = [
            _logins(stranger, gateway, 1, **{"x-forwarded-for": f"198.51.100.{n}"})[0]
            for n in range(5)
        ]
        assert spoofed.count(429) >= 2
        # An APP's own bucket: five in all, whoever its users are.
        app = [
            _logins(
                proxy,
                gateway,
                1,
                **{"x-forwarded-for": f"203.0.113.{n}", "x-etax-app-id": "etax-app"},
            )[0]
            for n in range(10, 18)
        ]
        assert app.count(429) >= 2


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("GET", "/v1/me/profile", None, 401, "UNAUTHENTICATED"),
        ("POST", "/v1/auth/logins", b"{", 400, "MALFORMED_REQUEST"),
        ("POST", "/v1/auth/logins", b'{"entry": "ENTRY_NO_SUCH"}', 400, "MALFORMED_REQUEST"),
        ("POST", "/v1/auth/logins", b'{"account": 12, "entry": [1]}', 400, "MALFORMED_REQUEST"),
        ("GET", "/v1/no/such/route", None, 404, "NOT_FOUND"),
        (
            "POST",
            "/v1/sms/codes",
            b'{"phone": "' + b"1" * (9 * 1024 * 1024) + b'"}',
            413,
            "MALFORMED_REQUEST",
        ),
    ],
)
def test_errors_the_gateway_makes_itself_have_the_services_json_shape(
    gateway: RunningGateway,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    reason: str,
) -> None:
    """Issue 11.5: google.rpc.Status with ErrorInfo (domain etax) and a zh-CN
    LocalizedMessage, as the transcoder prints the services' own errors."""
    response = httpx.request(
        method,
        gateway.url(path),
        content=body,
        headers={"content-type": "application/json"} if body is not None else {},
        timeout=10,
    )
    assert response.status_code == status, response.text[:200]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    info, localized = error["details"][:2]
    assert info["@type"].endswith("google.rpc.ErrorInfo")
    assert (info["domain"], info["reason"]) == ("etax", reason)
    assert localized == {
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "zh-CN",
        "message": error["message"],
    }
    assert any("\u4e00" <= ch <= "\u9fff" for ch in error["message"])


def test_the_flood_guard_answers_json_clients_with_retry_info(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    with running_gateway(
        upstreams.addresses,
        workdir=tmp_path,
        certificates=gateway_certs,
        login_rate_per_second=1,
        login_burst=1,
    ) as gateway:
        responses = [
            httpx.post(gateway.url("/v1/auth/logins"), json={"account": "x"}, timeout=5)
            for _ in range(3)
        ]
        refused = next(r for r in responses if r.status_code == 429).json()
        assert refused["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        kinds = {d["@type"].rsplit(".", 1)[1]: d for d in refused["details"]}
        assert kinds["ErrorInfo"]["reason"] == "TOO_MANY_REQUESTS"
        assert kinds["RetryInfo"]["retry_delay"] == "1s"
        # gRPC clients keep the gRPC status Envoy gives them.
        stub = auth_pb2_grpc.AuthServiceStub(gateway.public_channel())
        assert _code_of(lambda: stub.StartLogin(auth_pb2.StartLoginRequest(), timeout=5)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )


# --- access logs -----------------------------------------------------------------------------


def test_access_log_has_request_ids_and_no_personal_numbers(
    gateway: RunningGateway, signing_key: SigningKey
) -> None:
    start = len(gateway.access_log_entries())
    channel = gateway.public_channel()
    _send_code(channel, metadata=(("x-request-id", "req-grpc-1"),))
    grpc_web_call(
        gateway.url("/etax.sms.v1.SmsService/SendCode"),
        sms_pb2.SendCodeRequest(phone=PHONE).SerializeToString(),
    )
    json_reply = httpx.post(gateway.url("/v1/sms/codes"), json={"phone": PHONE}, timeout=5)
    httpx.post(
        gateway.url("/v1/registrations"),
        json={"identity": {"name": "张三", "document": {"type": 201, "number": DOCUMENT}}},
        timeout=5,
    )
    # Personal numbers in a query string, a path parameter, an unknown path, a bad body.
    httpx.get(
        gateway.url(f"/v1/me/identities?province=37&phone={PHONE}&doc={DOCUMENT}"),
        headers={"authorization": f"Bearer {mint(signing_key)}"},
        timeout=5,
    )
    httpx.get(gateway.url(f"/v1/face/tickets/{PHONE}"), timeout=5)
    httpx.get(gateway.url(f"/v1/people/{DOCUMENT}?phone={PHONE}"), timeout=5)
    httpx.post(gateway.url("/v1/sms/codes"), json={"phone": PHONE, "purpose": DOCUMENT}, timeout=5)
    sent = 8
    wait_until(lambda: len(gateway.access_log_entries()) >= start + sent, "access log lines")
    text = gateway.access_log.read_text()
    for secret in (PHONE, PHONE[3:], DOCUMENT, DOCUMENT[6:14], "张三"):
        assert secret not in text
    entries = gateway.access_log_entries()[start:]
    assert all(entry["request_id"] for entry in entries)
    by_id = {entry["request_id"]: entry for entry in entries}
    assert by_id["req-grpc-1"]["route"] == "etax.sms.v1.SmsService/SendCode"
    assert by_id["req-grpc-1"]["grpc_status"] == 0
    assert by_id[json_reply.headers["x-request-id"]]["protocol"] == "HTTP/1.1"


# --- two gateways on one machine (A3) ----------------------------------------------------------


def test_a3_two_province_gateways_run_side_by_side_with_distinct_base_ids(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path, signing_key: SigningKey
) -> None:
    base_id = random.randrange(10_000, 60_000)
    addresses = upstreams.addresses
    with (
        running_gateway(
            addresses,
            workdir=tmp_path / "37",
            certificates=gateway_certs,
            province="37",
            base_id=base_id,
        ) as shandong,
        running_gateway(
            addresses,
            workdir=tmp_path / "11",
            certificates=gateway_certs,
            province="11",
            base_id=base_id + 1,
        ) as beijing,
    ):
        for gateway, province in [(shandong, "37"), (beijing, "11")]:
            gateway.wait_for_jwks()
            stub = auth_pb2_grpc.AccountServiceStub(gateway.public_channel())
            token = mint(signing_key, person_id="p-a3")
            profile = stub.GetProfile(
                auth_pb2.GetProfileRequest(), metadata=bearer(token), timeout=5
            ).profile
            # The same person's token is honoured by both; each says which bureau it is.
            assert (profile.person_id, profile.registered_province) == ("p-a3", province)
        # The same base id a second time is refused: that is why they need distinct ones.
        with (
            pytest.raises(RuntimeError, match="exited"),
            running_gateway(
                addresses,
                workdir=tmp_path / "again",
                certificates=gateway_certs,
                base_id=base_id,
            ),
        ):
            pass


# --- a JWKS file instead of the remote set -------------------------------------------------------


def test_jwks_file_source(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    """Auth may publish a JWKS file instead; Envoy reads it at start."""
    published = SigningKey.generate()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [published.public_jwk()]}))
    with running_gateway(
        upstreams.addresses,
        workdir=tmp_path / "gw",
        certificates=gateway_certs,
        jwks_source="file",
        jwks_file=jwks,
    ) as gateway:
        stub = auth_pb2_grpc.AccountServiceStub(gateway.public_channel())
        profile = stub.GetProfile(
            auth_pb2.GetProfileRequest(),
            metadata=bearer(mint(published, person_id="p-f")),
            timeout=5,
        ).profile
        assert profile.person_id == "p-f"
        other = mint(SigningKey.generate())
        call = lambda: stub.GetProfile(  # noqa: E731
            auth_pb2.GetProfileRequest(), metadata=bearer(other), timeout=5
        )
        assert _code_of(call) == grpc.StatusCode.UNAUTHENTICATED


def test_remote_jwks_is_fetched_once_auth_comes_up_after_the_gateway(
    gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    """`make run` starts Envoy and auth together: the key set arrives when auth is up."""
    key = SigningKey.generate()
    servers = start_upstreams([key.public_jwk()])
    auth = servers.hosts["auth"]
    auth.health.set("etax.auth.v1.AuthService", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        with running_gateway(
            servers.addresses, workdir=tmp_path, certificates=gateway_certs
        ) as gateway:
            wait_until(
                lambda: gateway.stats().get("http.public.jwt_authn.jwks_fetch_failed", 0) > 0,
                "a failed JWKS fetch while auth is down",
            )
            auth.health.set("etax.auth.v1.AuthService", health_pb2.HealthCheckResponse.SERVING)
            gateway.wait_for_jwks()
            stub = auth_pb2_grpc.AccountServiceStub(gateway.public_channel())
            token = mint(key, person_id="p-late")
            wait_until(
                lambda: _succeeds(
                    lambda: stub.GetProfile(
                        auth_pb2.GetProfileRequest(), metadata=bearer(token), timeout=5
                    )
                ),
                "token accepted",
            )
    finally:
        servers.stop()


def test_replicas_share_the_load_and_an_unhealthy_one_gets_none(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    """Comma-separated upstream addresses are replicas of one cluster."""
    second = start_upstreams([])
    try:
        addresses = {
            **upstreams.addresses,
            "sms": f"{upstreams.addresses['sms']},{second.addresses['sms']}",
        }
        with running_gateway(addresses, workdir=tmp_path, certificates=gateway_certs) as gateway:
            wait_until(
                lambda: gateway.cluster_health("sms") == ["healthy", "healthy"], "both healthy"
            )
            channel = gateway.public_channel()
            first_before = upstreams.recorder.count("SendCode")
            for _ in range(20):
                _send_code(channel)
            assert second.recorder.count("SendCode") > 0
            assert upstreams.recorder.count("SendCode") - first_before > 0
            second.hosts["sms"].health.set(
                "etax.sms.v1.SmsService", health_pb2.HealthCheckResponse.NOT_SERVING
            )
            wait_until(
                lambda: sorted(gateway.cluster_health("sms")) == ["/failed_active_hc", "healthy"],
                "second replica out",
            )

            def second_gets_nothing() -> bool:
                # The workers follow the admin view within moments.
                before = second.recorder.count("SendCode")
                for _ in range(10):
                    _send_code(channel)
                return second.recorder.count("SendCode") == before

            wait_until(second_gets_nothing, "no traffic to the unhealthy replica")
            after = second.recorder.count("SendCode")
            for _ in range(20):
                _send_code(channel)
            assert second.recorder.count("SendCode") == after
    finally:
        second.stop()


# --- a trusted APP's sessions (Q17) -------------------------------------------------------------


def test_q17_income_tax_app_session_may_confirm_a_qr_login_and_nothing_else(
    upstreams: Upstreams, gateway_certs: CertificatePaths, tmp_path: Path
) -> None:
    """D3, Q17: the personal income tax APP's tokens pass the gateway on ConfirmQrLogin only."""
    iit_key = SigningKey.generate()
    iit_jwks = tmp_path / "iit-jwks.json"
    iit_jwks.write_text(json.dumps({"keys": [iit_key.public_jwk()]}))
    now = int(time.time())
    iit_token = jwt.encode(
        {"sub": "iit-user-1", "iss": "iit-app", "aud": "etax", "iat": now, "exp": now + 600},
        iit_key.private_key,
        "EdDSA",
        headers={"kid": iit_key.kid},
    )
    with running_gateway(
        upstreams.addresses,
        workdir=tmp_path / "gw",
        certificates=gateway_certs,
        iit_issuer="iit-app",
        iit_jwks_file=iit_jwks,
    ) as gateway:
        channel = gateway.public_channel()
        confirm = channel.unary_unary("/etax.auth.v1.AuthService/ConfirmQrLogin")
        payload = auth_pb2.ConfirmQrLoginRequest(qr_payload="x").SerializeToString()
        # Past the gateway: the stand-in auth does not implement ConfirmQrLogin and fails
        # (INTERNAL); a token the gateway refused would be UNAUTHENTICATED.
        assert (
            _code_of(lambda: confirm(payload, metadata=bearer(iit_token), timeout=5))
            == grpc.StatusCode.INTERNAL
        )
        stub = auth_pb2_grpc.AccountServiceStub(channel)
        call = lambda: stub.GetProfile(  # noqa: E731
            auth_pb2.GetProfileRequest(), metadata=bearer(iit_token), timeout=5
        )
        assert _code_of(call) == grpc.StatusCode.UNAUTHENTICATED
