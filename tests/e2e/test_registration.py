"""Registration, real name, passwords and SMS codes: Q3, Q4, Q7, Q13, Q20."""

from __future__ import annotations

import itertools
from datetime import timedelta

from etax.auth.v1 import auth_pb2

from tests.e2e.api import Reply
from tests.e2e.story import (
    ENTERPRISE,
    OFFLINE_FIRST_TEXT,
    Bureau,
    Person,
    new_email,
    new_phone,
    new_uscc,
    refusal,
)
from tests.harness.numbers import resident_id

POLICY_TEXT = "密码长度为8-16个字符，必须包含数字、字母（区分大小写）、特殊字符三者中至少两种"
BUSY_TEXT = "实名核验服务繁忙，请稍后重试"
HALL_TEXT = "无法完成实名核验，请前往办税服务大厅线下进行实名信息采集"
THROTTLED_TEXT = "短信验证码获取频繁，请稍后重试"
_numbers = itertools.count(10_000_001)


def _permit(prefix: str) -> str:
    """A residence permit number for HK/Macao (810000, 820000) or Taiwan (830000) residents."""
    return resident_id(next(_numbers), "19880808", prefix)


def _foreigner(document_type: str, name: str = "JOHN SMITH") -> Person:
    return Person(name, number=f"P{next(_numbers)}", document_type=document_type)


# --- Q3 ----------------------------------------------------------------------------------


def test_q03_natural_person_registers_with_identity_check_phone_and_face_at_level_4(
    bureau: Bureau,
) -> None:
    """Q3, B1: 用户注册 = identity check, basic information (phone by SMS code), face
    recognition, password; the new natural-person user is at real-name level 4."""
    # The identity check compares name and document with the authority's records.
    impostor = Person("不符张三")
    bureau.start_registration(impostor).expect(
        "IDENTITY_MISMATCH", "身份信息校验未通过，请确认姓名与证件号码"
    )

    person = Person("张小三")
    started = bureau.start_registration(person)
    assert started["face_required"] is True
    assert started["email_required"] is False
    face = bureau.web.call(
        "AccountService.StartRegistrationFace", {"registration_id": started["registration_id"]}
    )["face"]
    scanned = bureau.tax_app.scan(face["qr_payload"])
    assert scanned["purpose"] == "VERIFICATION_PURPOSE_REGISTRATION"
    assert scanned["masked_name"] == "张*三"
    passed = bureau.tax_app.submit(scanned)["ticket"]
    assert passed["state"] == "TICKET_STATE_PASSED"
    proof = bureau.web.call("FaceService.GetTicket", {"ticket_id": face["ticket_id"]})["ticket"][
        "proof"
    ]

    sent = bureau.send_code(person.phone, "VERIFICATION_PURPOSE_REGISTRATION")
    assert sent["masked_recipient"] == f"{person.phone[:3]}****{person.phone[-4:]}"
    (message,) = bureau.phones.messages(person.phone)
    assert message.code in message.text
    completed = bureau.web.call(
        "AccountService.CompleteRegistration",
        {
            "registration_id": started["registration_id"],
            "phone": person.phone,
            "verification_id": sent["verification_id"],
            "code": message.code,
            "face_proof": proof,
            "password": person.password,
        },
    )
    assert completed["real_name_level"] == 4
    person.person_id = completed["person_id"]

    # What the hall sees of the new user: level 4, registered here, unrestricted.
    found = bureau.hall.auth.GetPerson(
        auth_pb2.GetPersonRequest(person_id=person.person_id), timeout=10
    ).person
    assert (found.real_name_level, found.registered_province) == (4, "37")
    assert not found.overseas_restricted
    # Registering again is refused: one user per document.
    bureau.start_registration(person).expect("ALREADY_REGISTERED", "该证件已注册，请直接登录")


def test_q03_real_name_collected_at_the_hall_skips_the_face_step(bureau: Bureau) -> None:
    """Q3, B2: "线下完成实名可自动跳过注册扫脸认证步骤" and the user is still level 4."""
    person = Person("李线下")
    assert bureau.hall.collect_real_name(person).person_id == ""  # not registered yet
    started = bureau.start_registration(person)
    assert started["face_required"] is False
    bureau.web.call(
        "AccountService.StartRegistrationFace", {"registration_id": started["registration_id"]}
    ).expect("STATE_CONFLICT")
    verification_id, code = bureau.code_for(person.phone, "VERIFICATION_PURPOSE_REGISTRATION")
    completed = bureau.web.call(
        "AccountService.CompleteRegistration",
        {
            "registration_id": started["registration_id"],
            "phone": person.phone,
            "verification_id": verification_id,
            "code": code,
            "password": person.password,
        },
    )
    assert completed["real_name_level"] == 4


