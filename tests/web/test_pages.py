"""The pages at phone width, with the keyboard and for a screen reader's basics."""

from __future__ import annotations

from selenium import webdriver
from selenium.webdriver.common.keys import Keys

from tests.e2e.story import Person
from tests.web.site import Browser

PAGES = ("/", "/?entry=subject", "/?entry=agent", "/register", "/password-reset", "/phone-recovery")
UNLABELLED = """
return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))
  .filter(e => !e.id || !document.querySelector('label[for="' + e.id + '"]'))
  .map(e => e.name);
"""


def test_pages_fit_a_375_px_screen_and_every_field_has_a_label(
    browser: Browser, driver: webdriver.Chrome
) -> None:
    driver.set_window_size(375, 812)
    try:
        for path in PAGES:
            browser.open(path)
            viewport = driver.execute_script("return window.innerWidth")
            width = driver.execute_script("return document.documentElement.scrollWidth")
            assert width <= viewport, f"{path} scrolls sideways at {viewport} px"
            assert driver.execute_script(UNLABELLED) == [], path
            assert browser.duplicate_ids() == [], path
        browser.open("/?entry=enterprise")
        browser.screenshot("phone-width")
    finally:
        driver.set_window_size(1280, 900)


def test_the_login_form_works_from_the_keyboard_and_errors_are_tied_to_their_field(
    browser: Browser,
) -> None:
    stranger = Person("键盘")
    browser.open("/?entry=natural")
    browser.element("account").click()
    browser.driver.switch_to.active_element.send_keys(stranger.number, Keys.TAB)
    assert browser.driver.switch_to.active_element.get_attribute("id") == "password"
    browser.driver.switch_to.active_element.send_keys(stranger.password, Keys.ENTER)
    browser.wait_text("account-error", "该用户未注册")
    field = browser.element("account")
    assert field.get_attribute("aria-invalid") == "true"
    assert field.get_attribute("aria-describedby") == "account-error"
    # The password is never put back into the page.
    assert stranger.password not in browser.driver.page_source
