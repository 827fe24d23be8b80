"""Logging in, phones, passwords and lockout: Q5, Q11, Q12, Q14-Q19, Q21, Q22.

The tests that move the clock by hours or days come last in this module (they share one
platform, and the clock never goes back).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from etax.common.v1 import types_pb2

from etax_platform.clock import CST, next_cst_midnight
from tests.e2e.api import Reply
from tests.e2e.platform import Platform
from tests.e2e.story import (
    ENTERPRISE,
    NOT_REGISTERED_TEXT,
    PHONE_NOT_FOUND_TEXT,
    Bureau,
    Person,
    Session,
    masked,
    new_phone,
    new_uscc,
)

PHONE_EMPTY_TEXT = "手机号码为空，请使用扫码验证"
WRONG = "Wrong.pass1"
SMS = "SECOND_STEP_SMS_CODE"
SCAN = "SECOND_STEP_SCAN_VERIFICATION"


def _take_phone(bureau: Bureau, victim: Person, name: str = "占用者") -> Person:
    """Another person registers with the victim's phone: the latest SMS check holds it (C4)."""
    return bureau.register(Person(name, phone=victim.phone))


def _recover_phone(bureau: Bureau, person: Person, new: str) -> dict[str, str]:
    """找回手机号码: account and personal password, then a code to the new phone."""
    recovery = bureau.web.call(
        "AuthService.StartPhoneRecovery", {"account": person.number, "password": person.password}
    )
    verification_id, code = bureau.code_for(new, "VERIFICATION_PURPOSE_PHONE_RECOVERY")
    done: dict[str, str] = bureau.web.call(
        "AuthService.CompletePhoneRecovery",
        {
            "recovery_id": recovery["recovery_id"],
            "phone": new,
            "verification_id": verification_id,
            "code": code,
        },
    ).body
    person.phone = new
    return done


# --- Q5, Q22: a new phone ----------------------------------------------------------------


def test_q05_existing_tax_officer_with_a_new_phone_recovers_it_with_the_personal_password(
    bureau: Bureau,
) -> None:
    """Q5, C4, D2: a tax officer migrated from the old system (存量) changed phones; 找回
    手机号码 verifies the personal password and sets the new phone by SMS code; the
    enterprise login's second step then goes to the new phone."""
    legal_representative = bureau.register(Person("郑法人"))
    officer = Person("王办税")
    bureau.hall.import_legacy_person(officer)
    code = new_uscc()
    bureau.new_enterprise(code, legal_representative)
    bureau.add_tax_officer(code, legal_representative, officer)
    old_phone = officer.phone

    bureau.web.call(
        "AuthService.StartPhoneRecovery", {"account": officer.number, "password": WRONG}
    ).expect("CREDENTIALS_INVALID", "账号或密码错误，您还可以尝试4次")
    new = new_phone()
    assert _recover_phone(bureau, officer, new)["masked_phone"] == masked(new)

    started = bureau.start_login(officer, ENTERPRISE, enterprise_code=code)
    assert started["masked_phone"] == masked(new)
    session = bureau.login(officer, ENTERPRISE, enterprise_code=code)
    assert session.identity["enterprise_code"] == code
    assert session.identity["role"] == "ROLE_TAX_OFFICER"
    login_codes = [
        m
        for m in bureau.phones.messages(old_phone)
        if m.purpose == types_pb2.VERIFICATION_PURPOSE_LOGIN
    ]
    assert login_codes == [], "no login code reaches the old phone"
    # C6: the lost number is gone from the officer's phones and no longer logs in.
    assert [p["masked_number"] for p in bureau.profile(session)["phones"]] == [masked(new)]
    bureau.start_login(officer, account=old_phone).expect("PHONE_NOT_FOUND")


def test_q22_the_phone_shown_at_step_two_is_not_mine_any_more_recover_phone(
    bureau: Bureau,
) -> None:
    """Q22, D2: step two shows the phone the person last verified; when it is lost, 找回
    手机号码 replaces it and the login continues with the new one."""
    person = bureau.register(Person("褚旧号"))
    assert bureau.start_login(person)["masked_phone"] == masked(person.phone)
    lost = person.phone
    new = new_phone()
    _recover_phone(bureau, person, new)
    started = bureau.start_login(person)
    assert started["masked_phone"] == masked(new)
    session = bureau.login(person)
    assert session.person_id == person.person_id
    # C6: the new number replaced the lost one: it is off the list and no longer logs in.
    assert [p["masked_number"] for p in bureau.profile(session)["phones"]] == [masked(new)]
    bureau.start_login(person, account=lost).expect(
        "PHONE_NOT_FOUND", "手机号码不存在，您可以尝试使用证件号码登录"
    )


