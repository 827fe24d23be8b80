"""The web service without a browser: settings, the session store on both stores, the
client address, the simulator's absence, and `python -m services.web` as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
from pydantic import ValidationError

from etax_platform.kv import KeyValueStore, MemoryStore
from etax_platform.settings import REPO_ROOT, PlatformSettings
from services.web.sessions import SessionStore
from services.web.settings import WebSettings
from tests.harness.gateway import wait_until
from tests.harness.servers import free_port
from tests.web.site import web_server


def test_production_refuses_the_app_simulator_and_insecure_cookies() -> None:
    production = PlatformSettings(
        environment="production", kv_url="redis://127.0.0.1:1/0", pii_keys="k", pii_index_key="i"
    )
    with pytest.raises(ValidationError, match="APP simulator"):
        WebSettings(platform=production, app_simulator_enabled=True)
    with pytest.raises(ValidationError, match="Secure"):
        WebSettings(platform=production, cookie_secure=False)
    assert WebSettings(platform=production).secure_cookies is True
    assert WebSettings().secure_cookies is False  # development over http


def _settings(**overrides: object) -> WebSettings:
    # No platform behind it: these pages make no platform call.
    return WebSettings(port=free_port(), gateway_target=f"127.0.0.1:{free_port()}", **overrides)  # type: ignore[arg-type]


def test_the_app_simulator_exists_only_when_enabled() -> None:
    for enabled, status in ((False, 404), (True, 200)):
        with web_server(_settings(app_simulator_enabled=enabled), MemoryStore()) as address:
            assert httpx.get(f"http://{address}/dev/app/", timeout=5).status_code == status


def test_health_check_answers_without_a_session() -> None:
    with web_server(_settings(), MemoryStore()) as address:
        answered = httpx.get(f"http://{address}/healthz", timeout=5)
        assert (answered.status_code, answered.text) == (200, "ok")
        assert "set-cookie" not in answered.headers


def test_the_browser_address_is_believed_only_from_a_trusted_proxy() -> None:
    from starlette.requests import Request  # noqa: PLC0415

    from services.web.web import client_address  # noqa: PLC0415

    def request(peer: str, forwarded: str) -> Request:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        return Request({"type": "http", "headers": headers, "client": (peer, 1234)})

    proxies = frozenset({"127.0.0.1"})
    assert client_address(request("127.0.0.1", "203.0.113.9, 198.51.100.7"), proxies) == (
        "198.51.100.7"
    )
    assert client_address(request("198.51.100.7", "203.0.113.9"), proxies) == "198.51.100.7"
    assert client_address(request("127.0.0.1", "not-an-address"), proxies) == "127.0.0.1"


def test_sessions_keep_what_two_requests_changed_and_stay_ended(kv_store: KeyValueStore) -> None:
    """A page's poll and a form post of one browser each save only the keys they changed;
    a session ended by one request is not brought back by another's save."""
    sessions = SessionStore(kv_store, timedelta(minutes=5))
    first = sessions.new()
    first["flow:login"] = {"challenge_id": "c-1"}
    sessions.save(first)

    poll = sessions.load(first.session_id)
    form = sessions.load(first.session_id)
    assert poll is not None and form is not None
    poll["face:login"] = {"ticket_id": "t-1"}
    form["flow:login"] = {"challenge_id": "c-2"}
    form.pop("missing")
    sessions.save(poll)
    sessions.save(form)
    stored = sessions.load(first.session_id)
    assert stored is not None
    assert stored["face:login"] == {"ticket_id": "t-1"}
    assert stored["flow:login"] == {"challenge_id": "c-2"}
    assert stored.csrf_token == first.csrf_token

    rotated = sessions.rotate(stored)
    assert rotated.session_id != first.session_id
    assert rotated.csrf_token != first.csrf_token
    sessions.save(rotated)
    assert sessions.load(first.session_id) is None
    late = sessions.load(rotated.session_id)
    assert late is not None
    sessions.end(rotated)
    late["flow:login"] = {"challenge_id": "c-3"}
    sessions.save(late)
    assert sessions.load(rotated.session_id) is None


def test_python_m_services_web_serves_until_sigterm(tmp_path: object) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "ETAX_WEB_PORT": str(port),
        "ETAX_WEB_METRICS_PORT": str(metrics_port),
        "ETAX_WEB_GATEWAY_TARGET": f"127.0.0.1:{free_port()}",
        "ETAX_DATA_DIR": str(tmp_path),
    }
    process = subprocess.Popen([sys.executable, "-m", "services.web"], cwd=REPO_ROOT, env=env)
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).text == "ok"
            except httpx.HTTPError:
                return False

        wait_until(healthy, "python -m services.web answering", timeout=30)
        page = httpx.get(f"http://127.0.0.1:{port}/register", timeout=5)
        assert page.status_code == 200
        assert "用户注册" in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/dev/app/", timeout=5).status_code == 404
        # Its own exporter: requests by route template, never by path.
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'etax_service_info{service="web"' in scraped
        assert 'etax_web_requests_total{method="GET",route="/register",status="200"} 1.0' in scraped
        assert 'route="unmatched",status="404"' in scraped
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(15) in (0, -signal.SIGTERM)
