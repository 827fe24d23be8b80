"""Login through every entry, both second steps, identity switching (A1, A3, C2-C4,
D1-D6, F3, F5), against real auth, binding, SMS and face servers sharing one clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import jwt
from etax.auth.v1 import auth_pb2
from etax.binding.v1 import binding_pb2
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2

from etax_platform.pii import mask_phone
from tests.auth.conftest import PASSWORD, failure_of, new_phone, new_resident_id
from tests.auth.platform import (
    AGENT,
    BEIJING,
    ENTERPRISE,
    INSPECTION,
    NATURAL,
    SHANDONG,
    SUBJECT,
    Platform,
    bearer,
)

SMS_STEP = auth_pb2.SECOND_STEP_SMS_CODE
SCAN_STEP = auth_pb2.SECOND_STEP_SCAN_VERIFICATION


def claims(session: auth_pb2.Session) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(session.access_token, options={"verify_signature": False})
    return decoded


# --- D1, A1, C2, C3: accounts ------------------------------------------------------------------


def test_d1_a1_c2_c3_a_person_logs_in_by_document_any_phone_or_username(platform: Platform) -> None:
    person = platform.person(username="Zhangsan88")
    other_phone = new_phone()
    # C3: the phone verified last is the default: the codes go there, whichever logs in.
    platform.accounts.add_phone(person.person_id, other_phone)
    for account in (
        person.document,
        person.phone,
        other_phone,
        "zhangSAN88",
        person.document.lower(),
    ):
        started = platform.start(account)
        assert list(started.second_steps) == [SMS_STEP, SCAN_STEP]
        platform.send_code(started.challenge_id)
        session = platform.complete_with_code(started.challenge_id, platform.last_code(other_phone))
        assert session.person_id == person.person_id
        assert session.identity.entry == NATURAL
    token = claims(session)
    assert (token["sub"], token["sid"], token["amr"]) == (
        person.person_id,
        session.session_id,
        ["pwd", "sms"],
    )
    assert (token["entry"], token["province"], token["real_name_level"]) == (NATURAL, "37", 4)
    assert token["exp"] - token["iat"] == 900
    assert session.masked_name == "张*三"


def test_d4_unknown_accounts_get_the_exact_texts(platform: Platform) -> None:
    platform.person()
    phone = failure_of(platform.start, new_phone())
    assert (phone.code, phone.reason, phone.text) == (
        grpc.StatusCode.NOT_FOUND,
        "PHONE_NOT_FOUND",
        "手机号码不存在，您可以尝试使用证件号码登录",
    )
    for account in (new_resident_id(), "Nobody_here"):
        unknown = failure_of(platform.start, account)
        assert (unknown.code, unknown.reason, unknown.text) == (
            grpc.StatusCode.NOT_FOUND,
            "USER_NOT_REGISTERED",
            "该用户未注册",
        )


def test_e1_wrong_password_says_how_many_attempts_are_left(platform: Platform) -> None:
    person = platform.person()
    failure = failure_of(platform.start, person.document, "Wrong.pass1")
    assert (failure.code, failure.reason, failure.metadata["remaining_attempts"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CREDENTIALS_INVALID",
        "4",
    )
    assert "4次" in failure.text


# --- D2, D4: the second step ------------------------------------------------------------------


def test_d2_the_code_goes_to_the_phone_shown_masked(platform: Platform) -> None:
    """D2, C3: the default phone, here the one the person chose after adding another."""
    person = platform.person()
    added = platform.accounts.add_phone(person.person_id, new_phone())  # now the default
    first = next(p for p in platform.accounts.profile(person.person_id).phones if not p.is_default)
    assert added.is_default
    platform.accounts.set_default_phone(person.person_id, first.phone_id)
    started = platform.start(person.document)
    assert (started.masked_phone, started.phone_empty) == (mask_phone(person.phone), False)
    sent = platform.send_code(started.challenge_id)
    assert sent.masked_phone == mask_phone(person.phone)
    assert sent.code_expires_at.seconds > 0
    session = platform.complete_with_code(started.challenge_id, platform.last_code(person.phone))
    assert session.person_id == person.person_id


def test_d4_c4_an_empty_phone_offers_only_scan_verification(platform: Platform) -> None:
    person = platform.person()
    taker = platform.person()
    platform.accounts.add_phone(taker.person_id, person.phone)  # C4: the newer check wins
    started = platform.start(person.document)
    assert (started.phone_empty, started.masked_phone) == (True, "")
    assert list(started.second_steps) == [SCAN_STEP]
    empty = failure_of(platform.send_code, started.challenge_id)
    assert (empty.code, empty.reason, empty.text) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PHONE_EMPTY",
        "手机号码为空，请使用扫码验证",
    )
    face = platform.auth.StartLoginFace(
        auth_pb2.StartLoginFaceRequest(challenge_id=started.challenge_id), timeout=10
    ).face
    assert platform.face.scan(face).masked_name == "张*三"
    proof = platform.face.pass_(face)
    session = platform.auth.CompleteLoginWithFace(
        auth_pb2.CompleteLoginWithFaceRequest(challenge_id=started.challenge_id, proof=proof),
        timeout=10,
    ).session
    assert session.person_id == person.person_id
    assert claims(session)["amr"] == ["pwd", "face"]


def test_d2_a_face_proof_serves_only_its_own_challenge(platform: Platform) -> None:
    person = platform.person()
    first = platform.start(person.document)
    second = platform.start(person.document)
    face = platform.auth.StartLoginFace(
        auth_pb2.StartLoginFaceRequest(challenge_id=first.challenge_id), timeout=10
    ).face
    proof = platform.face.pass_(face)
    wrong = failure_of(
        platform.auth.CompleteLoginWithFace,
        auth_pb2.CompleteLoginWithFaceRequest(challenge_id=second.challenge_id, proof=proof),
        timeout=10,
    )
    assert wrong.reason == "TICKET_INVALID"


def test_c4_passing_a_login_code_reaffirms_the_phone(platform: Platform) -> None:
    person = platform.person()
    before = platform.accounts.profile(person.person_id).phones[0].verified_at.seconds
    platform.clock.advance(timedelta(days=3))
    platform.login(person)
    after = platform.accounts.profile(person.person_id).phones[0].verified_at.seconds
    assert after - before == 3 * 86400


def test_d2_a_login_challenge_is_single_use_and_short_lived(platform: Platform) -> None:
    person = platform.person()
    started = platform.start(person.document)
    platform.send_code(started.challenge_id)
    code = platform.last_code(person.phone)
    platform.complete_with_code(started.challenge_id, code)
    again = failure_of(platform.complete_with_code, started.challenge_id, code)
    assert (again.reason, again.metadata["field"]) == ("TICKET_INVALID", "challenge_id")
    late = platform.start(person.document)
    platform.clock.advance(timedelta(minutes=5))
    assert failure_of(platform.send_code, late.challenge_id).reason == "TICKET_INVALID"


# --- A3: national sharing ---------------------------------------------------------------------


def test_a3_a_person_registered_in_one_province_logs_in_through_another(
    platform: Platform,
) -> None:
    person = platform.person()  # registered through Shandong (37)
    assert platform.accounts.profile(person.person_id).registered_province == SHANDONG
    session = platform.login(person, province=BEIJING)
    assert session.province == BEIJING
    assert claims(session)["province"] == BEIJING


def test_a3_the_gateway_province_is_the_one_recorded(platform: Platform) -> None:
    person = platform.person()
    through_beijing = (("x-etax-province", BEIJING),)
    started = platform.auth.StartLogin(
        auth_pb2.StartLoginRequest(entry=NATURAL, account=person.document, password=PASSWORD),
        metadata=through_beijing,
        timeout=20,
    )
    platform.send_code(started.challenge_id)
    session = platform.complete_with_code(started.challenge_id, platform.last_code(person.phone))
    assert session.province == BEIJING
    other = failure_of(
        platform.auth.StartLogin,
        auth_pb2.StartLoginRequest(
            entry=NATURAL, account=person.document, password=PASSWORD, province=SHANDONG
        ),
        metadata=through_beijing,
        timeout=20,
    )
    assert (other.reason, other.metadata["field"]) == ("INVALID_ARGUMENT", "province")


# --- D1, F3: enterprise entry ------------------------------------------------------------------


def test_d1_f3_a_bound_person_logs_in_through_the_enterprise_entry(platform: Platform) -> None:
    boss = platform.person()
    code = platform.enterprise(boss)
    session = platform.login(boss, account=boss.phone, entry=ENTERPRISE, enterprise_code=code)
    assert session.identity.entry == ENTERPRISE
    assert (session.identity.enterprise_code, session.identity.role) == (
        code,
        types_pb2.ROLE_LEGAL_REPRESENTATIVE,
    )
    assert session.identity.enterprise_name == "济南测试有限公司"
    token = claims(session)
    assert (token["entry"], token["enterprise_code"], token["role"]) == (
        ENTERPRISE,
        code,
        types_pb2.ROLE_LEGAL_REPRESENTATIVE,
    )


def test_d1_no_relation_is_refused_only_after_the_password(platform: Platform) -> None:
    boss, stranger = platform.person(), platform.person()
    code = platform.enterprise(boss)
    wrong = failure_of(
        platform.start, stranger.document, "Wrong.pass1", entry=ENTERPRISE, enterprise_code=code
    )
    assert wrong.reason == "CREDENTIALS_INVALID"
    refused = failure_of(platform.start, stranger.document, entry=ENTERPRISE, enterprise_code=code)
    assert (refused.code, refused.reason, refused.text) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "RELATION_NOT_FOUND",
        "未查询到您与该企业的关联关系信息，请确认录入的信息是否正确",
    )
    # A right password ends the run of failures even when the relation is missing.
    assert (
        failure_of(platform.start, stranger.document, "Wrong.pass1").metadata["remaining_attempts"]
        == "4"
    )


def test_b6_an_overseas_person_has_no_enterprise_business(platform: Platform) -> None:
    number = "P1234567"
    platform.accounts.register(
        number,
        kind=types_pb2.DOCUMENT_TYPE_FOREIGN_PASSPORT,
        overseas=True,
        email="alice@example.com",
        name="Alice Smith",
    )
    boss = platform.person()
    code = platform.enterprise(boss)
    refused = failure_of(platform.start, number, entry=ENTERPRISE, enterprise_code=code)
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "OVERSEAS_RESTRICTED",
    )
    natural = platform.start(number)  # natural-person business is open to them
    assert natural.phone_empty  # registered with an email: scan verification only


# --- D6, F4: agent entry ------------------------------------------------------------------------


def test_d6_an_agent_logs_in_for_the_agency_then_acts_for_a_client(platform: Platform) -> None:
    agent, boss = platform.person(), platform.person()
    client = platform.enterprise(boss, name="委托企业有限公司")
    agency = platform.agency((agent,), (client,))
    session = platform.login(agent, entry=AGENT, agency_code=agency)
    assert (session.identity.entry, session.identity.agency_code) == (AGENT, agency)
    assert session.identity.role == types_pb2.ROLE_TAX_AGENT
    switched = platform.auth.SwitchIdentity(
        auth_pb2.SwitchIdentityRequest(
            identity=binding_pb2.Identity(entry=AGENT, agency_code=agency, client_code=client)
        ),
        metadata=bearer(session),
        timeout=10,
    ).session
    assert switched.session_id == session.session_id
    assert (switched.identity.client_code, switched.identity.client_name) == (
        client,
        "委托企业有限公司",
    )
    assert claims(switched)["client_code"] == client
    outsider = platform.person()
    refused = failure_of(platform.start, outsider.document, entry=AGENT, agency_code=agency)
    assert refused.reason == "RELATION_NOT_FOUND"


# --- D5: specific subject ------------------------------------------------------------------------


def _cross_region(platform: Platform) -> tuple[str, str, Any]:
    """A Shandong enterprise's project in Beijing, with a handler who is nobody else there."""
    boss, handler = platform.person(), platform.person(name="王经办")
    code = platform.enterprise(boss)
    platform.project(code, "BJXM-2026-001", BEIJING, handlers=(handler,))
    return code, "BJXM-2026-001", handler


