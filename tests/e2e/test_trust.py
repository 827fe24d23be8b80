"""Trust under attack (issue 11): the contract's policy is what the gateway and every service
enforce, a revoked session is refused everywhere within a second, bad bytes are
INVALID_ARGUMENT, and a failed login attempt is not "your token" (watch streams:
tests/gateway/test_streams.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor

from etax_platform.errors import Reason, from_rpc_error
from etax_platform.gateway import GatewaySettings, policies_of
from etax_platform.gateway.config import _load_descriptor_set
from etax_platform.policy import Access, RpcPolicy
from tests.e2e.platform import Platform
from tests.e2e.story import Bureau, Person
from tests.harness.gateway import RunningGateway

POLICIES = policies_of(_load_descriptor_set(GatewaySettings().descriptor))
UNARY = [p for p in POLICIES if not p.server_streaming and not p.client_streaming]
SESSION_BEARING = [p for p in UNARY if p.needs_session]


def _raw_call(
    channel: grpc.Channel, policy: RpcPolicy, body: bytes, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    call = channel.unary_unary(policy.path)
    try:
        call(body, metadata=metadata, timeout=10)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def direct(platform: Platform) -> Iterator[dict[str, grpc.Channel]]:
    channels = {
        name: grpc.insecure_channel(address) for name, address in platform.upstreams.items()
    }
    yield channels
    for channel in channels.values():
        channel.close()


def _service_channel(direct: dict[str, grpc.Channel], policy: RpcPolicy) -> grpc.Channel:
    return direct[policy.service.split(".")[1]]


def test_a_revoked_session_is_refused_by_every_service_within_a_second(
    bureau: Bureau, gateway: RunningGateway, direct: dict[str, grpc.Channel]
) -> None:
    """DESIGN.md, Security: after Logout, every session-bearing RPC of every service,
    called directly and through the gateway, answers UNAUTHENTICATED."""
    person = bureau.register(Person("严守信"))
    session = bureau.login(person)
    public = gateway.public_channel()
    token = _bearer(session.token)
    # Before: the token is good everywhere (an empty request is refused for what it lacks).
    for policy in SESSION_BEARING:
        assert _raw_call(_service_channel(direct, policy), policy, b"", token) != (
            grpc.StatusCode.UNAUTHENTICATED
        ), policy.full_name
    bureau.web.call("AuthService.Logout", token=session.token)
    logged_out = time.monotonic()
    # Binding learns of it from auth's revocation feed: within a second.
    probe = next(p for p in SESSION_BEARING if p.service.startswith("etax.binding."))
    while _raw_call(_service_channel(direct, probe), probe, b"", token) != (
        grpc.StatusCode.UNAUTHENTICATED
    ):
        assert time.monotonic() - logged_out < 1.0, "binding still accepts a revoked session"
        time.sleep(0.02)
    for policy in SESSION_BEARING:
        for channel in (_service_channel(direct, policy), public):
            assert _raw_call(channel, policy, b"", token) == grpc.StatusCode.UNAUTHENTICATED, (
                policy.full_name
            )
    # And a write through the JSON API (issue: ApplyForAuthorization kept working).
    applied = bureau.app.call(
        "BindingService.ApplyForAuthorization",
        {"enterprise_code": "91370102MA3C4D5E6M", "role": "ROLE_TAX_OFFICER"},
        token=session.token,
    )
    assert (applied.http_status, applied.reason) == (401, "UNAUTHENTICATED")


def test_the_gateway_and_every_service_enforce_the_same_policy(
    gateway: RunningGateway, direct: dict[str, grpc.Channel]
) -> None:
    """Without a token: a session-bearing RPC is UNAUTHENTICATED at the gateway and at the
    service itself; an anonymous one gets the service's own answer either way; an internal
    one is not routed publicly, and a service refuses it if a public gateway forwarded it."""
    public = gateway.public_channel()
    for policy in UNARY:
        service = _service_channel(direct, policy)
        if policy.access is Access.INTERNAL:
            assert _raw_call(public, policy, b"", ()) == grpc.StatusCode.UNIMPLEMENTED
            forwarded = (("x-etax-gateway", "public"),)
            assert _raw_call(service, policy, b"", forwarded) == grpc.StatusCode.PERMISSION_DENIED
        elif policy.needs_session:
            for channel in (public, service):
                assert _raw_call(channel, policy, b"", ()) == grpc.StatusCode.UNAUTHENTICATED, (
                    policy.full_name
                )
        else:
            # The gateway lets it through: the service's own answer, whichever way it came
            # (the direct call names the province, as the gateway does).
            province = (("x-etax-province", gateway.settings.province),)
            assert _raw_call(public, policy, b"", ()) == _raw_call(
                service, policy, b"", province
            ), policy.full_name


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff\xff\xff\xff", id="not-protobuf"),
        pytest.param(b"\x0a\x02\xc3\x28", id="invalid-utf8-in-field-1"),
        pytest.param(b"\x0a\x10ab", id="truncated"),
    ],
)
def test_bytes_that_do_not_decode_are_malformed_request_everywhere(
    body: bytes, gateway: RunningGateway, direct: dict[str, grpc.Channel], token_session: str
) -> None:
    """Issue 11.4: never INTERNAL, on every RPC, directly and through the gateway."""
    public = gateway.public_channel()
    for policy in UNARY:
        if body.startswith(b"\x0a\x02") and not _first_field_is_string(policy):
            continue
        channels = [_service_channel(direct, policy)]
        if policy.public:
            channels.append(public)
        for channel in channels:
            call = channel.unary_unary(policy.path)
            with pytest.raises(grpc.RpcError) as caught:
                call(body, metadata=_bearer(token_session), timeout=10)
            error = caught.value
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                continue  # a trusted APP's route checks the token first
            domain = from_rpc_error(error)
            assert domain is not None, (policy.full_name, error.code())
            assert (error.code(), domain.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.MALFORMED_REQUEST,
            ), policy.full_name


def _first_field_is_string(policy: RpcPolicy) -> bool:
    method = descriptor_pool.Default().FindMethodByName(policy.full_name.replace("/", "."))
    field = method.input_type.fields_by_number.get(1)
    return field is not None and field.type == FieldDescriptor.TYPE_STRING


@pytest.fixture(scope="module")
def token_session(bureau: Bureau) -> str:
    return bureau.login(bureau.register(Person("严守信"))).token


def test_invalid_utf8_in_a_json_path_is_a_400(gateway: RunningGateway) -> None:
    """Percent-encoded invalid UTF-8 reaches a protobuf string field through the
    transcoder: the service refuses it as MALFORMED_REQUEST, never a 500."""
    for path in ("/v1/face/tickets/%C3%28", "/v1/auth/qr-logins/%FF%FE"):
        response = httpx.get(gateway.url(path), timeout=10)
        assert response.status_code == 400, (path, response.text)
        reasons = [d.get("reason") for d in response.json()["details"]]
        assert "MALFORMED_REQUEST" in reasons


def test_a_wrong_password_is_400_and_only_a_bad_token_is_401(bureau: Bureau) -> None:
    """DESIGN.md, Errors: a client that refreshes on 401 must not do so for a wrong
    password (CREDENTIALS_INVALID is INVALID_ARGUMENT, as OAuth's invalid_grant)."""
    person = bureau.register(Person("严守信"))
    wrong = bureau.start_login(person, password="Wrong.pass1", via=bureau.app)
    assert (wrong.http_status, wrong.reason) == (400, "CREDENTIALS_INVALID")
    no_token = bureau.app.call("AccountService.GetProfile")
    assert (no_token.http_status, no_token.reason) == (401, "UNAUTHENTICATED")
    assert no_token.text == "登录已失效，请重新登录"