def test_q03_migrated_user_without_face_check_is_level_3_until_the_account_center_face_check(
    bureau: Bureau,
) -> None:
    """Q3, B3: 存量用户 without a face check are level 3; 【账户中心】—【个人实名等级】 with the
    tax APP's face check raises them to 4; risky operations ask for it."""
    person = Person("王存量")
    assert bureau.hall.import_legacy_person(person).real_name_level == 3
    level_4 = Person("赵存量")
    assert bureau.hall.import_legacy_person(level_4, face_verified=True).real_name_level == 4

    session = bureau.login(person)
    assert session.body["real_name_level"] == 3
    assert bureau.profile(session)["real_name_level"] == 3
    # A risky operation (the core tax system asks auth) demands level 4.
    refused = refusal(
        bureau.core_tax.auth.RequireRealNameLevel,
        auth_pb2.RequireRealNameLevelRequest(person_id=person.person_id, min_level=4),
    )
    assert refused.reason == "REAL_NAME_LEVEL_TOO_LOW"
    assert refused.user_text == "您的实名等级不足，请使用税务APP扫脸认证提升实名等级"

    face = bureau.web.call("AccountService.StartRealNameUpgrade", {}, token=session.token)["face"]
    proof = bureau.face_proof(face)
    upgraded = bureau.web.call(
        "AccountService.CompleteRealNameUpgrade", {"proof": proof}, token=session.token
    )
    assert upgraded["real_name_level"] == 4
    assert bureau.profile(session)["real_name_level"] == 4


# --- Q4 ----------------------------------------------------------------------------------


def _registration_face(bureau: Bureau, person: Person) -> tuple[str, dict[str, str]]:
    started = bureau.start_registration(person)
    face = bureau.web.call(
        "AccountService.StartRegistrationFace", {"registration_id": started["registration_id"]}
    )["face"]
    return started["registration_id"], face


def test_q04_face_failures_say_why_and_the_same_person_passes_after_fixing_them(
    bureau: Bureau,
) -> None:
    """Q4 (1), (2), B7: a dark image, another face in the background or a missing motion
    ask for a retry with a hint; a busy verification service asks to try later; none of
    them counts against the person, who then passes and registers."""
    person = Person("周扫脸")
    registration_id, face = _registration_face(bureau, person)
    scanned = bureau.tax_app.scan(face["qr_payload"])
    hints = {
        "dark": ("IMAGE_HINT_TOO_DARK", "环境光线较暗，请在光线充足处重新拍摄"),
        "other-face": (
            "IMAGE_HINT_OTHER_FACE_IN_VIEW",
            "采集背景中出现其他人脸，请确保画面中仅有本人后重试",
        ),
        "no-motion": (
            "IMAGE_HINT_NO_REQUIRED_MOTION",
            "未检测到指定动作，请按照提示做明显动作后重试",
        ),
    }
    for kind, (hint, text) in hints.items():
        ticket = bureau.tax_app.submit(scanned, kind)["ticket"]
        assert ticket["state"] == "TICKET_STATE_SCANNED"
        assert ticket["last_failure"] == {
            "kind": "FAILURE_KIND_POOR_IMAGE",
            "hint": hint,
            "message": text,
        }
        assert ticket["attempts_left"] == 3

    busy = bureau.tax_app.submit(scanned, "busy").expect("FACE_SERVICE_BUSY", BUSY_TEXT)
    assert busy.http_status == 503
    assert busy.retry_delay is not None
    # The web page following the ticket shows the same.
    ticket = bureau.web.call("FaceService.GetTicket", {"ticket_id": face["ticket_id"]})["ticket"]
    assert ticket["last_failure"]["kind"] == "FAILURE_KIND_SERVICE_BUSY"
    assert ticket["last_failure"]["message"] == BUSY_TEXT
    assert ticket["attempts_left"] == 3

    assert bureau.tax_app.submit(scanned)["ticket"]["state"] == "TICKET_STATE_PASSED"
    proof = bureau.web.call("FaceService.GetTicket", {"ticket_id": face["ticket_id"]})["ticket"][
        "proof"
    ]
    verification_id, code = bureau.code_for(person.phone, "VERIFICATION_PURPOSE_REGISTRATION")
    completed = bureau.web.call(
        "AccountService.CompleteRegistration",
        {
            "registration_id": registration_id,
            "phone": person.phone,
            "verification_id": verification_id,
            "code": code,
            "face_proof": proof,
            "password": person.password,
        },
    )
    assert completed["real_name_level"] == 4


