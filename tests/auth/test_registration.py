"""Registration through the gRPC API (B1-B6), on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc
import pytest
from etax.auth.v1 import auth_pb2
from etax.common.v1 import types_pb2
from sqlalchemy import func, select

from etax_platform.clock import CST
from etax_platform.db import Database
from etax_platform.documents import gb11643_check_character
from etax_platform.errors import from_rpc_error
from services.auth.models import persons, phones
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

OFFLINE_TEXT = "未查询到您的手机号码，请稍后重试或携带相关证件前往办税大厅办理"


def _count(auth: Auth, table: object) -> int:
    database = Database(auth.backend.database_url)
    try:
        with database.reading() as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]
    finally:
        database.dispose()


def _complete(
    auth: Auth,
    registration_id: str,
    *,
    phone: str = "",
    email: str = "",
    proof: str = "",
    password: str = PASSWORD,
    username: str = "",
    code_for: str | None = None,
    purpose: int = REGISTRATION,
) -> auth_pb2.CompleteRegistrationResponse:
    verification_id, code = auth.sms.issue(code_for or phone or email, purpose)
    contact = {"email": email} if email else {"phone": phone}
    return auth.account.CompleteRegistration(
        auth_pb2.CompleteRegistrationRequest(
            registration_id=registration_id,
            verification_id=verification_id,
            code=code,
            face_proof=proof,
            password=password,
            username=username,
            **contact,
        ),
        timeout=10,
    )


def _ready_request(auth: Auth, **fields: str) -> auth_pb2.CompleteRegistrationRequest:
    """A completion that would succeed: face passed, a registration code issued to a new
    phone, PASSWORD; `fields` override it (the code, the password, a username)."""
    started = auth.start(new_resident_id())
    proof = _face_proof(auth, started.registration_id)
    phone = new_phone()
    verification_id, code = auth.sms.issue(phone, REGISTRATION)
    request = auth_pb2.CompleteRegistrationRequest(
        registration_id=started.registration_id,
        phone=phone,
        verification_id=verification_id,
        code=code,
        face_proof=proof,
        password=PASSWORD,
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def _face_proof(auth: Auth, registration_id: str) -> str:
    face = auth.account.StartRegistrationFace(
        auth_pb2.StartRegistrationFaceRequest(registration_id=registration_id), timeout=10
    ).face
    assert face.qr_payload and face.ticket_id
    return auth.pass_face(face)


def test_b1_registration_creates_a_level_4_person_with_the_proven_phone(auth: Auth) -> None:
    number, phone = new_resident_id(), new_phone()
    started = auth.start(number)
    assert started.face_required and not started.email_required
    assert started.expires_at.ToDatetime(tzinfo=CST) == auth.clock.now() + timedelta(
        seconds=auth.settings.registration_ttl_seconds
    )
    proof = _face_proof(auth, started.registration_id)
    completed = _complete(auth, started.registration_id, phone=phone, proof=proof)
    assert completed.real_name_level == 4
    profile = auth.profile(completed.person_id)
    assert profile.real_name_level == 4
    assert profile.masked_name == "张*三"
    assert profile.document_type == types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD
    assert profile.masked_document_number == f"{number[:4]}{'*' * 10}{number[-4:]}"
    assert [p.masked_number for p in profile.phones] == [f"{phone[:3]}****{phone[-4:]}"]
    assert profile.phones[0].is_default
    assert profile.registered_province == "37"
    assert not profile.overseas_restricted


def test_b1_identity_check_refuses_a_name_that_does_not_match(auth: Auth) -> None:
    # The face service's simulated authority knows no one called 不符….
    failure = failure_of(auth.start, new_resident_id(), "不符张三")
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDENTITY_MISMATCH",
    )
    assert _count(auth, persons) == 0


def test_b1_wrong_code_then_right_code(auth: Auth) -> None:
    request = _ready_request(auth)
    code = request.code
    request.code = "000000" if code != "000000" else "111111"
    failure = failure_of(auth.account.CompleteRegistration, request, timeout=10)
    assert failure.reason == "CODE_INVALID"
    assert _count(auth, persons) == 0
    request.code = code
    assert auth.account.CompleteRegistration(request, timeout=10).real_name_level == 4


def test_b1_a_code_for_another_purpose_or_phone_is_refused(auth: Auth) -> None:
    started = auth.start(new_resident_id())
    proof = _face_proof(auth, started.registration_id)
    phone = new_phone()
    failure = failure_of(
        _complete, auth, started.registration_id, phone=phone, proof=proof, purpose=PHONE_ADD
    )
    assert failure.reason == "CODE_PURPOSE_MISMATCH"
    failure = failure_of(
        _complete, auth, started.registration_id, phone=phone, proof=proof, code_for=new_phone()
    )
    assert (failure.reason, failure.metadata.get("field")) == ("CODE_INVALID", "phone")
    assert _count(auth, persons) == 0


def test_b1_face_step_is_required_and_bound_to_its_registration(auth: Auth) -> None:
    first = auth.start(new_resident_id())
    second = auth.start(new_resident_id())
    failure = failure_of(_complete, auth, first.registration_id, phone=new_phone())
    assert (failure.code, failure.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "face_proof",
    )
    other_proof = _face_proof(auth, second.registration_id)
    failure = failure_of(
        _complete, auth, first.registration_id, phone=new_phone(), proof=other_proof
    )
    assert failure.reason == "TICKET_INVALID"
    assert _count(auth, persons) == 0


def test_b1_registering_a_registered_document_says_so(auth: Auth) -> None:
    number = new_resident_id()
    auth.register(number)
    failure = failure_of(auth.start, number)
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_REGISTERED")
    # The same person typing the lower-case x or the legacy 15 digits is the same document.
    x_number = "11010519491231002X"
    auth.register(x_number)
    assert failure_of(auth.start, x_number.lower()).reason == "ALREADY_REGISTERED"
    assert failure_of(auth.start, "110105491231002").reason == "ALREADY_REGISTERED"


def test_a3_a_person_registers_once_for_every_province(auth: Auth) -> None:
    number = new_resident_id()
    person_id = auth.register(number)  # through Shandong's bureau ("37")
    for province in ("11", "44", "37"):
        failure = failure_of(auth.start, number, "张小三", 201, False, province)
        assert failure.reason == "ALREADY_REGISTERED"
    assert auth.profile(person_id).registered_province == "37"
    person = auth.internal.GetPerson(
        auth_pb2.GetPersonRequest(person_id=person_id), timeout=10
    ).person
    assert person.registered_province == "37"


def test_b1_half_finished_registration_leaves_nothing_and_never_blocks_a_retry(
    auth: Auth,
) -> None:
    number = new_resident_id()
    abandoned = auth.start(number)
    _face_proof(auth, abandoned.registration_id)
    assert _count(auth, persons) == 0
    # A retry while the first one is still open, and one after it expired, both work.
    retry = auth.start(number)
    assert retry.registration_id != abandoned.registration_id
    auth.clock.advance(timedelta(seconds=auth.settings.registration_ttl_seconds + 1))
    failure = failure_of(
        _complete, auth, retry.registration_id, phone=new_phone(), proof="whatever"
    )
    assert (failure.reason, failure.metadata.get("field")) == ("TICKET_INVALID", "registration_id")
    person_id = auth.register(number)
    assert auth.profile(person_id).real_name_level == 4


def test_b1_concurrent_registrations_of_one_document_create_one_person(auth: Auth) -> None:
    number = new_resident_id()
    started = [auth.start(number) for _ in range(4)]
    proofs = [_face_proof(auth, s.registration_id) for s in started]

    def complete(index: int) -> str:
        try:
            return _complete(
                auth, started[index].registration_id, phone=new_phone(), proof=proofs[index]
            ).person_id
        except grpc.RpcError as error:
            domain_error = from_rpc_error(error)
            assert domain_error is not None
            return domain_error.reason.value

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(complete, range(4)))
    registered = [o for o in outcomes if o != "ALREADY_REGISTERED"]
    assert len(registered) == 1, outcomes
    assert _count(auth, persons) == 1


def test_b1_a_taken_username_is_refused_before_the_code_is_spent(auth: Auth) -> None:
    auth.register(username="taken_name")
    request = _ready_request(auth, username="Taken_Name")
    failure = failure_of(auth.account.CompleteRegistration, request, timeout=10)
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "USERNAME_TAKEN")
    request.username = "fresh_name"
    completed = auth.account.CompleteRegistration(request, timeout=10)
    assert auth.profile(completed.person_id).username == "fresh_name"


def test_c1_password_policy_is_checked_before_the_code_is_spent(auth: Auth) -> None:
    request = _ready_request(auth, password="short")
    failure = failure_of(auth.account.CompleteRegistration, request, timeout=10)
    assert (failure.code, failure.reason, failure.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PASSWORD_POLICY",
        "password",
    )
    request.password = PASSWORD
    assert auth.account.CompleteRegistration(request, timeout=10).real_name_level == 4


def test_b1_a_proven_code_is_remembered_when_the_face_proof_fails(auth: Auth) -> None:
    """A retry never pays twice for a step it passed (single-use code, single-use proof)."""
    started = auth.start(new_resident_id())
    phone = new_phone()
    failure = failure_of(_complete, auth, started.registration_id, phone=phone, proof="forged")
    assert failure.reason == "TICKET_INVALID"
    proof = _face_proof(auth, started.registration_id)
    completed = auth.account.CompleteRegistration(
        auth_pb2.CompleteRegistrationRequest(
            registration_id=started.registration_id,
            phone=phone,
            verification_id="already-spent",
            code="123456",
            face_proof=proof,
            password=PASSWORD,
        ),
        timeout=10,
    )
    assert len(auth.profile(completed.person_id).phones) == 1


def test_b2_hall_collected_person_registers_without_the_face_step(auth: Auth) -> None:
    number = new_resident_id()
    response = auth.internal.RecordOfflineRealName(
        auth_pb2.RecordOfflineRealNameRequest(
            identity=named(number),
            tax_authority=types_pb2.TaxAuthority(
                code="13701020000", name="历下区税务局", province="37"
            ),
        ),
        timeout=10,
    )
    assert response.person_id == ""
    started = auth.start(number)
    assert not started.face_required
    failure = failure_of(
        auth.account.StartRegistrationFace,
        auth_pb2.StartRegistrationFaceRequest(registration_id=started.registration_id),
        timeout=10,
    )
    assert failure.reason == "STATE_CONFLICT"
    completed = _complete(auth, started.registration_id, phone=new_phone())
    assert completed.real_name_level == 4


VALID_ONLINE = [
    (types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD, "11010519491231002X"),
    (types_pb2.DOCUMENT_TYPE_HK_MACAO_TRAVEL_PERMIT, "H12345678"),
    (types_pb2.DOCUMENT_TYPE_TAIWAN_TRAVEL_PERMIT, "12345678"),
    (types_pb2.DOCUMENT_TYPE_CHINESE_PASSPORT, "EA1234567"),
    (
        types_pb2.DOCUMENT_TYPE_FOREIGN_PERMANENT_RESIDENT_ID,
        "911840198001010" + "01" + gb11643_check_character("91184019800101001"),
    ),
    (types_pb2.DOCUMENT_TYPE_HK_MACAO_RESIDENCE_PERMIT, "810000199408230021"),
    (types_pb2.DOCUMENT_TYPE_TAIWAN_RESIDENCE_PERMIT, "830000199201300022"),
]


@pytest.mark.parametrize(("kind", "number"), VALID_ONLINE)
def test_b4_seven_document_types_register_online(auth: Auth, kind: int, number: str) -> None:
    person_id = auth.register(number, kind=kind)
    profile = auth.profile(person_id)
    assert profile.document_type == kind
    assert profile.real_name_level == 4


HALL_FIRST = [
    types_pb2.DOCUMENT_TYPE_FOREIGN_PASSPORT,
    types_pb2.DOCUMENT_TYPE_FOREIGNER_WORK_PERMIT_A,
    types_pb2.DOCUMENT_TYPE_FOREIGNER_WORK_PERMIT_B,
    types_pb2.DOCUMENT_TYPE_FOREIGNER_WORK_PERMIT_C,
]


@pytest.mark.parametrize("kind", HALL_FIRST)
def test_b5_hall_first_types_need_the_offline_collection(auth: Auth, kind: int) -> None:
    failure = failure_of(auth.start, "X12345678", "John Smith", kind)
    assert (failure.code, failure.reason, failure.text) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "OFFLINE_REAL_NAME_REQUIRED",
        OFFLINE_TEXT,
    )
    auth.internal.RecordOfflineRealName(
        auth_pb2.RecordOfflineRealNameRequest(
            identity=named("x12345678", "John Smith", kind),
            tax_authority=types_pb2.TaxAuthority(code="13701020000", province="37"),
        ),
        timeout=10,
    )
    started = auth.start("X12345678", "John Smith", kind)
    assert not started.face_required and not started.email_required
    person_id = _complete(auth, started.registration_id, phone=new_phone()).person_id
    profile = auth.profile(person_id)
    assert profile.real_name_level == 4 and not profile.overseas_restricted


@pytest.mark.parametrize("kind", [*HALL_FIRST, types_pb2.DOCUMENT_TYPE_OTHER_PERSONAL_DOCUMENT])
def test_b6_overseas_person_registers_by_email_and_is_restricted_until_the_hall(
    auth: Auth, kind: int
) -> None:
    started = auth.start("P9876543", "Jane Doe", kind, overseas=True)
    assert started.email_required and started.face_required
    proof = _face_proof(auth, started.registration_id)
    person_id = _complete(
        auth, started.registration_id, email="Jane.Doe@Example.com", proof=proof
    ).person_id
    profile = auth.profile(person_id)
    assert profile.overseas_restricted
    assert profile.masked_email == "j***@example.com"
    assert list(profile.phones) == []
    restricted = auth.internal.GetPerson(
        auth_pb2.GetPersonRequest(person_id=person_id), timeout=10
    ).person
    assert restricted.overseas_restricted
    collected = auth.internal.RecordOfflineRealName(
        auth_pb2.RecordOfflineRealNameRequest(
            identity=named("P9876543", "Jane Doe", kind),
            tax_authority=types_pb2.TaxAuthority(code="13701020000", province="37"),
        ),
        timeout=10,
    )
    assert collected.person_id == person_id
    assert not auth.profile(person_id).overseas_restricted


def test_b6_overseas_registration_proves_an_email_not_a_phone(auth: Auth) -> None:
    started = auth.start("P1234567", "Jane Doe", types_pb2.DOCUMENT_TYPE_FOREIGN_PASSPORT, True)
    proof = _face_proof(auth, started.registration_id)
    failure = failure_of(_complete, auth, started.registration_id, phone=new_phone(), proof=proof)
    assert (failure.code, failure.reason, failure.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EMAIL",
        "email",
    )


def test_b6_overseas_registration_takes_only_foreign_documents(auth: Auth) -> None:
    failure = failure_of(auth.start, new_resident_id(), "张小三", 201, True)
    assert (failure.reason, failure.metadata["field"]) == (
        "INVALID_DOCUMENT",
        "identity.document.type",
    )
    failure = failure_of(auth.start, "P1234567", "Jane Doe", 299, False)
    assert (failure.reason, failure.metadata["field"]) == (
        "INVALID_DOCUMENT",
        "identity.document.type",
    )


def test_b1_face_service_trouble_is_unavailable_and_records_nothing(auth: Auth) -> None:
    # The simulated authority is busy for names starting "busy".
    failure = failure_of(auth.start, "P1234567", "busy Jane", 299, True)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "FACE_SERVICE_BUSY")
    auth.face_host.stop(grace=0)
    failure = failure_of(auth.start, new_resident_id())
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    assert _count(auth, persons) == 0


def test_c4_registration_takes_the_phone_from_its_previous_holder(auth: Auth) -> None:
    phone = new_phone()
    earlier = auth.register(phone=phone)
    auth.clock.advance(timedelta(minutes=1))
    later = auth.register(phone=phone)
    assert list(auth.profile(earlier).phones) == []
    assert len(auth.profile(later).phones) == 1
    assert _count(auth, phones) == 1