def test_d5_specific_subject_login_by_password_and_code(platform: Platform) -> None:
    code, project, handler = _cross_region(platform)
    for number in (project, code):
        session = platform.login(
            handler, entry=SUBJECT, subject_type=INSPECTION, subject_number=number, province=BEIJING
        )
        assert session.identity.entry == SUBJECT
        assert (session.identity.project_number, session.identity.role) == (
            project,
            types_pb2.ROLE_CROSS_REGION_HANDLER,
        )
        assert session.province == BEIJING
    # The project is in Beijing: through Shandong there is no such subject for them.
    refused = failure_of(
        platform.start,
        handler.document,
        entry=SUBJECT,
        subject_type=INSPECTION,
        subject_number=project,
        province=SHANDONG,
    )
    assert refused.reason == "RELATION_NOT_FOUND"


def test_d5_specific_subject_login_by_app_face_alone(platform: Platform) -> None:
    _code, project, handler = _cross_region(platform)
    started = platform.auth.StartSubjectFaceLogin(
        auth_pb2.StartSubjectFaceLoginRequest(
            subject_type=INSPECTION, subject_number=project, province=BEIJING
        ),
        timeout=10,
    )
    scanned = platform.face.scan(started.face)
    assert scanned.identity_required
    ticket = platform.capture(started.face, b"pass", identity=handler.named)
    assert ticket.state == face_pb2.TICKET_STATE_PASSED
    session = platform.auth.CompleteLoginWithFace(
        auth_pb2.CompleteLoginWithFaceRequest(
            challenge_id=started.challenge_id, proof=ticket.proof
        ),
        timeout=10,
    ).session
    assert session.person_id == handler.person_id
    assert (session.identity.entry, session.identity.project_number) == (SUBJECT, project)
    assert claims(session)["amr"] == ["face"]