def test_q04_repeated_face_mismatch_sends_the_person_to_the_hall_which_unblocks_registration(
    bureau: Bureau,
) -> None:
    """Q4 (3), B7, B2: after repeated mismatches the ticket fails with the hall message;
    once the hall collected the real-name information offline, registration needs no face."""
    person = Person("吴不过")
    registration_id, face = _registration_face(bureau, person)
    scanned = bureau.tax_app.scan(face["qr_payload"])
    for left in (2, 1):
        ticket = bureau.tax_app.submit(scanned, "mismatch")["ticket"]
        assert ticket["last_failure"]["kind"] == "FAILURE_KIND_MISMATCH"
        assert (
            ticket["last_failure"]["message"] == f"人脸识别未通过，请本人重试（还可尝试{left}次）"
        )
        assert ticket["attempts_left"] == left
    ticket = bureau.tax_app.submit(scanned, "mismatch")["ticket"]
    assert ticket["state"] == "TICKET_STATE_FAILED"
    assert ticket["last_failure"]["kind"] == "FAILURE_KIND_GO_TO_HALL"
    assert ticket["last_failure"]["message"] == HALL_TEXT
    bureau.tax_app.submit(scanned).expect("TICKET_INVALID")
    # Without a passed face the registration cannot complete.
    verification_id, code = bureau.code_for(person.phone, "VERIFICATION_PURPOSE_REGISTRATION")
    bureau.web.call(
        "AccountService.CompleteRegistration",
        {
            "registration_id": registration_id,
            "phone": person.phone,
            "verification_id": verification_id,
            "code": code,
            "password": person.password,
        },
    ).expect("INVALID_ARGUMENT", "请先完成人脸识别")

    bureau.hall.collect_real_name(person)
    assert bureau.start_registration(person)["face_required"] is False
    bureau.register(person)
    assert person.person_id


# --- Q7 ----------------------------------------------------------------------------------


def test_q07_foreign_passport_and_work_permits_need_the_hall_first(bureau: Bureau) -> None:
    """Q7 (1), B4, B5: seven document types register online directly; a foreign passport
    and the three foreigner work permits stop with the FAQ's message until the hall has
    collected the person's real-name information."""
    online = {
        "DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD": Person("陈居民").number,
        "DOCUMENT_TYPE_HK_MACAO_TRAVEL_PERMIT": f"H{next(_numbers):08d}",
        "DOCUMENT_TYPE_TAIWAN_TRAVEL_PERMIT": f"{next(_numbers):08d}",
        "DOCUMENT_TYPE_CHINESE_PASSPORT": f"E{next(_numbers):08d}",
        "DOCUMENT_TYPE_FOREIGN_PERMANENT_RESIDENT_ID": f"USA{next(_numbers):012d}",
        "DOCUMENT_TYPE_HK_MACAO_RESIDENCE_PERMIT": _permit("810000"),
        "DOCUMENT_TYPE_TAIWAN_RESIDENCE_PERMIT": _permit("830000"),
    }
    for document_type, number in online.items():
        started = bureau.start_registration(
            Person("林七种", number=number, document_type=document_type)
        )
        assert started["face_required"] is True, document_type

    for document_type in (
        "DOCUMENT_TYPE_FOREIGN_PASSPORT",
        "DOCUMENT_TYPE_FOREIGNER_WORK_PERMIT_A",
        "DOCUMENT_TYPE_FOREIGNER_WORK_PERMIT_B",
        "DOCUMENT_TYPE_FOREIGNER_WORK_PERMIT_C",
    ):
        for client in (bureau.web, bureau.app):
            refused = bureau.start_registration(_foreigner(document_type), via=client)
            refused.expect("OFFLINE_REAL_NAME_REQUIRED", OFFLINE_FIRST_TEXT)
            assert refused.grpc_status == 9  # FAILED_PRECONDITION
            assert refused.http_status == (400 if client is bureau.app else 200)


