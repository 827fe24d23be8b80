"""The account center in a real browser: phones (C3, C4), 企业授权管理 with the legal
representative confirming in another browser (F1), and 身份切换 without logging out (F3,
F5)."""

from __future__ import annotations

from etax_platform.pii import mask_name
from tests.e2e.story import Bureau, Person, new_phone, new_uscc
from tests.web.site import Browser
from tests.web.walks import (
    ENTERPRISE,
    app_scans,
    read_code,
    scan_step,
    signed_in_as,
    start_login,
)


def _log_in(browser: Browser, person: Person, entry: str = "natural", **target: str) -> None:
    """Set-up logins go by scan verification: they spend none of the phone's five codes."""
    start_login(browser, person, entry, **target)
    scan_step(browser)
    signed_in_as(browser)


def test_c3_adding_a_phone_in_the_account_center(browser: Browser, bureau: Bureau) -> None:
    """C3, Q21: a second phone, proven by SMS code, listed masked; made the default, it is
    the one step 2 of the next login shows."""
    person = bureau.register(Person("网页加号"))
    second = new_phone()
    _log_in(browser, person)
    browser.open("/account")
    browser.fill("phone", second)
    browser.submit("send-code")
    browser.wait_text("code-sent", "验证码已发送至")
    browser.fill("code", read_code(browser, second))
    browser.click("make_default")
    browser.submit("phone-add")
    masked = f"{second[:3]}****{second[-4:]}"
    listed = browser.text("phone-list")
    assert masked in listed
    assert f"{person.phone[:3]}****{person.phone[-4:]}" in listed
    assert second not in browser.driver.page_source  # only masked on the page
    assert browser.duplicate_ids() == []
    browser.screenshot("phones")
    browser.submit("logout")
    start_login(browser, person)
    assert browser.text("masked-phone") == masked


def test_f1_applying_for_authorization_and_the_legal_representative_confirms_elsewhere(
    browser: Browser, second_browser: Browser, bureau: Bureau
) -> None:
    """F1(a), Q8: 账户中心—企业授权管理—申请企业授权; the legal representative, in another
    browser, confirms at 企业业务—账户中心; the applicant then logs in to the enterprise."""
    legal_representative = bureau.register(Person("网页法人"))
    code = new_uscc()
    bureau.new_enterprise(code, legal_representative, name="网页授权有限公司")
    applicant = bureau.register(Person("网页申请"))

    _log_in(browser, applicant)
    browser.click("nav-relations")
    browser.fill("enterprise_code", code)
    browser.choose("role", "ROLE_TAX_OFFICER")
    browser.submit("apply-submit")
    assert "已提交申请" in browser.body()

    _log_in(second_browser, legal_representative, ENTERPRISE, enterprise_code=code)
    second_browser.click("nav-relations")
    rows = second_browser.css("#enterprise-relations tbody tr")
    pending = [r for r in rows if mask_name(applicant.name) in r.text and "待确认" in r.text]
    assert len(pending) == 1, [r.text for r in rows]
    second_browser.screenshot("pending")
    pending[0].find_element("css selector", 'button[value="accept"]').click()
    second_browser.wait(lambda _d: "已确认授权" in second_browser.body(), "confirmation")
    rows = second_browser.css("#enterprise-relations tbody tr")
    assert any(mask_name(applicant.name) in r.text and "已绑定" in r.text for r in rows)

    browser.submit("logout")
    _log_in(browser, applicant, ENTERPRISE, enterprise_code=code)
    shown = browser.text("current-identity")
    assert "网页授权有限公司" in shown
    assert "办税员" in shown


def test_f3_identity_switching_without_logging_out(browser: Browser, bureau: Bureau) -> None:
    """F3, F5, Q27: a tax officer of two enterprises switches between them (and back to the
    natural person) in one click each, staying logged in."""
    officer = bureau.register(Person("网页多企"))
    codes = [new_uscc(), new_uscc()]
    for code, name in zip(codes, ("网页甲企业有限公司", "网页乙企业有限公司"), strict=True):
        manager = bureau.register(Person("网页经理"))
        bureau.new_enterprise(code, manager, name=name)
        bureau.add_tax_officer(code, manager, officer)

    _log_in(browser, officer, ENTERPRISE, enterprise_code=codes[0])
    assert "网页甲企业有限公司" in browser.text("current-identity")
    browser.click("nav-identities")
    assert browser.duplicate_ids() == []
    listed = browser.text("identity-list")
    assert "网页乙企业有限公司" in listed
    assert "自然人业务" in listed
    browser.screenshot("identities")
    target = next(li for li in browser.css("#identity-list li") if "网页乙企业有限公司" in li.text)
    target.find_element("css selector", "button").click()
    browser.wait_text("current-identity", "网页乙企业有限公司")
    assert "已切换为" in browser.body()

    browser.click("nav-identities")
    natural = next(li for li in browser.css("#identity-list li") if "自然人业务" in li.text)
    natural.find_element("css selector", "button").click()
    browser.wait_text("current-identity", "自然人业务")
    # Still the same login: the account center works without logging in again.
    browser.open("/account")
    assert browser.text("profile-name") == mask_name(officer.name)


def test_b3_level_3_person_reaches_level_4_by_a_face_check_in_the_account_center(
    browser: Browser, bureau: Bureau
) -> None:
    """B3, Q3: a person migrated without a face check is level 3; 【个人实名等级】 with the
    APP's face recognition lifts it to 4."""
    person = Person("网页存量")
    bureau.hall.import_legacy_person(person)
    _log_in(browser, person)
    browser.open("/account")
    assert browser.text("real-name-level") == "3"
    browser.submit("start-upgrade")
    browser.element("upgrade-qr")
    assert "人脸识别通过" in app_scans(browser, "upgrade")
    browser.wait_text("real-name-level", "4")
    assert "实名等级已提升为4级" in browser.body()


def test_c2_a_username_is_set_once_a_year_and_logs_in(browser: Browser, bureau: Bureau) -> None:
    """C2, Q15: an optional username, added in the account center, logs in; adding is not
    a change, one change a year is."""
    person = bureau.register(Person("网页用户名"))
    username = f"web{person.number[-8:]}"
    _log_in(browser, person)
    browser.open("/account")
    browser.fill("username", username)
    browser.submit("username-save")
    assert browser.text("current-username") == username
    browser.fill("username", username + "a")
    browser.submit("username-save")
    assert browser.text("current-username") == username + "a"
    browser.fill("username", username + "b")
    browser.submit("username-save")
    assert browser.text("username-error") == "用户名一年度只能修改一次"
    browser.submit("logout")
    start_login(browser, person, account=username + "a")
    scan_step(browser)
    assert "自然人业务" in signed_in_as(browser)
