"""Bad input in every field of every RPC gets INVALID_ARGUMENT, a reason and the field,
never INTERNAL, and writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from etax.auth.v1 import auth_pb2
from etax.common.v1 import types_pb2

from tests.auth.conftest import (
    PASSWORD,
    PHONE_ADD,
    REGISTRATION,
    Auth,
    failure_of,
    named,
    new_phone,
    new_resident_id,
)

HALL = types_pb2.TaxAuthority(code="13701020000", name="历下区税务局", province="37")
GOOD_ID = "11010519491231002X"

# (case id, expected reason, expected field, call builder)
Case = tuple[str, str, str, Callable[[Auth], Any]]


def _start(identity: types_pb2.NamedDocument, province: str = "37") -> Callable[[Auth], Any]:
    return lambda auth: auth.account.StartRegistration(
        auth_pb2.StartRegistrationRequest(identity=identity, province=province), timeout=10
    )


def _complete(overseas: bool = False, **fields: Any) -> Callable[[Auth], Any]:
    def call(auth: Auth) -> Any:
        if overseas:
            started = auth.start("P1234567", "Jane Doe", 208, overseas=True)
        else:
            started = auth.start(new_resident_id())
        phone = new_phone()
        verification_id, code = auth.sms.issue(phone, REGISTRATION)
        values: dict[str, Any] = {
            "registration_id": started.registration_id,
            "phone": phone,
            "verification_id": verification_id,
            "code": code,
            "face_proof": "faceproof1.x.1.y",
            "password": PASSWORD,
        }
        values.update(fields)
        return auth.account.CompleteRegistration(
            auth_pb2.CompleteRegistrationRequest(**values), timeout=10
        )

    return call


def _as_person(method: str, request: Any) -> Callable[[Auth], Any]:
    def call(auth: Auth) -> Any:
        person_id = auth.register()
        return getattr(auth.account, method)(
            request, metadata=auth.as_person(person_id), timeout=10
        )

    return call


def _add_phone(**fields: Any) -> Callable[[Auth], Any]:
    def call(auth: Auth) -> Any:
        person_id = auth.register()
        phone = new_phone()
        verification_id, code = auth.sms.issue(phone, PHONE_ADD)
        values = {"phone": phone, "verification_id": verification_id, "code": code, **fields}
        return auth.account.AddPhone(
            auth_pb2.AddPhoneRequest(**values), metadata=auth.as_person(person_id), timeout=10
        )

    return call


def _internal(method: str, request: Any) -> Callable[[Auth], Any]:
    return lambda auth: getattr(auth.internal, method)(request, timeout=10)


def _doc(kind: int, number: str) -> types_pb2.Document:
    return types_pb2.Document(type=kind, number=number)  # type: ignore[arg-type]


CASES: list[Case] = [
    # StartRegistration
    ("start-type-unspecified", "INVALID_DOCUMENT", "identity.document.type",
     _start(named(GOOD_ID, kind=0))),
    ("start-type-unknown", "INVALID_DOCUMENT", "identity.document.type",
     _start(named(GOOD_ID, kind=202))),
    ("start-number-empty", "INVALID_DOCUMENT", "identity.document.number", _start(named(""))),
    ("start-number-check-digit", "INVALID_DOCUMENT", "identity.document.number",
     _start(named("36042619910102009X"))),
    ("start-number-month-13", "INVALID_DOCUMENT", "identity.document.number",
     _start(named("360426199113010079"))),
    ("start-number-future-birth", "INVALID_DOCUMENT", "identity.document.number",
     _start(named("370102209901010012"))),
    ("start-name-empty", "INVALID_ARGUMENT", "identity.name", _start(named(GOOD_ID, " "))),
    ("start-name-digits", "INVALID_ARGUMENT", "identity.name", _start(named(GOOD_ID, "张3"))),
    ("start-name-long", "INVALID_ARGUMENT", "identity.name", _start(named(GOOD_ID, "张" * 101))),
    ("start-province-empty", "INVALID_ARGUMENT", "province", _start(named(GOOD_ID), "")),
    ("start-province-unknown", "INVALID_ARGUMENT", "province", _start(named(GOOD_ID), "99")),
    # StartRegistrationFace
    ("face-id-empty", "INVALID_ARGUMENT", "registration_id",
     lambda auth: auth.account.StartRegistrationFace(
         auth_pb2.StartRegistrationFaceRequest(registration_id=""), timeout=10)),
    ("face-id-malformed", "INVALID_ARGUMENT", "registration_id",
     lambda auth: auth.account.StartRegistrationFace(
         auth_pb2.StartRegistrationFaceRequest(registration_id="../" * 20), timeout=10)),
    # CompleteRegistration
    ("complete-id-malformed", "INVALID_ARGUMENT", "registration_id",
     _complete(registration_id="nope")),
    ("complete-phone-empty", "INVALID_PHONE", "phone", _complete(phone="")),
    ("complete-phone-landline", "INVALID_PHONE", "phone", _complete(phone="053188888888")),
    ("complete-email-missing", "INVALID_EMAIL", "email", _complete(overseas=True)),
    ("complete-email-malformed", "INVALID_EMAIL", "email",
     _complete(overseas=True, email="jane@", phone=None)),
    ("complete-verification-empty", "INVALID_ARGUMENT", "verification_id",
     _complete(verification_id="")),
    ("complete-code-empty", "CODE_INVALID", "code", _complete(code="")),
    ("complete-code-letters", "CODE_INVALID", "code", _complete(code="abcdef")),
    ("complete-password-policy", "PASSWORD_POLICY", "password", _complete(password="12345678")),
    ("complete-username-phone", "INVALID_ARGUMENT", "username",
     _complete(username="13912345678")),
    ("complete-proof-empty", "INVALID_ARGUMENT", "face_proof", _complete(face_proof="")),
    # ChangePassword
    ("password-old-empty", "INVALID_ARGUMENT", "old_password",
     _as_person("ChangePassword", auth_pb2.ChangePasswordRequest(new_password="New.pass12"))),
    ("password-old-huge", "INVALID_ARGUMENT", "old_password",
     _as_person("ChangePassword", auth_pb2.ChangePasswordRequest(
         old_password="x" * 500, new_password="New.pass12"))),
    ("password-new-policy", "PASSWORD_POLICY", "new_password",
     _as_person("ChangePassword", auth_pb2.ChangePasswordRequest(
         old_password=PASSWORD, new_password="new pass 1"))),
    # SetUsername
    ("username-empty", "INVALID_ARGUMENT", "username",
     _as_person("SetUsername", auth_pb2.SetUsernameRequest(username=""))),
    ("username-document", "INVALID_ARGUMENT", "username",
     _as_person("SetUsername", auth_pb2.SetUsernameRequest(username=GOOD_ID))),
    # AddPhone
    ("add-phone-malformed", "INVALID_PHONE", "phone", _add_phone(phone="1391234")),
    ("add-phone-verification-empty", "INVALID_ARGUMENT", "verification_id",
     _add_phone(verification_id="")),
    ("add-phone-code-empty", "CODE_INVALID", "code", _add_phone(code="")),
    ("add-phone-code-short", "CODE_INVALID", "code", _add_phone(code="123")),
    # RemovePhone, SetDefaultPhone
    ("remove-phone-id-empty", "INVALID_ARGUMENT", "phone_id",
     _as_person("RemovePhone", auth_pb2.RemovePhoneRequest(phone_id=""))),
    ("default-phone-id-malformed", "INVALID_ARGUMENT", "phone_id",
     _as_person("SetDefaultPhone", auth_pb2.SetDefaultPhoneRequest(phone_id="x' OR 1=1"))),
    # CompleteRealNameUpgrade
    ("upgrade-proof-empty", "INVALID_ARGUMENT", "proof",
     _as_person("CompleteRealNameUpgrade", auth_pb2.CompleteRealNameUpgradeRequest())),
    # RecordOfflineRealName
    ("offline-type", "INVALID_DOCUMENT", "identity.document.type",
     _internal("RecordOfflineRealName", auth_pb2.RecordOfflineRealNameRequest(
         identity=named(GOOD_ID, kind=0), tax_authority=HALL))),
    ("offline-number", "INVALID_DOCUMENT", "identity.document.number",
     _internal("RecordOfflineRealName", auth_pb2.RecordOfflineRealNameRequest(
         identity=named("H123"), tax_authority=HALL))),
    ("offline-name", "INVALID_ARGUMENT", "identity.name",
     _internal("RecordOfflineRealName", auth_pb2.RecordOfflineRealNameRequest(
         identity=named(GOOD_ID, ""), tax_authority=HALL))),
    ("offline-authority-code", "INVALID_ARGUMENT", "tax_authority.code",
     _internal("RecordOfflineRealName", auth_pb2.RecordOfflineRealNameRequest(
         identity=named(GOOD_ID),
         tax_authority=types_pb2.TaxAuthority(code="137", province="37")))),
    ("offline-authority-province", "INVALID_ARGUMENT", "tax_authority.province",
     _internal("RecordOfflineRealName", auth_pb2.RecordOfflineRealNameRequest(
         identity=named(GOOD_ID),
         tax_authority=types_pb2.TaxAuthority(code="13701020000", province="")))),
    ("offline-authority-name", "INVALID_ARGUMENT", "tax_authority.name",
     _internal("RecordOfflineRealName", auth_pb2.RecordOfflineRealNameRequest(
         identity=named(GOOD_ID),
         tax_authority=types_pb2.TaxAuthority(
             code="13701020000", province="37", name="局" * 101)))),
    # ImportLegacyPerson
    ("import-number", "INVALID_DOCUMENT", "identity.document.number",
     _internal("ImportLegacyPerson", auth_pb2.ImportLegacyPersonRequest(
         identity=named("123"), province="37"))),
    ("import-name", "INVALID_ARGUMENT", "identity.name",
     _internal("ImportLegacyPerson", auth_pb2.ImportLegacyPersonRequest(
         identity=named(GOOD_ID, "\x00"), province="37"))),
    ("import-phone", "INVALID_PHONE", "phone",
     _internal("ImportLegacyPerson", auth_pb2.ImportLegacyPersonRequest(
         identity=named(GOOD_ID), phone="12345678901", province="37"))),
    ("import-hash", "INVALID_ARGUMENT", "legacy_password_hash",
     _internal("ImportLegacyPerson", auth_pb2.ImportLegacyPersonRequest(
         identity=named(GOOD_ID), legacy_password_hash="md5:abc", province="37"))),
    ("import-province", "INVALID_ARGUMENT", "province",
     _internal("ImportLegacyPerson", auth_pb2.ImportLegacyPersonRequest(
         identity=named(GOOD_ID), province="3"))),
    # GetPerson, ResolvePerson, RequireRealNameLevel
    ("get-person-empty", "INVALID_ARGUMENT", "person_id",
     _internal("GetPerson", auth_pb2.GetPersonRequest())),
    ("get-person-malformed", "INVALID_ARGUMENT", "person_id",
     _internal("GetPerson", auth_pb2.GetPersonRequest(person_id="' OR ''='"))),
    ("resolve-type", "INVALID_DOCUMENT", "document.type",
     _internal("ResolvePerson", auth_pb2.ResolvePersonRequest(document=_doc(0, GOOD_ID)))),
    ("resolve-number", "INVALID_DOCUMENT", "document.number",
     _internal("ResolvePerson", auth_pb2.ResolvePersonRequest(document=_doc(210, "X1")))),
    ("require-level-range", "INVALID_ARGUMENT", "min_level",
     _internal("RequireRealNameLevel", auth_pb2.RequireRealNameLevelRequest(
         person_id="a" * 32, min_level=9))),
    ("require-level-person", "INVALID_ARGUMENT", "person_id",
     _internal("RequireRealNameLevel", auth_pb2.RequireRealNameLevelRequest(
         person_id="nobody", min_level=4))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "field", "call"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_invalid_argument_with_reason_and_field(
    auth: Auth, reason: str, field: str, call: Callable[[Auth], Any]
) -> None:
    failure = failure_of(call, auth)
    assert (failure.code, failure.reason, failure.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        field,
    ), failure


def test_unknown_or_expired_steps_are_a_precondition_not_a_crash(auth: Auth) -> None:
    unknown = "0" * 32
    failure = failure_of(
        auth.account.StartRegistrationFace,
        auth_pb2.StartRegistrationFaceRequest(registration_id=unknown),
        timeout=10,
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TICKET_INVALID",
    )
    person_id = auth.internal.ImportLegacyPerson(
        auth_pb2.ImportLegacyPersonRequest(identity=named(new_resident_id()), province="37"),
        timeout=10,
    ).person_id
    failure = failure_of(
        auth.account.CompleteRealNameUpgrade,
        auth_pb2.CompleteRealNameUpgradeRequest(proof="faceproof1.forged.1.sig"),
        metadata=auth.as_person(person_id),
        timeout=10,
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TICKET_INVALID")
