"""D3 QR login (扫码登录): a logged-in APP confirms the web page's ticket and the web page
becomes the same person in the same business; tickets are single-use and short-lived; the
personal income tax APP is a trusted issuer (Q17)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from etax.auth.v1 import auth_pb2
from etax.common.v1 import types_pb2
from pydantic import SecretStr

from etax_platform.keyrings import HmacKeyring
from etax_platform.pii import PersonalData
from etax_platform.tokens import SigningKey
from tests.auth.conftest import Backend, failure_of, new_resident_id
from tests.auth.platform import (
    BEIJING,
    ENTERPRISE,
    NATURAL,
    SHANDONG,
    AuthServer,
    Platform,
    bearer,
    start_platform,
)

WAITING = auth_pb2.QR_LOGIN_STATE_WAITING
CONFIRMED = auth_pb2.QR_LOGIN_STATE_CONFIRMED
EXPIRED = auth_pb2.QR_LOGIN_STATE_EXPIRED
COLLECTED = auth_pb2.QR_LOGIN_STATE_COLLECTED
IIT_ISSUER = "https://iit.example.gov.cn"


def _create(platform: Platform, province: str = SHANDONG) -> auth_pb2.CreateQrLoginResponse:
    return platform.auth.CreateQrLogin(auth_pb2.CreateQrLoginRequest(province=province), timeout=10)


def _confirm(platform: Platform, payload: str, token: str) -> None:
    platform.auth.ConfirmQrLogin(
        auth_pb2.ConfirmQrLoginRequest(qr_payload=payload),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=10,
    )


def _get(platform: Platform, qr_login_id: str) -> auth_pb2.GetQrLoginResponse:
    return platform.auth.GetQrLogin(auth_pb2.GetQrLoginRequest(qr_login_id=qr_login_id), timeout=10)


def test_d3_the_web_page_becomes_the_apps_natural_person(platform: Platform) -> None:
    person = platform.person()
    app = platform.login(person)
    created = _create(platform, BEIJING)
    assert created.qr_payload.startswith("etaxqr2.")
    assert created.expires_at.seconds - int(platform.clock.now().timestamp()) == 120
    assert _get(platform, created.qr_login_id).state == WAITING
    _confirm(platform, created.qr_payload, app.access_token)
    collected = _get(platform, created.qr_login_id)
    assert collected.state == CONFIRMED
    web = collected.session
    assert web.person_id == person.person_id
    assert web.session_id != app.session_id
    assert (web.identity.entry, web.province, web.masked_name) == (NATURAL, BEIJING, "张*三")
    claims = jwt.decode(web.access_token, options={"verify_signature": False})
    assert claims["amr"] == ["qr"]
    # The session is handed out once.
    again = _get(platform, created.qr_login_id)
    assert (again.state, again.HasField("session")) == (COLLECTED, False)


def test_d3_enterprise_business_in_the_app_is_enterprise_business_on_the_web(
    platform: Platform,
) -> None:
    boss = platform.person()
    code = platform.enterprise(boss)
    app = platform.login(boss, entry=ENTERPRISE, enterprise_code=code)
    created = _create(platform)
    _confirm(platform, created.qr_payload, app.access_token)
    web = _get(platform, created.qr_login_id).session
    assert (web.identity.entry, web.identity.enterprise_code, web.identity.role) == (
        ENTERPRISE,
        code,
        types_pb2.ROLE_LEGAL_REPRESENTATIVE,
    )


def test_d3_tickets_are_single_use_and_short_lived(platform: Platform) -> None:
    person = platform.person()
    app = platform.login(person)
    created = _create(platform)
    _confirm(platform, created.qr_payload, app.access_token)
    twice = failure_of(_confirm, platform, created.qr_payload, app.access_token)
    assert (twice.reason, twice.metadata["field"]) == ("TICKET_INVALID", "qr_payload")
    late = _create(platform)
    platform.clock.advance(timedelta(seconds=120))
    assert _get(platform, late.qr_login_id).state == EXPIRED
    assert failure_of(_confirm, platform, late.qr_payload, app.access_token).reason == (
        "TICKET_INVALID"
    )
    # Confirmed but never collected: the web page has another ticket lifetime.
    assert _get(platform, created.qr_login_id).state == EXPIRED


def test_d3_concurrent_collections_hand_the_session_out_once(platform: Platform) -> None:
    app = platform.login(platform.person())
    created = _create(platform)
    _confirm(platform, created.qr_payload, app.access_token)
    with ThreadPoolExecutor(8) as pool:
        views = list(pool.map(lambda _: _get(platform, created.qr_login_id), range(8)))
    assert sorted(v.state for v in views) == [CONFIRMED] + [COLLECTED] * 7
    assert sum(v.HasField("session") for v in views) == 1


def test_d3_a_forged_payload_or_a_missing_session_is_refused(platform: Platform) -> None:
    person = platform.person()
    app = platform.login(person)
    created = _create(platform)
    forged = created.qr_payload[:-4] + (
        "0000" if not created.qr_payload.endswith("0000") else "1111"
    )
    assert failure_of(_confirm, platform, forged, app.access_token).reason == "TICKET_INVALID"
    # Found by the fuzzer: an expiry int() refuses answered INTERNAL.
    _prefix, qr_login_id, _expiry, key_id, mac = created.qr_payload.split(".")
    for expiry in ("²³", "①", "9" * 5000, "-1", " 1"):
        odd = f"etaxqr2.{qr_login_id}.{expiry}.{key_id}.{mac}"
        assert failure_of(_confirm, platform, odd, app.access_token).reason == "TICKET_INVALID"
    nobody = failure_of(
        platform.auth.ConfirmQrLogin,
        auth_pb2.ConfirmQrLoginRequest(qr_payload=created.qr_payload),
        timeout=10,
    )
    assert nobody.reason == "UNAUTHENTICATED"
    platform.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(app), timeout=10)
    ended = failure_of(_confirm, platform, created.qr_payload, app.access_token)
    assert ended.reason == "UNAUTHENTICATED"
    outsider = SigningKey.generate()
    token = jwt.encode(
        {"iss": "someone-else", "aud": "etax", "exp": 4102444800}, outsider.private_key, "EdDSA"
    )
    assert failure_of(_confirm, platform, created.qr_payload, token).reason == "UNAUTHENTICATED"
    assert _get(platform, created.qr_login_id).state == WAITING


@pytest.fixture
def iit_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def iit_platform(backend: Backend, tmp_path: Path, iit_key: SigningKey) -> Iterator[Platform]:
    with start_platform(
        backend,
        tmp_path,
        iit_issuer=IIT_ISSUER,
        iit_jwks_json=json.dumps({"keys": [iit_key.public_jwk()]}),
    ) as running:
        yield running


def _iit_token(key: SigningKey, platform: Platform, number: str, **changes: object) -> str:
    claims = {
        "iss": IIT_ISSUER,
        "aud": "etax",
        "exp": int(platform.clock.now().timestamp()) + 600,
        "document_type": 201,
        "document_number": number,
        **changes,
    }
    return jwt.encode(claims, key.private_key, "EdDSA", headers={"kid": key.kid})


def test_d3_q17_the_personal_income_tax_app_logs_in_as_natural_person(
    iit_platform: Platform, iit_key: SigningKey
) -> None:
    platform = iit_platform
    person = platform.person()
    created = _create(platform)
    _confirm(platform, created.qr_payload, _iit_token(iit_key, platform, person.document))
    web = _get(platform, created.qr_login_id).session
    assert (web.person_id, web.identity.entry) == (person.person_id, NATURAL)
    unregistered = _create(platform)
    refused = failure_of(
        _confirm,
        platform,
        unregistered.qr_payload,
        _iit_token(iit_key, platform, new_resident_id()),
    )
    assert refused.reason == "USER_NOT_REGISTERED"
    expired = _iit_token(iit_key, platform, person.document, exp=1)
    assert failure_of(_confirm, platform, unregistered.qr_payload, expired).reason == (
        "UNAUTHENTICATED"
    )
    forged = jwt.encode(
        {
            "iss": IIT_ISSUER,
            "aud": "etax",
            "exp": 4102444800,
            "document_type": 201,
            "document_number": person.document,
        },
        SigningKey.generate().private_key,
        "EdDSA",
        headers={"kid": iit_key.kid},
    )
    assert failure_of(_confirm, platform, unregistered.qr_payload, forged).reason == (
        "UNAUTHENTICATED"
    )


# --- one secret, one purpose: the QR-login key rotates on its own ---------------------------


def test_d3_qr_codes_are_signed_with_a_key_of_their_own_that_rotates(
    backend: Backend, tmp_path: Path
) -> None:
    """The code names the key that signed it (ETAX_AUTH_QR_ACTIVE_KEY_ID); a rotated
    replica signs with the new key and still verifies codes of the old one until it is
    dropped; the PII blind-index key plays no part."""
    first = HmacKeyring.generate("q1")
    with start_platform(backend, tmp_path, **_qr_keys(first)) as platform:
        app = platform.login(platform.person())
        before = _create(platform)
        assert before.qr_payload.split(".")[3] == "q1"
        rotated = first.rotated("q2")
        replica = platform.second_server(**_qr_keys(rotated))
        after = replica.auth.CreateQrLogin(
            auth_pb2.CreateQrLoginRequest(province=SHANDONG), timeout=10
        )
        assert after.qr_payload.split(".")[3] == "q2"
        # The rotated replica confirms a code of the old key; the old replica does not
        # know the new key yet (so a rotation adds the key everywhere before it signs).
        _confirm_at(replica, before.qr_payload, app.access_token)
        assert _get(platform, before.qr_login_id).state == CONFIRMED
        unknown = failure_of(_confirm, platform, after.qr_payload, app.access_token)
        assert unknown.reason == "TICKET_INVALID"
        # Once q1 is dropped its codes are refused.
        dropped = platform.second_server(**_qr_keys(rotated.without("q1")))
        late = _create(platform)
        refused = failure_of(_confirm_at, dropped, late.qr_payload, app.access_token)
        assert refused.reason == "TICKET_INVALID"
        _confirm_at(dropped, after.qr_payload, app.access_token)
        assert _get(platform, after.qr_login_id).state == CONFIRMED
        # The MAC is not the PII blind index of what it signs.
        _prefix, qr_login_id, expiry, _key_id, mac = late.qr_payload.split(".")
        personal = PersonalData(platform.settings.platform.keyring())
        assert personal.blind_index(f"{qr_login_id}.{expiry}", "qr-login")[:32] != mac


def _qr_keys(keyring: HmacKeyring) -> dict[str, object]:
    dumped = keyring.dump()
    return {"qr_keys": SecretStr(dumped["keys"]), "qr_active_key_id": dumped["active_key_id"]}


def _confirm_at(server: AuthServer, payload: str, token: str) -> None:
    server.auth.ConfirmQrLogin(
        auth_pb2.ConfirmQrLoginRequest(qr_payload=payload),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=10,
    )
