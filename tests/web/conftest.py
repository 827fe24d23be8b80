"""One platform, one gateway with the web pages behind it, and one headless Chromium for
the whole session (they take a few seconds to start); tests use fresh people, phones and
enterprises, so they do not see each other. Screenshots go under each test's tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from selenium import webdriver

from etax_platform.certs import CertificatePaths
from etax_platform.clock import CST
from tests.e2e.platform import Platform, running_platform, sqlite_memory
from tests.e2e.story import Bureau
from tests.harness.gateway import gateway_certificates
from tests.web.site import Browser, Site, chromium_available, new_driver, running_site


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if chromium_available():
        return
    skip = pytest.mark.skip(reason="chromium / chromedriver missing: run `make system-deps`")
    for item in items:
        if "browser" in item.fixturenames or "second_browser" in item.fixturenames:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def web_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    certificates: CertificatePaths = gateway_certificates(tmp_path_factory.mktemp("web-certs"))
    backend = sqlite_memory(tmp_path_factory.mktemp("web-sqlite"))
    with running_platform(backend, certificates, tmp_path_factory.mktemp("web-platform")) as up:
        yield up


@pytest.fixture(scope="session")
def site(web_platform: Platform) -> Iterator[Site]:
    with running_site(web_platform) as running:
        yield running


@pytest.fixture(autouse=True)
def clock_keeps_up_with_real_time(request: pytest.FixtureRequest) -> None:
    """Envoy checks tokens' expiry against the real clock, the services against theirs."""
    if "web_platform" not in request.fixturenames and "site" not in request.fixturenames:
        return
    platform: Platform = request.getfixturevalue("web_platform")
    lag = datetime.now(CST) - platform.clock.now()
    if lag > timedelta(0):
        platform.clock.advance(lag)


@pytest.fixture(scope="session")
def bureau(site: Site, web_platform: Platform) -> Iterator[Bureau]:
    """The platform's other users (the hall, the core tax system, the phones) for set-up."""
    opened = Bureau(site.gateway, web_platform.clock)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def driver() -> Iterator[webdriver.Chrome]:
    opened = new_driver()
    yield opened
    opened.quit()


@pytest.fixture
def browser(site: Site, driver: webdriver.Chrome, tmp_path: Path) -> Iterator[Browser]:
    """The session's browser, with no cookies left from the test before."""
    opened = Browser(site, driver, tmp_path / "screenshots")
    opened.open("/healthz")  # cookies are deleted per origin
    driver.delete_all_cookies()
    yield opened
    while len(driver.window_handles) > 1:
        driver.switch_to.window(driver.window_handles[-1])
        driver.close()
    driver.switch_to.window(driver.window_handles[0])
    opened.screenshot("end")


@pytest.fixture
def second_browser(site: Site, tmp_path: Path) -> Iterator[Browser]:
    """Another person's browser (its own cookies)."""
    opened = new_driver()
    yield Browser(site, opened, tmp_path / "screenshots-second")
    opened.quit()
