"""忘记密码 (C5, Q16) and 找回手机号码 (C6, Q5, Q22) in a real browser."""

from __future__ import annotations

from tests.e2e.story import Bureau, Person, new_phone
from tests.web.site import Browser
from tests.web.walks import app_scans, read_code, signed_in_as, sms_step, start_login


def test_c5_forgot_password_by_sms_code_sets_a_new_password(
    browser: Browser, bureau: Bureau
) -> None:
    """C5, Q16: the account, a code to the masked phone, a new password (C1 applies); the
    old password stops working and the new one logs in."""
    person = bureau.register(Person("网页忘记"))
    browser.open("/")
    browser.click("link-password-reset")
    browser.fill("account", person.number)
    browser.submit("reset-submit")
    assert browser.text("masked-phone") == f"{person.phone[:3]}****{person.phone[-4:]}"
    browser.submit("send-code")
    browser.wait_text("code-sent", "验证码已发送至")
    code = read_code(browser, person.phone)
    browser.fill("code", code)
    browser.fill("new_password", "onlyletters")
    browser.fill("new_password_confirm", "onlyletters")
    browser.submit("reset-complete")
    assert browser.text("new_password-error") == (
        "密码长度为8-16个字符，必须包含数字、字母（区分大小写）、特殊字符三者中至少两种"
    )
    browser.fill("code", code)
    browser.fill("new_password", "New.pass2026")
    browser.fill("new_password_confirm", "New.pass2026")
    browser.submit("reset-complete")
    assert "密码已重置" in browser.text("done-message")
    browser.screenshot("reset")

    start_login(browser, person)
    assert "账号或密码错误" in browser.text("password-error")
    person.password = "New.pass2026"
    start_login(browser, person)
    sms_step(browser, person.phone)
    assert "自然人业务" in signed_in_as(browser)


def test_c5_forgot_password_by_face_when_the_phone_is_empty(
    browser: Browser, bureau: Bureau
) -> None:
    """Q17, C5: the phone is empty (taken by someone else): forgot password by a face check."""
    person = bureau.register(Person("无号忘记"))
    bureau.register(Person("占号者", phone=person.phone))
    browser.open("/password-reset")
    browser.fill("account", person.number)
    browser.submit("reset-submit")
    assert browser.text("phone-empty") == "手机号码为空，请使用扫码验证"
    browser.submit("start-face")
    assert "人脸识别通过" in app_scans(browser, "reset")
    browser.wait_text("face-done", "人脸识别已通过")
    browser.fill("new_password", "Face.reset2026")
    browser.fill("new_password_confirm", "Face.reset2026")
    browser.submit("reset-complete")
    assert "密码已重置" in browser.text("done-message")


def test_c6_phone_recovery_with_the_personal_password_replaces_the_lost_phone(
    browser: Browser, bureau: Bureau
) -> None:
    """C6, Q5, Q22: 找回手机号码 proves the personal password, then sets a new phone by SMS
    code; step 2 of the next login shows the new phone."""
    person = bureau.register(Person("网页找回"))
    new = new_phone()
    browser.open("/")
    browser.click("link-phone-recovery")
    browser.fill("account", person.number)
    browser.fill("password", "Wrong.pass1")
    browser.submit("recovery-submit")
    assert browser.text("password-error") == "账号或密码错误，您还可以尝试4次"
    browser.fill("password", person.password)
    browser.submit("recovery-submit")
    browser.wait_path("/phone-recovery/phone")
    browser.fill("phone", new)
    browser.submit("send-code")
    browser.wait_text("code-sent", "验证码已发送至")
    browser.fill("code", read_code(browser, new))
    browser.submit("recovery-complete")
    assert f"{new[:3]}****{new[-4:]}" in browser.text("done-message")
    browser.screenshot("recovered")

    start_login(browser, person)
    assert browser.text("masked-phone") == f"{new[:3]}****{new[-4:]}"
    sms_step(browser, new)
    assert "自然人业务" in signed_in_as(browser)