def test_q22_c3_the_sms_step_uses_the_phone_verified_last_or_chosen_last(
    bureau: Bureau,
) -> None:
    """C3: with two phones, the one verified by SMS most recently is the default the SMS
    step uses; choosing a default in the account center changes it; recovery replaces the
    lost default and keeps the other phone."""
    person = bureau.register(Person("卫双号"))
    first = person.phone
    session = bureau.login(person)
    second = new_phone()
    assert bureau.add_phone(session, second).ok
    assert bureau.start_login(person)["masked_phone"] == masked(second)
    phones = {p["masked_number"]: p for p in bureau.profile(session)["phones"]}
    chosen = bureau.web.call(
        "AccountService.SetDefaultPhone",
        {"phone_id": phones[masked(first)]["phone_id"]},
        token=session.token,
    )
    assert chosen.ok, chosen
    assert bureau.start_login(person)["masked_phone"] == masked(first)
    # The default (first) is lost: recovery replaces it, the other phone stays.
    new = new_phone()
    _recover_phone(bureau, person, new)
    assert bureau.start_login(person)["masked_phone"] == masked(new)
    after = bureau.login(person, phone=new)
    listed = sorted(p["masked_number"] for p in bureau.profile(after)["phones"])
    assert listed == sorted([masked(second), masked(new)])
    bureau.start_login(person, account=first).expect("PHONE_NOT_FOUND")


# --- Q11, Q18, Q19: one phone, one person --------------------------------------------------


def test_q11_phone_taken_by_another_person_is_found_again_by_face_login_and_account_center(
    bureau: Bureau,
) -> None:
    """Q11, C4: one phone belongs to one person, the one who last passed an SMS check on
    it; the other loses it. They log in by face (扫脸验证), add a phone in the account center,
    and can take their number back the same way."""
    person = bureau.register(Person("甲号主"))
    number = person.phone
    other = _take_phone(bureau, person)

    started = bureau.start_login(person)
    assert (started["phone_empty"], started["masked_phone"]) == (True, "")
    session = bureau.login_by_face(person)
    assert bureau.profile(session)["phones"] == []

    person.phone = new_phone()
    added = bureau.add_phone(session, person.phone)
    assert added["phone"]["masked_number"] == masked(person.phone)
    assert bureau.login(person).person_id == person.person_id

    # Taking the old number back: now the other person's phone is empty.
    assert bureau.add_phone(session, number).ok
    assert bureau.start_login(other)["phone_empty"] is True
    phones = [p["masked_number"] for p in bureau.profile(session)["phones"]]
    assert sorted(phones) == sorted([masked(person.phone), masked(number)])


def test_q18_phone_not_found_then_document_number_says_not_registered_until_registration(
    bureau: Bureau,
) -> None:
    """Q18, D4: logging in to enterprise business with a phone nobody holds says
    「手机号码不存在，您可以尝试使用证件号码登录」; with an unregistered document number
    「该用户未注册」; after 用户注册 and the enterprise's confirmation the login works."""
    legal_representative = bureau.register(Person("冯法人"))
    code = new_uscc()
    bureau.new_enterprise(code, legal_representative)
    newcomer = Person("秦新人")

    by_phone = bureau.start_login(
        newcomer, ENTERPRISE, account=newcomer.phone, enterprise_code=code
    )
    by_phone.expect("PHONE_NOT_FOUND", PHONE_NOT_FOUND_TEXT)
    by_document = bureau.start_login(newcomer, ENTERPRISE, enterprise_code=code, via=bureau.app)
    by_document.expect("USER_NOT_REGISTERED", NOT_REGISTERED_TEXT)
    assert by_document.http_status == 404

    bureau.register(newcomer)
    bureau.add_tax_officer(code, legal_representative, newcomer)
    session = bureau.login(newcomer, ENTERPRISE, account=newcomer.phone, enterprise_code=code)
    assert session.identity["enterprise_code"] == code


