"""The login page in a real browser: every entry with both second steps (D1, D2, D5), the
specific subject's number searched after the password (D5, Q23), QR login from the APP
(D3), the lock after five wrong passwords (E1), the SMS throttle's countdown (E2) and an
empty phone (D4)."""

from __future__ import annotations

import re

import pytest
from selenium.webdriver.common.keys import Keys

from etax_platform.clock import next_cst_midnight
from tests.e2e.story import Bureau, Person, new_uscc
from tests.web.site import Browser
from tests.web.test_pages import UNLABELLED
from tests.web.walks import (
    AGENT,
    ENTERPRISE,
    NATURAL,
    SUBJECT,
    app_scans,
    logout,
    scan_step,
    signed_in_as,
    sms_step,
    start_login,
)

INSPECTION = "SUBJECT_TYPE_CROSS_REGION_INSPECTION"


def _entry_target(bureau: Bureau, person: Person, entry: str) -> tuple[dict[str, str], str]:
    """Sets up what the entry logs in to; returns the form's target fields and the name the
    header shows afterwards."""
    if entry == NATURAL:
        return {}, "自然人业务"
    if entry == ENTERPRISE:
        code = new_uscc()
        bureau.new_enterprise(code, person, name="济南网页测试有限公司")
        return {"enterprise_code": code}, "济南网页测试有限公司"
    if entry == AGENT:
        agency, client = new_uscc(), new_uscc()
        bureau.new_enterprise(client, bureau.register(Person("委托人")), name="委托网页有限公司")
        bureau.agency_forms(agency, (person,), {client: (person,)})
        return {"agency_code": agency}, "代理业务"
    code = new_uscc("32")
    bureau.new_enterprise(code, bureau.register(Person("苏法人")), name="江苏网页路桥有限公司")
    project = f"KQ3701022026{code[-5:]}"
    bureau.record_project(code, project, "37", INSPECTION, handlers=(person,))
    return {"subject_type": INSPECTION, "subject_number": code}, project


@pytest.mark.parametrize("entry", [ENTERPRISE, NATURAL, AGENT, SUBJECT])
def test_d1_d2_each_entry_logs_in_with_the_sms_code_and_with_scan_verification(
    browser: Browser, bureau: Bureau, entry: str
) -> None:
    """D1, D2, D5: password, then the SMS code to the masked phone; then again with 扫码验证
    (the APP scans without logging in, Q14)."""
    person = bureau.register(Person("网页登录"))
    target, shown = _entry_target(bureau, person, entry)

    start_login(browser, person, entry, **target)
    assert browser.text("masked-phone") == f"{person.phone[:3]}****{person.phone[-4:]}"
    browser.screenshot(f"{entry}-step-two")
    sms_step(browser, person.phone)
    assert shown in signed_in_as(browser)
    browser.screenshot(f"{entry}-signed-in")
    logout(browser)

    start_login(browser, person, entry, **target)
    scan_step(browser)
    assert shown in signed_in_as(browser)
    if entry == AGENT:
        # F4: the agent acts for the client the agreement names (身份切换).
        browser.click("nav-identities")
        client = next(
            li for li in browser.css("#identity-list li") if "委托网页有限公司" in li.text
        )
        assert "委托企业" in client.text
        client.find_element("css selector", "button").click()
        # Wait for the client's name: the agent's own identity already says 税务代理人员.
        assert "税务代理人员" in browser.wait_text("current-identity", "委托网页有限公司")
    if entry == SUBJECT:
        # D5: 切换主管税务机关 lists the related projects of this province.
        browser.click("nav-authorities")
        assert shown in browser.text("project-list")


def _options(browser: Browser) -> list[str]:
    """The values the subject listbox offers now."""
    return [o.get_attribute("value") or "" for o in browser.css("#subject_number option")]


