"""The web service in-process (uvicorn on a thread) behind the real gateway, and a headless
Chromium driven by Selenium: the pages as a person uses them.

    with running_site(platform) as site:          # platform: tests/e2e/platform.py
        browser = Browser(site, new_driver(), shots_dir)
        browser.open("/")
        browser.fill("account", "370102...")
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from etax_platform.kv import MemoryStore
from services.web.app import build, server_config
from services.web.settings import WebSettings
from tests.e2e.platform import Platform
from tests.harness.gateway import RunningGateway, wait_until
from tests.harness.servers import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Generous: two cores shared with other work; every wait is for an event, never a sleep.
WAIT_SECONDS = 20


@dataclass
class Site:
    gateway: RunningGateway
    web_address: str
    settings: WebSettings
    # The web service's session store (tests look at what it keeps for a browser).
    store: MemoryStore

    def url(self, path: str) -> str:
        """Through the gateway's public listener, as a browser reaches the pages."""
        return self.gateway.url(path)


@contextlib.contextmanager
def web_server(settings: WebSettings, store: MemoryStore) -> Iterator[str]:
    server = uvicorn.Server(server_config(settings, build(settings, store=store)))
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "web service started")
        yield f"{settings.host}:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def running_site(
    platform: Platform, province: str = "37", **gateway_settings: Any
) -> Iterator[Site]:
    """A bureau's gateway with the web pages behind it (the web service calls back through
    the same gateway, as an APP backend does); gateway_settings: GatewaySettings fields."""
    port = free_port()
    web_address = f"127.0.0.1:{port}"
    with platform.gateway(province, web_address=web_address, **gateway_settings) as gateway:
        settings = WebSettings(
            port=port,
            gateway_target=gateway.public_address,
            app_simulator_enabled=True,
            sms_outbox_target=platform.hosts["sms"].address,
            poll_interval_ms=300,
        )
        store = MemoryStore()
        with web_server(settings, store) as address:
            gateway.wait_healthy("web")
            yield Site(gateway, address, settings, store)


def chromium_available() -> bool:
    return bool(shutil.which("chromium") or Path(CHROMIUM).exists()) and Path(CHROMEDRIVER).exists()


def new_driver(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--lang=zh-CN",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_SECONDS)
    return driver


class Browser:
    """One browser (its own cookies) on the site, with what a person does on a page."""

    def __init__(self, site: Site, driver: webdriver.Chrome, shots: Path) -> None:
        self.site = site
        self.driver = driver
        self.shots = shots
        self._count = 0

    # --- looking ------------------------------------------------------------------------

    def open(self, path: str) -> None:
        self.driver.get(self.site.url(path))

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"

    def element(self, element_id: str) -> WebElement:
        return self.wait(lambda d: d.find_element(By.ID, element_id), f"#{element_id}")

    def css(self, selector: str) -> list[WebElement]:
        found: list[WebElement] = self.driver.find_elements(By.CSS_SELECTOR, selector)
        return found

    def text(self, element_id: str) -> str:
        return str(self.element(element_id).text)

    def has(self, element_id: str) -> bool:
        return bool(self.driver.find_elements(By.ID, element_id))

    def duplicate_ids(self) -> list[str]:
        """Ids used twice on the page (labels and error links would point at the wrong one)."""
        found: list[str] = self.driver.execute_script(
            "const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);"
            "return ids.filter((id, i) => ids.indexOf(id) !== i);"
        )
        return found

    def body(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def wait(
        self, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_SECONDS
    ) -> Any:
        def tolerant(driver: Any) -> Any:
            try:
                return condition(driver)
            except WebDriverException as error:
                # Chrome's word for a stale element when the page replaced the node between
                # finding and reading it (not a StaleElementReferenceException): not yet.
                if "does not belong to the document" in (error.msg or ""):
                    return False
                raise

        try:
            return WebDriverWait(
                self.driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
            ).until(tolerant)
        except TimeoutException:
            self.screenshot("timeout")
            raise AssertionError(
                f"waited {timeout}s for {what}; at {self.path}:\n{self.body()[:1500]}"
            ) from None

    def wait_text(self, element_id: str, expected: str) -> str:
        """Until the element's text contains `expected` (live states, redirects)."""

        def check(driver: Any) -> str | bool:
            found = driver.find_elements(By.ID, element_id)
            text = found[0].text if found else ""
            return text if expected in text else False

        return str(self.wait(check, f"#{element_id} to say {expected!r}"))

    def wait_path(self, path: str) -> None:
        self.wait(lambda _d: self.path.split("#")[0].split("?")[0] == path, f"page {path}")

    # --- doing ----------------------------------------------------------------------------

    def fill(self, element_id: str, value: str) -> None:
        field = self.element(element_id)
        field.clear()
        field.send_keys(value)

    def choose(self, element_id: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select  # noqa: PLC0415

        Select(self.element(element_id)).select_by_value(value)

    def click(self, element_id: str) -> None:
        self.element(element_id).click()

    def submit(self, element_id: str) -> None:
        """Clicks a submit button and waits for the next page to load."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.click(element_id)
        self.wait(lambda _d: _stale(old), f"a new page after #{element_id}")
        self.wait(
            lambda d: d.execute_script("return document.readyState") == "complete",
            "the new page loaded",
        )

    def screenshot(self, name: str) -> Path:
        self._count += 1
        self.shots.mkdir(parents=True, exist_ok=True)
        target = self.shots / f"{self._count:02d}-{name}.png"
        self.driver.save_screenshot(str(target))
        return target

    # --- windows ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def second_window(self, path: str) -> Iterator[None]:
        """A second tab of the same browser (same cookies), e.g. the APP simulator."""
        first = self.driver.current_window_handle
        self.driver.switch_to.new_window("tab")
        try:
            self.open(path)
            yield
        finally:
            self.driver.close()
            self.driver.switch_to.window(first)


def _stale(element: WebElement) -> bool:
    """True once the page this element belonged to is gone (Chromium says so either as a
    stale reference or as a node that "does not belong to the document")."""
    try:
        element.is_enabled()
    except WebDriverException:
        return True
    return False


def wait_real(check: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not after {timeout}s")