def test_q18_emptied_phone_is_not_found_but_the_document_number_logs_in_then_add_the_phone(
    bureau: Bureau,
) -> None:
    """Q18, C4, D4: "如果用证件号码登录成功，说明您的手机号码为空或者因被其他人占用而被系统置空，
    建议您尽快补充手机号码": the phone was taken and then dropped by its new holder."""
    person = bureau.register(Person("尤空号"))
    number = person.phone
    other = _take_phone(bureau, person)
    other_session = bureau.login(other)
    (phone,) = bureau.profile(other_session)["phones"]
    assert bureau.web.call(
        "AccountService.RemovePhone", {"phone_id": phone["phone_id"]}, token=other_session.token
    ).ok

    bureau.start_login(person, account=number).expect("PHONE_NOT_FOUND", PHONE_NOT_FOUND_TEXT)
    session = bureau.login_by_face(person)  # by document number, phone empty
    assert bureau.add_phone(session, number).ok
    assert bureau.login(person, account=number).person_id == person.person_id


def test_q19_empty_phone_at_the_sms_step_switch_to_scan_verification_then_add_a_phone(
    bureau: Bureau,
) -> None:
    """Q19, D4, C4: the SMS step shows an empty phone (taken by someone else); the page
    offers 扫码验证 instead; after logging in, 【账户中心】—【个人信息管理】—【手机号码修改】
    adds a new phone."""
    person = bureau.register(Person("许无号"))
    _take_phone(bureau, person)

    started = bureau.start_login(person)
    assert started["phone_empty"] is True
    assert started["masked_phone"] == ""
    assert SCAN in started["second_steps"]
    assert SMS not in started["second_steps"]
    challenge_id = started["challenge_id"]
    bureau.web.call("AuthService.SendLoginCode", {"challenge_id": challenge_id}).expect(
        "PHONE_EMPTY", PHONE_EMPTY_TEXT
    )
    # Same challenge, second step by scan verification.
    face = bureau.web.call("AuthService.StartLoginFace", {"challenge_id": challenge_id})["face"]
    proof = bureau.face_proof(face)
    session = Session(
        bureau.web.call(
            "AuthService.CompleteLoginWithFace", {"challenge_id": challenge_id, "proof": proof}
        )["session"]
    )
    assert session.person_id == person.person_id

    person.phone = new_phone()
    assert bureau.add_phone(session, person.phone).ok
    started = bureau.start_login(person)
    assert (started["phone_empty"], started["masked_phone"]) == (False, masked(person.phone))
    assert bureau.login(person).person_id == person.person_id


# --- Q14: scan verification and QR login ------------------------------------------------


def test_q14_scan_verification_is_a_second_step_that_needs_no_app_login(bureau: Bureau) -> None:
    """Q14, D2: 扫码验证 during a password login: the tax APP, not logged in, scans the QR
    code from its 扫一扫 and checks the face."""
    person = bureau.register(Person("施扫码"))
    started = bureau.start_login(person)
    assert set(started["second_steps"]) == {SMS, SCAN}
    face = bureau.web.call("AuthService.StartLoginFace", {"challenge_id": started["challenge_id"]})[
        "face"
    ]
    scanned = bureau.tax_app.scan(face["qr_payload"])  # no session on the APP
    assert scanned["purpose"] == "VERIFICATION_PURPOSE_LOGIN"
    assert scanned["masked_name"] == "施*码"
    assert bureau.tax_app.submit(scanned)["ticket"]["state"] == "TICKET_STATE_PASSED"
    proof = bureau.web.call("FaceService.GetTicket", {"ticket_id": face["ticket_id"]})["ticket"][
        "proof"
    ]
    session = bureau.web.call(
        "AuthService.CompleteLoginWithFace",
        {"challenge_id": started["challenge_id"], "proof": proof},
    )["session"]
    assert session["identity"]["entry"] == "ENTRY_NATURAL_PERSON"
    assert session["person_id"] == person.person_id