def test_q23_d5_the_subject_number_is_searched_after_the_password_among_the_persons_own(
    browser: Browser, bureau: Bureau
) -> None:
    """D5, Q23 (issue 12): 登录时，编号支持模糊查询 — the form takes part of the number (or
    none); once the password is verified the page lists only this person's subjects and
    narrows them as the person types; the chosen one goes on to the SMS step. A person
    with no relation sees the field's 必填 prompt."""
    person = bureau.register(Person("模糊查询"))
    code = new_uscc("32")
    bureau.new_enterprise(code, bureau.register(Person("苏法人")), name="江苏模糊查询有限公司")
    base = f"KQ37010220{code[-6:]}"
    first, second = f"{base}1", f"{base}2"
    for project in (first, second):
        bureau.record_project(code, project, "37", INSPECTION, handlers=(person,))

    # Part of the number on the form: both projects share it.
    start_login(browser, person, SUBJECT, subject_type=INSPECTION, subject_number=base[-8:])
    browser.wait_path("/login/subject")
    assert sorted(_options(browser)) == [first, second]
    assert browser.text("subject-status") == "共找到2个"
    assert not browser.element("subject_number-error").is_displayed()
    assert browser.duplicate_ids() == []
    # Typing more narrows the list as it is typed (the live search, CSRF on the fetch).
    browser.fill("query", second[-6:])
    browser.wait(lambda _d: _options(browser) == [second], "the list narrowed to one")
    assert browser.text("subject-status") == "共找到1个"
    browser.screenshot("subject-search")
    assert browser.driver.execute_script(UNLABELLED) == []
    # From the keyboard: past 查询 to the listbox (its first option is chosen), then 下一步.
    browser.element("query").send_keys(Keys.TAB, Keys.TAB)
    active = browser.driver.switch_to.active_element
    assert (active.get_attribute("id"), active.get_attribute("value")) == ("subject_number", second)
    active.send_keys(Keys.TAB)
    browser.driver.switch_to.active_element.send_keys(Keys.ENTER)
    browser.wait_path("/login/verify")
    assert browser.text("masked-phone") == f"{person.phone[:3]}****{person.phone[-4:]}"
    sms_step(browser, person.phone)
    assert f"项目 {second}" in signed_in_as(browser)
    logout(browser)

    # No relation: nothing to choose, and the field says it is required (Q23).
    stranger = bureau.register(Person("无关联"))
    start_login(browser, stranger, SUBJECT, subject_type=INSPECTION)
    browser.wait_path("/login/subject")
    assert _options(browser) == []
    assert browser.text("subject_number-error") == "此项为必填项"
    assert browser.element("subject_number").get_attribute("aria-invalid") == "true"
    assert browser.text("subject-status") == "未查询到可选择的编号"
    browser.submit("subject-submit")
    assert browser.text("subject_number-error") == "此项为必填项"
    browser.screenshot("subject-required")


def test_d5_specific_subject_logs_in_by_app_face_alone(browser: Browser, bureau: Bureau) -> None:
    """D5 second way: the subject only, then the APP's face recognition (the APP supplies
    the identity)."""
    person = bureau.register(Person("刷脸主体"))
    target, project = _entry_target(bureau, person, SUBJECT)
    browser.open("/?entry=subject")
    browser.choose("subject_type", target["subject_type"])
    browser.fill("subject_number", target["subject_number"])
    browser.submit("subject-face-submit")
    browser.element("subject-qr")
    result = app_scans(
        browser,
        "subject",
        document_type="DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD",
        document_number=person.number,
        name=person.name,
    )
    assert "人脸识别通过" in result
    assert project in signed_in_as(browser)