def test_d5_face_alone_for_an_unregistered_or_unrelated_person_is_refused(
    platform: Platform,
) -> None:
    _code, project, _handler = _cross_region(platform)
    unrelated = platform.person()
    stranger = types_pb2.NamedDocument(
        document=types_pb2.Document(type=201, number=new_resident_id()), name="李四"
    )
    for who, reason in ((stranger, "USER_NOT_REGISTERED"), (unrelated.named, "RELATION_NOT_FOUND")):
        started = platform.auth.StartSubjectFaceLogin(
            auth_pb2.StartSubjectFaceLoginRequest(
                subject_type=INSPECTION, subject_number=project, province=BEIJING
            ),
            timeout=10,
        )
        ticket = platform.capture(started.face, b"pass", identity=who)
        failure = failure_of(
            platform.auth.CompleteLoginWithFace,
            auth_pb2.CompleteLoginWithFaceRequest(
                challenge_id=started.challenge_id, proof=ticket.proof
            ),
            timeout=10,
        )
        assert failure.reason == reason


# --- F3, F5: identity switching ----------------------------------------------------------------


def test_f3_switching_between_enterprises_keeps_the_session(platform: Platform) -> None:
    officer, boss_a, boss_b = platform.person(), platform.person(), platform.person()
    code_a = platform.enterprise(boss_a, name="甲公司")
    code_b = platform.enterprise(boss_b, name="乙公司")
    for code, boss in ((code_a, boss_a), (code_b, boss_b)):
        added = platform.binding.AddPerson(
            binding_pb2.AddPersonRequest(
                enterprise_code=code, person=officer.named, role=types_pb2.ROLE_TAX_OFFICER
            ),
            metadata=bearer(platform.accounts_token(boss)),
            timeout=10,
        ).relation
        platform.confirm_relation(added.relation_id, officer)
    session = platform.login(officer, entry=ENTERPRISE, enterprise_code=code_a)
    switched = platform.auth.SwitchIdentity(
        auth_pb2.SwitchIdentityRequest(
            identity=binding_pb2.Identity(entry=ENTERPRISE, enterprise_code=code_b)
        ),
        metadata=bearer(session),
        timeout=10,
    ).session
    assert switched.session_id == session.session_id
    assert (switched.identity.enterprise_name, switched.identity.role) == (
        "乙公司",
        types_pb2.ROLE_TAX_OFFICER,
    )
    assert switched.refresh_token != session.refresh_token
    assert claims(switched)["enterprise_code"] == code_b
    stranger_code = platform.enterprise(platform.person())
    refused = failure_of(
        platform.auth.SwitchIdentity,
        auth_pb2.SwitchIdentityRequest(
            identity=binding_pb2.Identity(entry=ENTERPRISE, enterprise_code=stranger_code)
        ),
        metadata=bearer(switched),
        timeout=10,
    )
    assert refused.reason == "RELATION_NOT_FOUND"
    # Back to natural-person business, same session.
    natural = platform.auth.SwitchIdentity(
        auth_pb2.SwitchIdentityRequest(identity=binding_pb2.Identity(entry=NATURAL)),
        metadata=bearer(switched),
        timeout=10,
    ).session
    assert (natural.session_id, natural.identity.entry) == (session.session_id, NATURAL)