def test_q14_qr_login_takes_the_business_the_app_is_logged_in_to(bureau: Bureau) -> None:
    """Q14, D3: 扫码登录 on the left of the web login page: an APP already logged in scans
    it, and the web page logs in to the same business (enterprise -> enterprise, natural
    person -> natural person)."""
    person = bureau.register(Person("吕扫码"))
    code = new_uscc()
    bureau.new_enterprise(code, person)

    for entry, target in (
        (ENTERPRISE, {"enterprise_code": code}),
        ("ENTRY_NATURAL_PERSON", {}),
    ):
        app_session = bureau.login_by_face(person, entry, via=bureau.app, **target)
        created = bureau.web.call("AuthService.CreateQrLogin", {"province": bureau.province})
        waiting = bureau.web.call("AuthService.GetQrLogin", {"qr_login_id": created["qr_login_id"]})
        assert waiting["state"] == "QR_LOGIN_STATE_WAITING"
        # Only a logged-in APP can confirm it.
        anonymous = bureau.app.call(
            "AuthService.ConfirmQrLogin", {"qr_payload": created["qr_payload"]}
        )
        assert anonymous.http_status == 401
        assert bureau.app.call(
            "AuthService.ConfirmQrLogin",
            {"qr_payload": created["qr_payload"]},
            token=app_session.token,
        ).ok
        confirmed = bureau.web.call(
            "AuthService.GetQrLogin", {"qr_login_id": created["qr_login_id"]}
        )
        assert confirmed["state"] == "QR_LOGIN_STATE_CONFIRMED"
        web_session = Session(confirmed["session"])
        assert web_session.person_id == person.person_id
        assert web_session.identity["entry"] == entry
        assert web_session.identity.get("enterprise_code", "") == target.get("enterprise_code", "")
        assert web_session.body["session_id"] != app_session.body["session_id"]
        # The session is handed out once.
        again = bureau.web.call("AuthService.GetQrLogin", {"qr_login_id": created["qr_login_id"]})
        assert again["state"] == "QR_LOGIN_STATE_COLLECTED"
        assert "session" not in again.body


# --- Q15, Q21: accounts and phones --------------------------------------------------------


def test_q21_several_phones_and_any_of_them_logs_in(bureau: Bureau) -> None:
    """Q21, C3: a person may hold several phones, added in the account center; default or
    not, each one logs in; step two goes to the default, the phone verified last."""
    person = bureau.register(Person("韩多号"))
    session = bureau.login_by_face(person)
    second = new_phone()
    added = bureau.add_phone(session, second)["phone"]
    assert added["is_default"] is True
    phones = {p["masked_number"]: p for p in bureau.profile(session)["phones"]}
    assert set(phones) == {masked(person.phone), masked(second)}
    assert phones[masked(person.phone)]["is_default"] is False

    for account in (person.phone, second):
        started = bureau.start_login(person, account=account)
        assert started["masked_phone"] == masked(second)
        assert bureau.login(person, account=account, phone=second).person_id == person.person_id

    assert bureau.web.call(
        "AccountService.SetDefaultPhone", {"phone_id": added["phone_id"]}, token=session.token
    ).ok
    assert bureau.start_login(person)["masked_phone"] == masked(second)
    assert bureau.login(person, phone=second).person_id == person.person_id


# --- Q16, Q17: forgot password -------------------------------------------------------------


def test_q16_forgot_password_sets_a_new_personal_password_by_sms_code(bureau: Bureau) -> None:
    """Q16, C5: 【忘记密码】 on the login page: the account, a code to the phone shown masked,
    a new password (C1 applies); the old one stops working."""
    person = bureau.register(Person("曹忘记"))
    reset = bureau.web.call(
        "AuthService.StartPasswordReset", {"account": person.number, "province": bureau.province}
    )
    assert (reset["masked_phone"], reset["phone_empty"]) == (masked(person.phone), False)
    sent = bureau.web.call("AuthService.SendPasswordResetCode", {"reset_id": reset["reset_id"]})
    assert sent["masked_phone"] == masked(person.phone)
    code = bureau.phones.code(person.phone, purpose="VERIFICATION_PURPOSE_PASSWORD_RESET")
    request = {"reset_id": reset["reset_id"], "code": code}
    bureau.web.call(
        "AuthService.CompletePasswordReset", {**request, "new_password": "onlyletters"}
    ).expect("PASSWORD_POLICY")
    assert bureau.web.call(
        "AuthService.CompletePasswordReset", {**request, "new_password": "New.pass2023"}
    ).ok

    bureau.start_login(person).expect("CREDENTIALS_INVALID")
    person.password = "New.pass2023"
    assert bureau.login(person).person_id == person.person_id