def test_q07_foreigner_registers_online_after_the_hall_collected_the_passport(
    bureau: Bureau,
) -> None:
    """Q7 (1), B5, B2: 先前往办税服务场所采集实名信息，再通过电子税务局完成自然人用户注册."""
    person = _foreigner("DOCUMENT_TYPE_FOREIGN_PASSPORT", "ANNA MUELLER")
    bureau.start_registration(person).expect("OFFLINE_REAL_NAME_REQUIRED", OFFLINE_FIRST_TEXT)
    bureau.hall.collect_real_name(person)
    started = bureau.start_registration(person)
    assert (started["face_required"], started["email_required"]) == (False, False)
    bureau.register(person)
    found = bureau.hall.auth.GetPerson(
        auth_pb2.GetPersonRequest(person_id=person.person_id), timeout=10
    ).person
    assert found.real_name_level == 4
    assert not found.overseas_restricted


def test_q07_overseas_registration_by_email_is_restricted_until_the_hall(bureau: Bureau) -> None:
    """Q7 (2), (3), B6: 境外自然人注册 with a passport, work permit or another personal
    document needs no hall but verifies an email instead of a phone; the person's rights
    are restricted until the hall collects their real-name information."""
    for document_type in (
        "DOCUMENT_TYPE_FOREIGN_PASSPORT",
        "DOCUMENT_TYPE_OTHER_PERSONAL_DOCUMENT",
    ):
        person = _foreigner(document_type, "MARIA GARCIA")
        person.email = new_email("maria")
        started = bureau.start_registration(person, overseas=True)
        assert started["email_required"] is True
        # A phone is not what this registration proves.
        verification_id, code = bureau.code_for(person.phone, "VERIFICATION_PURPOSE_REGISTRATION")
        bureau.web.call(
            "AccountService.CompleteRegistration",
            {
                "registration_id": started["registration_id"],
                "phone": person.phone,
                "verification_id": verification_id,
                "code": code,
                "password": person.password,
            },
        ).expect("INVALID_EMAIL", "境外自然人注册请填写邮箱地址")

        bureau.register(person, overseas=True)
        (mail,) = bureau.phones.messages(person.email)
        assert mail.channel == 2  # CHANNEL_EMAIL
        found = bureau.hall.auth.GetPerson(
            auth_pb2.GetPersonRequest(person_id=person.person_id), timeout=10
        ).person
        assert found.overseas_restricted

        # The hall's collection lifts the restriction of the registered person.
        collected = bureau.hall.collect_real_name(person)
        assert collected.person_id == person.person_id
        found = bureau.hall.auth.GetPerson(
            auth_pb2.GetPersonRequest(person_id=person.person_id), timeout=10
        ).person
        assert not found.overseas_restricted


def test_q07_b6_an_overseas_person_without_a_phone_logs_in_with_an_email_code(
    bureau: Bureau,
) -> None:
    """B6 (issue 12): besides scan verification, the second step is a code to the email
    the person registered with, through the SMS service's email provider, under the same
    E1 lockout and E2 throttle as SMS codes."""
    person = _foreigner("DOCUMENT_TYPE_FOREIGN_PASSPORT", "ANNA KOWALSKA")
    person.email = new_email("anna")
    bureau.register(person, overseas=True)
    started = bureau.start_login(person)
    assert started["second_steps"] == ["SECOND_STEP_EMAIL_CODE", "SECOND_STEP_SCAN_VERIFICATION"]
    assert (started["phone_empty"], started["masked_phone"]) == (True, "")
    assert started["masked_email"].startswith("a") and "@" in started["masked_email"]
    sent = bureau.web.call("AuthService.SendLoginCode", {"challenge_id": started["challenge_id"]})
    assert sent["masked_email"] == started["masked_email"]
    code = bureau.phones.code(person.email, purpose="VERIFICATION_PURPOSE_LOGIN")
    session = bureau.web.call(
        "AuthService.CompleteLoginWithCode",
        {"challenge_id": started["challenge_id"], "code": code},
    )["session"]
    assert session["person_id"] == person.person_id

    # E1: five wrong email codes lock the code level, as five wrong SMS codes do.
    challenge = bureau.start_login(person)["challenge_id"]
    bureau.web.call("AuthService.SendLoginCode", {"challenge_id": challenge})
    for left in (4, 3, 2, 1):
        bureau.web.call(
            "AuthService.CompleteLoginWithCode", {"challenge_id": challenge, "code": "000000"}
        ).expect("CREDENTIALS_INVALID", f"验证码错误，您还可以尝试{left}次")
    locked = bureau.web.call(
        "AuthService.CompleteLoginWithCode", {"challenge_id": challenge, "code": "000000"}
    )
    assert locked.reason == "AUTH_METHOD_LOCKED", locked
    bureau.web.call("AuthService.SendLoginCode", {"challenge_id": challenge}).expect(
        "AUTH_METHOD_LOCKED"
    )