def test_f5_a_home_province_project_appears_under_identity_switching(platform: Platform) -> None:
    boss = platform.person()
    code = platform.enterprise(boss)
    platform.project(code, "SDXM-2026-007", SHANDONG)
    session = platform.login(boss, entry=ENTERPRISE, enterprise_code=code)
    switched = platform.auth.SwitchIdentity(
        auth_pb2.SwitchIdentityRequest(
            identity=binding_pb2.Identity(
                entry=ENTERPRISE, enterprise_code=code, project_number="SDXM-2026-007"
            )
        ),
        metadata=bearer(session),
        timeout=10,
    ).session
    assert (switched.identity.entry, switched.identity.project_number) == (
        ENTERPRISE,
        "SDXM-2026-007",
    )
    # What the list offers is what the switch takes back, as is (issue 12: one shape).
    listed = platform.binding.ListMyIdentities(
        binding_pb2.ListMyIdentitiesRequest(), metadata=bearer(switched), timeout=10
    ).identities
    assert listed[0] == binding_pb2.Identity(entry=NATURAL)
    assert switched.identity in listed
    for identity in listed:
        again = platform.auth.SwitchIdentity(
            auth_pb2.SwitchIdentityRequest(identity=identity),
            metadata=bearer(switched),
            timeout=10,
        ).session
        assert again.identity == identity
        switched = again


def test_binding_accepts_the_sessions_tokens(platform: Platform) -> None:
    boss = platform.person()
    code = platform.enterprise(boss)
    session = platform.login(boss)
    identities = platform.binding.ListMyIdentities(
        binding_pb2.ListMyIdentitiesRequest(), metadata=bearer(session), timeout=10
    ).identities
    assert [(i.entry, i.enterprise_code) for i in identities] == [(NATURAL, ""), (ENTERPRISE, code)]