def test_q16_person_who_never_set_a_personal_password_sets_one_through_forgot_password(
    bureau: Bureau,
) -> None:
    """Q16, C5: "不记得自己是否有个人用户密码": a person of the old system without a
    personal password uses 忘记密码 (here by face) and then logs in."""
    person = Person("严无密")
    bureau.hall.import_legacy_person(person, with_password=False)
    # Whatever is typed, it is not the person's password.
    bureau.start_login(person).expect("CREDENTIALS_INVALID", "账号或密码错误，您还可以尝试4次")
    reset = bureau.web.call(
        "AuthService.StartPasswordReset", {"account": person.number, "province": bureau.province}
    )
    face = bureau.web.call("AuthService.StartPasswordResetFace", {"reset_id": reset["reset_id"]})[
        "face"
    ]
    proof = bureau.face_proof(face)
    person.password = "First.pass1"
    assert bureau.web.call(
        "AuthService.CompletePasswordReset",
        {"reset_id": reset["reset_id"], "face_proof": proof, "new_password": person.password},
    ).ok
    assert bureau.login(person).person_id == person.person_id


def test_q17_empty_phone_and_forgotten_password_face_reset_then_recover_the_phone(
    bureau: Bureau,
) -> None:
    """Q17, C5, C4: phone empty and password forgotten: 忘记密码 by scanning and face, then
    找回手机号码 with the new password; the SMS login works again."""
    person = bureau.register(Person("金两失"))
    _take_phone(bureau, person)

    reset = bureau.web.call(
        "AuthService.StartPasswordReset", {"account": person.number, "province": bureau.province}
    )
    assert (reset["phone_empty"], reset["masked_phone"]) == (True, "")
    bureau.web.call("AuthService.SendPasswordResetCode", {"reset_id": reset["reset_id"]}).expect(
        "PHONE_EMPTY", PHONE_EMPTY_TEXT
    )
    face = bureau.web.call("AuthService.StartPasswordResetFace", {"reset_id": reset["reset_id"]})[
        "face"
    ]
    proof = bureau.face_proof(face)
    person.password = "Found.it2023"
    assert bureau.web.call(
        "AuthService.CompletePasswordReset",
        {"reset_id": reset["reset_id"], "face_proof": proof, "new_password": person.password},
    ).ok

    new = new_phone()
    assert _recover_phone(bureau, person, new)["masked_phone"] == masked(new)
    assert bureau.login(person).person_id == person.person_id


def test_q17_personal_income_tax_app_qr_login_then_add_a_phone_and_reset_the_password(
    bureau: Bureau, platform: Platform
) -> None:
    """Q17, D3, C3, C5: "也可以通过登录个人所得税 APP 后，扫描左侧个人所得税 APP 二维码，同步
    登录到电子税务局后，再进入电子税务局账户中心新增手机号码和找回密码"."""
    person = bureau.register(Person("陆个税"))
    _take_phone(bureau, person)
    created = bureau.web.call("AuthService.CreateQrLogin", {"province": bureau.province})
    iit_token = platform.iit_token(types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD, person.number)
    assert bureau.app.call(
        "AuthService.ConfirmQrLogin", {"qr_payload": created["qr_payload"]}, token=iit_token
    ).ok
    collected = bureau.web.call("AuthService.GetQrLogin", {"qr_login_id": created["qr_login_id"]})
    session = Session(collected["session"])
    assert session.person_id == person.person_id
    assert session.identity["entry"] == "ENTRY_NATURAL_PERSON"

    person.phone = new_phone()
    assert bureau.add_phone(session, person.phone).ok
    reset = bureau.web.call(
        "AuthService.StartPasswordReset", {"account": person.number, "province": bureau.province}
    )
    assert bureau.web.call("AuthService.SendPasswordResetCode", {"reset_id": reset["reset_id"]}).ok
    code = bureau.phones.code(person.phone, purpose="VERIFICATION_PURPOSE_PASSWORD_RESET")
    person.password = "Iit.reset2023"
    assert bureau.web.call(
        "AuthService.CompletePasswordReset",
        {"reset_id": reset["reset_id"], "code": code, "new_password": person.password},
    ).ok
    assert bureau.login(person).person_id == person.person_id


# --- Q12: lockout (moves the clock) ----------------------------------------------------------