def test_q07_b6_email_login_codes_are_throttled_as_sms_codes_are(bureau: Bureau) -> None:
    """E2 for email: at most 5 codes to one address in 10 minutes."""
    person = _foreigner("DOCUMENT_TYPE_FOREIGN_PASSPORT", "OLE HANSEN")
    person.email = new_email("ole")
    bureau.register(person, overseas=True)  # the registration code was the first send
    challenge = bureau.start_login(person)["challenge_id"]
    for _ in range(4):
        assert bureau.web.call("AuthService.SendLoginCode", {"challenge_id": challenge}).ok
    refused = bureau.web.call("AuthService.SendLoginCode", {"challenge_id": challenge})
    refused.expect("SMS_RATE_LIMITED", "短信验证码获取频繁，请稍后重试")
    assert refused.retry_delay is not None


def test_q07_overseas_person_has_no_enterprise_business_until_the_hall(bureau: Bureau) -> None:
    """Q7 (3), B6: 非居民(境外自然人)权限有所限制: the natural-person entry works, the
    enterprise entry is refused until the hall collects the person."""
    person = _foreigner("DOCUMENT_TYPE_FOREIGN_PASSPORT", "KARL BERG")
    person.email = new_email("karl")
    bureau.register(person, overseas=True)
    legal_representative = bureau.register(Person("郑法人"))
    code = new_uscc()
    bureau.new_enterprise(code, legal_representative)
    bureau.add_tax_officer(code, legal_representative, person)

    bureau.start_login(person, ENTERPRISE, enterprise_code=code).expect(
        "OVERSEAS_RESTRICTED",
        "境外自然人权限受限，如需办理企业业务，请前往办税服务场所采集实名信息",
    )
    bureau.hall.collect_real_name(person)
    # Collected by the hall, the person now has a phone-less enterprise login by face.
    session = bureau.login_by_face(person, ENTERPRISE, enterprise_code=code)
    assert session.identity["enterprise_code"] == code


# --- Q13 ---------------------------------------------------------------------------------


def test_q13_password_rules_8_to_16_characters_two_kinds_of_three(bureau: Bureau) -> None:
    """Q13, C1: 8-16 characters, at least two of digits, letters (case-sensitive) and the
    special characters . @ $ % * # _ + - ' & ^; registration refuses anything else with
    the rule's text and completes with a compliant password."""
    person = Person("孙密码")
    started = bureau.start_registration(person)
    face = bureau.web.call(
        "AccountService.StartRegistrationFace", {"registration_id": started["registration_id"]}
    )["face"]
    proof = bureau.face_proof(face)
    verification_id, code = bureau.code_for(person.phone, "VERIFICATION_PURPOSE_REGISTRATION")

    def complete(password: str) -> Reply:
        return bureau.web.call(
            "AccountService.CompleteRegistration",
            {
                "registration_id": started["registration_id"],
                "phone": person.phone,
                "verification_id": verification_id,
                "code": code,
                "face_proof": proof,
                "password": password,
            },
        )

    refused = {
        "Ab1.xyz": "length",  # 7
        "Ab1.Ab1.Ab1.Ab1.X": "length",  # 17
        "abcdEFGH": "variety",  # letters only
        "12345678": "variety",  # digits only
        ".@$%*#_+": "variety",  # special characters only
        "abcd 1234": "character",  # a space is not allowed
        "abcd!1234": "character",  # nor "!"
    }
    for password, problem in refused.items():
        reply = complete(password)
        reply.expect("PASSWORD_POLICY", POLICY_TEXT)
        assert reply.metadata["problem"] == problem, password
    # Letters and the special characters, 16 characters: allowed.
    person.password = "Ab.@$%*#_+-'&^cd"
    assert complete(person.password)["real_name_level"] == 4


