"""Bad input in every field of AuthService and the new internal RPCs gets INVALID_ARGUMENT
with a reason and the field, before anything is counted or written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from etax.auth.v1 import auth_pb2
from etax.binding.v1 import binding_pb2
from etax.common.v1 import types_pb2

from tests.auth.conftest import PASSWORD, failure_of
from tests.auth.platform import (
    AGENT,
    ENTERPRISE,
    NATURAL,
    SUBJECT,
    Person,
    Platform,
    bearer,
    new_uscc,
)

BAD_CODE = "91370102MA0000000X"  # USCC shape, wrong check character
WELL_FORMED_UNKNOWN_ID = "0" * 32
GOOD_CODE = new_uscc()


@dataclass
class Context:
    platform: Platform
    person: Person
    session: auth_pb2.Session
    challenge_id: str
    reset_id: str
    recovery_id: str


def _login(**fields: Any) -> Callable[[Context], Any]:
    def call(c: Context) -> Any:
        values = {
            "entry": NATURAL,
            "account": c.person.document,
            "password": PASSWORD,
            "province": "37",
            **fields,
        }
        return c.platform.auth.StartLogin(auth_pb2.StartLoginRequest(**values), timeout=10)

    return call


def _switch(**identity: Any) -> Callable[[Context], Any]:
    return lambda c: c.platform.auth.SwitchIdentity(
        auth_pb2.SwitchIdentityRequest(identity=binding_pb2.Identity(**identity)),
        metadata=bearer(c.session),
        timeout=10,
    )


def _auth(method: str, request: Callable[[Context], Any], **call: Any) -> Callable[[Context], Any]:
    return lambda c: getattr(c.platform.auth, method)(request(c), timeout=10, **call)


# (what, reason, field, call)
CASES: list[tuple[str, str, str, Callable[[Context], Any]]] = [
    ("entry unspecified", "INVALID_ARGUMENT", "entry", _login(entry=0)),
    ("entry unknown", "INVALID_ARGUMENT", "entry", _login(entry=9)),
    ("account empty", "INVALID_ARGUMENT", "account", _login(account=" ")),
    ("account too long", "INVALID_ARGUMENT", "account", _login(account="A" * 65)),
    ("password empty", "INVALID_ARGUMENT", "password", _login(password="")),
    ("province empty", "INVALID_ARGUMENT", "province", _login(province="")),
    ("province unknown", "INVALID_ARGUMENT", "province", _login(province="99")),
    (
        "enterprise code",
        "INVALID_ENTERPRISE_CODE",
        "enterprise_code",
        _login(entry=ENTERPRISE, enterprise_code=BAD_CODE),
    ),
    (
        "enterprise code missing",
        "INVALID_ENTERPRISE_CODE",
        "enterprise_code",
        _login(entry=ENTERPRISE),
    ),
    (
        "enterprise project number",
        "INVALID_ARGUMENT",
        "subject_number",
        _login(entry=ENTERPRISE, enterprise_code=GOOD_CODE, subject_number="??"),
    ),
    ("agency code", "INVALID_ENTERPRISE_CODE", "agency_code", _login(entry=AGENT, agency_code="x")),
    (
        "subject type",
        "INVALID_ARGUMENT",
        "subject_type",
        _login(entry=SUBJECT, subject_number="BJXM-001"),
    ),
    (
        "subject number",
        "INVALID_ARGUMENT",
        "subject_number",
        _login(entry=SUBJECT, subject_type=1, subject_number="a b"),
    ),
    (
        "subject search: challenge id",
        "INVALID_ARGUMENT",
        "challenge_id",
        _auth(
            "SearchLoginSubjects",
            lambda c: auth_pb2.SearchLoginSubjectsRequest(challenge_id="../x", query="KQ"),
        ),
    ),
    (
        "subject search: query",
        "INVALID_ARGUMENT",
        "query",
        _auth(
            "SearchLoginSubjects",
            lambda c: auth_pb2.SearchLoginSubjectsRequest(challenge_id="a" * 32, query="K%"),
        ),
    ),
    (
        "subject choice: number",
        "INVALID_ARGUMENT",
        "subject_number",
        _auth(
            "SelectLoginSubject",
            lambda c: auth_pb2.SelectLoginSubjectRequest(
                challenge_id="a" * 32, subject_number="a b"
            ),
        ),
    ),
    (
        "send code: challenge id",
        "INVALID_ARGUMENT",
        "challenge_id",
        _auth("SendLoginCode", lambda c: auth_pb2.SendLoginCodeRequest(challenge_id="../x")),
    ),
    (
        "complete: code",
        "CODE_INVALID",
        "code",
        _auth(
            "CompleteLoginWithCode",
            lambda c: auth_pb2.CompleteLoginWithCodeRequest(
                challenge_id=c.challenge_id, code="12a"
            ),
        ),
    ),
    (
        "complete: challenge id",
        "INVALID_ARGUMENT",
        "challenge_id",
        _auth(
            "CompleteLoginWithCode",
            lambda c: auth_pb2.CompleteLoginWithCodeRequest(challenge_id="", code="123456"),
        ),
    ),
    (
        "start face: challenge id",
        "INVALID_ARGUMENT",
        "challenge_id",
        _auth("StartLoginFace", lambda c: auth_pb2.StartLoginFaceRequest(challenge_id="x" * 200)),
    ),
    (
        "complete face: challenge id",
        "INVALID_ARGUMENT",
        "challenge_id",
        _auth(
            "CompleteLoginWithFace",
            lambda c: auth_pb2.CompleteLoginWithFaceRequest(challenge_id="nope", proof="p"),
        ),
    ),
    (
        "subject face: type",
        "INVALID_ARGUMENT",
        "subject_type",
        _auth(
            "StartSubjectFaceLogin",
            lambda c: auth_pb2.StartSubjectFaceLoginRequest(
                subject_number="BJXM-001", province="11"
            ),
        ),
    ),
    (
        "subject face: number",
        "INVALID_ARGUMENT",
        "subject_number",
        _auth(
            "StartSubjectFaceLogin",
            lambda c: auth_pb2.StartSubjectFaceLoginRequest(
                subject_type=2, subject_number="", province="11"
            ),
        ),
    ),
    (
        "subject face: province",
        "INVALID_ARGUMENT",
        "province",
        _auth(
            "StartSubjectFaceLogin",
            lambda c: auth_pb2.StartSubjectFaceLoginRequest(
                subject_type=2, subject_number="BJXM-001", province="3"
            ),
        ),
    ),
    (
        "qr: province",
        "INVALID_ARGUMENT",
        "province",
        _auth("CreateQrLogin", lambda c: auth_pb2.CreateQrLoginRequest(province="xx")),
    ),
    (
        "qr: payload",
        "INVALID_ARGUMENT",
        "qr_payload",
        lambda c: c.platform.auth.ConfirmQrLogin(
            auth_pb2.ConfirmQrLoginRequest(qr_payload=""), metadata=bearer(c.session), timeout=10
        ),
    ),
    (
        "qr: id",
        "INVALID_ARGUMENT",
        "qr_login_id",
        _auth("GetQrLogin", lambda c: auth_pb2.GetQrLoginRequest(qr_login_id="*")),
    ),
    (
        "legacy: enterprise code",
        "INVALID_ENTERPRISE_CODE",
        "enterprise_code",
        _auth(
            "LegacyLogin",
            lambda c: auth_pb2.LegacyLoginRequest(
                enterprise_code="123", password=PASSWORD, province="37"
            ),
        ),
    ),
    (
        "legacy: password",
        "INVALID_ARGUMENT",
        "password",
        _auth(
            "LegacyLogin",
            lambda c: auth_pb2.LegacyLoginRequest(enterprise_code=GOOD_CODE, province="37"),
        ),
    ),
    (
        "legacy: province",
        "INVALID_ARGUMENT",
        "province",
        _auth(
            "LegacyLogin",
            lambda c: auth_pb2.LegacyLoginRequest(enterprise_code=GOOD_CODE, password=PASSWORD),
        ),
    ),
    (
        "refresh token empty",
        "INVALID_ARGUMENT",
        "refresh_token",
        _auth("RefreshSession", lambda c: auth_pb2.RefreshSessionRequest()),
    ),
    (
        "refresh token too long",
        "INVALID_ARGUMENT",
        "refresh_token",
        _auth("RefreshSession", lambda c: auth_pb2.RefreshSessionRequest(refresh_token="r" * 200)),
    ),
    (
        "logout: refresh token",
        "INVALID_ARGUMENT",
        "refresh_token",
        _auth("Logout", lambda c: auth_pb2.LogoutRequest(refresh_token="r" * 200)),
    ),
    ("switch: entry", "INVALID_ARGUMENT", "identity.entry", _switch()),
    (
        "switch: enterprise code",
        "INVALID_ENTERPRISE_CODE",
        "identity.enterprise_code",
        _switch(entry=ENTERPRISE, enterprise_code=BAD_CODE),
    ),
    (
        "switch: agency code",
        "INVALID_ENTERPRISE_CODE",
        "identity.agency_code",
        _switch(entry=AGENT),
    ),
    (
        "switch: client code",
        "INVALID_ENTERPRISE_CODE",
        "identity.client_code",
        _switch(entry=AGENT, agency_code=GOOD_CODE, client_code="??"),
    ),
    (
        "switch: subject type",
        "INVALID_ARGUMENT",
        "identity.subject_type",
        _switch(entry=SUBJECT, subject_type=7, project_number="BJXM-001"),
    ),
    (
        "switch: subject number",
        "INVALID_ARGUMENT",
        "identity.project_number",
        _switch(entry=SUBJECT, subject_type=1, project_number="#"),
    ),
    (
        "reset: account",
        "INVALID_ARGUMENT",
        "account",
        _auth("StartPasswordReset", lambda c: auth_pb2.StartPasswordResetRequest(account="")),
    ),
    (
        "reset: province",
        "INVALID_ARGUMENT",
        "province",
        _auth(
            "StartPasswordReset",
            lambda c: auth_pb2.StartPasswordResetRequest(account=c.person.document, province="9"),
        ),
    ),
    (
        "reset code: reset id",
        "INVALID_ARGUMENT",
        "reset_id",
        _auth("SendPasswordResetCode", lambda c: auth_pb2.SendPasswordResetCodeRequest()),
    ),
    (
        "reset face: reset id",
        "INVALID_ARGUMENT",
        "reset_id",
        _auth(
            "StartPasswordResetFace", lambda c: auth_pb2.StartPasswordResetFaceRequest(reset_id="z")
        ),
    ),
    (
        "reset: new password",
        "PASSWORD_POLICY",
        "new_password",
        _auth(
            "CompletePasswordReset",
            lambda c: auth_pb2.CompletePasswordResetRequest(
                reset_id=c.reset_id, code="123456", new_password="onlyletters"
            ),
        ),
    ),
    (
        "reset: reset id",
        "INVALID_ARGUMENT",
        "reset_id",
        _auth(
            "CompletePasswordReset",
            lambda c: auth_pb2.CompletePasswordResetRequest(
                reset_id="-", code="123456", new_password="N3w-password"
            ),
        ),
    ),
    (
        "reset: code",
        "CODE_INVALID",
        "code",
        _auth(
            "CompletePasswordReset",
            lambda c: auth_pb2.CompletePasswordResetRequest(
                reset_id=c.reset_id, code="1", new_password="N3w-password"
            ),
        ),
    ),
    (
        "reset: no proof",
        "INVALID_ARGUMENT",
        "code",
        _auth(
            "CompletePasswordReset",
            lambda c: auth_pb2.CompletePasswordResetRequest(
                reset_id=c.reset_id, new_password="N3w-password"
            ),
        ),
    ),
    (
        "phone recovery: account",
        "INVALID_ARGUMENT",
        "account",
        _auth(
            "StartPhoneRecovery",
            lambda c: auth_pb2.StartPhoneRecoveryRequest(account="", password=PASSWORD),
        ),
    ),
    (
        "phone recovery: password",
        "INVALID_ARGUMENT",
        "password",
        _auth(
            "StartPhoneRecovery",
            lambda c: auth_pb2.StartPhoneRecoveryRequest(account=c.person.document),
        ),
    ),
    (
        "phone recovery: phone",
        "INVALID_PHONE",
        "phone",
        _auth(
            "CompletePhoneRecovery",
            lambda c: auth_pb2.CompletePhoneRecoveryRequest(
                recovery_id=c.recovery_id, phone="12345", verification_id="v", code="123456"
            ),
        ),
    ),
    (
        "phone recovery: verification id",
        "INVALID_ARGUMENT",
        "verification_id",
        _auth(
            "CompletePhoneRecovery",
            lambda c: auth_pb2.CompletePhoneRecoveryRequest(
                recovery_id=c.recovery_id, phone="13912345678", code="123456"
            ),
        ),
    ),
    (
        "phone recovery: code",
        "CODE_INVALID",
        "code",
        _auth(
            "CompletePhoneRecovery",
            lambda c: auth_pb2.CompletePhoneRecoveryRequest(
                recovery_id=c.recovery_id, phone="13912345678", verification_id="v", code=""
            ),
        ),
    ),
    (
        "phone recovery: recovery id",
        "INVALID_ARGUMENT",
        "recovery_id",
        _auth(
            "CompletePhoneRecovery",
            lambda c: auth_pb2.CompletePhoneRecoveryRequest(
                recovery_id="r", phone="13912345678", verification_id="v", code="123456"
            ),
        ),
    ),
    (
        "unlock: account",
        "INVALID_ARGUMENT",
        "account",
        _auth("StartFaceUnlock", lambda c: auth_pb2.StartFaceUnlockRequest()),
    ),
    (
        "unlock: unlock id",
        "INVALID_ARGUMENT",
        "unlock_id",
        _auth(
            "CompleteFaceUnlock",
            lambda c: auth_pb2.CompleteFaceUnlockRequest(unlock_id="u", proof="p"),
        ),
    ),
    (
        "import: enterprise code",
        "INVALID_ENTERPRISE_CODE",
        "enterprise_code",
        lambda c: c.platform.internal.ImportLegacyCredential(
            auth_pb2.ImportLegacyCredentialRequest(
                enterprise_code="bad",
                legacy_password_hash="$pbkdf2-sha256$1000$c2FsdA$ZGlnZXN0",
                person=types_pb2.Document(type=201, number=c.person.document),
            ),
            timeout=10,
        ),
    ),
    (
        "import: person type",
        "INVALID_DOCUMENT",
        "person.type",
        lambda c: c.platform.internal.ImportLegacyCredential(
            auth_pb2.ImportLegacyCredentialRequest(
                enterprise_code=GOOD_CODE,
                legacy_password_hash="$pbkdf2-sha256$1000$c2FsdA$ZGlnZXN0",
                person=types_pb2.Document(type=0, number=c.person.document),
            ),
            timeout=10,
        ),
    ),
    (
        "import: person number",
        "INVALID_DOCUMENT",
        "person.number",
        lambda c: c.platform.internal.ImportLegacyCredential(
            auth_pb2.ImportLegacyCredentialRequest(
                enterprise_code=GOOD_CODE,
                legacy_password_hash="$pbkdf2-sha256$1000$c2FsdA$ZGlnZXN0",
                person=types_pb2.Document(type=201, number="123"),
            ),
            timeout=10,
        ),
    ),
    (
        "import: hash",
        "INVALID_ARGUMENT",
        "legacy_password_hash",
        lambda c: c.platform.internal.ImportLegacyCredential(
            auth_pb2.ImportLegacyCredentialRequest(
                enterprise_code=GOOD_CODE,
                legacy_password_hash="md5:abc",
                person=types_pb2.Document(type=201, number=c.person.document),
            ),
            timeout=10,
        ),
    ),
]


def test_every_new_field_refuses_bad_input_with_a_reason_and_the_field(platform: Platform) -> None:
    person = platform.person()
    session = platform.login(person)
    context = Context(
        platform=platform,
        person=person,
        session=session,
        challenge_id=platform.start(person.document).challenge_id,
        reset_id=platform.auth.StartPasswordReset(
            auth_pb2.StartPasswordResetRequest(account=person.document), timeout=10
        ).reset_id,
        recovery_id=platform.auth.StartPhoneRecovery(
            auth_pb2.StartPhoneRecoveryRequest(account=person.document, password=PASSWORD),
            timeout=20,
        ).recovery_id,
    )
    wrong = []
    for what, reason, field, call in CASES:
        failure = failure_of(call, context)
        expected = (grpc.StatusCode.INVALID_ARGUMENT, reason, field)
        if (failure.code, failure.reason, failure.metadata.get("field")) != expected:
            wrong.append((what, failure))
    assert wrong == [], "\n".join(f"{w}: {f.code.name} {f.reason} {f.metadata}" for w, f in wrong)
    # Nothing was counted: the person still has all five password attempts.
    assert (
        failure_of(platform.start, person.document, "Wrong.pass1").metadata["remaining_attempts"]
        == "4"
    )
    # Well-formed but unknown ids are not bad input: the flow has ended.
    unknown = failure_of(
        platform.auth.SendLoginCode,
        auth_pb2.SendLoginCodeRequest(challenge_id=WELL_FORMED_UNKNOWN_ID),
        timeout=10,
    )
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TICKET_INVALID")