def _locked_text(now: datetime, method: str = "密码认证", locked_by: str = "密码认证") -> str:
    unlock_at = next_cst_midnight(now)
    return (
        f"一天内{locked_by}连续失败5次，{method}已锁定至{unlock_at:%Y-%m-%d %H:%M}。"
        "您可以通过“忘记密码”重置密码或刷脸认证自行解锁，或等待次日零时自动解锁。"
    )


def _lock_password(bureau: Bureau, person: Person) -> None:
    for remaining in (4, 3, 2, 1):
        wrong = bureau.start_login(person, password=WRONG)
        wrong.expect("CREDENTIALS_INVALID", f"账号或密码错误，您还可以尝试{remaining}次")
        assert wrong.metadata["remaining_attempts"] == str(remaining)
    locked = bureau.start_login(person, password=WRONG)
    locked.expect("AUTH_METHOD_LOCKED", _locked_text(bureau.clock.now()))
    assert locked.metadata["unlock_at"] == next_cst_midnight(bureau.clock.now()).isoformat()
    # Now even the right password is refused.
    bureau.start_login(person).expect("AUTH_METHOD_LOCKED")


def test_q12_locked_password_is_unlocked_by_forgot_password(bureau: Bureau) -> None:
    """Q12, E1, C5: five wrong passwords in a day lock the password; 「忘记密码」 unlocks."""
    person = bureau.register(Person("杨锁定"))
    _lock_password(bureau, person)
    reset = bureau.web.call(
        "AuthService.StartPasswordReset", {"account": person.number, "province": bureau.province}
    )
    assert bureau.web.call("AuthService.SendPasswordResetCode", {"reset_id": reset["reset_id"]}).ok
    code = bureau.phones.code(person.phone, purpose="VERIFICATION_PURPOSE_PASSWORD_RESET")
    person.password = "Unlock.me2023"
    assert bureau.web.call(
        "AuthService.CompletePasswordReset",
        {"reset_id": reset["reset_id"], "code": code, "new_password": person.password},
    ).ok
    assert bureau.login(person).person_id == person.person_id


def test_q12_locked_password_is_unlocked_by_a_face_check(bureau: Bureau) -> None:
    """Q12, E1: 通过刷脸认证方式自行解锁."""
    person = bureau.register(Person("朱刷脸"))
    _lock_password(bureau, person)
    unlock = bureau.web.call("AuthService.StartFaceUnlock", {"account": person.number})
    proof = bureau.face_proof(unlock["face"])
    assert bureau.web.call(
        "AuthService.CompleteFaceUnlock", {"unlock_id": unlock["unlock_id"], "proof": proof}
    ).ok
    assert bureau.login(person).person_id == person.person_id


def test_q12_sms_code_failures_lock_the_sms_level_and_the_password_below_it(
    bureau: Bureau,
) -> None:
    """Q12, E1: "自动锁定该等级及以下的认证方式": five wrong SMS codes lock SMS codes and
    passwords; the face check (above them) still unlocks."""
    person = bureau.register(Person("秦验证码"))
    started = bureau.start_login(person)
    challenge_id = started["challenge_id"]
    assert bureau.web.call("AuthService.SendLoginCode", {"challenge_id": challenge_id}).ok
    code = bureau.phones.code(person.phone, purpose="VERIFICATION_PURPOSE_LOGIN")
    wrong = "000000" if code != "000000" else "111111"

    def complete(code: str) -> Reply:
        return bureau.web.call(
            "AuthService.CompleteLoginWithCode", {"challenge_id": challenge_id, "code": code}
        )

    for remaining in (4, 3, 2, 1):
        complete(wrong).expect("CREDENTIALS_INVALID", f"验证码错误，您还可以尝试{remaining}次")
    complete(wrong).expect(
        "AUTH_METHOD_LOCKED", _locked_text(bureau.clock.now(), "短信验证码认证", "短信验证码认证")
    )
    locked = bureau.start_login(person)
    locked.expect(
        "AUTH_METHOD_LOCKED", _locked_text(bureau.clock.now(), locked_by="短信验证码认证")
    )
    assert (locked.metadata["method"], locked.metadata["locked_by"]) == ("password", "sms_code")

    unlock = bureau.web.call("AuthService.StartFaceUnlock", {"account": person.number})
    proof = bureau.face_proof(unlock["face"])
    assert bureau.web.call(
        "AuthService.CompleteFaceUnlock", {"unlock_id": unlock["unlock_id"], "proof": proof}
    ).ok
    assert bureau.login_by_face(person).person_id == person.person_id