def test_d3_qr_login_from_the_app_logged_in_to_enterprise_business(
    browser: Browser, bureau: Bureau
) -> None:
    """D3, Q14: the APP, logged in to 企业业务, scans the page's QR code; the page logs in
    to the same enterprise without a password."""
    person = bureau.register(Person("扫码登录"))
    code = new_uscc()
    bureau.new_enterprise(code, person, name="扫码登录有限公司")
    browser.open("/?entry=enterprise")
    browser.wait_text("qr-login-status", "请使用已登录的税务 APP 扫描二维码")
    browser.screenshot("login-page")
    with browser.second_window("/dev/app/"):
        browser.choose("entry", "enterprise")
        browser.fill("app_enterprise_code", code)
        browser.fill("app_account", person.number)
        browser.fill("app_password", person.password)
        browser.submit("app-login-submit")
        assert "扫码登录有限公司" in browser.text("app-signed-in")
        browser.submit(
            browser.css('#recent-qr button[data-kind="qr_login"]')[0].get_attribute("id") or ""
        )
        browser.submit("confirm-qr-login")
        assert "已确认登录" in browser.text("app-result")
    shown = signed_in_as(browser)
    assert "企业业务" in shown
    assert "扫码登录有限公司" in shown


def test_e1_four_wrong_passwords_then_the_lock_with_its_unlock_time(
    browser: Browser, bureau: Bureau
) -> None:
    """E1, Q12: each wrong password says how many tries are left; the fifth locks the
    password until 00:00 the next day, and the page offers forgot password and face
    self-unlock."""
    person = bureau.register(Person("锁定网页"))
    for left in (4, 3, 2, 1):
        start_login(browser, person, password="Wrong.pass1")
        assert browser.text("password-error") == f"账号或密码错误，您还可以尝试{left}次"
        field = browser.element("password")
        assert field.get_attribute("aria-invalid") == "true"
        assert "password-error" in (field.get_attribute("aria-describedby") or "")
    start_login(browser, person, password="Wrong.pass1")
    unlock_at = next_cst_midnight(bureau.clock.now())
    text = browser.text("form-error")
    assert text.startswith("一天内密码认证连续失败5次，密码认证已锁定至")
    assert f"{unlock_at:%Y-%m-%d %H:%M}" in text
    assert browser.has("link-unlock")
    browser.screenshot("locked")
    # Even the right password is refused now.
    start_login(browser, person)
    assert "已锁定" in browser.text("form-error")


def test_e2_sixth_code_in_ten_minutes_is_refused_and_the_button_counts_down(
    browser: Browser, bureau: Bureau
) -> None:
    """E2, Q20: five codes per ten minutes; the sixth gets 「短信验证码获取频繁，请稍后重试」 and
    the send button waits as long as the platform's RetryInfo says."""
    person = bureau.register(Person("频繁网页"))
    start_login(browser, person)
    for _ in range(4):  # registration already sent one code to this phone
        browser.submit("send-code")
        browser.wait_text("code-sent", "验证码已发送至")
    browser.submit("send-code")
    assert browser.text("code-error") == "短信验证码获取频繁，请稍后重试"
    button = browser.element("send-code")
    label = browser.wait_text("send-code", "秒后可重新获取")
    seconds = int(re.match(r"(\d+)", label)[1])  # type: ignore[index]
    assert 0 < seconds <= 600
    assert not button.is_enabled()
    browser.wait(lambda _d: int(re.match(r"(\d+)", button.text)[1]) < seconds, "countdown")  # type: ignore[index]
    browser.screenshot("throttled")


def test_d4_empty_phone_offers_scan_verification(browser: Browser, bureau: Bureau) -> None:
    """D4, Q19: the phone was taken by someone else: step 2 says the phone is empty and
    offers 扫码验证 only."""
    person = bureau.register(Person("空号网页"))
    bureau.register(Person("占号者", phone=person.phone))
    start_login(browser, person)
    assert browser.text("phone-empty") == "手机号码为空，请使用扫码验证"
    assert not browser.has("step-sms")
    scan_step(browser)
    assert "自然人业务" in signed_in_as(browser)


def test_d4_faq_texts_for_an_unknown_phone_and_an_unregistered_document(
    browser: Browser, bureau: Bureau
) -> None:
    """D4, Q18: the FAQ's texts, verbatim, next to the account field."""
    stranger = Person("未注册")
    start_login(browser, stranger, account=stranger.phone)
    assert browser.text("account-error") == "手机号码不存在，您可以尝试使用证件号码登录"
    start_login(browser, stranger)
    assert browser.text("account-error") == "该用户未注册"
