"""用户注册 in a real browser (B1, B4-B6, C1), with the APP simulator for the face step and
the inbox for the codes."""

from __future__ import annotations

from etax_platform.pii import mask_email
from tests.e2e.story import Bureau, Person, new_email
from tests.web.site import Browser
from tests.web.walks import app_scans, read_code, signed_in_as, sms_step, start_login


def test_b1_registration_with_identity_check_face_phone_and_password_reaches_level_4(
    browser: Browser, bureau: Bureau
) -> None:
    """B1, Q3: identity check, face by QR (the APP simulator), phone by SMS code, a password
    checked against C1 as it is typed; the new user is at real-name level 4 and logs in."""
    person = Person("网页注册")
    browser.open("/")
    browser.click("link-register")
    browser.wait_path("/register")
    browser.choose("document_type", "DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD")
    browser.fill("document_number", person.number)
    browser.fill("name", person.name)
    browser.screenshot("identity")
    browser.submit("register-submit")

    browser.wait_path("/register/details")
    browser.submit("start-face")
    browser.element("registration-qr")
    browser.screenshot("face-qr")
    assert "人脸识别通过" in app_scans(browser, "registration")
    browser.wait_text("face-done", "人脸识别已通过")

    browser.fill("contact", person.phone)
    browser.submit("send-code")
    assert browser.text("code-sent") == f"验证码已发送至 {person.phone[:3]}****{person.phone[-4:]}"
    browser.fill("code", read_code(browser, person.phone))
    # C1 as it is typed: letters only meet the length rule but not the two kinds.
    browser.fill("password", "onlyletters")
    rules = {
        r.get_attribute("data-rule"): r.get_attribute("data-met")
        for r in browser.css("#password-rules li")
    }
    assert rules == {"length": "yes", "kinds": "no"}
    browser.fill("password", person.password)
    rules = {
        r.get_attribute("data-rule"): r.get_attribute("data-met")
        for r in browser.css("#password-rules li")
    }
    assert rules == {"length": "yes", "kinds": "yes"}
    browser.fill("password_confirm", person.password)
    browser.screenshot("details")
    browser.submit("register-complete")

    assert browser.text("real-name-level") == "4"
    browser.screenshot("registered")
    start_login(browser, person)
    sms_step(browser, person.phone)
    assert "自然人业务" in signed_in_as(browser)
    browser.open("/account")
    assert browser.text("real-name-level") == "4"


def test_b5_hall_first_document_gets_the_faq_text(browser: Browser) -> None:
    """B5, Q7: a foreign passport without the hall's collection cannot register online."""
    browser.open("/register")
    browser.choose("document_type", "DOCUMENT_TYPE_FOREIGN_PASSPORT")
    browser.fill("document_number", "E12345678")
    browser.fill("name", "JOHN SMITH")
    browser.submit("register-submit")
    assert browser.text("form-error") == (
        "未查询到您的手机号码，请稍后重试或携带相关证件前往办税大厅办理"
    )


def test_b6_overseas_person_registers_and_logs_in_with_email_codes(
    browser: Browser, bureau: Bureau
) -> None:
    """B6, Q7(2): 境外自然人注册 with a foreign passport, proven by an email code; without a
    phone, step 2 of the login and forgot password send 邮箱验证码 to the masked email, as
    they send SMS codes (issue 12)."""
    email = new_email("overseas")
    document_number = f"P{email.split('@')[0][-8:].replace('overseas', '')}77881"
    browser.open("/register")
    browser.click("link-overseas")
    browser.wait_path("/register/overseas")
    browser.choose("document_type", "DOCUMENT_TYPE_FOREIGN_PASSPORT")
    browser.fill("document_number", document_number)
    browser.fill("name", "JANE DOE")
    browser.submit("register-submit")
    browser.wait_path("/register/details")
    if browser.has("start-face"):
        browser.submit("start-face")
        assert "人脸识别通过" in app_scans(browser, "registration")
        browser.wait_text("face-done", "人脸识别已通过")
    browser.fill("contact", email)
    browser.submit("send-code")
    browser.wait_text("code-sent", "验证码已发送至")
    browser.fill("code", read_code(browser, email))
    browser.fill("password", "Overseas.2026")
    browser.fill("password_confirm", "Overseas.2026")
    browser.submit("register-complete")
    browser.element("real-name-level")

    # Login step 2: the email code (or scan verification); no "phone empty" notice.
    person = Person("JANE DOE", number=document_number, phone="", password="Overseas.2026")
    start_login(browser, person)
    browser.wait_path("/login/verify")
    assert browser.text("masked-email") == mask_email(email)
    steps = [tab.text for tab in browser.css("nav.tabs a, nav.tabs button")]
    assert steps == ["邮箱验证码", "扫码验证"]
    assert not browser.has("phone-empty")
    browser.submit("send-code")
    assert browser.text("code-sent") == f"验证码已发送至 {mask_email(email)}"
    browser.fill("code", read_code(browser, email))
    browser.screenshot("email-code")
    browser.submit("code-submit")
    assert "自然人业务" in signed_in_as(browser)
    browser.submit("logout")

    # Forgot password: the same email code.
    browser.open("/password-reset")
    browser.fill("account", document_number)
    browser.submit("reset-submit")
    assert browser.text("masked-email") == mask_email(email)
    assert browser.text("step-email") == "邮箱验证码"
    browser.submit("send-code")
    browser.wait_text("code-sent", mask_email(email))
    browser.fill("code", read_code(browser, email))
    browser.fill("new_password", "Overseas.2027")
    browser.fill("new_password_confirm", "Overseas.2027")
    browser.submit("reset-complete")
    assert "密码已重置" in browser.text("done-message")