def test_q12_lock_ends_at_midnight_and_failures_count_within_one_day(bureau: Bureau) -> None:
    """Q12, E1: 等待次日零时自动解锁 (China Standard Time), and "一天内...连续失败": four
    failures before midnight and one after do not lock."""
    person = bureau.register(Person("魏午夜"))
    _lock_password(bureau, person)
    midnight = next_cst_midnight(bureau.clock.now())
    bureau.later(max(midnight - bureau.clock.now() - timedelta(seconds=1), timedelta(0)))
    bureau.start_login(person).expect("AUTH_METHOD_LOCKED")
    bureau.later(timedelta(seconds=1))  # 00:00 CST
    assert bureau.clock.now().astimezone(CST).time().hour == 0
    assert bureau.login(person).person_id == person.person_id

    for _ in range(4):
        bureau.start_login(person, password=WRONG).expect("CREDENTIALS_INVALID")
    bureau.later(next_cst_midnight(bureau.clock.now()) - bureau.clock.now())
    bureau.start_login(person, password=WRONG).expect(
        "CREDENTIALS_INVALID", "账号或密码错误，您还可以尝试4次"
    )
    assert bureau.login(person).person_id == person.person_id


# --- Q15: usernames (moves the clock into the next year) ------------------------------------


def test_q15_document_number_phone_or_username_and_the_username_changes_once_a_year(
    bureau: Bureau,
) -> None:
    """Q15, C2: 居民身份证号码、手机号码或用户名 each log in; the username is optional,
    added and changed in 【账户中心】—【个人信息管理】, once a year (年度)."""
    person = bureau.register(Person("何用户"))
    for account in (person.number, person.phone):
        assert bureau.login(person, account=account).person_id == person.person_id
    session = bureau.login_by_face(person)
    assert bureau.profile(session)["username"] == ""

    def set_username(name: str, session: Session) -> Reply:
        return bureau.web.call(
            "AccountService.SetUsername", {"username": name}, token=session.token
        )

    assert set_username("HeYonghu", session)["username"] == "HeYonghu"
    for account in ("HeYonghu", "heyonghu"):  # unique regardless of case
        assert bureau.login_by_face(person, account=account).person_id == person.person_id
    # Taken, whatever the case.
    other = bureau.register(Person("何他人"))
    set_username("HEYONGHU", bureau.login_by_face(other)).expect(
        "USERNAME_TAKEN", "该用户名已被使用"
    )
    # Adding was not a change; one change this year, then no more until next year.
    assert set_username("He_Yonghu", session).ok
    set_username("He_Yonghu2", session).expect(
        "USERNAME_CHANGE_TOO_SOON", "用户名一年度只能修改一次"
    )
    assert bureau.login_by_face(person, account="He_Yonghu").person_id == person.person_id

    year = bureau.clock.now().astimezone(CST).year
    bureau.later(datetime(year + 1, 1, 1, tzinfo=CST) - bureau.clock.now())
    session = bureau.login_by_face(person)
    assert set_username("He_Yonghu2", session).ok
    assert bureau.profile(session)["username"] == "He_Yonghu2"


def test_e2_one_rule_for_codes_typed_in_numbers_public_account_contacts_by_auth(
    bureau: Bureau,
) -> None:
    """Issue 12, item 6 (docs/api.md, Conventions): a code to a number the person types in
    comes from the public SendCode; a code to the account's own phone is sent by auth and
    cannot be asked for publicly (the caller must neither learn nor choose that phone)."""
    person = bureau.register(Person("规则一"))
    for purpose in ("VERIFICATION_PURPOSE_LOGIN", "VERIFICATION_PURPOSE_PASSWORD_RESET"):
        bureau.app.call("SmsService.SendCode", {"phone": person.phone, "purpose": purpose}).expect(
            "PERMISSION_DENIED", "该业务的验证码请在对应页面获取"
        )
    typed_in = bureau.app.call(
        "SmsService.SendCode",
        {"phone": new_phone(), "purpose": "VERIFICATION_PURPOSE_PHONE_RECOVERY"},
    )
    assert typed_in["verification_id"]
    started = bureau.start_login(person)
    sent = bureau.app.call("AuthService.SendLoginCode", {"challenge_id": started["challenge_id"]})
    assert sent["masked_phone"] == masked(person.phone) and "verification_id" not in sent.body