def test_q13_the_same_rules_apply_when_the_password_is_changed_and_letters_are_case_sensitive(
    bureau: Bureau,
) -> None:
    """Q13, C1: changing the personal password follows the same rules; letters are
    case-sensitive at login."""
    person = bureau.register(Person("钱改密", password="abc12345"))
    session = bureau.login(person)
    bureau.web.call(
        "AccountService.ChangePassword",
        {"old_password": person.password, "new_password": "abcdefgh"},
        token=session.token,
    ).expect("PASSWORD_POLICY", POLICY_TEXT)
    assert bureau.web.call(
        "AccountService.ChangePassword",
        {"old_password": person.password, "new_password": "Abc12345"},
        token=session.token,
    ).ok
    bureau.start_login(person, password="abc12345").expect("CREDENTIALS_INVALID")
    bureau.start_login(person, password="ABC12345").expect("CREDENTIALS_INVALID")
    assert bureau.start_login(person, password="Abc12345").ok


# --- Q20 ---------------------------------------------------------------------------------


def test_q20_five_codes_per_ten_minutes_counted_from_the_first(bureau: Bureau) -> None:
    """Q20, E2: at most 5 codes per 10 minutes to one phone, whatever they are for; the 10
    minutes run from the first of the 5; then 5 more may be sent."""
    phone = new_phone()
    purposes = [
        "VERIFICATION_PURPOSE_REGISTRATION",
        "VERIFICATION_PURPOSE_PHONE_RECOVERY",
        "VERIFICATION_PURPOSE_PHONE_ADD",
        "VERIFICATION_PURPOSE_REGISTRATION",
        "VERIFICATION_PURPOSE_PHONE_ADD",
    ]
    for sent_before, purpose in enumerate(purposes):
        client = bureau.web if sent_before % 2 else bureau.app
        sent = bureau.send_code(phone, purpose, via=client)
        assert sent["sends_left_in_window"] == 4 - sent_before
        bureau.later(timedelta(minutes=1))
    # Five minutes after the first: refused, for the five minutes the window still runs.
    for client in (bureau.app, bureau.web):
        refused = bureau.send_code(phone, "VERIFICATION_PURPOSE_REGISTRATION", via=client)
        refused.expect("SMS_RATE_LIMITED", THROTTLED_TEXT)
        assert refused.retry_delay == timedelta(minutes=5)
    assert len(bureau.phones.messages(phone)) == 5

    bureau.later(timedelta(minutes=4, seconds=59))  # 9:59 after the first
    bureau.send_code(phone, "VERIFICATION_PURPOSE_PHONE_ADD").expect("SMS_RATE_LIMITED")
    bureau.later(timedelta(seconds=1))  # 10:00 after the first: a new window
    for left in (4, 3, 2, 1, 0):
        assert (
            bureau.send_code(phone, "VERIFICATION_PURPOSE_PHONE_ADD")["sends_left_in_window"]
            == left
        )
    bureau.send_code(phone, "VERIFICATION_PURPOSE_PHONE_ADD").expect(
        "SMS_RATE_LIMITED", THROTTLED_TEXT
    )
    # Another phone is not affected.
    assert bureau.send_code(new_phone(), "VERIFICATION_PURPOSE_PHONE_ADD").ok


def test_q20_registration_login_and_password_reset_share_the_five_codes(bureau: Bureau) -> None:
    """Q20, E2: the FAQ's story: registering, logging in and resetting the password all
    send codes to the same phone; the sixth within ten minutes is refused, and after ten
    minutes from the first the person continues."""
    person = bureau.register(Person("冯短信"))  # code 1
    bureau.login(person)  # code 2
    reset = bureau.web.call(
        "AuthService.StartPasswordReset", {"account": person.number, "province": bureau.province}
    )
    for _ in range(2):  # codes 3 and 4
        assert bureau.web.call(
            "AuthService.SendPasswordResetCode", {"reset_id": reset["reset_id"]}
        ).ok
    assert bureau.send_code(person.phone, "VERIFICATION_PURPOSE_PHONE_ADD").ok  # code 5
    challenge = bureau.start_login(person)["challenge_id"]
    refused = bureau.web.call("AuthService.SendLoginCode", {"challenge_id": challenge})
    refused.expect("SMS_RATE_LIMITED", THROTTLED_TEXT)
    assert refused.retry_delay == timedelta(minutes=10)

    bureau.later(timedelta(minutes=10))
    session = bureau.login(person)
    assert session.person_id == person.person_id
