"""What a person does on the pages, step by step (used by the browser tests): log in, read
a code on the "phone" (the APP simulator's inbox), scan a QR code with the "APP" (the APP
simulator in a second tab of the same browser)."""

from __future__ import annotations

from tests.e2e.story import Person
from tests.web.site import Browser

NATURAL, ENTERPRISE, AGENT, SUBJECT = "natural", "enterprise", "agent", "subject"


def start_login(
    browser: Browser,
    person: Person,
    entry: str = NATURAL,
    *,
    account: str | None = None,
    password: str | None = None,
    **target: str,
) -> None:
    """The login page's password step for an entry (D1, D5)."""
    browser.open(f"/?entry={entry}")
    for name, value in target.items():
        if name == "subject_type":
            browser.choose(name, value)
        else:
            browser.fill(name, value)
    browser.fill("account", person.number if account is None else account)
    browser.fill("password", person.password if password is None else password)
    browser.submit("login-submit")


def read_code(browser: Browser, recipient: str) -> str:
    """Opens the APP simulator's inbox in a second tab and reads the newest code."""
    with browser.second_window("/dev/app/"):
        browser.fill("recipient", recipient)
        browser.submit("inbox-submit")
        codes = browser.css("#inbox-messages [data-code]")
        assert codes, browser.body()
        return str(codes[0].text)


def sms_step(browser: Browser, phone: str) -> None:
    """Step 2 by SMS code (D2): send, read it on the phone, type it in."""
    browser.wait_path("/login/verify")
    browser.submit("send-code")
    browser.wait_text("code-sent", "验证码已发送至")
    browser.fill("code", read_code(browser, phone))
    browser.submit("code-submit")


def app_scans(browser: Browser, kind: str, outcome: str = "pass", **identity: str) -> str:
    """In the APP simulator (second tab): scan the newest QR code of this kind that this
    browser showed, and submit a face capture with the chosen outcome. Returns what the
    APP shows afterwards."""
    with browser.second_window("/dev/app/"):
        buttons = browser.css(f'#recent-qr button[data-kind="{kind}"]')
        assert buttons, f"no {kind} QR code in the simulator: {browser.body()}"
        browser.submit(buttons[0].get_attribute("id") or "")
        for name, value in identity.items():
            if name == "document_type":
                browser.choose(name, value)
            else:
                browser.fill(name, value)
        browser.click(f"outcome-{outcome}")
        browser.submit("capture-submit")
        result = browser.text("app-result")
        browser.screenshot(f"simulator-{kind}")
        return result


def scan_step(browser: Browser) -> None:
    """Step 2 by scan verification (扫码验证, D2): the APP scans without logging in."""
    browser.wait_path("/login/verify")
    browser.submit("step-scan")
    browser.element("login-qr")
    browser.screenshot("scan-verification")
    assert "人脸识别通过" in app_scans(browser, "login")


def logout(browser: Browser) -> None:
    browser.submit("logout")
    browser.wait_path("/")


def signed_in_as(browser: Browser) -> str:
    """The identity the header shows (the page is /account after a login)."""
    browser.wait_path("/account")
    return browser.text("current-identity")
