"""What the browser holds and may do: an opaque HttpOnly SameSite cookie and never a token,
a CSRF token on every form and fetch, a strict Content-Security-Policy, server-side token
refresh, and a logout that ends the platform session."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

import httpx

from etax_platform.clock import CST
from services.web.app import CONTENT_SECURITY_POLICY
from services.web.web import CSRF_TEXT
from tests.e2e.platform import Platform
from tests.e2e.story import Bureau, Person
from tests.web.site import Browser, Site, running_site, wait_real
from tests.web.walks import scan_step, signed_in_as, start_login


def _record(site: Site, browser: Browser) -> tuple[str, dict]:  # type: ignore[type-arg]
    """The server's record for this browser (WebDriver, unlike a page, sees the cookie)."""
    cookie = browser.driver.get_cookie(site.settings.cookie_name)
    assert cookie is not None
    key = "web:session:" + hashlib.sha256(cookie["value"].encode()).hexdigest()
    found = site.store.get(key)
    assert found is not None
    return key, json.loads(found.value)


def _log_in(browser: Browser, person: Person) -> None:
    start_login(browser, person)
    scan_step(browser)
    signed_in_as(browser)


def test_the_session_cookie_is_opaque_httponly_samesite_and_no_page_script_reads_it(
    site: Site, browser: Browser, bureau: Bureau
) -> None:
    person = bureau.register(Person("饼干"))
    _log_in(browser, person)
    cookie = browser.driver.get_cookie(site.settings.cookie_name)
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # development over http; Secure everywhere else
    # A page script sees no cookie at all, and nothing on the page is a token.
    assert browser.driver.execute_script("return document.cookie") == ""
    _, record = _record(site, browser)
    for token in (record["login"]["access_token"], record["login"]["refresh_token"]):
        assert token not in browser.driver.page_source
        assert token not in cookie["value"]


def test_a_form_post_without_the_csrf_token_is_refused(
    site: Site, browser: Browser, bureau: Bureau
) -> None:
    person = bureau.register(Person("跨站"))
    browser.open("/")
    browser.driver.execute_script(
        "document.querySelector('#login-form input[name=csrf_token]').remove()"
    )
    browser.fill("account", person.number)
    browser.fill("password", person.password)
    browser.submit("login-submit")
    assert browser.text("form-error") == CSRF_TEXT
    # Nothing reached the platform: the next real attempt still has all five tries.
    start_login(browser, person, password="Wrong.pass1")
    assert browser.text("password-error") == "账号或密码错误，您还可以尝试4次"


def test_posts_from_elsewhere_and_fetches_without_the_header_are_refused(
    site: Site, bureau: Bureau
) -> None:
    with httpx.Client(base_url=site.url(""), timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200
        # Another site's form: the browser would send the cookie, but not the token.
        refused = client.post("/login", data={"account": "x", "password": "y", "entry": "natural"})
        assert (refused.status_code, CSRF_TEXT in refused.text) == (403, True)
        assert client.post("/bff/qr-login").status_code == 403
        # A token from another session is no better.
        with httpx.Client(base_url=site.url(""), timeout=10) as other:
            other.get("/")
            other_token = _meta_token(other.get("/").text)
        assert (
            client.post("/bff/qr-login", headers={"x-csrf-token": other_token}).status_code == 403
        )
        own = _meta_token(page.text)
        assert client.post("/bff/qr-login", headers={"x-csrf-token": own}).status_code == 200


def _meta_token(html: str) -> str:
    start = html.index('name="csrf-token" content="') + len('name="csrf-token" content="')
    return html[start : html.index('"', start)]


def test_every_response_carries_a_strict_content_security_policy(site: Site) -> None:
    for path in ("/", "/register", "/static/js/site.js", "/qr/login.svg"):
        response = httpx.get(site.url(path), timeout=10)
        headers = response.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY


def test_an_injected_inline_script_does_not_run(browser: Browser) -> None:
    """The CSP (script-src 'self') refuses inline script, so injected markup cannot act."""
    browser.open("/")
    browser.driver.execute_script(
        "var s = document.createElement('script');"
        "s.textContent = 'window.injected = document.cookie || \"ran\"';"
        "document.body.appendChild(s);"
    )
    assert browser.driver.execute_script("return window.injected === undefined") is True


def test_the_access_token_is_refreshed_on_the_server_before_it_expires(
    site: Site, browser: Browser, bureau: Bureau
) -> None:
    person = bureau.register(Person("续期"))
    _log_in(browser, person)
    key, record = _record(site, browser)
    old = record["login"]
    # As if the access token were about to expire.
    soon = datetime.now(CST) + timedelta(seconds=5)
    record["login"] = {**old, "access_expires_at": soon.isoformat()}
    version = site.store.get(key)
    assert version is not None
    site.store.replace(key, version.version, json.dumps(record).encode(), timedelta(minutes=30))

    browser.open("/account")
    assert browser.text("profile-name")
    _, refreshed = _record(site, browser)
    assert refreshed["login"]["refresh_token"] != old["refresh_token"]
    assert refreshed["login"]["access_token"] != old["access_token"]
    assert refreshed["login"]["session_id"] == old["session_id"]


def test_logout_ends_the_platform_session_and_the_browser_session(
    site: Site, browser: Browser, bureau: Bureau
) -> None:
    person = bureau.register(Person("退出"))
    _log_in(browser, person)
    key, record = _record(site, browser)
    token = record["login"]["access_token"]
    assert bureau.web.call("AccountService.GetProfile", token=token).ok
    browser.submit("logout")
    assert "您已安全退出" in browser.body()
    assert site.store.get(key) is None
    refused = bureau.web.call("AccountService.GetProfile", token=token)
    assert refused.reason == "UNAUTHENTICATED", refused
    browser.open("/account")
    browser.wait_path("/")
    assert "请先登录" in browser.body()


def test_the_platform_counts_the_browsers_address_never_a_forwarded_for_it_sent(
    web_platform: Platform,
) -> None:
    """Per-client flood guards (issue 11) behind the web service: the gateway believes the
    web service's X-Forwarded-For (ETAX_GATEWAY_TRUSTED_PROXIES, as `make run` sets it), and
    the web service forwards the address the gateway saw, not what a browser wrote there."""
    with (
        running_site(web_platform, trusted_proxies="127.0.0.1/32") as site,
        httpx.Client(
            base_url=site.url(""),
            transport=httpx.HTTPTransport(local_address="127.0.0.5"),  # the "browser"
            timeout=10,
        ) as browser,
    ):
        spoofed = {"x-forwarded-for": "198.51.100.66"}
        page = browser.get("/?entry=natural", headers=spoofed)  # makes a QR login
        csrf = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        answered = browser.post(
            "/login",
            data={
                "csrf_token": csrf,
                "entry": "natural",
                "account": Person("路人").number,
                "password": "Passw0rd.1",
            },
            headers=spoofed,
        )
        assert "该用户未注册" in answered.text

        def logged() -> list[dict]:  # type: ignore[type-arg]
            entries = site.gateway.access_log_entries()
            return [e for e in entries if str(e.get("route", "")).endswith("/StartLogin")]

        wait_real(lambda: bool(logged()), "the gateway logged the StartLogin call")
        assert [e["client"] for e in logged()] == ["127.0.0.5"]
        clients = {e["client"] for e in site.gateway.access_log_entries()}
        assert "198.51.100.66" not in clients
